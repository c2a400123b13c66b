"""Turn a capture config and a dataset into a deterministic plan: example order, shards, batches.

Store order groups examples by image size (stable, so dataset order breaks ties), which lets each
batch share one token count and avoids padding image tokens; ``examples/source_row`` keeps the
original row. Batches never cross a shard, so a recomputed shard is computed from exactly the
same batches as the first time: that is what makes a resumed store bitwise equal to an
uninterrupted one.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from priorscope.engine.data.example import OPTION_LABELS, Example

MAX_CANDIDATES = 1024


def image_size(example: Example) -> tuple[int, int]:
    """Return (width, height) read from the image header only; (0, 0) for no image."""
    if example.image_bytes is None:
        return (0, 0)
    from PIL import Image

    with Image.open(io.BytesIO(example.image_bytes)) as img:
        return img.size


def order_by_size(examples: Sequence[Example]) -> list[int]:
    """Return dataset indices in store order: grouped by image size, dataset order within."""
    sizes = [image_size(ex) for ex in examples]
    return sorted(range(len(examples)), key=lambda i: (sizes[i], i))


def batches_of_shard(
    order: Sequence[int], examples: Sequence[Example], start: int, stop: int, batch_size: int
) -> list[list[int]]:
    """Return store-index batches of [start, stop): same image size, at most ``batch_size``."""
    out: list[list[int]] = []
    current: list[int] = []
    current_size: tuple[int, int] | None = None
    for idx in range(start, stop):
        size = image_size(examples[order[idx]])
        if current and (size != current_size or len(current) == batch_size):
            out.append(current)
            current = []
        current.append(idx)
        current_size = size
    if current:
        out.append(current)
    return out


def candidate_axis(examples: Sequence[Example]) -> list[str]:
    """Return the store's candidate axis: the union of every example's scored candidates.

    Option letters (A, B, ... up to the largest option count) come first, then yes/no and the
    benchmark's answer vocabulary as the data layer defines them; which of these apply to one
    example is ``scoring.candidates(example, vocabulary)``.
    """
    from priorscope.engine.data import scoring

    n_opts = max((len(ex.options) for ex in examples), default=0)
    axis = dict.fromkeys(OPTION_LABELS[:n_opts])
    vocab = scoring.answer_vocabulary(examples)
    for ex in examples:
        if ex.is_multiple_choice or not ex.answers:
            continue
        axis.update(dict.fromkeys(scoring.candidates(ex, vocab)))
    return list(axis)[:MAX_CANDIDATES]


def file_sha256(path: str | Path) -> str:
    """Return the sha256 of a file's bytes (streamed)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def example_table(
    examples: Sequence[Example], order: Sequence[int], columns: Sequence[str] | None = None
) -> dict[str, list[Any]]:
    """Return the ``examples/*`` columns in store order (``metric``: ``scoring.rule``).

    ``columns`` names the ones wanted (default: all of them).
    """
    rows = [examples[i] for i in order]
    makers = _column_makers(rows, order)
    names = list(makers) if columns is None else list(columns)
    unknown = [name for name in names if name not in makers]
    if unknown:
        raise ValueError(
            f"Expected example table columns among {', '.join(makers)}. Got {unknown} instead."
        )
    return {name: makers[name]() for name in names}


def _column_makers(
    rows: Sequence[Example], order: Sequence[int]
) -> dict[str, Callable[[], list[Any]]]:
    """Return a maker of each ``examples/*`` column, in the store's column order."""
    from priorscope.engine.data import scoring

    return {
        "id": lambda: [ex.id for ex in rows],
        "benchmark": lambda: [ex.benchmark for ex in rows],
        "category": lambda: [ex.category for ex in rows],
        "question": lambda: [ex.question for ex in rows],
        "gold": lambda: [json.dumps(list(ex.answers)) for ex in rows],
        "options": lambda: [json.dumps(list(ex.options)) for ex in rows],
        "metadata": lambda: [json.dumps(dict(ex.metadata), sort_keys=True) for ex in rows],
        "source_row": lambda: [
            ex.source.row if ex.source is not None else i for ex, i in zip(rows, order, strict=True)
        ],
        "metric": lambda: [scoring.rule(ex) for ex in rows],
        "n_images": lambda: [len(ex.images) for ex in rows],
        "has_image": lambda: [ex.has_image for ex in rows],
        "image_sha256": lambda: [ex.images_sha256 for ex in rows],
    }


@dataclass(frozen=True)
class Plan:
    """The fixed decisions of one capture: store order of examples and which get full sequences."""

    examples: list[Example]  # dataset order
    order: list[int]  # store index -> dataset index
    candidates: list[str]
    fullseq_examples: list[int]  # store indices, ascending

    def example_at(self, store_index: int) -> Example:
        return self.examples[self.order[store_index]]


def make_plan(examples: Sequence[Example], full_seq: int) -> Plan:
    """Return the plan; the first ``full_seq`` examples in dataset order get full sequences."""
    order = order_by_size(examples)
    position = {dataset_idx: store_idx for store_idx, dataset_idx in enumerate(order)}
    fullseq = sorted(position[i] for i in range(min(full_seq, len(examples))))
    return Plan(list(examples), order, candidate_axis(examples), fullseq)
