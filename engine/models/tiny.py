"""Tiny randomly initialised models of every supported family, for tests and examples.

Each builder makes a real transformers model from a config written here (2 decoder layers,
d_model 64, a 2-layer vision tower), a word-level tokenizer over the synthetic benchmark's
vocabulary and the family's real processor class, and saves all of it with ``save_pretrained``
so that :func:`priorscope.engine.models.load_model` exercises the real loading path.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from priorscope.engine.errors import did_you_mean
from priorscope.engine.models.llava import LLAVA_CHAT_TEMPLATE
from priorscope.engine.models.qwen2_vl import QWEN_CHAT_TEMPLATE, QWEN_SPECIAL_TOKENS
from priorscope.engine.models.wordlevel import make_tokenizer

D_MODEL = 64
NUM_LAYERS = 2
# Tiny images: Qwen models see 56x56 (4 merged tokens), LLaVA 28x28 (4 patch tokens).
QWEN_PIXELS = 56 * 56
CLIP_SIZE = 28
LLAVA_SPECIAL_TOKENS = ("<s>", "</s>", "<unk>", "<pad>", "<image>")


def _synth_words() -> tuple[str, ...]:
    from priorscope.engine.data.synth import VOCABULARY

    return VOCABULARY


def _text_kwargs(vocab_size: int) -> dict[str, Any]:
    return dict(
        vocab_size=vocab_size,
        hidden_size=D_MODEL,
        intermediate_size=128,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
    )


def qwen_tokenizer(words: tuple[str, ...]) -> Any:
    """Return a word-level tokenizer with Qwen's chat and vision special tokens."""
    return make_tokenizer(
        QWEN_SPECIAL_TOKENS,
        words,
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        eos_token="<|im_end|>",
    )


def _qwen_token_ids(tok: Any) -> dict[str, Any]:
    ids = tok.convert_tokens_to_ids
    return dict(
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )


def _qwen_text_config(tok: Any) -> dict[str, Any]:
    text = _text_kwargs(len(tok))
    # head_dim 16: the three M-RoPE sections (temporal, height, width) must sum to head_dim / 2.
    text["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "mrope_section": [2, 3, 3],
    }
    text.update(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    return text


def _build_qwen2_5_vl(out: Path) -> tuple[Any, Any]:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    from priorscope.engine.models.qwen2_5_vl import image_only_qwen2_5_vl_processor

    tok = qwen_tokenizer(_synth_words())
    config = Qwen2_5_VLConfig(
        text_config=_qwen_text_config(tok),
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=D_MODEL,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=56,
            fullatt_block_indexes=[1],
        ),
        **_qwen_token_ids(tok),
    )
    improc = Qwen2VLImageProcessorPil(min_pixels=QWEN_PIXELS, max_pixels=QWEN_PIXELS)
    processor = image_only_qwen2_5_vl_processor()(
        image_processor=improc, tokenizer=tok, chat_template=QWEN_CHAT_TEMPLATE
    )
    return Qwen2_5_VLForConditionalGeneration(config), processor


def _build_qwen2_vl(out: Path) -> tuple[Any, Any]:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    from priorscope.engine.models.qwen2_vl import image_only_qwen2_vl_processor

    tok = qwen_tokenizer(_synth_words())
    config = Qwen2VLConfig(
        text_config=_qwen_text_config(tok),
        vision_config=dict(
            depth=2,
            embed_dim=32,
            hidden_size=D_MODEL,
            mlp_ratio=2,
            num_heads=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        **_qwen_token_ids(tok),
    )
    improc = Qwen2VLImageProcessorPil(min_pixels=QWEN_PIXELS, max_pixels=QWEN_PIXELS)
    processor = image_only_qwen2_vl_processor()(
        image_processor=improc, tokenizer=tok, chat_template=QWEN_CHAT_TEMPLATE
    )
    return Qwen2VLForConditionalGeneration(config), processor


def _llava_parts() -> tuple[Any, dict[str, Any], dict[str, Any]]:
    tok = make_tokenizer(
        LLAVA_SPECIAL_TOKENS,
        _synth_words(),
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token="</s>",
        bos_token="<s>",
        add_bos=True,
    )
    vision = dict(
        model_type="clip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=CLIP_SIZE,
        patch_size=14,
        projection_dim=32,
    )
    text = dict(
        model_type="llama",
        **_text_kwargs(len(tok)),
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return tok, vision, text


def _llava_processor_kwargs(tok: Any) -> dict[str, Any]:
    return dict(
        tokenizer=tok,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )


def _build_llava(out: Path) -> tuple[Any, Any]:
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tok, vision, text = _llava_parts()
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=(CLIP_SIZE // 14) ** 2,
        vision_feature_layer=-1,
    )
    improc = CLIPImageProcessorPil(
        size={"shortest_edge": CLIP_SIZE}, crop_size={"height": CLIP_SIZE, "width": CLIP_SIZE}
    )
    processor = LlavaProcessor(image_processor=improc, **_llava_processor_kwargs(tok))
    return LlavaForConditionalGeneration(config), processor


def _build_llava_next(out: Path) -> tuple[Any, Any]:
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextProcessor,
    )
    from transformers.models.llava_next.image_processing_pil_llava_next import (
        LlavaNextImageProcessorPil,
    )

    tok, vision, text = _llava_parts()
    pinpoints = [[CLIP_SIZE, CLIP_SIZE], [CLIP_SIZE, 2 * CLIP_SIZE], [2 * CLIP_SIZE, CLIP_SIZE]]
    config = LlavaNextConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints,
        image_seq_length=(CLIP_SIZE // 14) ** 2,
        vision_feature_layer=-1,
    )
    improc = LlavaNextImageProcessorPil(
        size={"shortest_edge": CLIP_SIZE},
        crop_size={"height": CLIP_SIZE, "width": CLIP_SIZE},
        image_grid_pinpoints=pinpoints,
    )
    processor = LlavaNextProcessor(image_processor=improc, **_llava_processor_kwargs(tok))
    return LlavaNextForConditionalGeneration(config), processor


BUILDERS: dict[str, Callable[[Path], tuple[Any, Any]]] = {
    "qwen2_5_vl": _build_qwen2_5_vl,
    "qwen2_vl": _build_qwen2_vl,
    "llava": _build_llava,
    "llava_next": _build_llava_next,
}


def build_tiny(family: str, out_dir: str | Path, *, seed: int = 0) -> Path:
    """Return the folder of a freshly saved random tiny model of ``family`` (loadable by load_model).

    The same (family, seed) gives the same weights. Families: qwen2_5_vl, qwen2_vl, llava,
    llava_next.
    """
    import torch

    if family not in BUILDERS:
        raise did_you_mean(family, tuple(BUILDERS), "tiny model family")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, processor = BUILDERS[family](out)
    model.eval()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
