"""The fallback for any ``AutoModelForImageTextToText`` whose language model exposes ``.layers``."""

from __future__ import annotations

from typing import ClassVar

from priorscope.engine.models.hf import HFAdapter


class GenericAdapter(HFAdapter):
    """Any image-text-to-text checkpoint with ``model.language_model.layers`` and ``.norm``.

    Loads through AutoProcessor and AutoModelForImageTextToText; :class:`HFAdapter` raises a
    ModelError naming the missing part when the layout differs.
    """

    family: ClassVar[str] = "generic"
