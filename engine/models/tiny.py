"""Tiny randomly initialised models of every supported family, for tests and examples.

Each builder makes a real transformers model from a config written here (2 decoder layers,
d_model 64, a 2-layer vision tower), a word-level tokenizer over the synthetic benchmark's
vocabulary and the family's real processor class, and saves all of it with ``save_pretrained``
so that :func:`priorscope.engine.models.load_model` exercises the real loading path. The
``generic`` model is a VipLLaVA: a model_type with no family adapter, so it loads through the
generic fallback.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from priorscope.engine.errors import did_you_mean
from priorscope.engine.models.configs import QwenSizes, qwen_vl_model, qwen_vl_processor
from priorscope.engine.models.llava import LLAVA_CHAT_TEMPLATE
from priorscope.engine.models.qwen2_vl import QWEN_CHAT_TEMPLATE
from priorscope.engine.models.wordlevel import word_tokenizer

D_MODEL = 64
NUM_LAYERS = 2
# Tiny images: Qwen models see 56x56 (4 merged tokens), LLaVA 28x28 (4 patch tokens).
QWEN_IMAGE_SIZE = 56
CLIP_SIZE = 28
QWEN_SIZES = QwenSizes(
    d_model=D_MODEL,
    layers=NUM_LAYERS,
    heads=4,
    kv_heads=2,
    ffn=128,
    vision_depth=2,
    vision_width=32,
    vision_heads=2,
    window=QWEN_IMAGE_SIZE,
    fullatt_blocks=(1,),
)


def _build_qwen(family: str) -> tuple[Any, Any]:
    tok = word_tokenizer("qwen")
    processor = qwen_vl_processor(family, tok, QWEN_IMAGE_SIZE, QWEN_CHAT_TEMPLATE)
    return qwen_vl_model(family, tok, QWEN_SIZES), processor


def _llava_parts() -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Return the LLaMA-style tokenizer, the CLIP vision config and the LLaMA text config."""
    tok = word_tokenizer("llama")
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
        vocab_size=len(tok),
        hidden_size=D_MODEL,
        intermediate_size=128,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
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


def _clip_processor() -> Any:
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    return CLIPImageProcessorPil(
        size={"shortest_edge": CLIP_SIZE}, crop_size={"height": CLIP_SIZE, "width": CLIP_SIZE}
    )


def _build_llava(model_type: str) -> tuple[Any, Any]:
    """Return LLaVA-1.5 (``llava``) or its VipLLaVA variant (``vipllava``, the generic model)."""
    import transformers

    tok, vision, text = _llava_parts()
    common = dict(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=(CLIP_SIZE // 14) ** 2,
    )
    config: Any
    model: Any
    if model_type == "vipllava":
        # VipLLaVA concatenates several vision layers; a 2-layer tower offers these two.
        config = transformers.VipLlavaConfig(**common, vision_feature_layer=[-2, -1])
        model = transformers.VipLlavaForConditionalGeneration(config)
    else:
        config = transformers.LlavaConfig(**common, vision_feature_layer=-1)
        model = transformers.LlavaForConditionalGeneration(config)
    processor = transformers.LlavaProcessor(
        image_processor=_clip_processor(), **_llava_processor_kwargs(tok)
    )
    return model, processor


def _build_llava_next() -> tuple[Any, Any]:
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


BUILDERS: dict[str, Callable[[], tuple[Any, Any]]] = {
    "qwen2_5_vl": lambda: _build_qwen("qwen2_5_vl"),
    "qwen2_vl": lambda: _build_qwen("qwen2_vl"),
    "llava": lambda: _build_llava("llava"),
    "llava_next": _build_llava_next,
    "generic": lambda: _build_llava("vipllava"),
}


def build_tiny(family: str, out_dir: str | Path, *, seed: int = 0) -> Path:
    """Return the folder of a freshly saved random tiny model of ``family`` (loadable by load_model).

    The same (family, seed) gives the same weights. Families: qwen2_5_vl, qwen2_vl, llava,
    llava_next, and generic (a model type only the generic fallback adapter loads).
    """
    import torch

    if family not in BUILDERS:
        raise did_you_mean(family, tuple(BUILDERS), "tiny model family")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, processor = BUILDERS[family]()
    model.eval()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
