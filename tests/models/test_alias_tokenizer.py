"""A GGUF alias's rebuilt tokenizer is checked against the ids the original tokenizer gives a probe text.

transformers 5.17 rebuilt Gemma-3-270M's tokenizer as single characters without BOS, so every
number measured with it was wrong (loss ~ln(vocabulary)); the alias build must refuse such a tokenizer.
"""

import pytest

from tensorllm.base.errors import UserError
from tensorllm.models import aliases


class _Tok:
    def __init__(self, ids):
        self.ids = list(ids)

    def __call__(self, text):
        return {"input_ids": self.ids}


@pytest.mark.parametrize("name", ["gemma3-270m", "smollm2-135m"])
def test_probe_accepts_the_original_ids(name):
    alias = aliases.ALIASES[name]
    aliases.check_tokenizer(alias, _Tok(alias.probe_ids))


def test_probe_refuses_a_character_tokenizer():
    alias = aliases.ALIASES["gemma3-270m"]
    chars = [236743 + i for i in range(len(aliases.PROBE_TEXT))]  # one id per character, no BOS
    with pytest.raises(UserError, match="rebuilt gemma3-270m's tokenizer"):
        aliases.check_tokenizer(alias, _Tok(chars))


@pytest.mark.parametrize("name", ["gemma3-270m", "smollm2-135m"])
def test_probe_matches_the_cached_tokenizer(name):
    path = aliases.alias_dir(name)
    if not (path / "tokenizer.json").exists():
        pytest.skip(f"{name} is not cached here")
    from transformers import AutoTokenizer

    aliases.check_tokenizer(aliases.ALIASES[name], AutoTokenizer.from_pretrained(path))
