"""A GGUF alias's tokenizer is checked against the ids the original tokenizer gives a probe text.

transformers 5.17 rebuilt Gemma-3-270M's tokenizer as single characters without BOS, so every
number measured with it was wrong (loss ~ln(vocabulary)); the alias build must refuse such a tokenizer,
a supplied one (TENSORLLM_TOKENIZER) is checked the same way, and so is an alias already cached.
"""

import pytest

from tensorllm.base.errors import UserError
from tensorllm.models import aliases
from tensorllm.models.io import load_model


class _Tok:
    def __init__(self, ids):
        self.ids = list(ids)

    def __call__(self, text):
        return {"input_ids": self.ids}


GEMMA = aliases.ALIASES["gemma3-270m"]
CHARS = _Tok(236743 + i for i in range(len(aliases.PROBE_TEXT)))  # one id per character, no BOS


@pytest.mark.parametrize("name", ["gemma3-270m", "smollm2-135m"])
def test_probe_accepts_the_original_ids(name):
    alias = aliases.ALIASES[name]
    assert aliases.tokenizer_mismatch(alias, _Tok(alias.probe_ids)) is None


def test_probe_refuses_a_character_tokenizer():
    assert aliases.tokenizer_mismatch(GEMMA, CHARS) == f"{aliases.PROBE_TEXT!r} -> 24 tokens, expected 6"


def test_a_wrong_rebuild_is_refused(monkeypatch, tmp_path):
    import transformers

    monkeypatch.delenv("TENSORLLM_TOKENIZER", raising=False)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: CHARS)
    with pytest.raises(UserError, match=r"rebuilt gemma3-270m's tokenizer from its GGUF wrongly.*TOKENIZER"):
        aliases.load_checked_tokenizer(GEMMA, tmp_path)


def test_a_supplied_folder_without_a_tokenizer_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("TENSORLLM_TOKENIZER", str(tmp_path))
    with pytest.raises(UserError, match="that folder has no tokenizer.json"):
        aliases.load_checked_tokenizer(GEMMA, tmp_path)


def test_a_supplied_wrong_tokenizer_is_refused(monkeypatch, tmp_path, tiny):
    tiny.tokenizer().save_pretrained(tmp_path / "tok")
    monkeypatch.setenv("TENSORLLM_TOKENIZER", str(tmp_path / "tok"))
    with pytest.raises(UserError, match=r"TENSORLLM_TOKENIZER=.* is not gemma3-270m's tokenizer"):
        aliases.load_checked_tokenizer(GEMMA, tmp_path)


def test_a_supplied_correct_tokenizer_is_used(monkeypatch, tmp_path, smollm2):
    smollm2.tokenizer.save_pretrained(tmp_path / "tok")
    monkeypatch.setenv("TENSORLLM_TOKENIZER", str(tmp_path / "tok"))
    tok = aliases.load_checked_tokenizer(aliases.ALIASES["smollm2-135m"], tmp_path / "no-gguf-here")
    assert tuple(tok(aliases.PROBE_TEXT)["input_ids"]) == aliases.ALIASES["smollm2-135m"].probe_ids


def test_a_cached_alias_with_a_wrong_tokenizer_is_refused_on_load(monkeypatch, tmp_path, tiny):
    monkeypatch.setenv("TENSORLLM_CACHE", str(tmp_path / "cache"))
    tiny.save(tmp_path / "cache" / "models" / "smollm2-135m")  # what an older tensorllm might have left
    with pytest.raises(UserError, match=r"the cached smollm2-135m in .* has a wrong tokenizer .*delete"):
        load_model("smollm2-135m")


@pytest.mark.parametrize("name", ["gemma3-270m", "smollm2-135m"])
def test_probe_matches_the_cached_tokenizer(name):
    path = aliases.alias_dir(name)
    if not (path / "tokenizer.json").exists():
        pytest.skip(f"{name} is not cached here")
    from transformers import AutoTokenizer

    assert aliases.tokenizer_mismatch(aliases.ALIASES[name], AutoTokenizer.from_pretrained(path)) is None
