"""Word-level tokenizers for the tiny test models, the model organism and the benchmarks.

A word-level vocabulary keeps the embedding table of a tiny model small and makes every answer
word exactly one token, so candidate log-probs and the unembedding rows are unambiguous. The
tokenizer is a real ``tokenizers`` object wrapped in transformers' fast-tokenizer backend, so it
saves and loads through ``save_pretrained``/``AutoTokenizer`` like any checkpoint's tokenizer.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Sequence
from typing import Any

# Words of the prompt boilerplate that every family's template and instruction uses.
PROMPT_WORDS: tuple[str, ...] = (
    "answer",
    "the",
    "question",
    "using",
    "a",
    "single",
    "word",
    "or",
    "phrase",
    "with",
    "option",
    "s",
    "letter",
    "from",
    "given",
    "choices",
    "directly",
    "hint",
    "user",
    "assistant",
    "system",
    "you",
    "are",
    "helpful",
    "image",
    "USER",
    "ASSISTANT",
    "Answer",
    "Hint",
    "Question",
    "options",
    "Options",
    "is",
    "there",
    "what",
    "how",
    "many",
)
PUNCTUATION: tuple[str, ...] = tuple(string.punctuation)
LETTERS: tuple[str, ...] = tuple(string.ascii_uppercase) + tuple(string.ascii_lowercase)
DIGITS: tuple[str, ...] = tuple(string.digits)

# Qwen2-VL / Qwen2.5-VL chat and vision tokens (the organism and the Qwen tiny models).
QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# LLaMA-style tokens of the LLaVA tiny models (which prepend BOS like LLaMA's tokenizer).
LLAMA_SPECIAL_TOKENS: tuple[str, ...] = ("<s>", "</s>", "<unk>", "<pad>", "<image>")
# style -> (special tokens, make_tokenizer keyword arguments)
STYLES: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "qwen": (
        QWEN_SPECIAL_TOKENS,
        dict(pad_token="<|endoftext|>", unk_token="<unk>", eos_token="<|im_end|>"),
    ),
    "llama": (
        LLAMA_SPECIAL_TOKENS,
        dict(pad_token="<pad>", unk_token="<unk>", eos_token="</s>", bos_token="<s>", add_bos=True),
    ),
}


def build_vocab(special_tokens: Sequence[str], words: Iterable[str]) -> dict[str, int]:
    """Return token -> id: the special tokens first (ids 0..), then unique words in order.

    Each word is added as given and capitalised, so a sentence-initial word is not unknown.
    """
    vocab: dict[str, int] = {}
    for token in special_tokens:
        vocab.setdefault(token, len(vocab))
    pool = list(words) + list(PROMPT_WORDS) + list(PUNCTUATION) + list(LETTERS) + list(DIGITS)
    for word in pool:
        for form in (word, word[:1].upper() + word[1:]):
            if form and form not in vocab:
                vocab[form] = len(vocab)
    return vocab


def make_tokenizer(
    special_tokens: Sequence[str],
    words: Iterable[str],
    *,
    pad_token: str,
    unk_token: str,
    eos_token: str,
    bos_token: str | None = None,
    add_bos: bool = False,
    extra: dict[str, Any] | None = None,
) -> Any:
    """Return a left-padding word-level ``PreTrainedTokenizerFast`` over the given words.

    Words split on whitespace and punctuation (``\\w+|[^\\w\\s]+``); the special tokens are
    matched before splitting. ``padding_side`` is passed to the constructor because an attribute
    set afterwards is not written by ``save_pretrained``.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = list(dict.fromkeys([pad_token, unk_token, eos_token, *special_tokens]))
    if bos_token is not None and bos_token not in specials:
        specials.append(bos_token)
    vocab = build_vocab(specials, words)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk_token))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(specials)
    if add_bos and bos_token is not None:
        # LLaMA-style tokenizers prepend BOS; the LLaVA tiny models mimic that.
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos_token} $A",
            pair=f"{bos_token} $A $B",
            special_tokens=[(bos_token, vocab[bos_token])],
        )
    kwargs: dict[str, Any] = dict(
        tokenizer_object=backend,
        pad_token=pad_token,
        unk_token=unk_token,
        eos_token=eos_token,
        padding_side="left",
    )
    if bos_token is not None:
        kwargs["bos_token"] = bos_token
    kwargs.update(extra or {})
    return PreTrainedTokenizerFast(**kwargs)


def word_tokenizer(style: str, words: Iterable[str] | None = None) -> Any:
    """Return the word-level tokenizer of a chat ``style`` ('qwen' or 'llama') over ``words``.

    ``words`` defaults to the synthetic benchmark's vocabulary. This is the one factory the tiny
    models, the organism and the benchmarks share: the same style and words give the same ids.
    """
    from priorscope.engine.errors import did_you_mean

    if style not in STYLES:
        raise did_you_mean(style, tuple(STYLES), "tokenizer style")
    if words is None:
        from priorscope.engine.data.synth import VOCABULARY

        words = VOCABULARY
    special, kwargs = STYLES[style]
    return make_tokenizer(special, words, **kwargs)
