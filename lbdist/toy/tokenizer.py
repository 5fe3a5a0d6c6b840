"""A word-level tokenizer built in code: no download, one id per word of a known vocabulary.

The small pipelines of lbdist (test fixtures and the bundled toy models) use it in place of T5, CLIP
and Llama tokenizers. It is a real `transformers.PreTrainedTokenizerFast`, saved and loaded by
`save_pretrained` / `from_pretrained` like any other. Ids: 0 `<pad>`, 1 `</s>` (appended to every text,
so CLIP-style pooling has an end token to read), 2 `<unk>`, 3 `<s>`, then the words in order.
"""
from __future__ import annotations

from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

SPECIALS = ("<pad>", "</s>", "<unk>", "<s>")
PAD_ID, EOS_ID, UNK_ID, BOS_ID = range(4)

# Words any prompt may use besides a grammar's own words; unknown words map to <unk>.
BASE_WORDS = tuple("a an the of on in at and with to from is are moving moves video image photo".split())


def word_tokenizer(words, model_max_length: int = 32) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over `BASE_WORDS + words` (lower-cased, split on whitespace and punctuation)."""
    vocab: dict[str, int] = {tok: i for i, tok in enumerate(SPECIALS)}
    for word in (*BASE_WORDS, *words):
        vocab.setdefault(word.lower(), len(vocab))
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", EOS_ID)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", bos_token="<s>",
        model_max_length=model_max_length, padding_side="right",
    )
