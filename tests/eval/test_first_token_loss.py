"""A one-token gold answer's loss read from the generation's first-step logits
(`decoder.generate_and_score`, eval/scoring.py `one_token_answers`) is its teacher-forced loss.

On every loop (plain, static; CUDA graphs on a GPU) and on tiny families of the architecture table:
the NLL equals `sequence_nll` on prompt + target (float32), rows without a target get None, passing
targets leaves the tokens as they are without (the tokens themselves are checked against transformers'
`generate` in test_eval_batched.py), the loop asked for ran (it did not fall back to the plain one),
and EOS being forbidden at the first step does not leak into the NLL.
"""

from __future__ import annotations

import random

import pytest
import torch

from tensorllm.eval import decoder, static_decode
from tensorllm.eval.scoring import one_token_answers

FAMILIES = ["llama", "qwen3", "gemma3_text", "olmo2", "phi"]


def _case(vocab: int, seed: int = 3, n: int = 11):
    rng = random.Random(seed)
    prompts = [[rng.randrange(3, vocab) for _ in range(rng.randint(1, 30))] for _ in range(n)]
    targets = [None if k % 3 == 1 else rng.randrange(3, vocab) for k in range(n)]
    return prompts, targets


def _teacher_forced(model, prompts, targets) -> list[float | None]:
    rows = [i for i, t in enumerate(targets) if t is not None]
    got = decoder.sequence_nll(
        model,
        [prompts[i] + [targets[i]] for i in rows],
        [1] * len(rows),
        pad_id=1,
        batch_size=4,
        progress=False,
    )
    out: list[float | None] = [None] * len(prompts)
    for i, (s, c) in zip(rows, got):
        out[i] = s / c
    return out


def _check(model, paths: dict, tol: float):
    vocab = model.config.get_text_config().vocab_size
    prompts, targets = _case(vocab)
    eos = targets[0]  # a target that is also EOS: its NLL must be the model's, not -log 0 from the ban
    kw = dict(max_new_tokens=5, eos_ids=[eos], pad_id=1, batch_size=4, progress=False)
    want = _teacher_forced(model, prompts, targets)
    for name, how in paths.items():
        tokens, nll = decoder.generate_and_score(model, prompts, targets, **how, **kw)
        assert tokens == decoder.greedy_generate(model, prompts, **how, **kw), name
        assert [v is None for v in nll] == [t is None for t in targets], name
        assert [v for v in nll if v is not None] == pytest.approx([v for v in want if v is not None], abs=tol)
        fell_back = {"static": static_decode.UNSUPPORTED, "graphs": static_decode.NO_GRAPHS}.get(name, set())
        assert type(model).__qualname__ not in fell_back, f"{name}: failed, the plain loop ran"
    assert decoder.generate_and_score(model, prompts, None, **kw)[1] == [None] * len(prompts)


@pytest.mark.parametrize("family", FAMILIES)
def test_first_step_nll_is_the_teacher_forced_nll(tiny, family):
    model = tiny.model(family).float().eval()
    _check(model, {"plain": dict(static=False), "static": dict(static=True)}, 1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA-graph loop needs a GPU")
@pytest.mark.parametrize("family", ["llama", "qwen3", "olmo2"])
def test_first_step_nll_from_the_graphs_on_the_gpu(tiny, family):
    model = tiny.model(family).float().eval().cuda()
    _check(model, {"graphs": dict(graphs=True), "plain": dict(graphs=False)}, 1e-4)


def test_one_token_answers_needs_the_prompt_as_prefix():
    prompts = [[5, 6], [5, 6], [5, 6], [5, 6]]
    spans = [
        ([5, 6, 9], 2, 3),  # one token after the prompt's own tokens
        ([5, 6, 9, 8], 2, 4),  # two tokens: a pass of their own
        ([5, 7, 9], 1, 3),  # the joint tokenisation merged the prompt's last token
        ([5, 6, 9, 2], 2, 3),  # a suffix token after the answer (outside its span)
    ]
    assert one_token_answers(prompts, spans) == [9, None, None, 9]
