"""The arrays patching and the logit lens write into their results stores (declared groups).

Patch results (store kind ``patch``), dims in brackets:
  example [example] int64            store rows of the patched (full-sequence) examples
  gold, prior [example] int64        candidate indices of the metric (-1: no margin)
  margin_target, margin_source [direction, example] float32   stored runs' gold-vs-prior margins
  margin, delta, effect [direction, example, layer, group, mode] float32
      margin after the patch; its change from the target run; the change normalised by
      margin_source - margin_target (0: no effect, 1: the target now behaves like the source)
  top [direction, example, layer, group, mode] int16   leading candidate after the patch (-1: not run)
  flipped [direction, example, layer, group, mode] int8 1 when it differs from the target run's (-1: not run)
  logprob [direction, example, layer, group, mode, candidate] float32
  kept [direction, example, layer, group, mode, kept_layer, d_model] float32 (``keep`` only)
      the patched run's answer-position state at each kept layer (coords ``kept_layer``)
  replay_check [direction, example, layer] float32  row-wise relative error of the unpatched
      replay against the stored log-probs (NaN where no last-token patch ran)
  est_example [est_example] int64, est_delta / est_effect
      [source_condition, target_condition, est_example, est_layer, group, mode] float32
      first-order estimates for every condition pair (image/text cells: full-sequence examples)

Lens results (store kind ``lens``): example [example], gold/prior [example],
gold_logprob, prior_logprob, margin, top_logprob [example, condition, layer] float32,
top [example, condition, layer] int64, final, first_lead, settled [example, condition] int64.
"""

from __future__ import annotations

from priorscope.engine.store import ArraySpec, GroupSpec, register_group

_CELL = ("direction", "example", "layer", "group", "mode")
_EST = ("source_condition", "target_condition", "est_example", "est_layer", "group", "mode")

PATCH_GROUP = register_group(
    GroupSpec(
        name="patch",
        owner="patch",
        arrays=(
            ArraySpec("example", ("example",), "int64"),
            ArraySpec("gold", ("example",), "int64"),
            ArraySpec("prior", ("example",), "int64"),
            ArraySpec("margin_target", ("direction", "example"), "float32", required=False),
            ArraySpec("margin_source", ("direction", "example"), "float32", required=False),
            ArraySpec("margin", _CELL, "float32", required=False),
            ArraySpec("delta", _CELL, "float32", required=False),
            ArraySpec("effect", _CELL, "float32", required=False),
            ArraySpec("top", _CELL, "int16", required=False),
            ArraySpec("flipped", _CELL, "int8", required=False),
            ArraySpec("logprob", (*_CELL, "candidate"), "float32", required=False),
            ArraySpec("kept", (*_CELL, "kept_layer", "d_model"), "float32", required=False),
            ArraySpec("replay_check", ("direction", "example", "layer"), "float32", False),
            ArraySpec("est_example", ("est_example",), "int64", required=False),
            ArraySpec("est_delta", _EST, "float32", required=False),
            ArraySpec("est_effect", _EST, "float32", required=False),
        ),
        description="Counterfactual layer replacement from the cache: exact suffix replay and "
        "first-order estimates of the gold-vs-prior margin per layer, position group and mode.",
        store_kind="patch",
    )
)

_LENS = ("example", "condition", "layer")
LENS_GROUP = register_group(
    GroupSpec(
        name="lens",
        owner="patch",
        arrays=(
            ArraySpec("example", ("example",), "int64"),
            ArraySpec("gold", ("example",), "int64"),
            ArraySpec("prior", ("example",), "int64"),
            ArraySpec("gold_logprob", _LENS, "float32"),
            ArraySpec("prior_logprob", _LENS, "float32"),
            ArraySpec("margin", _LENS, "float32"),
            ArraySpec("top", _LENS, "int64"),
            ArraySpec("top_logprob", _LENS, "float32"),
            ArraySpec("final", ("example", "condition"), "int64"),
            ArraySpec("first_lead", ("example", "condition"), "int64"),
            ArraySpec("settled", ("example", "condition"), "int64"),
        ),
        description="Logit lens with no model: per example, condition and layer, the candidates "
        "read through the stored final norm and unembedding; gold-vs-prior margin and the "
        "layer where the final answer first leads.",
        store_kind="lens",
    )
)

__all__ = ["LENS_GROUP", "PATCH_GROUP"]
