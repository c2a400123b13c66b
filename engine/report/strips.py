"""Example strips: a few items shown at every image condition, with the model's answer under each.

The store holds answers, not pixels, so the images are re-created: each chosen item's image is
read from the dataset file recorded in the store and blurred again with
:func:`priorscope.kernels.blur_ladder_images` at the store's sigmas (the same kernel capture uses).
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

    from priorscope.engine.analysis.decay_result import DecayResult
    from priorscope.engine.store import ExampleTable

THUMB = 120  # longest side of a tile in the report, in pixels


@dataclass(frozen=True)
class StripItem:
    """One item of a strip: what was asked, and per condition the answer, score and tile."""

    kind: str  # "flipped" | "invariant"
    id: str
    question: str
    gold: tuple[str, ...]
    flip_level: str | None
    answers: tuple[str, ...]  # [C] extracted answers in condition-axis order
    scores: tuple[float, ...]  # [C]
    tiles: tuple[str, ...]  # [C] base64 PNG tiles ("" when the image could not be made)


def pick_rows(
    result: DecayResult, n_flipped: int, n_invariant: int, seed: int
) -> list[tuple[str, int]]:
    """Return (kind, index into the committed examples) of the items to show.

    Flipped items prefer those right on clean (the image was used, then lost); invariant items
    prefer those right on clean too (stable, possibly from the prior). Picks are seeded.
    """
    ex = result.examples
    rng = np.random.default_rng(seed)
    flipped = np.array([f is not None for f in ex["flip_level"]], dtype=bool)
    clean_ok = np.asarray(ex["correct_clean"], dtype=bool)
    strict = np.asarray(ex["strict_invariant"], dtype=bool)
    picks: list[tuple[str, int]] = []
    for kind, mask, k in (("flipped", flipped, n_flipped), ("invariant", strict, n_invariant)):
        first = np.flatnonzero(mask & clean_ok)
        rest = np.flatnonzero(mask & ~clean_ok)
        order = [*rng.permutation(first), *rng.permutation(rest)]
        picks += [(kind, int(i)) for i in order[:k]]
    return picks


def _tile(array: np.ndarray) -> str:
    """Return a [C, H, W] uint8 image downscaled to THUMB as base64 PNG."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(array.transpose(1, 2, 0)))
    img.thumbnail((THUMB, THUMB), Image.Resampling.LANCZOS)
    return _b64(img)


def _b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def no_image_tile() -> str:
    """Return a base64 PNG tile standing for the ``none`` condition (no image shown)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (THUMB, THUMB), (250, 250, 250))
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, THUMB - 1, THUMB - 1), outline=(180, 180, 180))
    draw.text((THUMB // 2 - 24, THUMB // 2 - 6), "no image", fill=(120, 120, 120))
    return _b64(img)


def load_images(dataset: Path, rows: list[int], ids: list[str]) -> dict[int, Image.Image]:
    """Return the decoded image of each wanted data row of ``dataset`` (by row, else by id)."""
    from priorscope.engine.data import load

    wanted_rows = set(rows)
    wanted_ids = dict(zip(ids, rows, strict=True))
    limit = max(rows) + 1 if rows and min(rows) >= 0 else None
    found: dict[int, Image.Image] = {}
    for example in load(dataset, on_bad="skip", limit=limit).examples:
        row = example.source.row if example.source is not None else -1
        key = row if row in wanted_rows else wanted_ids.get(example.id)
        if key is not None and example.image_bytes is not None:
            found[key] = example.image
    return found


def build_strips(
    result: DecayResult,
    tables: ExampleTable,
    answers: np.ndarray,
    scores: np.ndarray,
    picks: list[tuple[str, int]],
    dataset: Path | None,
) -> tuple[list[StripItem], str]:
    """Return the strip items and a note ('' when every image was re-created).

    ``answers`` and ``scores`` are the committed examples' outputs [n, C].
    """
    from priorscope.engine.conditions import kernel_errors
    from priorscope.kernels import blur_ladder_images

    conds = tables.conditions
    note = ""
    images: dict[int, Any] = {}
    rows = [int(tables.source_row[i]) for _, i in picks]
    if dataset is None or not dataset.is_file():
        note = f"images unavailable: dataset file {str(dataset)!r} not found"
    elif picks:
        try:
            images = load_images(dataset, rows, [tables.ids[i] for _, i in picks])
        except Exception as exc:  # a report still renders without pictures
            note = f"images unavailable: {exc}"
    sigmas = [c.sigma if c.has_image else 0.0 for c in conds]
    sigmas = [math.inf if c.kind == "total" else s for c, s in zip(conds, sigmas, strict=True)]
    blank, items = no_image_tile(), []
    for (kind, i), row in zip(picks, rows, strict=True):
        tiles = [""] * len(conds)
        if row in images:
            with kernel_errors():  # a kernel failure becomes the one-paragraph error
                ladder = blur_ladder_images([images[row]], sigmas)[0].cpu().numpy()
            tiles = [
                blank if not c.has_image else _tile(ladder[k].astype(np.uint8))
                for k, c in enumerate(conds)
            ]
        elif not note:
            note = "some images could not be found in the dataset file"
        flip = result.examples["flip_level"][i]
        items.append(
            StripItem(
                kind=kind,
                id=tables.ids[i],
                question=tables.question[i],
                gold=tables.gold[i],
                flip_level=flip,
                answers=tuple(str(a) for a in answers[i]),
                scores=tuple(float(s) for s in scores[i]),
                tiles=tuple(tiles),
            )
        )
    return items, note
