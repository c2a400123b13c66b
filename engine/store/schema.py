"""Names and layout of a priorscope store (a Zarr v3 group). Version 1.

Writers (capture) and readers (decay, probes, patch, report) import these names instead of
spelling paths, so the two sides cannot drift apart. Every array carries ``dimension_names``.
The arrays are declared below as groups (``engine.store.groups``); verify and info read those.

Group attributes (``zarr.open_group(path).attrs``):
  ``schema_version`` int, ``priorscope_version`` str, ``created`` ISO time,
  ``model`` {path, family, num_layers, d_model, weights_sha256, dtype},
  ``processor`` {...settings}, ``prompt_template`` str,
  ``conditions`` [{name, kind, sigma}] in axis order (see engine.conditions.Condition.to_json),
  ``reductions`` [str] (site reductions in axis order), ``layers`` [int] (-1 is embed),
  ``candidates`` [str] (the candidate-answer axis), ``dataset`` {files, sha256, count, format},
  ``seeds`` {...}, ``packages`` {name: version}, ``config`` (the capture config as JSON, used to
  refuse a mismatched resume), ``hidden_dtype`` "float16" | "bfloat16" | "float32".

Arrays (dimension names in brackets):
  examples/id, examples/benchmark, examples/category, examples/question   [example] str
  examples/gold           [example] str   JSON list of gold answers
  examples/options        [example] str   JSON list of option texts (empty for open-ended)
  examples/metadata       [example] str   JSON object
  examples/source_row     [example] int64 0-based data row in the input file
  examples/metric         [example] str   optional: the scoring rule (choice, yes/no, vqa,
                          relaxed, anls, unscored; data.scoring.rule)
  examples/n_images       [example] int64 optional: images of the row (0: text-only)
  examples/has_image      [example] bool  optional: whether the row has an image
  examples/image_sha256   [example] str   optional: sha256 of the row's encoded images
                          (data.example.images_sha256; "" for a text-only row)
  outputs/raw             [example, condition] str   greedy generated text
  outputs/answer          [example, condition] str   extracted answer ("" when none extracted)
  outputs/extracted       [example, condition] bool  whether an answer could be extracted
  outputs/score           [example, condition] float32 in [0, 1]
  outputs/cand_logprob    [example, condition, candidate] float32 log-softmax at the answer position
  hidden                  [example, condition, layer, reduction, d_model] float16 | uint16 (bf16 bits,
                          attribute ``bf16_bits = true``) | float32; NaN where a reduction
                          has no tokens (``image_mean`` under ``none``). Sharded per
                          ``layout.shard_examples`` examples; inner chunk = one (condition,
                          layer) of a shard's examples
  unembed                 [candidate, d_model] float32 LM-head rows of the candidates' first tokens
  final_norm/weight       [d_model] float32 (attrs: kind "rmsnorm" | "layernorm", eps)
  fullseq/...             ragged full-sequence residuals and replay inputs (see below)
  grad/...                margin gradients of capture --grad (see GRAD_* below), optional
  commit/done             [example] bool  True once every array of that example is written;
                          readers read it before any values and use only True rows
  commit/skipped          [example] str   optional (capture --on-bad skip): "" for a captured
                          example, else why its image could not be decoded or processed; a
                          skipped row is committed (its shard is done) but holds no values
                          (NaN, "") and every reader leaves it out. Stores without the array
                          have no skipped rows, so schema 2 stays readable both ways.
"""

from __future__ import annotations

from priorscope.engine.store.groups import TEXT, ArraySpec, GroupSpec, register_group

SCHEMA_VERSION = 2  # 2: every chunk (inner chunks of shards too) carries a crc32c

EXAMPLE_FIELDS = ("id", "benchmark", "category", "question", "gold", "options", "metadata")
# Optional example columns for filtering (issue 16); stores written before them lack them.
EXAMPLE_FILTERS = {
    "metric": TEXT,
    "n_images": "int64",
    "has_image": "bool",
    "image_sha256": TEXT,
}
EX = "examples"
OUT_RAW = "outputs/raw"
OUT_ANSWER = "outputs/answer"
OUT_EXTRACTED = "outputs/extracted"
OUT_SCORE = "outputs/score"
OUT_CAND_LOGPROB = "outputs/cand_logprob"
HIDDEN = "hidden"
UNEMBED = "unembed"
FINAL_NORM_WEIGHT = "final_norm/weight"
FULLSEQ = "fullseq"
COMMIT_DONE = "commit/done"
COMMIT_SKIPPED = "commit/skipped"  # [example] str, optional: why the example was skipped

# Full-sequence residuals (ragged along ``token``: rows of fullseq example i are
# offsets[i] : offsets[i] + length[i]; each example starts at a multiple of the token block so
# that no two writers share a chunk). Positions hold no padding; replay with attention over them.
FULLSEQ_VALUES = "fullseq/values"  # [token, fs_condition, fs_layer, d_model] hidden dtype
FULLSEQ_KIND = "fullseq/kind"  # [token] int8 TOKEN_* kind
FULLSEQ_INPUT_IDS = "fullseq/input_ids"  # [token] int64
FULLSEQ_ATTENTION_MASK = "fullseq/attention_mask"  # [token] int8 (1 for every stored token)
FULLSEQ_POSITION_IDS = "fullseq/position_ids"  # [rope, token] int64 (3 rows for Qwen M-RoPE)
FULLSEQ_EXAMPLE = "fullseq/example"  # [fs_example] int64 store index of each example
FULLSEQ_LENGTH = "fullseq/length"  # [fs_example] int64 token count
FULLSEQ_OFFSETS = "fullseq/offsets"  # [fs_example + 1] int64 first row (block-aligned)
FINAL_NORM_BIAS = "final_norm/bias"  # [d_model] float32, LayerNorm families only

# ---- The groups capture writes (declared once; verify, info and open_store read these) -------

_EXAMPLE = ("example",)
_EX_COND = ("example", "condition")
HIDDEN_DTYPES = "float16|uint16|float32"  # uint16 holds bf16 bits (attribute bf16_bits)

EXAMPLES_GROUP = register_group(
    GroupSpec(
        name="examples",
        owner="capture",
        arrays=(
            *(ArraySpec(f, _EXAMPLE, TEXT) for f in EXAMPLE_FIELDS),
            ArraySpec("source_row", _EXAMPLE, "int64"),
            *(ArraySpec(f, _EXAMPLE, t, required=False) for f, t in EXAMPLE_FILTERS.items()),
        ),
        description="The per-example table: ids, benchmark, category, question, gold answers "
        "and options as JSON lists, metadata as a JSON object, the 0-based data row; the "
        "scoring metric, image count and has-image flag.",
        store_kind="capture",
    )
)
OUTPUTS_GROUP = register_group(
    GroupSpec(
        name="outputs",
        owner="capture",
        arrays=(
            ArraySpec("raw", _EX_COND, TEXT),
            ArraySpec("answer", _EX_COND, TEXT),
            ArraySpec("extracted", _EX_COND, "bool"),
            ArraySpec("score", _EX_COND, "float32"),
        ),
        description="What the model answered under each condition, and its score.",
        store_kind="capture",
    )
)
COMMIT_GROUP = register_group(
    GroupSpec(
        name="commit",
        owner="capture",
        arrays=(
            ArraySpec("done", _EXAMPLE, "bool"),
            ArraySpec("skipped", _EXAMPLE, TEXT, required=False),
        ),
        description="The commit log: True once every array of an example is written; the "
        "reason an example was skipped (capture --on-bad skip), empty for captured ones.",
        store_kind="capture",
    )
)
ACTIVATIONS_GROUP = register_group(
    GroupSpec(
        name="activations",
        owner="capture",
        arrays=(
            ArraySpec(OUT_CAND_LOGPROB, (*_EX_COND, "candidate"), "float32"),
            ArraySpec(HIDDEN, (*_EX_COND, "layer", "reduction", "d_model"), HIDDEN_DTYPES),
            ArraySpec(UNEMBED, ("candidate", "d_model"), "float32"),
            ArraySpec(FINAL_NORM_WEIGHT, ("d_model",), "float32"),
            ArraySpec(FINAL_NORM_BIAS, ("d_model",), "float32", required=False),
        ),
        description="What capture read from the model: candidate log-probs, residual states "
        "reduced at each site, the candidates' LM-head rows and the final norm (a logit lens "
        "needs no model).",
        store_kind="capture",
        prefix="",
        absent_when="answers_only",
    )
)
FULLSEQ_GROUP = register_group(
    GroupSpec(
        name="fullseq",
        owner="capture",
        arrays=(
            ArraySpec("values", ("token", "fs_condition", "fs_layer", "d_model"), HIDDEN_DTYPES),
            ArraySpec("kind", ("token",), "int8"),
            ArraySpec("input_ids", ("token",), "int64"),
            ArraySpec("attention_mask", ("token",), "int8"),
            ArraySpec("position_ids", ("rope", "token"), "int64"),
            ArraySpec("example", ("fs_example",), "int64"),
            ArraySpec("length", ("fs_example",), "int64"),
            ArraySpec("offsets", ("fs_offset",), "int64"),
        ),
        description="Full-sequence residuals of chosen examples with their replay inputs.",
        store_kind="capture",
        required=False,
    )
)
# Margin gradients (capture --grad): d(logit[gold] - logit[prior]) / d(residual after a layer),
# float32, written with their shard so they share its commit. Zero rows: no gold or no prior.
GRAD = "grad"
GRAD_LAST = "grad/last"  # [example, condition, layer, d_model] at the answer position
GRAD_FULLSEQ = "grad/fullseq"  # [token, fs_condition, fs_layer, d_model] rows of fullseq/values
GRAD_GOLD = "grad/gold"  # [example] int64 candidate index of the gold answer (-1: none)
GRAD_PRIOR = "grad/prior"  # [example] int64 candidate index of the prior (-1: none)
GRAD_GROUP = register_group(
    GroupSpec(
        name="grad",
        owner="capture",
        arrays=(
            ArraySpec("last", (*_EX_COND, "layer", "d_model"), "float32"),
            ArraySpec(
                "fullseq",
                ("token", "fs_condition", "fs_layer", "d_model"),
                "float32",
                required=False,
            ),
            ArraySpec("gold", _EXAMPLE, "int64"),
            ArraySpec("prior", _EXAMPLE, "int64"),
        ),
        description="Gold-vs-prior margin gradients at every stored layer (capture --grad), "
        "for first-order patching estimates without the model.",
        store_kind="capture",
        required=False,
    )
)
CAPTURE_GROUPS = (
    EXAMPLES_GROUP,
    OUTPUTS_GROUP,
    COMMIT_GROUP,
    ACTIVATIONS_GROUP,
    FULLSEQ_GROUP,
    GRAD_GROUP,
)

# Dimension names of every capture array by store path (derived from the declarations).
DIMS: dict[str, tuple[str, ...]] = {
    path: spec.dims for group in CAPTURE_GROUPS for path, spec in group.paths().items()
}
