"""The sweep file: models x benchmarks, the conditions, capture options and analyses, from TOML.

A sweep file reads like this (every key but ``models`` and ``benchmarks`` is optional)::

    root = "runs"               # stores: ROOT/MODEL/BENCHMARK.zarr (folder or URL, e.g. s3://b/runs)
    out = "runs"                # reports and the combined table (a local folder; default: root)
    parallel = "auto"           # under torchrun: "shards" splits each benchmark across ranks,
                                # "jobs" gives each rank whole (model, benchmark) jobs, "auto"
                                # picks jobs when there are enough of them (see layout())
    [[models]]
    name = "organism"
    path = "builtin:organism"
    [[benchmarks]]
    name = "mmstar"
    file = "data/MMStar.tsv"    # relative to this file; format options as 'priorscope data check'
    [conditions]
    ladder = [0.005, 0.01, 0.02, 0.04, 0.08, 0.16]
    [capture]
    batch_size = 8
    scorer = "priorscope"       # or "vlmevalkit": VLMEvalKit's rule-based reading of replies
    answer_from = "generate"    # or "candidates": single-token answers read at the prefill
    [analyses]
    n_boot = 1000

Relative paths are relative to the sweep file's folder. Every error names the file and the key.
"""

from __future__ import annotations

import difflib
import math
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from priorscope.engine.capture.config import ANSWER_FROM, CaptureConfig, validate
from priorscope.engine.conditions import DEFAULT_LADDER, REDUCTIONS, build_conditions
from priorscope.engine.data.scoring import SCORERS
from priorscope.engine.errors import PriorscopeError, UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, from PyPI, before it joined the standard library
    import tomli as tomllib

PARALLEL = ("auto", "shards", "jobs")
# "auto" gives ranks whole jobs while round robin keeps them at least this busy (equal-size jobs).
JOBS_MIN_UTILISATION = 0.75
ON_BAD = ("error", "skip")
BY = ("benchmark", "category")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
FUTURE_ANALYSES = ("probes", "patch")  # accepted names of analyses that do not exist yet


def is_url(path: str) -> bool:
    """Return whether ``path`` names an fsspec URL (``s3://...``) rather than a local path."""
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", path) is not None


def join(root: str, *parts: str) -> str:
    """Return ``root/parts`` for a local folder or a URL (URLs always use '/')."""
    if is_url(root):
        return "/".join([root.rstrip("/"), *parts])
    return str(Path(root, *parts))


def _expect(ok: bool, key: str, expected: str, got: Any, fix: str = "") -> None:
    """Raise UsageError 'key: Expected X. Got Y instead. FIX' unless ``ok``."""
    if not ok:
        tail = f" {fix}" if fix else ""
        raise UsageError(f"Key {key!r}: Expected {expected}. Got {got!r} instead.{tail}")


def _positive_int(value: Any, key: str, *, zero: bool = False) -> None:
    good = isinstance(value, int) and not isinstance(value, bool) and value >= (0 if zero else 1)
    _expect(good, key, "a non-negative integer" if zero else "a positive integer", value)


def _name(value: Any, key: str) -> None:
    _expect(
        isinstance(value, str) and NAME_RE.fullmatch(value) is not None,
        key,
        "a short name of letters, digits, '.', '_' or '-' (it names the store folder)",
        value,
    )


@dataclass(frozen=True)
class ModelSpec:
    """One model of the sweep: ``name`` labels its stores, ``path`` is what capture loads."""

    name: str
    path: str
    dtype: str | None = None  # overrides [capture] dtype for this model
    batch_size: int | None = None  # overrides [capture] batch_size (big models need less)

    def __post_init__(self) -> None:
        _name(self.name, "name")
        _expect(isinstance(self.path, str) and bool(self.path), "path", "a model", self.path)
        if self.batch_size is not None:
            _positive_int(self.batch_size, "batch_size")


@dataclass(frozen=True)
class BenchmarkSpec:
    """One benchmark file of the sweep and the options that read it (as ``data check``)."""

    name: str
    file: str
    format: str | None = None
    columns: tuple[tuple[str, str], ...] = ()
    image_root: str | None = None
    on_bad: str = "error"
    benchmark: str | None = None  # label of rows without a benchmark column
    max_pixels: int | None = None
    limit: int | None = None  # capture only the first N examples

    def __post_init__(self) -> None:
        _name(self.name, "name")
        _expect(Path(self.file).is_file(), "file", "an existing benchmark file", self.file)
        _expect(self.on_bad in ON_BAD, "on_bad", f"one of {', '.join(ON_BAD)}", self.on_bad)
        for key in ("max_pixels", "limit"):
            if getattr(self, key) is not None:
                _positive_int(getattr(self, key), key)

    def data_options(self) -> dict[str, Any]:
        """Return the keyword arguments of ``priorscope.engine.data.load`` for this file."""
        # Defaults are left out, so a sweep job records the identity 'priorscope capture' does
        # (data_options is part of the resume identity: a store made either way resumes either way).
        out: dict[str, Any] = {"on_bad": self.on_bad} if self.on_bad != "error" else {}
        for key in ("format", "image_root", "benchmark", "max_pixels"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.columns:
            out["columns"] = dict(self.columns)
        return out


@dataclass(frozen=True)
class CaptureOptions:
    """Capture settings shared by every job (``priorscope capture``'s options)."""

    ladder: tuple[float, ...] = DEFAULT_LADDER
    total: bool = True
    none: bool = False
    sites: tuple[str, ...] = REDUCTIONS
    layers: str = "all"
    full_seq: int = 0
    full_seq_layers: str = "all"
    batch_size: int = 8
    device: str = "auto"
    dtype: str = "auto"
    hidden_dtype: str = "auto"
    max_new_tokens: int = 16
    shard_examples: int = 0
    scorer: str = "priorscope"
    answer_from: str = "generate"
    attn: str = "auto"

    def __post_init__(self) -> None:
        from priorscope.engine.models.registry import ATTN_IMPLEMENTATIONS

        _expect(
            self.attn in ATTN_IMPLEMENTATIONS,
            "capture.attn",
            f"one of {', '.join(ATTN_IMPLEMENTATIONS)}",
            self.attn,
        )
        _expect(
            self.answer_from in ANSWER_FROM,
            "capture.answer_from",
            f"one of {', '.join(ANSWER_FROM)}",
            self.answer_from,
        )
        _expect(
            self.scorer in SCORERS, "capture.scorer", f"one of {', '.join(SCORERS)}", self.scorer
        )
        try:
            build_conditions(self.ladder, total=self.total, none=self.none)
        except UsageError as exc:
            raise UsageError(f"Key 'conditions.ladder': {exc}") from None
        for name in ("batch_size", "max_new_tokens"):
            _positive_int(getattr(self, name), f"capture.{name}")
        for name in ("full_seq", "shard_examples"):
            _positive_int(getattr(self, name), f"capture.{name}", zero=True)
        _expect(bool(self.sites), "capture.sites", "at least one site reduction", [])
        for site in self.sites:
            _expect(site in REDUCTIONS, "capture.sites", f"reductions among {REDUCTIONS}", site)


@dataclass(frozen=True)
class AnalysisOptions:
    """Which analyses run on each finished store, and their settings (``priorscope decay``'s)."""

    decay: bool = True
    report: bool = True
    by: str = "category"
    correct_at: float = 0.5
    severe: str | None = None
    n_boot: int = 1000
    ci: float = 0.95
    seed: int = 0
    scheduler: str = "threads"

    def __post_init__(self) -> None:
        key = "analyses."
        _expect(self.decay or not self.report, key + "report", "false when decay is false", True)
        _expect(self.by in BY, key + "by", f"one of {', '.join(BY)}", self.by)
        _expect(
            0.0 < self.correct_at <= 1.0, key + "correct_at", "a number in (0, 1]", self.correct_at
        )
        _expect(self.n_boot >= 10, key + "n_boot", "at least 10 resamples", self.n_boot)
        _expect(0.5 <= self.ci < 1.0, key + "ci", "a level in [0.5, 1), e.g. 0.95", self.ci)

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class Job:
    """One (model, benchmark) pair: its store, and where its analyses go."""

    index: int
    model: ModelSpec
    benchmark: BenchmarkSpec
    store: str  # local folder or URL
    out: Path  # folder of this job's decay JSON and report

    @property
    def label(self) -> str:
        return f"{self.model.name}/{self.benchmark.name}"

    @property
    def decay_json(self) -> Path:
        return self.out / f"{self.benchmark.name}.decay.json"

    @property
    def report_html(self) -> Path:
        return self.out / f"{self.benchmark.name}.report.html"


@dataclass(frozen=True)
class SweepConfig:
    """A whole sweep: every model on every benchmark, one store per pair under ``root``."""

    root: str
    models: tuple[ModelSpec, ...]
    benchmarks: tuple[BenchmarkSpec, ...]
    capture: CaptureOptions = field(default_factory=CaptureOptions)
    analyses: AnalysisOptions = field(default_factory=AnalysisOptions)
    out: str | None = None  # local folder for reports and the table; default root
    parallel: str = "auto"
    wait_s: float = 86400.0  # how long rank 0 waits for other ranks to finish a store
    source: str = ""  # the sweep file, for messages

    def __post_init__(self) -> None:
        _expect(bool(self.models), "models", "at least one [[models]] entry", [])
        _expect(bool(self.benchmarks), "benchmarks", "at least one [[benchmarks]] entry", [])
        for key, specs in (("models", self.models), ("benchmarks", self.benchmarks)):
            names = [s.name for s in specs]
            dup = sorted({n for n in names if names.count(n) > 1})
            _expect(not dup, key, "unique names", dup, "Give each entry its own 'name'.")
        _expect(
            self.parallel in PARALLEL, "parallel", f"one of {', '.join(PARALLEL)}", self.parallel
        )
        _expect(self.wait_s > 0, "wait_s", "a positive number of seconds", self.wait_s)
        _expect(
            self.out is not None or not is_url(self.root),
            "out",
            "a local folder for reports and the table when root is a URL",
            None,
            'Add out = "sweep_out".',
        )
        try:  # the checks capture itself makes (hidden dtype, layer spec syntax, ...)
            self.capture_config(self.jobs()[0], (0, 1), "cpu")
        except UsageError as exc:
            raise UsageError(f"Key 'capture': {exc}") from None

    @property
    def out_dir(self) -> Path:
        return Path(self.out if self.out is not None else self.root)

    def layout(self, world: int) -> str:
        """Return how ``world`` ranks share the work: ``shards`` or ``jobs``.

        ``auto`` gives each rank whole jobs when round robin keeps the ranks busy
        (n_jobs / (world x rounds) >= 0.75): no per-store start-up cost on every rank and no
        wait for rank 0 to create each store. With fewer jobs it splits every store's example
        shards across ranks instead, which balances any job sizes.
        """
        if self.parallel != "auto":
            return self.parallel
        n = len(self.models) * len(self.benchmarks)
        rounds = -(-n // world)
        return "jobs" if n / (world * rounds) >= JOBS_MIN_UTILISATION else "shards"

    def jobs(self) -> list[Job]:
        """Return every (model, benchmark) job, models outer, in file order."""
        out, i = [], 0
        for model in self.models:
            for bench in self.benchmarks:
                store = join(self.root, model.name, f"{bench.name}.zarr")
                out.append(Job(i, model, bench, store, self.out_dir / model.name))
                i += 1
        return out

    def capture_config(self, job: Job, shard: tuple[int, int], device: str) -> CaptureConfig:
        """Return the validated CaptureConfig of ``job`` for this rank's ``shard``."""
        c, m, b = self.capture, job.model, job.benchmark
        cfg = CaptureConfig(
            model=m.path,
            data=b.file,
            out=job.store,
            ladder=c.ladder,
            total=c.total,
            none=c.none,
            reductions=c.sites,
            layers=c.layers,
            full_seq=c.full_seq,
            full_seq_layers=c.full_seq_layers,
            batch_size=m.batch_size or c.batch_size,
            device=device,
            dtype=m.dtype or c.dtype,
            hidden_dtype=c.hidden_dtype,
            max_new_tokens=c.max_new_tokens,
            scorer=c.scorer,
            answer_from=c.answer_from,
            attn=c.attn,
            shard=shard,
            limit=b.limit,
            shard_examples=c.shard_examples,
            progress=False,
            wait_for_store_s=self.wait_s,
            data_options=b.data_options(),
        )
        return validate(cfg)


# --------------------------------------------------------------------------------------------
# Reading the TOML file


class _Table:
    """One TOML table being read: typed getters that name the key, and an unknown-key check."""

    def __init__(self, data: Any, where: str) -> None:
        _expect(isinstance(data, dict), where or "(top level)", "a table", data)
        self.data: dict[str, Any] = data
        self.where = where
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        self.used.add(name)
        if name not in self.data:
            return default
        value = self.data[name]
        ok = isinstance(value, kind) and not (isinstance(value, bool) and bool not in _kinds(kind))
        label = " or ".join(dict.fromkeys(TYPE_NAMES[k] for k in _kinds(kind)))
        _expect(ok, self.key(name), label, value)
        return value

    def finish(self) -> None:
        for name in self.data:
            if name not in self.used:
                close = difflib.get_close_matches(name, sorted(self.used), n=1, cutoff=0.5)
                hint = f"Did you mean {close[0]!r}? " if close else ""
                raise UsageError(
                    f"Key {self.key(name)!r}: Expected one of {', '.join(sorted(self.used))}. "
                    f"Got an unknown key instead. {hint}Remove it or fix its spelling."
                )


TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: "a list",
    dict: "a table",
}


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _local(path: str, base: Path) -> str:
    """Return ``path`` resolved against the sweep file's folder (URLs unchanged)."""
    if is_url(path):
        return path
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def _model_path(path: str, base: Path) -> str:
    """Return a model path: builtin names and hub names unchanged, local folders resolved."""
    if path.startswith("builtin:") or is_url(path):
        return path
    local = Path(path).expanduser()
    local = local if local.is_absolute() else base / local
    return str(local.resolve()) if local.exists() else path


def _build(where: str, make: Callable[[], Any]) -> Any:
    """Return ``make()``; a UsageError from a spec's own checks gets the table's location."""
    try:
        return make()
    except UsageError as exc:
        text = str(exc)
        if where and text.startswith("Key '"):
            text = f"Key '{where}." + text[len("Key '") :]
        raise UsageError(text) from None


def _model(raw: Any, where: str, base: Path) -> ModelSpec:
    if isinstance(raw, str):  # shorthand: models = ["builtin:organism", "path/to/ckpt"]
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", raw.split(":")[-1].rstrip("/").split("/")[-1])
        return _build(where, lambda: ModelSpec(name=name, path=_model_path(raw, base)))
    t = _Table(raw, where)
    path = t.get("path", str)
    _expect(path is not None, t.key("path"), "the model (builtin:NAME, folder or hub name)", None)
    kwargs = {
        "name": t.get("name", str, path.split(":")[-1].rstrip("/").split("/")[-1]),
        "path": _model_path(path, base),
        "dtype": t.get("dtype", str),
        "batch_size": t.get("batch_size", int),
    }
    t.finish()
    return _build(where, lambda: ModelSpec(**kwargs))


def _benchmark(raw: Any, where: str, base: Path) -> BenchmarkSpec:
    t = _Table(raw, where)
    file = t.get("file", str)
    _expect(file is not None, t.key("file"), "the benchmark file (TSV, parquet or JSONL)", None)
    columns = t.get("columns", dict, {})
    for k, v in columns.items():
        _expect(isinstance(v, str), t.key(f"columns.{k}"), "a column name", v)
    image_root = t.get("image_root", str)
    kwargs = {
        "name": t.get("name", str, Path(file).stem),
        "file": _local(file, base),
        "format": t.get("format", str),
        "columns": tuple(sorted(columns.items())),
        "image_root": None if image_root is None else _local(image_root, base),
        "on_bad": t.get("on_bad", str, "error"),
        "benchmark": t.get("benchmark", str),
        "max_pixels": t.get("max_pixels", int),
        "limit": t.get("limit", int),
    }
    t.finish()
    return _build(where, lambda: BenchmarkSpec(**kwargs))


def _capture_options(cond: _Table, cap: _Table) -> CaptureOptions:
    ladder = cond.get("ladder", list, list(DEFAULT_LADDER))
    for i, s in enumerate(ladder):
        good = isinstance(s, int | float) and not isinstance(s, bool) and math.isfinite(s)
        _expect(good, cond.key(f"ladder[{i}]"), "a blur sigma (fraction of the short side)", s)
    sites = cap.get("sites", (list, str), list(REDUCTIONS))
    sites = [s.strip() for s in sites.split(",")] if isinstance(sites, str) else sites
    kwargs: dict[str, Any] = {
        "ladder": tuple(float(s) for s in ladder),
        "total": cond.get("total", bool, True),
        "none": cond.get("none", bool, False),
        "sites": tuple(sites),
    }
    for name, kind in (
        ("layers", str),
        ("full_seq", int),
        ("full_seq_layers", str),
        ("batch_size", int),
        ("device", str),
        ("dtype", str),
        ("hidden_dtype", str),
        ("max_new_tokens", int),
        ("shard_examples", int),
        ("scorer", str),
        ("answer_from", str),
        ("attn", str),
    ):
        if name in cap.data:
            kwargs[name] = cap.get(name, kind)
        cap.used.add(name)
    cond.finish()
    cap.finish()
    return _build("", lambda: CaptureOptions(**kwargs))


def _analysis_options(t: _Table) -> AnalysisOptions:
    for name in FUTURE_ANALYSES:
        _expect(
            not t.get(name, bool, False),
            t.key(name),
            "false (this priorscope version runs decay and report only)",
            True,
        )
    kwargs: dict[str, Any] = {}
    for name, kind in (
        ("decay", bool),
        ("report", bool),
        ("by", str),
        ("correct_at", (float, int)),
        ("severe", str),
        ("n_boot", int),
        ("ci", (float, int)),
        ("seed", int),
        ("scheduler", str),
    ):
        if name in t.data:
            kwargs[name] = t.get(name, kind)
        t.used.add(name)
    t.finish()
    return _build("", lambda: AnalysisOptions(**kwargs))


def _sweep_from_mapping(doc: Mapping[str, Any], base: Path, source: str) -> SweepConfig:
    top = _Table(dict(doc), "")
    models = top.get("models", list, [])
    benchmarks = top.get("benchmarks", list, [])
    root = top.get("root", str, "sweep_runs")
    out = top.get("out", str)
    kwargs: dict[str, Any] = {
        "root": _local(root, base),
        "out": None if out is None else _local(out, base),
        "models": tuple(_model(m, f"models[{i}]", base) for i, m in enumerate(models)),
        "benchmarks": tuple(
            _benchmark(b, f"benchmarks[{i}]", base) for i, b in enumerate(benchmarks)
        ),
        "capture": _capture_options(
            _Table(top.get("conditions", dict, {}), "conditions"),
            _Table(top.get("capture", dict, {}), "capture"),
        ),
        "analyses": _analysis_options(_Table(top.get("analyses", dict, {}), "analyses")),
        "parallel": top.get("parallel", str, "auto"),
        "wait_s": float(top.get("wait_s", (int, float), 86400.0)),
        "source": source,
    }
    top.finish()
    return SweepConfig(**kwargs)


def load_sweep(path: str | Path) -> SweepConfig:
    """Return the validated SweepConfig of the TOML file ``path``; errors name file and key."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(
            f"Expected a readable sweep file. Got {str(source)!r}: {exc.strerror}. "
            "Pass the path of your SWEEP.toml."
        ) from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(
            f"{source}: Expected TOML. Got a syntax error instead: {exc}. Fix that line."
        ) from None
    try:
        return _sweep_from_mapping(doc, source.resolve().parent, str(source))
    except PriorscopeError as exc:
        raise UsageError(f"{source}: {exc}") from None


__all__ = [
    "AnalysisOptions",
    "BenchmarkSpec",
    "CaptureOptions",
    "Job",
    "ModelSpec",
    "SweepConfig",
    "is_url",
    "join",
    "load_sweep",
]
