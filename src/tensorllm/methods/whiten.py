"""Data-aware Tucker and LASER (`--calibrate N`): fit the outputs on calibration text, not the weights.

For a linear map of inputs x (row vectors, second moment C = E[x^T x]), the mean squared output error of
an approximation is E||x (W - W')||^2 = ||S (W - W')||_F^2 with S^T S = C. So fitting S W instead of W,
then undoing S, minimises the error on the calibration inputs (SVD-LLM's whitening, arXiv 2403.07378):
- Tucker: mode 1 (d_model) of the layer's tensor is the input side of Q, K and V. The tensor is whitened
  there, X' = X x_1 S, HOOI fits X', and U1 = S^-1 U1' (no longer orthonormal). The O^T blocks share
  mode 1 (their output side, written into the same residual stream the input is read from), so they
  are weighted by the same second moment: one shared U1, as the paper's.
- LASER: W (out, in) of y = W x: the SVD of W S^T keeps the directions that matter on real inputs;
  W' = (W S^T)_k S^-T, whose factors are left = U_k S_k and right = V_k^T S^-T.
The statistics are one pass of the original model over `calibrate` tokens of the calibration text
(the GQA conversion's reader: `--calib-file`, or the built-in English text), before any layer changes.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from tensorllm.base.errors import UserError
from tensorllm.base.progress import track
from tensorllm.methods.gqa.calibrate import calibration_documents, chunk, token_stream
from tensorllm.tensor.multilinear import mode_dot
from tensorllm.tensor.tucker import TuckerResult

SEQ_LEN = 512  # calibration sequence length (shorter when fewer tokens are asked for)
FLOOR = 1e-6  # eigenvalues of C below FLOOR * its largest are raised to it (a rank-deficient input)


def calibration_tokens(tokenizer, n_tokens: int, calib_file: str | None) -> torch.Tensor:
    """(n_seq, seq_len) token ids: the first `n_tokens` of the calibration text."""
    return chunk(token_stream(tokenizer, calibration_documents(calib_file)), n_tokens, SEQ_LEN)


@torch.no_grad()
def input_moments(
    model: nn.Module,
    modules: dict,
    tokens: torch.Tensor,
    *,
    device,
    batch_size: int = 4,
    progress: bool = True,
) -> dict:
    """{key: E[x^T x] (in, in) float64 on `device`} of the inputs of each of `modules` {key: module}."""
    sums: dict = {}
    counts: dict = {}

    def hook_for(key):
        def hook(_mod, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).to(device, torch.float64)  # (N, in)
            if key not in sums:
                sums[key] = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=device)
                counts[key] = 0
            sums[key].addmm_(x.T, x)
            counts[key] += x.shape[0]

        return hook

    handles = [m.register_forward_pre_hook(hook_for(k)) for k, m in modules.items()]
    was_training = model.training
    model.eval()
    try:
        dev = next(model.parameters()).device
        for batch in track(list(torch.split(tokens, batch_size)), "calibrating", enabled=progress):
            model(input_ids=batch.to(dev), use_cache=False)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {k: sums[k] / counts[k] for k in sums}


def whitener(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, S^-1), S = C^{1/2} the symmetric square root (S^T S = C), eigenvalues floored at FLOOR * max."""
    c = (c + c.T) / 2
    lam, v = torch.linalg.eigh(c)  # ascending
    lam = lam.clamp_min(FLOOR * lam[-1].clamp_min(1e-300))
    root = lam.sqrt()
    return (v * root) @ v.T, (v / root) @ v.T


def whiten_tensor(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """X x_1 S: the layer's tensor with mode 1 (d_model) weighted by the input statistics."""
    return mode_dot(t, s.to(t.dtype), 0)


def unwhiten(res: TuckerResult, s_inv: torch.Tensor) -> TuckerResult:
    """The decomposition of X from that of X x_1 S: U1 <- S^-1 U1 (mode 0 must be decomposed)."""
    i = list(res.modes).index(0)
    factors = list(res.factors)
    factors[i] = s_inv.to(factors[i].dtype) @ factors[i]  # (D, R1)
    return dataclasses.replace(res, factors=factors)


def whitened_svd_factors(w: torch.Tensor, rank: int, s: torch.Tensor, s_inv: torch.Tensor):
    """(left (out, k), right (k, in)) of the rank-k map closest to W (out, in) on inputs with C = S^T S."""
    ws = w.double() @ s.to(w.device).T  # (out, in)
    u, sv, vh = torch.linalg.svd(ws, full_matrices=False)
    return u[:, :rank] * sv[:rank], vh[:rank] @ s_inv.to(w.device).T  # (out, k), (k, in)


def fit_tensor(t: torch.Tensor, pair: tuple | None) -> torch.Tensor:
    """The tensor HOOI fits: `t` itself (data-free) or whitened in mode 1 by `pair` = (S, S^-1)."""
    return t if pair is None else whiten_tensor(t, pair[0])


def attention_whiteners(model: nn.Module, arch, layers: list[int], cfg, ctx) -> dict:
    """{layer: (S, S^-1)} of each selected layer's attention input (what q/k/v read), one pass of the model
    as this step finds it over `cfg.calibrate` tokens of `cfg.calib_file` (or the built-in text)."""
    from tensorllm.archs import blocks, get_module

    if ctx.tokenizer is None:
        raise UserError("--calibrate needs the model's tokenizer (load the model with tensorllm.load_model)")
    tokens = calibration_tokens(ctx.tokenizer, cfg.calibrate, cfg.calib_file)
    path = arch.q if arch.qkv == "separate" else arch.fused
    modules = {i: get_module(blocks(model, arch)[i], path) for i in layers}
    moments = input_moments(model, modules, tokens, device=ctx.device, progress=ctx.progress)
    return {i: whitener(moments[i]) for i in layers}


def matrix_whiteners(model: nn.Module, modules: dict, cfg, ctx) -> dict:
    """{key: (S, S^-1)} of the inputs of `modules` {key: module} over `cfg.calibrate` calibration tokens."""
    if ctx.tokenizer is None:
        raise UserError("--calibrate needs the model's tokenizer (load the model with tensorllm.load_model)")
    tokens = calibration_tokens(ctx.tokenizer, cfg.calibrate, cfg.calib_file)
    moments = input_moments(model, modules, tokens, device=ctx.device, progress=ctx.progress)
    return {k: whitener(c) for k, c in moments.items()}


def weighted_matrix(w: torch.Tensor, pair: tuple | None, conv1d: bool) -> torch.Tensor:
    """The matrix whose singular values rank LASER's directions: W (out, in) itself, or W S."""
    canon = w.T if conv1d else w  # (out, in)
    return canon if pair is None else canon.double() @ pair[0].to(w.device)


def lowrank(w: torch.Tensor, rank: int, pair: tuple, conv1d: bool):
    """(approximation in w's layout and dtype, left (out, k), right (k, in)) of data-aware LASER."""
    canon = w.T if conv1d else w  # (out, in)
    left, right = whitened_svd_factors(canon, rank, *pair)
    approx = left @ right  # (out, in)
    return (approx.T if conv1d else approx).to(w.dtype), left, right
