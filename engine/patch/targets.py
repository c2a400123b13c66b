"""The gold and prior answers of each example on the store's candidate axis, and the margin.

The metric of the lens, of patching and of the attribution gradients is one quantity: the
log-prob margin of the gold answer over the prior answer at the answer position,
``log p(gold) - log p(prior)`` (the normaliser cancels, so candidate logits suffice). The prior
is the example's canonical answer when its metadata names one (the synth ``prior`` template's
usual colour), else what the model answered under the prior condition (total obfuscation). An
example whose prior is its gold answer, or whose gold or prior is not a candidate, has no
margin: its index is -1 and its metric NaN (counted, never silently dropped).

This module is pure (no store, no model) so that capture's ``--grad`` and every analysis use
the same definition.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from priorscope.engine.data.example import OPTION_LABELS
from priorscope.engine.data.scoring import normalize_answer

if TYPE_CHECKING:
    from priorscope.engine.store import Store

MISSING = -1


@dataclass(frozen=True)
class Targets:
    """Candidate indices [example] int64 of the gold and prior answers (-1: none)."""

    gold: np.ndarray
    prior: np.ndarray

    @property
    def defined(self) -> np.ndarray:
        """Return the bool mask [example] of examples with a gold-vs-prior margin."""
        return (self.gold >= 0) & (self.prior >= 0)


def candidate_index(answer: str, candidates: Sequence[str], options: Sequence[str] = ()) -> int:
    """Return the candidate index of ``answer`` (an option letter, option text or open answer).

    Multiple choice: a letter is looked up directly; an option's text maps to its letter. Open
    answers match after :func:`normalize_answer`. -1 when the answer is not a candidate.
    """
    text = (answer or "").strip()
    if not text:
        return MISSING
    if options:
        letter = text.upper() if len(text) == 1 else None
        if letter is None:
            norm = normalize_answer(text)
            hits = [OPTION_LABELS[i] for i, o in enumerate(options) if normalize_answer(o) == norm]
            letter = hits[0] if len(hits) == 1 else None
        return candidates.index(letter) if letter in candidates else MISSING
    norm = normalize_answer(text)
    for i, cand in enumerate(candidates):
        if normalize_answer(cand) == norm:
            return i
    return MISSING


def answer_targets(
    gold: Sequence[Sequence[str]],
    options: Sequence[Sequence[str]],
    metadata: Sequence[Mapping[str, object]],
    prior_answers: Sequence[str] | None,
    candidates: Sequence[str],
) -> Targets:
    """Return the gold and prior candidate indices of every example.

    ``prior_answers[i]`` is the model's extracted answer under the prior condition (None when
    the store has no such condition); the canonical answer in ``metadata[i]['canonical']`` wins
    when present.
    """
    n = len(gold)
    gold_idx = np.full(n, MISSING, dtype=np.int64)
    prior_idx = np.full(n, MISSING, dtype=np.int64)
    for i in range(n):
        opts = tuple(options[i])
        for answer in gold[i]:
            gold_idx[i] = candidate_index(answer, candidates, opts)
            if gold_idx[i] >= 0:
                break
        canonical = str(metadata[i].get("canonical") or "")
        prior = canonical or (prior_answers[i] if prior_answers is not None else "")
        idx = candidate_index(prior, candidates, opts)
        prior_idx[i] = idx if idx != gold_idx[i] else MISSING
    return Targets(gold_idx, prior_idx)


def margins(
    logprob: np.ndarray, targets: Targets, rows: np.ndarray | None = None, axis: int = 0
) -> np.ndarray:
    """Return gold-minus-prior margins of ``logprob`` [..., candidate] (NaN where undefined).

    ``axis`` is the example axis of ``logprob``; ``rows`` picks which examples of ``targets`` it
    holds (default: all, in order). The result drops the candidate axis.
    """
    gold = targets.gold if rows is None else targets.gold[rows]
    prior = targets.prior if rows is None else targets.prior[rows]
    lp = np.moveaxis(np.asarray(logprob, dtype=np.float64), axis, 0)
    shape = (len(gold),) + (1,) * (lp.ndim - 1)
    g = np.take_along_axis(lp, np.maximum(gold, 0).reshape(shape), axis=-1)[..., 0]
    p = np.take_along_axis(lp, np.maximum(prior, 0).reshape(shape), axis=-1)[..., 0]
    out = g - p
    out[(gold < 0) | (prior < 0)] = np.nan
    return np.moveaxis(out, 0, axis).astype(np.result_type(np.asarray(logprob).dtype, np.float32))


def store_targets(store: Store, prior_condition: str = "total") -> Targets:
    """Return the Targets of a store's visible examples (prior from ``prior_condition``).

    When the store has no ``prior_condition``, only canonical answers give a prior.
    """
    table = store.examples()
    prior_answers = None
    if prior_condition in store.condition_names:
        answers = store.outputs("answer")
        prior_answers = [str(a) for a in answers[:, store.condition_index(prior_condition)]]
    return answer_targets(
        table.gold, table.options, table.metadata, prior_answers, store.candidates
    )


__all__ = [
    "MISSING",
    "Targets",
    "answer_targets",
    "candidate_index",
    "margins",
    "store_targets",
]
