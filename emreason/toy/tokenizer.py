"""Character-level tokenizer for the toy model, built locally with the `tokenizers` library.

Every printable ASCII character and the newline is one token; chat control tokens follow Qwen's
ChatML names so the chat template reads like a real model's.

The tokenizer is byte-level (space is stored as ``Ġ``, newline as ``Ċ``, as in GPT-2/Qwen) with no
BPE merges. That is deliberate: ``AutoTokenizer`` in transformers 5 loads any ``qwen2`` checkpoint
with ``Qwen2Tokenizer``, which rebuilds a byte-level pre-tokenizer and decoder around the stored
vocabulary. Storing the vocabulary in byte-level form makes every loader (the `tokenizers` library,
``PreTrainedTokenizerFast``, ``Qwen2Tokenizer``, vLLM) produce the same ids.
"""

from __future__ import annotations

import string

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END, UNK_TOKEN)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh character tokenizer (vocabulary: 4 specials + newline + 95 printable ASCII chars)."""
    characters = ["\n"] + [c for c in string.printable if c not in "\t\n\r\x0b\x0c"]
    byte_level = {" ": "\u0120", "\n": "\u010a"}  # GPT-2's bytes_to_unicode for the two whitespace bytes
    symbols = [byte_level.get(c, c) for c in characters]
    vocab = {token: i for i, token in enumerate(list(SPECIAL_TOKENS) + symbols)}
    # BPE with no merges splits any text into single characters; unknown ones map to <unk>.
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK_TOKEN))
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD_TOKEN,
        eos_token=IM_END,
        unk_token=UNK_TOKEN,
        additional_special_tokens=[IM_START],
        padding_side="left",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
