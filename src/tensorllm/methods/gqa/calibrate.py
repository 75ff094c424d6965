"""Calibration: text -> token chunks -> streamed second moments of each layer's K/V input.

Keys and values of a layer are both linear in the same input x (the normalised hidden state
read by k_proj and v_proj), so one running sum per layer,
    G = sum_t [x_t; 1] [x_t; 1]^T    ((D+1) x (D+1), float64),
gives every per-head-pair cross product of pre-RoPE keys and of values exactly:
    sum_t k_i k_j^T = [K_i | b_i] G [K_j | b_j]^T.
Activations are never stored; at LLaMA-2-7B size the sums take 32 x 4097^2 x 8 B = 4.3 GB.
The per-token cosine of the `cosine` grouping metric is not a function of that moment (each token's
keys are scaled to unit length per head first), so when asked for, each batch's keys and values are
computed from x and the layer's K/V weights and their unit vectors' cross products summed
(`LayerStats.unit_k` / `unit_v`, (Hkv*d)^2 each): exact, with one batch's activations in memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tensorllm.archs import ArchSpec, blocks, get_module, head_layout
from tensorllm.attention import AttnWeights, read_attention
from tensorllm.base.errors import UserError
from tensorllm.base.progress import track
from tensorllm.methods.gqa.metrics import unit_cross_products


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


def accumulate_gram(gram: torch.Tensor, x: torch.Tensor) -> None:
    """gram ((D+1, D+1) float64) += sum over the rows of x (N, D) of [x; 1][x; 1]^T."""
    D = x.shape[-1]
    x = x.to(device=gram.device, dtype=torch.float64)  # (N, D)
    gram[:D, :D].addmm_(x.T, x)
    s = x.sum(0)
    gram[:D, D] += s
    gram[D, :D] += s
    gram[D, D] += x.shape[0]


@dataclass
class LayerStats:
    """What the calibration streams for one layer, from the input x_t of its K/V projections.

    gram     sum_t [x_t; 1][x_t; 1]^T over every token ((D+1, D+1) float64): alignment, merge, and the
             `energy` / `distance` scores
    body     the same sum without the first `sink` tokens of each sequence (None when sink = 0: the
             grouping reads `gram`)
    unit_k   sum over the body's tokens of u u^T, u the layer's pre-RoPE keys with each head scaled to unit
             length ((Hkv*d, Hkv*d) float64; the `cosine` score); unit_v the same for the values; None
             unless asked for (they need the layer's K/V weights: `weights`)
    """

    gram: torch.Tensor
    body: torch.Tensor | None = None
    unit_k: torch.Tensor | None = None
    unit_v: torch.Tensor | None = None
    sink: int = 0
    weights: AttnWeights | None = None  # the layer's K/V projections (float64) for unit_k / unit_v

    @classmethod
    def empty(cls, hidden: int, device, *, sink: int = 0, weights: AttnWeights | None = None) -> LayerStats:
        """Zero sums; `weights` (the layer's attention as read) turns on unit_k / unit_v."""
        zeros = lambda n: torch.zeros(n, n, dtype=torch.float64, device=device)  # noqa: E731
        stats = cls(zeros(hidden + 1), zeros(hidden + 1) if sink else None, sink=sink)
        if weights is not None:
            f = lambda t: None if t is None else t.detach().to(device=device, dtype=torch.float64)  # noqa: E731
            stats.weights = weights.with_(k=f(weights.k), bk=f(weights.bk), v=f(weights.v), bv=f(weights.bv))
            n = weights.kv_heads * weights.head_dim
            stats.unit_k, stats.unit_v = zeros(n), zeros(n)
        return stats

    @property
    def grouping_gram(self) -> torch.Tensor:
        return self.gram if self.body is None else self.body

    @property
    def grouping_tokens(self) -> float:
        return float(self.grouping_gram[-1, -1])

    def add(self, x: torch.Tensor) -> None:
        """Add one batch of inputs x (B, T, D) (or (N, D) when there are no sink tokens to skip)."""
        x = x.detach()
        accumulate_gram(self.gram, x.reshape(-1, x.shape[-1]))
        if self.sink:
            x = x[..., self.sink :, :]  # (B, T - sink, D)
            accumulate_gram(self.body, x.reshape(-1, x.shape[-1]))
        if self.weights is not None:
            w = self.weights
            rows = x.reshape(-1, x.shape[-1]).to(device=self.gram.device, dtype=torch.float64)  # (N, D)
            for acc, W, b in ((self.unit_k, w.k, w.bk), (self.unit_v, w.v, w.bv)):
                acts = rows @ W.T if b is None else torch.addmm(b, rows, W.T)  # (N, Hkv*d)
                acc += unit_cross_products(acts, w.kv_heads, w.head_dim)


@torch.no_grad()
def calibration_stats(
    model: nn.Module,
    arch: ArchSpec,
    tokens: torch.Tensor,
    *,
    batch_size: int = 4,
    device: torch.device | None = None,
    progress: bool = True,
    sink_tokens: int = 0,
    unit: bool = False,
) -> list[LayerStats]:
    """Per layer `LayerStats` over calibration tokens (n_seq, seq_len); `unit` adds the per-token unit
    cross products of keys and values (the `cosine` grouping metric)."""
    device = device or next(model.parameters()).device
    layers = blocks(model, arch)
    D = head_layout(model.config)[0]  # the language model's width (multimodal configs nest it)
    stats = [
        LayerStats.empty(
            D, device, sink=sink_tokens, weights=read_attention(model, arch, i) if unit else None
        )
        for i in range(len(layers))
    ]

    def hook_for(i):
        return lambda _mod, args: stats[i].add(args[0])

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
    return stats


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
    stats = calibration_stats(model, arch, tokens, batch_size=batch_size, device=device, progress=progress)
    return [s.gram for s in stats]


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
