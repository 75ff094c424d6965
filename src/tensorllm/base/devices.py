"""Devices and dtypes: the bottom layer every other one may use.

resolve_device("auto")       -> cuda if available, else cpu (a clear error for a missing GPU)
parse_dtype("bf16")          -> torch.bfloat16 (None for "auto": as stored)
eval_dtype("auto", device)   -> the load dtype of evaluation and search
device_map_kwargs("balanced")-> from_pretrained kwargs spreading one model over the GPUs
input_device(model)          -> where input ids go (first stage of a spread model)
"""

from __future__ import annotations

from typing import Any

import torch

from tensorllm.base.errors import UserError

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def parse_dtype(name: str | None) -> torch.dtype | None:
    if name in (None, "auto"):
        return None
    if name not in DTYPES:
        raise UserError(f"unknown dtype '{name}' (choose from auto, {', '.join(DTYPES)})")
    return DTYPES[name]


def eval_dtype(name: str | None, device: torch.device) -> str | None:
    """Load dtype for evaluation (eval, search): "auto" is bfloat16 on CUDA (speed; scoring upcasts to
    float32 for the log-softmax) and the checkpoint's own dtype elsewhere."""
    if name in (None, "auto"):
        return "bfloat16" if device.type == "cuda" else None
    return name


def resolve_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{name}' asked for but no CUDA GPU is available")
    return dev


def device_map_kwargs(
    device_map: str | None, *, gpus: int | None = None, headroom: float = 0.9
) -> dict[str, Any]:
    """`from_pretrained` keyword arguments that spread a model over the visible GPUs with accelerate.

    device_map: None (no spreading), "auto", "balanced", "balanced_low_0" or "sequential".
    gpus: use only the first `gpus` GPUs. headroom: fraction of each GPU's memory that weights may
    fill; the rest is left for activations and the KV cache of batched generation.
    """
    if device_map is None:
        return {}
    allowed = ("auto", "balanced", "balanced_low_0", "sequential")
    if device_map not in allowed:
        raise UserError(f"--device-map must be one of {', '.join(allowed)}, got '{device_map}'")
    if not torch.cuda.is_available():
        raise UserError("--device-map spreads a model over GPUs, but no CUDA GPU is available")
    n = torch.cuda.device_count() if gpus is None else gpus
    if not 1 <= n <= torch.cuda.device_count():
        raise UserError(f"--gpus {gpus}: {torch.cuda.device_count()} GPU(s) are visible")
    max_memory = {i: int(torch.cuda.get_device_properties(i).total_memory * headroom) for i in range(n)}
    return {"device_map": device_map, "max_memory": max_memory}


def is_dispatched(model) -> bool:
    """True when accelerate spread the model's modules over more than one device."""
    placement = getattr(model, "hf_device_map", None) or {}
    return len({str(d) for d in placement.values()}) > 1


def input_device(model) -> torch.device:
    """Where input ids must go: the device of the input embedding (the first stage of a spread model)."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is not None and getattr(emb, "weight", None) is not None:
        return emb.weight.device
    return next(model.parameters()).device
