"""Names and layout of a priorscope store (a Zarr v3 group). Version 1.

Writers (capture) and readers (decay, probes, patch, report) import these names instead of
spelling paths, so the two sides cannot drift apart. Every array carries ``dimension_names``.

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
  fullseq/...             ragged full-sequence residuals and replay inputs (see capture)
  commit/done             [example] bool  True once every array of that example is written;
                          readers read it before any values and use only True rows
"""

from __future__ import annotations

SCHEMA_VERSION = 1

EXAMPLE_FIELDS = ("id", "benchmark", "category", "question", "gold", "options", "metadata")
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

DIMS = {
    OUT_RAW: ("example", "condition"),
    OUT_ANSWER: ("example", "condition"),
    OUT_EXTRACTED: ("example", "condition"),
    OUT_SCORE: ("example", "condition"),
    OUT_CAND_LOGPROB: ("example", "condition", "candidate"),
    HIDDEN: ("example", "condition", "layer", "reduction", "d_model"),
    UNEMBED: ("candidate", "d_model"),
    FINAL_NORM_WEIGHT: ("d_model",),
    COMMIT_DONE: ("example",),
}

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

DIMS.update(
    {
        FULLSEQ_VALUES: ("token", "fs_condition", "fs_layer", "d_model"),
        FULLSEQ_KIND: ("token",),
        FULLSEQ_INPUT_IDS: ("token",),
        FULLSEQ_ATTENTION_MASK: ("token",),
        FULLSEQ_POSITION_IDS: ("rope", "token"),
        FULLSEQ_EXAMPLE: ("fs_example",),
        FULLSEQ_LENGTH: ("fs_example",),
        FULLSEQ_OFFSETS: ("fs_offset",),
        FINAL_NORM_BIAS: ("d_model",),
    }
)
