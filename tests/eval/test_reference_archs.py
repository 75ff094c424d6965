"""The reference path (eval/reference.py) on every decoder family: a loss pass started at block 1 from the
unedited model's stored block inputs equals the full pass of a model whose block 1 was edited (float32:
evaluation runs in float32 or half precision; Gemma-2's eager attention gives padded rows NaN in float64).
This covers each family's own block signature and return type, q/k norms, sliding windows, and the
per-layer arguments some forwards pass (Gemma-3's local / global rotary embeddings)."""

import pytest
import torch

from tensorllm.archs import SPECS, blocks, spec_for
from tensorllm.base.errors import UserError
from tensorllm.eval import decoder
from tensorllm.eval.items import model_kind
from tensorllm.eval.reference import Reference, ReferencePath

MODEL_TYPES = list(dict.fromkeys(t for s in SPECS for t in s.model_types))


def test_the_families_with_norms_and_windows_are_among_them():
    assert {"llama", "gemma3_text", "qwen3", "olmo2", "gemma2", "mixtral", "gpt2"} <= set(MODEL_TYPES)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_the_loss_from_block_1_is_the_full_loss(tiny, model_type):
    if model_type not in tiny.model_types:
        pytest.skip(f"no tiny {model_type} model in this transformers")
    model = tiny.model(model_type)
    try:
        kind = model_kind(model)
    except UserError as exc:  # gemma3: the multimodal wrapper is not evaluated (its text model is)
        pytest.skip(f"{model_type}: {exc}")
    if kind == "encoder":
        pytest.skip(f"{model_type} is an encoder: its masked-LM loss does not use the stored path")
    arch = spec_for(model.config)
    gen = torch.Generator().manual_seed(len(model_type))
    seqs = [torch.randint(3, 60, (n,), generator=gen).tolist() for n in (9, 14, 5, 12)]
    n_scored = [3, 4, 2, 5]
    kw = dict(pad_id=1, batch_size=3, progress=False)
    ref = Reference(blocks(model, arch))
    base = decoder.sequence_nll(
        model, seqs, n_scored, around=ReferencePath(ref, 0, None).around(4, [0, 1, 2, 3]), **kw
    )
    assert len(ref.states) == 4
    with torch.no_grad():
        for p in blocks(model, arch)[1].parameters():
            if p.ndim == 2:
                p.mul_(1.5)
    fast = decoder.sequence_nll(
        model, seqs, n_scored, around=ReferencePath(ref, 0, 1).around(4, [0, 1, 2, 3]), **kw
    )
    full = decoder.sequence_nll(model, seqs, n_scored, **kw)
    assert [s for s, _ in fast] == pytest.approx([s for s, _ in full], rel=1e-6), model_type
    assert max(abs(a[0] - b[0]) for a, b in zip(base, full)) > 1e-4  # the edit changed the loss
