"""The Example record every stage after the data layer consumes."""

from __future__ import annotations

import hashlib
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

OPTION_LABELS = string.ascii_uppercase

# How an open (not multiple-choice, not yes/no) answer is scored; see data.scoring.
#   vqa:     normalised exact match, VQA soft accuracy over several golds (the default)
#   relaxed: ChartQA's relaxed accuracy (numbers within 5%, text exact), best gold
#   anls:    ANLS for document VQA (1 - normalised edit distance, 0 under 0.5), best gold
METRICS: tuple[str, ...] = ("vqa", "relaxed", "anls")


def images_sha256(images: Sequence[bytes]) -> str:
    """Return sha256 over each image's 8-byte little-endian length and bytes ('' when none).

    Examples that ask several questions about one image share this key; so do rows whose image
    lists are equal. Probes group folds by it (:mod:`priorscope.engine.probes.splits`).
    """
    if not images:
        return ""
    h = hashlib.sha256()
    for data in images:
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


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
    encoded image (PNG, JPEG, ...) and is decoded lazily by :attr:`image`; ``None`` marks a
    text-only item (:attr:`has_image` is False). A row with several images (MMMU, BLINK, SEED)
    keeps the first in ``image_bytes`` and the others, in order, in ``extra_images``;
    :attr:`images` gives all of them. ``metric`` names how open answers are scored (one of
    :data:`METRICS`); multiple-choice and yes/no items ignore it.
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
    extra_images: tuple[bytes, ...] = ()
    metric: str = "vqa"

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(
                f"Expected Example.metric to be one of {', '.join(METRICS)}. Got "
                f"{self.metric!r} instead."
            )
        if self.extra_images and self.image_bytes is None:
            raise ValueError(
                f"Example {self.id!r}: expected image_bytes (the first image) when extra_images "
                "is given. Got None instead."
            )

    @property
    def is_multiple_choice(self) -> bool:
        return len(self.options) > 0

    @property
    def option_labels(self) -> tuple[str, ...]:
        return tuple(OPTION_LABELS[: len(self.options)])

    @property
    def has_image(self) -> bool:
        """Return False for a text-only item (no image at all: capture it under ``none``)."""
        return self.image_bytes is not None

    @property
    def images(self) -> tuple[bytes, ...]:
        """Return the encoded bytes of every image of the item, in order (empty: text-only)."""
        if self.image_bytes is None:
            return ()
        return (self.image_bytes, *self.extra_images)

    @property
    def images_sha256(self) -> str:
        """Return the image identity of the item: sha256 over every image's 8-byte little-endian
        length and its encoded bytes, in order ('' for a text-only item)."""
        return images_sha256(self.images)

    @property
    def image(self) -> Image.Image:
        """Return the first image decoded to RGB; decoded anew on each access (flat memory)."""
        from priorscope.engine.data.images import decode_image

        if self.image_bytes is None:
            raise ValueError(f"Example {self.id!r} has no image.")
        return decode_image(self.image_bytes, where=f"example {self.id!r}")

    def decoded_images(self) -> list[Image.Image]:
        """Return every image decoded to RGB, in order (one for a single-image item)."""
        from priorscope.engine.data.images import decode_image

        n = len(self.images)
        return [
            decode_image(data, where=f"example {self.id!r}, image {i + 1} of {n}")
            for i, data in enumerate(self.images)
        ]
