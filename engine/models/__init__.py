"""VLM adapters: one file per transformers family, one registry, and the built-in organism.

``load_model("builtin:organism")`` loads the tiny Qwen2.5-VL trained by priorscope on its
synthetic benchmark; ``load_model(folder)`` loads any supported checkpoint without network.
"""

from __future__ import annotations

from priorscope.engine.models.base import (
    TOKEN_IMAGE,
    TOKEN_PAD,
    TOKEN_SPECIAL,
    TOKEN_TEXT,
    VLMAdapter,
)
from priorscope.engine.models.hf import HFAdapter, user_text
from priorscope.engine.models.registry import (
    BUILTINS,
    FAMILIES,
    ORGANISM_DIR,
    adapter_class,
    detect_family,
    load_model,
)

__all__ = [
    "BUILTINS",
    "FAMILIES",
    "ORGANISM_DIR",
    "TOKEN_IMAGE",
    "TOKEN_PAD",
    "TOKEN_SPECIAL",
    "TOKEN_TEXT",
    "HFAdapter",
    "VLMAdapter",
    "adapter_class",
    "detect_family",
    "load_model",
    "user_text",
]
