"""`tensorllm info`: architecture, head layout and per-layer attention shapes, without loading weights."""

from __future__ import annotations

from tensorllm.archs import blocks, get_module, head_layout, rotary_dims
from tensorllm.attention import read_attention
from tensorllm.methods.tucker import to_tensor
from tensorllm.models.io import auto_class, load_config


def describe(spec: str, *, trust_remote_code: bool = False, allow_pickle: bool = False) -> dict:
    from accelerate import init_empty_weights

    config, arch, path, _, _ = load_config(spec, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    with init_empty_weights():  # meta tensors: shapes without memory
        cls = auto_class(config, arch)
        model = cls.from_config(config) if hasattr(cls, "from_config") else cls(config)
        model.tie_weights()
    D, H, Hkv, d = head_layout(config)
    layers = []
    for i, block in enumerate(blocks(model, arch)):
        w = read_attention(model, arch, i)
        ffn = [get_module(block, p).weight.numel() for p in (*arch.ffn_in, arch.ffn_out) if p]
        layers.append({"layer": i, "q": list(w.q.shape), "k": list(w.k.shape), "v": list(w.v.shape),
                       "o": list(w.o.shape), "tensor": list(to_tensor(w, "multihead").shape),
                       "attn_params": w.num_params(), "ffn_params": sum(ffn)})
    w0 = read_attention(model, arch, 0)
    biases = [n for n in ("bq", "bk", "bv", "bo") if getattr(w0, n) is not None]
    return {
        "model": {"source": spec, "path": str(path) if path else None, "architecture": arch.name,
                  "model_type": config.model_type, "class": type(model).__name__, "layers": len(layers),
                  "hidden": D, "heads": H, "kv_heads": Hkv, "head_dim": d, "qkv_layout": arch.qkv,
                  "weights_stored": "(in, out) Conv1D" if arch.conv1d else "(out, in) Linear",
                  "biases": ",".join(biases) or "none",
                  "rope": f"{arch.rope} pairing, {rotary_dims(config, d)} of {d} dims" if arch.rope else "none",
                  "parameters": sum(p.numel() for p in model.parameters())},
        "layers": layers,
    }
