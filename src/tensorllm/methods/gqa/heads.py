"""Function-preserving edits of one layer's attention weights (canonical `AttnWeights` layout).

- `permute_kv_heads`: reorder K/V heads; each K/V head's query heads move along with it
  (query head q reads K/V head q // r, r = H / Hkv).
- `transform_heads`: fold an orthogonal T per K/V head into the weights. Keys: K_j <- T K_j and
  the same T on every query head reading it (q^T k is unchanged, and RoPE is unchanged when T
  commutes with it). Values: V_j <- T V_j and O's columns of those query heads <- O T^T.
  q/k norm weights stay: T must commute with them (align.Planes.restrict), or the model changes.
- `merge_kv_heads`: each group of consecutive K/V heads becomes one head, the mean of the group;
  its key norm weight is the one its members share (a group whose members' differ is refused).
q/k norm weights (qn, kn) move with their heads like biases.
"""

from __future__ import annotations

import torch

from tensorllm.attention import AttnWeights


def _rows(t: torch.Tensor | None, heads: int) -> torch.Tensor | None:
    """(heads*d[, D]) -> (heads, d[, D])."""
    return None if t is None else t.reshape(heads, -1, *t.shape[1:])


def _flat(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.reshape(-1, *t.shape[2:])


def query_order(kv_order: list[int], heads: int, kv_heads: int) -> list[int]:
    r = heads // kv_heads
    return [j * r + t for j in kv_order for t in range(r)]


def permute_kv_heads(w: AttnWeights, kv_order: list[int]) -> AttnWeights:
    """New K/V head p is old head kv_order[p]; query heads follow their K/V head."""
    kv = torch.as_tensor(kv_order, device=w.q.device)
    qo = torch.as_tensor(query_order(kv_order, w.heads, w.kv_heads), device=w.q.device)
    H, n = w.heads, w.kv_heads
    o = w.o.reshape(w.o.shape[0], H, -1)[:, qo].reshape(w.o.shape)  # columns (D, H, d) by query head
    return w.with_(
        q=_flat(_rows(w.q, H)[qo]),
        bq=_flat(_rows(w.bq, H)[qo]) if w.bq is not None else None,
        k=_flat(_rows(w.k, n)[kv]),
        bk=_flat(_rows(w.bk, n)[kv]) if w.bk is not None else None,
        v=_flat(_rows(w.v, n)[kv]),
        bv=_flat(_rows(w.bv, n)[kv]) if w.bv is not None else None,
        qn=_flat(_rows(w.qn, H)[qo]) if w.qn is not None else None,
        kn=_flat(_rows(w.kn, n)[kv]) if w.kn is not None else None,
        o=o,
    )


def _apply_rows(T: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor | None:
    """T (n, d, d) applied to per-head rows t (n, d[, D])."""
    if t is None:
        return None
    return T @ t if t.dim() == 3 else (T @ t.unsqueeze(-1)).squeeze(-1)


def transform_heads(w: AttnWeights, tk: torch.Tensor | None, tv: torch.Tensor | None) -> AttnWeights:
    """Fold per-K/V-head orthogonal transforms tk, tv (each (Hkv, d, d) or None) into the weights."""
    H, n, d = w.heads, w.kv_heads, w.head_dim
    r = H // n
    out = {}
    if tk is not None:
        tk = tk.to(w.k.dtype)
        tq = tk.repeat_interleave(r, dim=0)  # (H, d, d): query head q uses T of K/V head q // r
        out.update(
            k=_flat(_apply_rows(tk, _rows(w.k, n))),
            bk=_flat(_apply_rows(tk, _rows(w.bk, n))),
            q=_flat(_apply_rows(tq, _rows(w.q, H))),
            bq=_flat(_apply_rows(tq, _rows(w.bq, H))),
        )
    if tv is not None:
        tv = tv.to(w.v.dtype)
        to = tv.repeat_interleave(r, dim=0)  # (H, d, d)
        o = w.o.reshape(w.o.shape[0], H, d).permute(1, 0, 2)  # (H, D, d): O_q
        o = (o @ to.transpose(1, 2)).permute(1, 0, 2).reshape(w.o.shape)  # O_q T^T
        out.update(v=_flat(_apply_rows(tv, _rows(w.v, n))), bv=_flat(_apply_rows(tv, _rows(w.bv, n))), o=o)
    return w.with_(**out)


def merge_kv_heads(w: AttnWeights, groups: int) -> AttnWeights:
    """Consecutive blocks of Hkv / groups K/V heads -> one head each (their mean)."""
    n = w.kv_heads
    m = n // groups

    def mean(t):
        return None if t is None else t.reshape(groups, m, -1, *t.shape[1:]).mean(1).reshape(-1, *t.shape[1:])

    kn = None
    if w.kn is not None:
        members = w.kn.reshape(groups, m, -1)  # (G, m, d)
        if not bool((members == members[:, :1]).all()):
            raise ValueError("a group's K/V heads have different key norm weights: no one norm for the merge")
        kn = members[:, 0].reshape(-1)  # (G*d,)
    return w.with_(k=mean(w.k), v=mean(w.v), bk=mean(w.bk), bv=mean(w.bv), kn=kn, kv_heads=groups)
