"""Calibration: text -> token chunks -> streamed second moments of each layer's K/V input.

Keys and values of a layer are both linear in the same input x (the normalised hidden state
read by k_proj and v_proj), so one running sum per layer,
    G = sum_t [x_t; 1] [x_t; 1]^T    ((D+1) x (D+1), float64),
gives every per-head-pair cross product of pre-RoPE keys and of values exactly:
    sum_t k_i k_j^T = [K_i | b_i] G [K_j | b_j]^T.
Activations are never stored; at LLaMA-2-7B size the sums take 32 x 4097^2 x 8 B = 4.3 GB.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from tensorllm.archs import ArchSpec, blocks, get_module, head_layout
from tensorllm.base.errors import UserError
from tensorllm.base.progress import track


def read_text_file(path: str | Path) -> list[str]:
    """Documents: a plain text file is one document; JSON (a list, or one record) and JSONL records
    are strings or objects with a string "text" field."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"calibration file {p} does not exist")
    if not p.is_file():
        raise UserError(f"calibration file {p} is not a file")
    try:
        raw = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"calibration file {p} is not UTF-8 text") from None
    if p.suffix == ".jsonl":
        docs = []
        for n, line in enumerate(raw.splitlines(), 1):
            if line.strip():
                docs.append(_text_field(_json(line, f"{p}:{n}"), f"{p}:{n}"))
        return docs
    if p.suffix == ".json":
        data = _json(raw, str(p))
        items = data if isinstance(data, list) else [data]
        return [_text_field(item, str(p)) for item in items]
    return [raw]


def _json(text: str, where: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where} is not valid JSON: {exc.msg}") from None


def _text_field(item, where: str) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict) and isinstance(item.get("text"), str):
        return item["text"]
    raise UserError(f"{where}: each record needs a string 'text' field")


def calibration_documents(calib_file: str | None) -> list[str]:
    if calib_file is not None:
        return read_text_file(calib_file)
    try:
        from tensorllm.data import default_calibration_text
    except ImportError:
        raise UserError(
            "no calibration text: pass --calib-file FILE "
            "(tensorllm.data.default_calibration_text is not available)"
        ) from None
    text = default_calibration_text()
    return [text] if isinstance(text, str) else list(text)  # one string, or a list of documents


def token_stream(tokenizer, docs: list[str]) -> torch.Tensor:
    """All documents tokenised and joined (EOS between documents) into one 1-D LongTensor.

    Documents are tokenised paragraph by paragraph (each keeps its blank line), so a long text
    never exceeds the tokenizer's maximum length.
    """
    if tokenizer is None:
        raise UserError("the gqa method needs the model's tokenizer for its calibration text")
    docs = [d.strip() for d in docs if d.strip()]
    if not docs:
        raise UserError("the calibration text is empty")
    pieces, owner = [], []
    for i, doc in enumerate(docs):
        paragraphs = [p for p in doc.split("\n\n") if p.strip()]
        pieces += [p + "\n\n" for p in paragraphs[:-1]] + paragraphs[-1:]
        owner += [i] * len(paragraphs)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids: list[int] = []
    for j, piece in enumerate(tokenizer(pieces, add_special_tokens=False)["input_ids"]):
        ids += piece
        if j + 1 == len(pieces) or owner[j + 1] != owner[j]:
            ids += eos
    return torch.tensor(ids, dtype=torch.long)


def chunk(
    ids: torch.Tensor, n_tokens: int, seq_len: int, *, offset: int = 0, what: str = "calibration"
) -> torch.Tensor:
    """Tokens [offset, offset + n_tokens) as (n_tokens // seq_len, seq_len) rows (seq_len <= n_tokens)."""
    seq_len = min(seq_len, n_tokens)
    n_seq = n_tokens // seq_len
    need = offset + n_seq * seq_len
    if len(ids) < need:
        raise UserError(
            f"the calibration text is too short: {len(ids)} tokens, {what} needs {need} "
            f"(give a longer --calib-file or fewer tokens)"
        )
    return ids[offset:need].reshape(n_seq, seq_len)


def _kv_input_module(block: nn.Module, arch: ArchSpec) -> nn.Module:
    return get_module(block, arch.k if arch.qkv == "separate" else arch.fused)


@torch.no_grad()
def input_grams(
    model: nn.Module,
    arch: ArchSpec,
    tokens: torch.Tensor,
    *,
    batch_size: int = 4,
    device: torch.device | None = None,
    progress: bool = True,
) -> list[torch.Tensor]:
    """Per layer sum_t [x_t; 1][x_t; 1]^T (float64, on `device`) over calibration tokens (n_seq, seq_len)."""
    device = device or next(model.parameters()).device
    layers = blocks(model, arch)
    D = head_layout(model.config)[0]  # the language model's width (multimodal configs nest it)
    grams = [torch.zeros(D + 1, D + 1, dtype=torch.float64, device=device) for _ in layers]

    def hook_for(i):
        def hook(_mod, args):
            x = (
                args[0].detach().reshape(-1, args[0].shape[-1]).to(device=device, dtype=torch.float64)
            )  # (N, D)
            g = grams[i]
            g[:D, :D].addmm_(x.T, x)
            s = x.sum(0)
            g[:D, D] += s
            g[D, :D] += s
            g[D, D] += x.shape[0]

        return hook

    handles = [_kv_input_module(b, arch).register_forward_pre_hook(hook_for(i)) for i, b in enumerate(layers)]
    was_training = model.training
    model.eval()
    try:
        batches = list(torch.split(tokens, batch_size))
        for batch in track(batches, "gqa: calibrating", enabled=progress):
            model.base_model(input_ids=batch.to(next(model.parameters()).device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return grams


def cross_products(weight: torch.Tensor, bias: torch.Tensor | None, gram: torch.Tensor) -> torch.Tensor:
    """sum_t y y^T for y = weight x + bias, from the input second moment: (out, out) float64."""
    W = weight.to(gram.device, torch.float64)
    b = (
        torch.zeros(W.shape[0], 1, dtype=torch.float64, device=gram.device)
        if bias is None
        else bias.to(gram.device, torch.float64)[:, None]
    )
    Wb = torch.cat([W, b], dim=1)  # (out, D+1)
    C = Wb @ gram @ Wb.T
    return (C + C.T) / 2
