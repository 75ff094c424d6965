"""Factorised checkpoints: write them, load them (`tensorllm.load`), export them dense.

    tensorllm compress smollm2-135m --layers all --ranks 0.5,0.5,1.0 --format factorised --out runs/f
    loaded = tensorllm.load("runs/f")                      # modules computing from the factors
    AutoModelForCausalLM.from_pretrained("runs/f", trust_remote_code=True)   # the same, no tensorllm
    tensorllm export runs/f --dense --out runs/f-dense     # the dense rebuild, a standard checkpoint

A factorised checkpoint is a Hugging Face checkpoint whose compressed modules hold their factors
(methods/factorised.py says which) instead of dense weights, every other tensor as it was. Its
config.json names the model type `tensorllm_<base type>`, maps AutoConfig / AutoModelForCausalLM to
`modeling_tensorllm.py` (runtime/factorised_modules.py verbatim plus the classes of this model) and
lists the factorised modules under `tensorllm_factorised`. A loader without trust_remote_code is
refused by transformers (unknown model type) instead of loading random weights in their place.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch
from torch import nn

from tensorllm.archs import blocks
from tensorllm.base.versions import versions
from tensorllm.methods.factorised import KeptLowRank
from tensorllm.models.io import Loaded, save_checkpoint
from tensorllm.runtime import factorised_modules as fm

MODELING_FILE = "modeling_tensorllm.py"


# ---------------------------------------------------------------- kept factors -> spec + modules


def _entry(model: nn.Module, arch, kept, names: dict[int, str]) -> dict:
    block = names[id(blocks(model, arch)[kept.layer])]  # e.g. "model.layers.9"
    if isinstance(kept, KeptLowRank):
        out_f, k = kept.left.shape
        return {
            "kind": "lowrank",
            "layer": kept.layer,
            "path": f"{block}.{kept.path}",
            "in": int(kept.right.shape[1]),
            "out": int(out_f),
            "rank": int(k),
            "layout": "conv1d" if arch.conv1d else "linear",
        }
    attn = arch.o.rpartition(".")[0]
    entry = {
        "kind": "tucker",
        "layer": kept.layer,
        "path": f"{block}.{attn}.tucker" if attn else f"{block}.tucker",
        **{p: f"{block}.{getattr(arch, p)}" for p in fm.PARTS},
        "hidden": int(kept.u1.shape[0]),
        "heads": kept.heads,
        "kv_heads": kept.kv_heads,
        "head_dim": int(kept.u2.shape[0]),
        "ranks": list(kept.ranks),
        "form": kept.form,
    }
    if kept.form == "core":
        entry.update(slots=[list(s) for s in kept.slots], slot_count=int(kept.u3.shape[0]))
    return entry


def factorise(loaded: Loaded, kept: list) -> tuple[dict, dict]:
    """Swap the modules the kept factors cover for runtime modules holding those factors (the dense
    weights are dropped; biases move to the new modules). Returns (the spec config.json stores, the
    storage summary for the report: the factors' parameters and bytes against the dense weights')."""
    if not kept:
        raise ValueError("no step kept factors: nothing to write in factorised form")
    model, arch = loaded.model, loaded.arch
    names = {id(m): n for n, m in model.named_modules()}
    entries = [_entry(model, arch, k, names) for k in kept]
    replaced = [e["path"] for e in entries if e["kind"] == "lowrank"]
    replaced += [e[p] for e in entries if e["kind"] == "tucker" for p in fm.PARTS]
    dense = [model.get_submodule(p) for p in replaced]
    elem = dense[0].weight.element_size()
    dense_n = sum(m.weight.numel() for m in dense)
    factor_n = sum(t.numel() for k in kept for t in k.tensors().values())
    biases = {f"{p}.bias": m.bias.detach().clone() for p, m in zip(replaced, dense) if m.bias is not None}
    del dense
    spec = {
        "version": fm.FORMAT_VERSION,
        "base_model_type": model.config.model_type,
        "base_config": type(model.config).__name__,
        "base_architecture": type(model).__name__,
        "modules": entries,
    }
    fm.install(model, spec)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for entry, k in zip(entries, kept):
            for name, t in k.tensors().items():
                p = params[f"{entry['path']}.{name}"]
                p.copy_(t.to(p.device, p.dtype))
        for key, b in biases.items():
            params[key].copy_(b)
    summary = {
        "modules": len(entries),
        "forms": sorted({e.get("form", e["kind"]) for e in entries}),
        "dense_params": dense_n,
        "factor_params": factor_n,
        "dense_bytes": dense_n * elem,
        "factor_bytes": factor_n * elem,
        "rate": dense_n / factor_n,
    }
    return spec, summary


# ---------------------------------------------------------------- the files


def modeling_source(spec: dict) -> str:
    """runtime/factorised_modules.py verbatim, plus this model's two classes."""
    footer = (
        f"\n\n# ---- this checkpoint's classes (written by tensorllm {versions().get('tensorllm', '')})\n"
        f"from transformers import {spec['base_config']} as _BaseConfig  # noqa: E402\n"
        f"from transformers import {spec['base_architecture']} as _BaseModel  # noqa: E402\n\n"
        "TensorLLMConfig, TensorLLMForCausalLM = factorised_classes(_BaseConfig, _BaseModel)\n"
    )
    return inspect.getsource(fm) + footer


def config_json(model: nn.Module, spec: dict) -> str:
    cfg = json.loads(model.config.to_json_string(use_diff=False))
    cfg.update(
        model_type=f"tensorllm_{spec['base_model_type']}",
        architectures=["TensorLLMForCausalLM"],
        auto_map={
            "AutoConfig": "modeling_tensorllm.TensorLLMConfig",
            "AutoModelForCausalLM": "modeling_tensorllm.TensorLLMForCausalLM",
        },
    )
    cfg[fm.SPEC_KEY] = spec
    return json.dumps(cfg, indent=2, sort_keys=True) + "\n"


def save_factorised(
    loaded: Loaded,
    spec: dict,
    out: Path,
    *,
    overwrite: bool = False,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write a model `factorise` has converted as a factorised checkpoint, atomically."""
    files = {
        **(extra_files or {}),
        "config.json": config_json(loaded.model, spec),
        MODELING_FILE: modeling_source(spec),
    }
    return save_checkpoint(loaded, out, overwrite=overwrite, extra_files=files)
