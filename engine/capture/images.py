"""The images of every condition for one batch of examples, blurred on the device.

A row's input under one condition is a single image, a tuple of images (a row with several
images: MMMU, BLINK, SEED) or None (no image); :meth:`VLMAdapter.encode` takes each of these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from priorscope.engine.conditions import Condition, kernel_errors
from priorscope.engine.data.example import Example
from priorscope.engine.errors import ModelError

# What one row is given under one condition: an image, several images in order, or none.
RowImages = Image.Image | tuple[Image.Image, ...] | None


def clean_input(example: Example) -> RowImages:
    """Return the clean input of one row: its image, a tuple of its images, or None."""
    if not example.has_image:
        return None
    if len(example.images) == 1:
        return example.image
    return tuple(example.decoded_images())


def condition_images(
    examples: Sequence[Example], conditions: Sequence[Condition], device: torch.device
) -> dict[str, list[RowImages]]:
    """Return, per condition name, the input of each example (see :data:`RowImages`).

    Every image of every row goes through the whole ladder (every blur level and ``total``):
    one ``blur_ladder`` call on ``device`` per image size in the batch (one call for a batch
    of single-image rows, which share their size). Results are uint8 like the clean image, so
    each condition is itself an image. A batch of text-only examples gets None under every
    condition; a mixed batch is refused.
    """
    out: dict[str, list[RowImages]] = {}
    with_image = [ex.has_image for ex in examples]
    if not any(with_image):  # text-only: capture marks every condition but 'none' void
        return {c.name: [None] * len(examples) for c in conditions}
    if not all(with_image):
        raise ModelError(
            "Expected a batch of text-only rows or of rows with images, never both (store order "
            f"groups them apart). Got {[ex.id for ex in examples]} mixed; this is a bug."
        )
    clean = [[ex.image] if len(ex.images) == 1 else ex.decoded_images() for ex in examples]
    laddered = [c for c in conditions if c.kind in ("blur", "total")]
    blurred = _ladder(clean, laddered, device) if laddered else {}
    for cond in conditions:
        if cond.kind == "clean":
            out[cond.name] = [_row_input(imgs) for imgs in clean]
        elif cond.kind == "none":
            out[cond.name] = [None] * len(examples)
        else:
            out[cond.name] = [_row_input(imgs) for imgs in blurred[cond.name]]
    return out


def _row_input(images: Sequence[Image.Image]) -> RowImages:
    return images[0] if len(images) == 1 else tuple(images)


def _ladder(
    clean: Sequence[Sequence[Image.Image]], laddered: Sequence[Condition], device: torch.device
) -> dict[str, list[list[Image.Image]]]:
    """Return, per laddered condition, every row's images blurred (same nesting as ``clean``)."""
    # Images of one size share a call; order within a size is row order, then image order.
    by_size: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for row, images in enumerate(clean):
        for k, img in enumerate(images):
            by_size.setdefault(img.size, []).append((row, k))
    out = {c.name: [list(images) for images in clean] for c in laddered}
    for places in by_size.values():
        x = _on_device([clean[r][k] for r, k in places], device)
        ladder = _blurred(x, laddered)
        host = ladder.permute(0, 1, 3, 4, 2).contiguous().cpu().numpy()
        for j, cond in enumerate(laddered):
            for n, (r, k) in enumerate(places):
                out[cond.name][r][k] = Image.fromarray(host[n, j])
    return out


def condition_tensors(
    examples: Sequence[Example], conditions: Sequence[Condition], device: torch.device
) -> dict[str, torch.Tensor] | None:
    """Return, per image condition, the rows' images [N, 3, H, W] uint8 left on ``device``.

    The same pixels :func:`condition_images` makes, without the copy to the host and back to
    PIL: for preprocessing on the device. None where the batch does not allow it: a row
    without exactly one image, an image that is not RGB, or images of different sizes.
    """
    if not examples or any(not ex.has_image or len(ex.images) != 1 for ex in examples):
        return None
    clean = [ex.image for ex in examples]
    if any(img.mode != "RGB" for img in clean) or len({img.size for img in clean}) != 1:
        return None
    x = _on_device(clean, device)
    laddered = [c for c in conditions if c.kind in ("blur", "total")]
    out: dict[str, torch.Tensor] = {}
    if laddered:
        ladder = _blurred(x, laddered)
        out = {c.name: ladder[:, j] for j, c in enumerate(laddered)}
    out.update({c.name: x for c in conditions if c.kind == "clean"})
    return out


def _on_device(images: Sequence[Image.Image], device: torch.device) -> torch.Tensor:
    """Return same-size images as uint8 [N, C, H, W] on ``device``."""
    pixels = np.stack([np.asarray(img, dtype=np.uint8) for img in images])
    return torch.from_numpy(pixels).to(device).permute(0, 3, 1, 2)


def _blurred(x: torch.Tensor, laddered: Sequence[Condition]) -> torch.Tensor:
    """Return the ladder [N, K, C, H, W] uint8 of images ``x`` at the laddered conditions."""
    from priorscope.kernels import blur_ladder

    sigmas = [math.inf if c.kind == "total" else c.sigma for c in laddered]
    with kernel_errors():
        return blur_ladder(x, sigmas, relative=True)
