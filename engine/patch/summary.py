"""Per-template profiles of patching effects and lens margins: means with bootstrap intervals.

What the report draws and the CLI prints: for each template (or any example column) and each
direction, the mean normalised effect per (layer, group, mode) with a 95% percentile bootstrap
interval over examples, the share of flipped answers; and the mean logit-lens margin per
(condition, layer).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from priorscope.engine.patch.lens import LensResult
    from priorscope.engine.patch.run import PatchResult
    from priorscope.engine.store import ExampleTable

N_BOOT = 1000


@dataclass(frozen=True)
class Profile:
    """Mean, 95% interval and count over examples of a value [example, *cell] per cell."""

    key: str
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n: np.ndarray

    def to_json(self) -> dict[str, Any]:
        def clean(a: np.ndarray) -> Any:
            return np.where(np.isfinite(a), a, np.nan).round(6).tolist()

        return {
            "key": self.key,
            "mean": clean(self.mean),
            "low": clean(self.low),
            "high": clean(self.high),
            "n": self.n.tolist(),
        }


def profile(key: str, values: np.ndarray, seed: int = 0) -> Profile:
    """Return the Profile of ``values`` [example, *cell] (NaN entries left out per cell)."""
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v)
    n = ok.sum(axis=0)
    filled = np.where(ok, v, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = filled.sum(axis=0) / n
    rng = np.random.default_rng(seed)
    m = v.shape[0]
    boots = np.empty((N_BOOT, *v.shape[1:]))
    for b in range(N_BOOT):
        pick = rng.integers(0, m, m) if m else np.zeros(0, np.int64)
        cnt = ok[pick].sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            boots[b] = filled[pick].sum(axis=0) / cnt
    with warnings.catch_warnings():  # cells without any example stay NaN, silently
        warnings.simplefilter("ignore", RuntimeWarning)
        low = np.nanpercentile(boots, 2.5, axis=0) if m else np.full(mean.shape, np.nan)
        high = np.nanpercentile(boots, 97.5, axis=0) if m else np.full(mean.shape, np.nan)
    return Profile(key, mean, low, high, n)


def _keys(table: ExampleTable, by: str, rows: np.ndarray) -> np.ndarray:
    """Return the ``by`` column of ``rows`` (store indices), 'all' where the column is absent."""
    if by == "all" or by not in {*table.metadata_keys(), "category", "benchmark"}:
        return np.full(len(rows), "all", dtype=object)
    at = np.searchsorted(table.rows, rows)
    col = table.column(by)[at]
    return np.asarray([str(c) if c not in (None, "") else "(none)" for c in col], dtype=object)


def effect_profiles(
    result: PatchResult, table: ExampleTable, by: str = "template", value: str = "effect"
) -> dict[tuple[str, str], Profile]:
    """Return {(key, direction): Profile of ``value`` [layer, group, mode]} of exact results."""
    keys = _keys(table, by, result.rows)
    data = result.exact[value]
    out = {}
    for di, name in enumerate(result.direction_names):
        for key in sorted(set(keys)):
            sel = keys == key
            out[(str(key), name)] = profile(str(key), data[di][sel].astype(np.float64))
    return out


def flip_shares(
    result: PatchResult, table: ExampleTable, by: str = "template"
) -> dict[tuple[str, str], np.ndarray]:
    """Return {(key, direction): share [layer, group, mode] of patches that flip the answer}."""
    keys = _keys(table, by, result.rows)
    flipped = result.exact["flipped"]
    out = {}
    for di, name in enumerate(result.direction_names):
        for key in sorted(set(keys)):
            f = flipped[di][keys == key].astype(np.float64)
            f[f < 0] = np.nan
            with np.errstate(invalid="ignore"):
                out[(str(key), name)] = (
                    np.nanmean(f, axis=0) if len(f) else np.full(f.shape[1:], np.nan)
                )
    return out


def lens_profiles(
    result: LensResult, table: ExampleTable, by: str = "template"
) -> dict[str, Profile]:
    """Return {key: Profile of the lens margin [condition, layer]}."""
    keys = _keys(table, by, result.rows)
    return {
        str(key): profile(str(key), result.margin[keys == key].astype(np.float64))
        for key in sorted(set(keys))
    }


__all__ = ["N_BOOT", "Profile", "effect_profiles", "flip_shares", "lens_profiles", "profile"]
