"""Tokenizers built offline: a byte-level one for the tiny random models, word-level ones for synthetic tasks."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

# Special tokens every offline tokenizer has. Methods find thought positions by these markers.
PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SPECIALS = [PAD, BOS, EOS, IM_START, IM_END]

# A ChatML-style template for the tiny models that have one (exercises the chat-template path of every method).
CHATML_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def byte_level_tokenizer(chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """A 261-token byte-level tokenizer (5 specials + 256 bytes) that encodes any text losslessly.

    Built without files or network, deterministic.
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS, padding_side="left"
    )
    fast.add_special_tokens({"additional_special_tokens": [IM_START, IM_END]})
    if chat_template:
        fast.chat_template = chat_template
    return fast


def word_level_tokenizer(words: Iterable[str], extra_specials: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over a closed vocabulary (synthetic tasks): one token per word.

    Unknown words map to `<|unk|>`. Token ids are deterministic: specials first, then words in sorted order.
    """
    specials = SPECIALS + ["<|unk|>"] + [s for s in extra_specials if s not in SPECIALS]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for w in sorted(set(words) - set(vocab)):
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # Joins words with spaces. The prefix is a character no word holds: with the usual "##", words such as "####"
    # would be read as continuation pieces and glued to their neighbour.
    tok.decoder = decoders.WordPiece(prefix="\x00", cleanup=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token="<|unk|>", padding_side="left"
    )
    extra = [s for s in specials if s not in (PAD, BOS, EOS, "<|unk|>")]
    fast.add_special_tokens({"additional_special_tokens": extra})
    return fast
