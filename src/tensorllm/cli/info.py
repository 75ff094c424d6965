"""`tensorllm info`: architecture, head layout and per-layer attention shapes, without loading weights."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from tensorllm.archs import blocks, get_module, head_layout, rotary_dims
from tensorllm.attention import read_attention
from tensorllm.cli.common import ModelArg, console
from tensorllm.methods.tucker_tensor import to_tensor
from tensorllm.models.io import auto_class, load_config


def describe(spec: str, *, trust_remote_code: bool = False, allow_pickle: bool = False) -> dict:
    from accelerate import init_empty_weights

    config, arch, path, _, _ = load_config(
        spec, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle
    )
    with init_empty_weights():  # meta tensors: shapes without memory
        cls = auto_class(config, arch)
        model = cls.from_config(config) if hasattr(cls, "from_config") else cls(config)
        model.tie_weights()
    D, H, Hkv, d = head_layout(config)
    layers = []
    for i, block in enumerate(blocks(model, arch)):
        w = read_attention(model, arch, i)
        ffn = [get_module(block, p).weight.numel() for _, p in arch.ffn]
        if arch.is_moe:  # every expert's matrices, and the router
            ffn += [p.numel() for p in get_module(block, arch.experts).parameters()]
            ffn.append(get_module(block, arch.router).weight.numel())
        layers.append(
            {
                "layer": i,
                "q": list(w.q.shape),
                "k": list(w.k.shape),
                "v": list(w.v.shape),
                "o": list(w.o.shape),
                "tensor": list(to_tensor(w, "multihead").shape),
                "attn_params": w.num_params(),
                "ffn_params": sum(ffn),
            }
        )
    w0 = read_attention(model, arch, 0)
    biases = [n for n in ("bq", "bk", "bv", "bo") if getattr(w0, n) is not None]
    return {
        "model": {
            "source": spec,
            "path": str(path) if path else None,
            "architecture": arch.name,
            "model_type": config.model_type,
            "class": type(model).__name__,
            "layers": len(layers),
            "hidden": D,
            "heads": H,
            "kv_heads": Hkv,
            "head_dim": d,
            "qkv_layout": arch.qkv,
            "weights_stored": "(in, out) Conv1D" if arch.conv1d else "(out, in) Linear",
            "biases": ",".join(biases) or "none",
            "rope": f"{arch.rope} pairing, {rotary_dims(config, d)} of {d} dims" if arch.rope else "none",
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        "layers": layers,
    }


def info(
    model: str = ModelArg,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    trust_remote_code: bool = typer.Option(False),
    allow_pickle: bool = typer.Option(False),
) -> None:
    """Architecture, head layout, and per-layer attention tensor shapes and parameter counts."""
    desc = describe(model, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    if as_json:
        print(json.dumps(desc, indent=2))
        return
    top = Table(title=f"{model}", show_header=False)
    for k, v in desc["model"].items():
        top.add_row(k, str(v))
    console.print(top)
    table = Table(title="attention per layer")
    for col in ("layer", "q", "k", "v", "o", "tucker tensor", "attn params", "ffn params"):
        table.add_column(col, justify="right")
    for r in desc["layers"]:
        table.add_row(
            str(r["layer"]),
            *("x".join(map(str, r[n])) for n in ("q", "k", "v", "o", "tensor")),
            f"{r['attn_params']:,}",
            f"{r['ffn_params']:,}",
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command()(info)
