"""Shared helpers of the evaluation tests (a word vocabulary and a word-level tokenizer).

A module with its own name, not conftest.py: several test folders have a conftest.py.
"""

from __future__ import annotations

WORDS = (
    "paris rome berlin madrid london spain france italy english french red blue green cat dog bird "
    "true false journalist poet composer model teacher architect painter professor the of is a what "
    "capital country language color answer claim text consider following this or person profession "
    "in who was born city river one two three"
).split()


def word_tokenizer(bos: bool = True):
    """Whitespace word tokenizer over WORDS (+ punctuation); adds <s> in front when `bos`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + WORDS + ["?", ":", ".", ","])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
