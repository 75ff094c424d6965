"""The static-cache greedy decode (eval/static_decode.py) gives the plain loop's tokens, and those of
`model.generate(do_sample=False)` one prompt at a time.

Tiny random models built from configs: the eval Llama and GPT-2 (learned absolute positions), and the
architecture table's tiny families (windows, soft-capping, MoE, q/k norms, partial RoPE, Falcon).
Left padding with very different prompt lengths (1 to 40 tokens), batch sizes 1, 3 and 64, rows that
hit EOS at different steps, every row stopping early (the check every few steps), min_new_tokens > 1.
The static path must really run: the plain loop is made to fail while it is asked for. The real
SmolLM2-135M on 20 WikidataQA prompts closes it.
"""

from __future__ import annotations

import random

import pytest
import torch

from tensorllm.eval import decoder, fast_paths, get_task, load_task, select, static_decode
from tensorllm.eval.scoring import _decoder_ids
from tensorllm.eval.tokens import encode
from tensorllm.models.decode_attention import NAMES

FAMILIES = ["qwen3", "mixtral", "gemma2", "gemma3_text", "olmo2", "granite", "phi", "falcon", "falcon-mq"]


def _prompts(vocab: int, n: int = 12, seed: int = 0, bos: int | None = None) -> list[list[int]]:
    rng = random.Random(seed)
    lengths = [1, 40, 2, 17, 5, 33] + [rng.randint(1, 40) for _ in range(n - 6)]
    head = [] if bos is None else [bos]
    return [head + [rng.randrange(3, vocab) for _ in range(k)] for k in lengths[:n]]


def _static_only(monkeypatch):
    """Make the plain loop fail, so a silent fallback shows."""

    def refuse(*a, **kw):
        raise AssertionError("the plain loop ran where the static one was asked for")

    monkeypatch.setattr(decoder, "_plain_greedy", refuse)


def _both(model, prompts, monkeypatch, **kw) -> tuple[list[list[int]], list[list[int]]]:
    """(plain loop's tokens, static loop's tokens), same arguments."""
    kw.setdefault("progress", False)
    plain = decoder.greedy_generate(model, prompts, static=False, **kw)
    with monkeypatch.context() as m:
        _static_only(m)
        static = decoder.greedy_generate(model, prompts, static=True, **kw)
    assert type(model).__qualname__ not in static_decode.UNSUPPORTED
    return plain, static


@torch.no_grad()
def _generate_alone(model, prompt, *, max_new_tokens, eos_ids, pad_id, min_new_tokens=1) -> list[int]:
    out = model.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones((1, len(prompt)), dtype=torch.long),
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        do_sample=False,
        eos_token_id=eos_ids if eos_ids else None,
        pad_token_id=pad_id,
    )
    new = out[0, len(prompt) :].tolist()
    cut = next((j + 1 for j, t in enumerate(new) if t in eos_ids), len(new))
    return new[:cut]


def _eos_that_stops_some(model, prompts, step: int, pad_id: int = 0) -> int:
    """A token the model really produces near `step`: as EOS, some rows stop early and some do not."""
    free = decoder.greedy_generate(
        model, prompts, max_new_tokens=8, eos_ids=[], pad_id=pad_id, progress=False
    )
    for eos in dict.fromkeys(row[s] for s in (step, step + 1, step + 2) for row in free):
        cut = decoder.greedy_generate(
            model, prompts, max_new_tokens=8, eos_ids=[eos], pad_id=pad_id, progress=False
        )
        if len({len(row) for row in cut}) > 1 and max(len(row) for row in cut) == 8:
            return eos
    raise AssertionError("no token stops some rows and not others")


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_gpt2"])
@pytest.mark.parametrize("batch_size", [1, 3, 64])
@pytest.mark.parametrize("eos_step", [1, 4])
def test_static_equals_plain_and_generate(request, monkeypatch, which, batch_size, eos_step):
    model, tok = request.getfixturevalue(which)
    prompts = _prompts(len(tok), bos=1 if which == "tiny_llama" else None)
    eos = _eos_that_stops_some(model, prompts, eos_step)
    kw = dict(max_new_tokens=8, eos_ids=[eos], pad_id=0, batch_size=batch_size)
    plain, static = _both(model, prompts, monkeypatch, **kw)
    assert static == plain
    for p, got in zip(prompts, static):
        assert got == _generate_alone(model, p, max_new_tokens=8, eos_ids=[eos], pad_id=0)
    lengths = {len(g) for g in static}
    assert len(lengths) > 1 and max(lengths) == 8  # some rows stop early, some run to the end


@pytest.mark.parametrize("min_new_tokens", [1, 3])
def test_every_row_stops_early_and_min_new_tokens(tiny_llama, monkeypatch, min_new_tokens):
    """Nearly every token is EOS: all rows end at step min_new_tokens, long before max_new_tokens
    (the loop stops at its next check); EOS stays forbidden before min_new_tokens."""
    model, tok = tiny_llama
    prompts = _prompts(len(tok), n=7, seed=1, bos=1)
    eos_ids = list(range(2, len(tok) - 3))
    kw = dict(max_new_tokens=20, eos_ids=eos_ids, pad_id=0, min_new_tokens=min_new_tokens, batch_size=4)
    plain, static = _both(model, prompts, monkeypatch, **kw)
    assert static == plain
    for p, got in zip(prompts, static):
        assert got == _generate_alone(
            model, p, max_new_tokens=20, eos_ids=eos_ids, pad_id=0, **{"min_new_tokens": min_new_tokens}
        )
    assert max(len(g) for g in static) <= 12 and all(g[-1] in eos_ids for g in static)
    assert min(len(g) for g in static) == min_new_tokens + 1


def test_no_eos_at_all(tiny_gpt2, monkeypatch):
    model, tok = tiny_gpt2
    prompts = _prompts(len(tok), n=5, seed=2)
    plain, static = _both(model, prompts, monkeypatch, max_new_tokens=6, eos_ids=[], pad_id=0, batch_size=5)
    assert static == plain and all(len(g) == 6 for g in static)


@pytest.mark.parametrize("family", FAMILIES)
def test_static_equals_plain_on_the_tiny_families(tiny, monkeypatch, family):
    model = tiny.model(family)
    vocab = model.config.get_text_config().vocab_size
    prompts = _prompts(vocab, n=9, seed=3)
    eos = _eos_that_stops_some(model, prompts, 2, pad_id=1)
    kw = dict(max_new_tokens=8, eos_ids=[eos], pad_id=1, batch_size=4)
    plain, static = _both(model, prompts, monkeypatch, **kw)
    assert static == plain
    for p, got in zip(prompts[:3], static[:3]):
        assert got == _generate_alone(model, p, max_new_tokens=8, eos_ids=[eos], pad_id=1)


def test_a_model_the_static_path_fails_on_falls_back(tiny_llama, monkeypatch):
    """An exception in the static path on the first batch: the plain loop, remembered for the class."""
    model, tok = tiny_llama
    prompts = _prompts(len(tok), n=6, seed=4, bos=1)
    want = decoder.greedy_generate(model, prompts, max_new_tokens=5, eos_ids=[2], pad_id=0, progress=False)

    def unsupported(*a, **kw):
        raise NotImplementedError("no static cache here")

    monkeypatch.setattr(static_decode, "make_static_cache", unsupported)
    monkeypatch.setattr(static_decode, "UNSUPPORTED", set())
    got = decoder.greedy_generate(
        model, prompts, max_new_tokens=5, eos_ids=[2], pad_id=0, batch_size=2, progress=False, static=True
    )
    assert got == want and type(model).__qualname__ in static_decode.UNSUPPORTED
    assert not decoder._use_static(model, torch.device("cuda"), True)


def test_the_plain_loop_is_the_default(tiny_llama):
    model, _ = tiny_llama
    for device in ("cpu", "cuda"):
        assert not decoder._use_static(model, torch.device(device), None)
        assert decoder._use_static(model, torch.device(device), True)


@pytest.mark.real
def test_real_smollm2_on_20_wikidata_prompts(smollm2, bigbench, monkeypatch):
    model, tok = smollm2
    items = select(load_task(get_task("wikidata_qa")).examples, "all", 20)
    prompts = encode(tok, [e.prompt for e in items])
    eos_ids, pad = _decoder_ids(model, tok)
    kw = dict(max_new_tokens=10, eos_ids=eos_ids, pad_id=pad, batch_size=10)
    plain, static = _both(model, prompts, monkeypatch, **kw)
    assert static == plain
    for p, got in list(zip(prompts, static))[::4]:  # 5 of them one at a time (2 shared CPU cores)
        assert got == _generate_alone(model, p, max_new_tokens=10, eos_ids=eos_ids, pad_id=pad)
    assert len({len(p) for p in prompts}) > 1  # left padding in every batch


def test_buckets_add_at_most_a_quarter_and_few_shapes():
    for n in range(1, 5000):
        b = static_decode.bucket_rows(n)
        assert n <= b <= max(n, 1.25 * n) and static_decode.bucket_rows(b) == b
        w = static_decode.bucket_width(n)
        assert n <= w < n + static_decode.WIDTH_BUCKET and w % static_decode.WIDTH_BUCKET == 0
    rows = [static_decode.bucket_rows(n) for n in (3, 237, 714, 948, 1024, 2048)]
    assert rows == [3, 256, 768, 1024, 1024, 2048]
    assert len({static_decode.bucket_rows(n) for n in range(1025, 2049)}) == 4  # a quarter octave each


@pytest.mark.parametrize("family", ["llama", "qwen3", "olmo2", "phi"])
def test_a_padded_batch_gives_each_row_its_tokens(tiny, family):
    """The graphs run batches grown to their bucket (more left padding, copies of the last row): every
    real row must get the tokens it gets unpadded (float32, so equal to the last token)."""
    model = tiny.model(family)
    vocab = model.config.get_text_config().vocab_size
    prompts = _prompts(vocab, n=5, seed=7)
    ids, mask, pos = decoder.left_pad(prompts, 1, torch.device("cpu"))
    kw = dict(max_new_tokens=6, eos=torch.tensor([], dtype=torch.long), pad_id=1, min_new_tokens=1)
    names = dict(params=decoder.forward_params(model), cache_arg=decoder.cache_argument(model))
    alone = static_decode.static_greedy(model, ids, mask, pos, **kw, **names)
    wide = static_decode.pad_batch(ids, mask, pos, 8, ids.shape[1] + 11, 1)
    assert wide[0].shape == (8, ids.shape[1] + 11) and torch.equal(wide[0][5:], wide[0][4:5].expand(3, -1))
    padded = static_decode.static_greedy(model, *wide, **kw, **names)
    assert padded[:5] == alone and padded[5:] == [alone[4]] * 3


def test_graphs_only_on_a_gpu(tiny_llama):
    model, _ = tiny_llama
    assert not decoder._use_graphs(model, torch.device("cpu"), None)
    assert not decoder._use_graphs(model, torch.device("cpu"), True)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


def _graphs_only(monkeypatch):
    """Make both eager loops fail, so a silent fallback from the graphs shows."""

    def refuse(*a, **kw):
        raise AssertionError("an eager loop ran where the CUDA graphs were asked for")

    monkeypatch.setattr(decoder, "_plain_greedy", refuse)
    monkeypatch.setattr(static_decode, "static_greedy", refuse)


# captured on an H200 with transformers 5.17 (2026-12-02); the others' forwards cannot be captured there
# (MoE routing, sliding-window caches, Falcon) and fall back to the eager loops, with the same tokens
CAPTURED = {"llama", "qwen3", "olmo2", "granite", "phi"}


@CUDA
@pytest.mark.parametrize("family", ["llama", *FAMILIES])
def test_graphs_equal_plain_on_the_gpu(tiny, monkeypatch, family):
    model = tiny.model(family).cuda()
    vocab = model.config.get_text_config().vocab_size
    prompts = _prompts(vocab, n=9, seed=5)
    kw = dict(max_new_tokens=8, eos_ids=[_eos_that_stops_some(model, prompts, 2, pad_id=1)], pad_id=1)
    plain = decoder.greedy_generate(model, prompts, batch_size=4, progress=False, graphs=False, **kw)
    with monkeypatch.context() as m:
        if family in CAPTURED:
            _graphs_only(m)
        got = decoder.greedy_generate(model, prompts, batch_size=4, progress=False, **kw)
        again = decoder.greedy_generate(model, prompts, batch_size=4, progress=False, **kw)  # replays only
    assert got == plain and again == plain
    captured = type(model).__qualname__ not in static_decode.NO_GRAPHS
    assert captured == (family in CAPTURED)
    assert not captured or static_decode._CAPTURES[model]


@CUDA
def test_captures_follow_in_place_edits_and_drop_moved_parameters(tiny, monkeypatch):
    """A search edits weights in place between calls: the replays must see the new values; a parameter
    replaced by a new tensor must not be read from its old storage."""
    model = tiny.model("llama").cuda()
    prompts = _prompts(model.config.vocab_size, n=8, seed=6)
    kw = dict(max_new_tokens=8, eos_ids=[], pad_id=1, batch_size=8, progress=False)
    first = decoder.greedy_generate(model, prompts, **kw)
    layer = model.model.layers[0]
    with torch.no_grad():
        layer.self_attn.q_proj.weight.mul_(3.0)
        layer.mlp.up_proj.weight.mul_(-2.0)
    edited = decoder.greedy_generate(model, prompts, **kw)
    assert edited == decoder.greedy_generate(model, prompts, graphs=False, **kw) and edited != first
    layer.mlp.up_proj.weight = torch.nn.Parameter(layer.mlp.up_proj.weight.detach() * 0.25)
    moved = decoder.greedy_generate(model, prompts, **kw)
    assert moved == decoder.greedy_generate(model, prompts, graphs=False, **kw) and moved != edited


@CUDA
def test_batches_of_one_bucket_share_one_capture(tiny, monkeypatch):
    """Widths 9..16 in two batches of 4 rows (widths 16 and 12): one bucket, (4, 16), so one capture."""
    model = tiny.model("llama").cuda()
    rng = random.Random(8)
    vocab = model.config.vocab_size
    prompts = [[rng.randrange(3, vocab) for _ in range(k)] for k in (16, 15, 14, 12, 11, 9, 10, 13)]
    kw = dict(max_new_tokens=5, eos_ids=[], pad_id=1, batch_size=4, progress=False)
    plain = decoder.greedy_generate(model, prompts, graphs=False, **kw)
    static_decode._CAPTURES.pop(model, None)
    with monkeypatch.context() as m:
        _graphs_only(m)
        got = decoder.greedy_generate(model, prompts, **kw)
    assert got == plain
    assert list(static_decode._CAPTURES[model]) == [(4, 16, 5, NAMES[fast_paths.kernel_for(model)], True)]


@CUDA
def test_captures_stay_within_their_memory_share(tiny, monkeypatch):
    """With room for one capture only, a second shape replaces the first (least recently used)."""
    model = tiny.model("llama").cuda()
    prompts = _prompts(model.config.vocab_size, n=8, seed=9)
    kw = dict(max_new_tokens=4, eos_ids=[], pad_id=1, progress=False)
    static_decode._CAPTURES.pop(model, None)
    decoder.greedy_generate(model, prompts, batch_size=8, **kw)
    first = static_decode._CAPTURES[model]
    assert len(first) == 1 and next(iter(first.values())).nbytes > 0
    monkeypatch.setattr(static_decode, "CAPTURE_MEMORY_FRACTION", 1e-12)
    got = decoder.greedy_generate(model, prompts, batch_size=4, **kw)
    last = decoder.length_batches([len(p) for p in prompts], 4, 65536)[-1]
    width = static_decode.bucket_width(max(len(prompts[i]) for i in last))
    shape = (static_decode.bucket_rows(len(last)), width, 4, NAMES[fast_paths.kernel_for(model)], True)
    assert list(static_decode._CAPTURES[model]) == [shape]
    assert got == decoder.greedy_generate(model, prompts, batch_size=4, graphs=False, **kw)
