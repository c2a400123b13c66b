"""The images of every condition for one batch of same-size examples, blurred on the device."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from priorscope.engine.conditions import Condition, kernel_errors
from priorscope.engine.data.example import Example
from priorscope.engine.errors import ModelError


def condition_images(
    examples: Sequence[Example], conditions: Sequence[Condition], device: torch.device
) -> dict[str, list[Image.Image | None]]:
    """Return, per condition name, one image (or None) per example.

    The whole ladder (every blur level and ``total``) comes from one ``blur_ladder`` call on
    ``device``; results are uint8 like the clean image, so each condition is itself an image.
    A batch of text-only examples gets None under every condition; a mixed batch is refused.
    """
    from priorscope.kernels import blur_ladder

    out: dict[str, list[Image.Image | None]] = {}
    with_image = [ex.image_bytes is not None for ex in examples]
    if not any(with_image):  # text-only: capture marks every condition but 'none' void
        return {c.name: [None] * len(examples) for c in conditions}
    if not all(with_image):
        raise ModelError(
            "Expected a batch of text-only rows or of rows with images, never both (store order "
            f"groups them apart). Got {[ex.id for ex in examples]} mixed; this is a bug."
        )
    clean = [ex.image for ex in examples]
    laddered = [c for c in conditions if c.kind in ("blur", "total")]
    if laddered:
        pixels = np.stack([np.asarray(img, dtype=np.uint8) for img in clean])  # [B, H, W, C]
        x = torch.from_numpy(pixels).to(device).permute(0, 3, 1, 2)
        sigmas = [math.inf if c.kind == "total" else c.sigma for c in laddered]
        with kernel_errors():
            ladder = blur_ladder(x, sigmas, relative=True)  # [B, K, C, H, W] uint8
        host = ladder.permute(0, 1, 3, 4, 2).contiguous().cpu().numpy()
        for k, cond in enumerate(laddered):
            out[cond.name] = [Image.fromarray(host[b, k]) for b in range(len(examples))]
    for cond in conditions:
        if cond.kind == "clean":
            out[cond.name] = list(clean)
        elif cond.kind == "none":
            out[cond.name] = [None] * len(examples)
    return out
