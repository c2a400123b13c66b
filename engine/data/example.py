"""The Example record every stage after the data layer consumes."""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

OPTION_LABELS = string.ascii_uppercase


@dataclass(frozen=True)
class SourceRef:
    """Where an Example came from: the file, its format, and the 0-based data row in it."""

    path: str
    format: str
    row: int


@dataclass(frozen=True)
class Example:
    """One benchmark item.

    ``options`` are the option texts in order; their labels are A, B, C, ... by position.
    ``answers`` are the gold answers: the option label for multiple choice, otherwise one or
    several reference strings (several for VQA-style soft accuracy). ``image_bytes`` holds the
    encoded image (PNG, JPEG, ...) and is decoded lazily by :attr:`image`.
    """

    id: str
    question: str
    answers: tuple[str, ...]
    image_bytes: bytes | None = None
    options: tuple[str, ...] = ()
    hint: str = ""
    category: str = ""
    benchmark: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    source: SourceRef | None = None

    @property
    def is_multiple_choice(self) -> bool:
        return len(self.options) > 0

    @property
    def option_labels(self) -> tuple[str, ...]:
        return tuple(OPTION_LABELS[: len(self.options)])

    @property
    def image(self) -> Image.Image:
        """Return the image decoded to RGB; decoded anew on each access to keep memory flat."""
        from priorscope.engine.data.images import decode_image

        if self.image_bytes is None:
            raise ValueError(f"Example {self.id!r} has no image.")
        return decode_image(self.image_bytes, where=f"example {self.id!r}")
