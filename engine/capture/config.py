"""The capture configuration: one frozen record, validated where user input enters."""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from priorscope.engine.conditions import DEFAULT_LADDER, REDUCTIONS, Condition, build_conditions
from priorscope.engine.data.scoring import check_scorer
from priorscope.engine.errors import UsageError
from priorscope.engine.store.dtypes import parse_hidden_dtype

# Configuration fields that change what a store holds. Everything else (device, shard,
# progress) may differ between the run that started a store and the one that resumes it. The
# batch size is identity: left padding depends on a batch's members, so another batch size
# changes values in the last bits and a resume would not be bitwise equal; it is refused.
IDENTITY_FIELDS = (
    "model",
    "data",
    "ladder",
    "total",
    "none",
    "reductions",
    "layers",
    "full_seq",
    "full_seq_layers",
    "dtype",
    "hidden_dtype",
    "max_new_tokens",
    "limit",
    "shard_examples",
    "batch_size",
    "grad",
    "data_options",
)


# How answers are read: greedy generation, or the best single-token candidate at the prefill.
ANSWER_FROM = ("generate", "candidates")
PREPROCESS = ("auto", "host", "device")


@dataclass(frozen=True)
class CaptureConfig:
    """Everything ``priorscope capture`` needs; see :func:`priorscope.engine.capture.capture`.

    ``layers`` and ``full_seq_layers`` are specs for :func:`parse_layers` (``all``, ``0,4,8``,
    ``0:36:2``); ``grad`` also stores the gold-vs-prior margin gradients (``patch --estimate``);
    ``data_options`` are keyword arguments of ``priorscope.engine.data.load``; ``hidden_dtype``
    ``auto`` stores the model's dtype; ``shard_examples`` 0 picks a shard of about 64 MiB of
    hidden states; ``shard`` is (rank, world); ``scorer`` reads the replies as priorscope does
    or as VLMEvalKit's rules do (``scoring.SCORERS``); ``answer_from`` ``candidates`` reads the
    answer of every example whose candidate answers are single tokens (multiple choice, yes/no,
    the benchmark's answer vocabulary) as the most likely candidate at the prefill, with no
    decoding, and generates only the others (``ANSWER_FROM``); ``attn`` is the attention
    implementation (``auto``: flash-attention 2 where it runs, else sdpa; the resolved one is
    part of the resume identity when it is not sdpa); ``preprocess`` is where condition
    images are resized, normalised and cut into patches (``PREPROCESS``: ``device`` keeps them
    on the model's device from the blur on, Qwen2-VL family only, bitwise equal to ``host``;
    ``auto`` picks ``device`` on a GPU where the processor allows it).
    """

    model: str
    data: str
    out: str
    ladder: tuple[float, ...] = DEFAULT_LADDER
    total: bool = True
    none: bool = False
    reductions: tuple[str, ...] = REDUCTIONS
    layers: str = "all"
    full_seq: int = 0
    full_seq_layers: str = "all"
    batch_size: int = 8
    device: str = "auto"
    dtype: str = "auto"
    hidden_dtype: str = "auto"
    max_new_tokens: int = 16
    shard: tuple[int, int] = (0, 1)
    limit: int | None = None
    shard_examples: int = 0
    progress: bool = True
    max_pending: int = 4
    wait_for_store_s: float = 600.0
    grad: bool = False
    scorer: str = "priorscope"
    answer_from: str = "generate"
    attn: str = "auto"
    preprocess: str = "auto"
    data_options: dict[str, Any] = field(default_factory=dict, compare=False)

    def conditions(self) -> list[Condition]:
        return build_conditions(self.ladder, total=self.total, none=self.none)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ladder"] = list(self.ladder)
        out["reductions"] = list(self.reductions)
        out["shard"] = list(self.shard)
        return out


def optional_identity(cfg: CaptureConfig) -> dict[str, Any]:
    """Return the identity settings recorded only when they differ from their defaults
    (``scorer``, ``answer_from``), so stores captured before they existed keep their identity."""
    out: dict[str, Any] = {}
    if cfg.scorer != "priorscope":
        out["scorer"] = cfg.scorer
    if cfg.answer_from != "generate":
        out["answer_from"] = cfg.answer_from
    return out


def parse_shard(text: str | None, env: dict[str, str] | None = None) -> tuple[int, int]:
    """Return (rank, world) from ``i/n``, else from RANK/WORLD_SIZE (torchrun), else (0, 1)."""
    env = dict(os.environ) if env is None else env
    if text:
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not match:
            raise UsageError(f"Expected --shard as i/n, e.g. 0/4. Got {text!r} instead.")
        rank, world = int(match.group(1)), int(match.group(2))
    elif "RANK" in env and "WORLD_SIZE" in env:
        try:
            rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        except ValueError:
            raise UsageError(
                f"Expected integer RANK and WORLD_SIZE. Got {env['RANK']!r}, {env['WORLD_SIZE']!r}."
            ) from None
    else:
        return (0, 1)
    if world < 1 or not 0 <= rank < world:
        raise UsageError(
            f"Expected a shard i/n with 0 <= i < n. Got {rank}/{world} instead. Ranks count from 0."
        )
    return rank, world


def validate(cfg: CaptureConfig) -> CaptureConfig:
    """Return ``cfg`` after checking every field a user can get wrong; raise UsageError."""
    if cfg.batch_size < 1:
        raise UsageError(f"Expected --batch-size of at least 1. Got {cfg.batch_size}.")
    if cfg.max_new_tokens < 1:
        raise UsageError(
            f"Expected --max-new-tokens of at least 1 (the answer is generated). "
            f"Got {cfg.max_new_tokens}."
        )
    if cfg.full_seq < 0:
        raise UsageError(f"Expected --full-seq N with N >= 0. Got {cfg.full_seq}.")
    if cfg.limit is not None and cfg.limit < 1:
        raise UsageError(f"Expected --limit of at least 1. Got {cfg.limit}.")
    if cfg.shard_examples < 0 or cfg.shard_examples & (cfg.shard_examples - 1):
        raise UsageError(
            f"Expected --shard-examples as 0 (automatic) or a power of two. Got "
            f"{cfg.shard_examples}."
        )
    for r in cfg.reductions:
        if r not in REDUCTIONS:
            raise UsageError(f"Expected site reductions among {', '.join(REDUCTIONS)}. Got {r!r}.")
    if not cfg.reductions:
        raise UsageError("Expected at least one site reduction in --sites. Got none.")
    if cfg.hidden_dtype != "auto":
        parse_hidden_dtype(cfg.hidden_dtype)
    if not Path(cfg.data).exists() and not cfg.data.startswith("builtin:"):
        raise UsageError(f"Expected --data to name an existing file. Got {cfg.data!r}, not found.")
    cfg.conditions()  # validates the ladder
    check_scorer(cfg.scorer)
    from priorscope.engine.models.registry import ATTN_IMPLEMENTATIONS

    if cfg.attn not in ATTN_IMPLEMENTATIONS:
        raise UsageError(
            f"Expected --attn to be one of {', '.join(ATTN_IMPLEMENTATIONS)}. Got {cfg.attn!r} "
            "instead."
        )
    if cfg.preprocess not in PREPROCESS:
        raise UsageError(
            f"Expected --preprocess to be one of {', '.join(PREPROCESS)}. Got "
            f"{cfg.preprocess!r} instead."
        )
    if cfg.answer_from not in ANSWER_FROM:
        raise UsageError(
            f"Expected --answer-from to be one of {', '.join(ANSWER_FROM)}. Got "
            f"{cfg.answer_from!r} instead."
        )
    parse_shard(f"{cfg.shard[0]}/{cfg.shard[1]}")
    return cfg
