"""Run a sweep: capture every (model, benchmark) job into its own store, then analyse each store.

Resumable without a coordinator: the stores themselves are the state. A complete store is
verified (``engine.store.verify``) and checked against the sweep's settings, then skipped; a
partial one is resumed by running the very same capture, which recomputes only uncommitted
shards (so the result is bitwise what an uninterrupted sweep gives). Analyses write their JSON
last and atomically, keyed by the store's creation time and the analysis settings, so a sweep
killed while analysing simply redoes that job's analyses.

Several processes (``torchrun --nproc_per_node K priorscope sweep SWEEP.toml``, or
``RANK``/``WORLD_SIZE`` set by hand on several machines) share the work in one of two ways:
``parallel = "shards"`` runs every job on every rank, each rank capturing its own example shards
of one store; ``parallel = "jobs"`` gives each rank whole jobs (round robin); ``"auto"`` picks
one of them from the job and rank counts (``SweepConfig.layout``). Rank 0 then waits
for every store to be complete and runs the analyses and the combined table.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from priorscope.engine.capture.config import (
    IDENTITY_FIELDS,
    CaptureConfig,
    optional_identity,
    parse_shard,
)
from priorscope.engine.errors import ConfigMismatchError, StoreError
from priorscope.engine.sweep.config import Job, ModelSpec, SweepConfig
from priorscope.engine.sweep.table import TableFiles, write_table

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


@dataclass(frozen=True)
class StoreState:
    """What a job's store holds now: ``state`` is absent, partial, complete or unreadable."""

    state: str
    committed: int = 0
    total: int = 0
    problem: str = ""


@dataclass(frozen=True)
class JobOutcome:
    """What this process did with one job: captured, resumed, skipped or left to another rank."""

    job: Job
    action: str
    seconds: float


@dataclass(frozen=True)
class SweepResult:
    """Every job's outcome on this rank; rank 0 also has the decay documents and the table."""

    rank: int
    world: int
    outcomes: tuple[JobOutcome, ...]
    decay: tuple[dict[str, Any], ...] = ()
    table: TableFiles | None = None


def store_state(path: str) -> StoreState:
    """Return the state of the store at ``path`` from its commit log (cheap: one small array)."""
    from priorscope.engine import open_store
    from priorscope.engine.store.backend import exists

    if not exists(path):
        return StoreState("absent")
    try:
        done = open_store(path).finished()  # skipped examples (--on-bad skip) are done too
    except StoreError as exc:
        return StoreState("unreadable", problem=str(exc))
    state = "complete" if done.all() else "partial"
    return StoreState(state, int(done.sum()), int(done.size))


def rank_device(device: str, env: dict[str, str] | None = None) -> str:
    """Return the device of this rank: ``auto`` is cuda:LOCAL_RANK when CUDA is there, else cpu."""
    import torch

    env = dict(os.environ) if env is None else env
    if device != "auto":
        return device
    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(env.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"


def recorded_drift(recorded: dict[str, Any], cfg: CaptureConfig) -> list[str]:
    """Return the settings a finished store was captured with that differ from ``cfg``'s.

    Compares what is known without loading the model: the resolved model folder, the data
    file's path and bytes, the conditions, sites, layers and answer length; ``auto`` dtypes and
    an automatic shard size accept whatever the store resolved them to.
    """
    from priorscope.engine.capture.plan import file_sha256
    from priorscope.engine.models.registry import resolve_path
    from priorscope.engine.store.dtypes import parse_hidden_dtype
    from priorscope.engine.store.layout import config_differences

    full = cfg.to_json()
    wanted = {key: full[key] for key in IDENTITY_FIELDS}
    # builtin:NAME is recorded as given (as capture's identity() does); folders resolved.
    builtin = cfg.model.startswith("builtin:")
    wanted["model"] = cfg.model if builtin else resolve_path(cfg.model)[0]
    wanted["data"] = {"path": str(Path(cfg.data).resolve()), "sha256": file_sha256(cfg.data)}
    for key in ("dtype", "hidden_dtype"):
        if wanted[key] == "auto":
            wanted[key] = recorded.get(key)
        else:
            wanted[key] = parse_hidden_dtype(wanted[key])
    if not wanted["shard_examples"]:
        wanted["shard_examples"] = recorded.get("shard_examples")
    wanted.update(optional_identity(cfg))
    if "attn_implementation" in recorded:  # chosen at load time (attention auto): accepted
        wanted["attn_implementation"] = recorded["attn_implementation"]
    return config_differences(recorded, json.loads(json.dumps(wanted)))


def check_finished(cfg: SweepConfig, job: Job) -> None:
    """Raise unless the complete store of ``job`` verifies and matches the sweep's settings."""
    from priorscope.engine import open_store, verify

    report = verify(job.store)
    if not report.ok:
        raise StoreError(
            f"Expected the finished store of {job.label} to verify. Got: "
            + "; ".join(report.problems)
            + f". Delete {job.store} and run the sweep again to recapture it."
        )
    recorded = dict(open_store(job.store).attrs.get("config") or {})
    drift = recorded_drift(recorded, cfg.capture_config(job, (0, 1), "cpu"))
    if drift:
        raise ConfigMismatchError(
            f"Expected the store of {job.label} ({job.store}) to hold this sweep's settings. "
            "Got a store captured with others: " + "; ".join(drift) + ". Use another root for "
            "a new sweep, or delete that store to recapture it."
        )


def _by_model(jobs: list[Job]) -> Iterator[tuple[ModelSpec, list[Job]]]:
    """Yield (model, its jobs) in sweep order, so each rank loads each model at most once."""
    seen: dict[str, list[Job]] = {}
    models: dict[str, ModelSpec] = {}
    for job in jobs:
        seen.setdefault(job.model.name, []).append(job)
        models[job.model.name] = job.model
    for name, group in seen.items():
        yield models[name], group


def _load(model: ModelSpec, cfg: SweepConfig, device: str) -> Any:
    """Return the model's adapter on ``device`` in the dtype capture would pick."""
    from priorscope.engine import load_model
    from priorscope.engine.capture.setup import resolve_dtype

    dtype = model.dtype or cfg.capture.dtype
    return load_model(
        model.path,
        device=device,
        dtype=resolve_dtype(dtype, device),
        attn_implementation=cfg.capture.attn,
    )


def capture_jobs(
    cfg: SweepConfig, rank: int, world: int, *, log: Log = _quiet, progress: bool = False
) -> list[JobOutcome]:
    """Return the outcome of every job after capturing what this rank owns of each."""
    import dataclasses

    from priorscope.engine import capture

    device = rank_device(cfg.capture.device)
    layout = cfg.layout(world)
    shard = (rank, world) if layout == "shards" else (0, 1)
    outcomes = []
    for model, jobs in _by_model(cfg.jobs()):
        adapter = None
        for job in jobs:
            t0 = time.perf_counter()
            if layout == "jobs" and job.index % world != rank:
                outcomes.append(JobOutcome(job, "other rank", 0.0))
                continue
            state = store_state(job.store)
            if state.state == "complete":
                check_finished(cfg, job)
                log(f"{job.label}: complete, verified, skipped")
                outcomes.append(JobOutcome(job, "skipped", time.perf_counter() - t0))
                continue
            if state.state == "unreadable":
                raise StoreError(f"{job.label}: {state.problem}")
            adapter = adapter or _load(model, cfg, device)
            action = "resumed" if state.state == "partial" else "captured"
            verb = "resuming" if action == "resumed" else "capturing"
            log(f"{job.label}: {verb} ({state.committed}/{state.total} committed before)")
            ccfg = dataclasses.replace(cfg.capture_config(job, shard, device), progress=progress)
            capture(ccfg, adapter=adapter)
            outcomes.append(JobOutcome(job, action, time.perf_counter() - t0))
        del adapter  # one model in memory at a time
    return outcomes


def wait_complete(job: Job, timeout_s: float, poll_s: float = 1.0) -> None:
    """Return once every example of the job's store is committed (other ranks may still write)."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = store_state(job.store)
        if state.state == "complete":
            return
        if time.monotonic() > deadline:
            raise StoreError(
                f"Expected the store of {job.label} to be complete within {timeout_s:.0f} s. "
                f"Got {state.state} ({state.committed}/{state.total} committed). Check that "
                "every rank is running, or run the same sweep command again to resume it."
            )
        time.sleep(poll_s)


def _marker(cfg: SweepConfig, job: Job) -> dict[str, Any]:
    """Return what a job's analysis outputs depend on: the store's creation and the settings."""
    from priorscope.engine import open_store

    return {
        "store": job.store,
        "store_created": open_store(job.store).attrs.get("created"),
        "analyses": cfg.analyses.to_json(),
    }


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def write_json_atomic(path: Path, doc: Any) -> Path:
    """Write ``doc`` to ``path`` through a temporary sibling and a rename (never half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, allow_nan=False), encoding="utf-8")
    os.replace(tmp, path)
    return path


def analysis_done(cfg: SweepConfig, job: Job) -> bool:
    """Return whether the job's decay JSON (and report) match its store and the settings."""
    doc = _read_json(job.decay_json)
    if doc is None or doc.get("sweep") != _marker(cfg, job):
        return False
    return not cfg.analyses.report or job.report_html.is_file()


def analyse_job(cfg: SweepConfig, job: Job, *, scheduler: str | None = None) -> dict[str, Any]:
    """Return the job's decay document, computing decay (and the report) unless up to date."""
    from priorscope.engine import DecayConfig, compute_decay

    marker = _marker(cfg, job)
    if analysis_done(cfg, job):
        return _read_json(job.decay_json) or {}
    a = cfg.analyses
    dcfg = DecayConfig(
        by=a.by,
        correct_at=a.correct_at,
        severe=a.severe,
        n_boot=a.n_boot,
        ci=a.ci,
        seed=a.seed,
        scheduler=scheduler or a.scheduler,
    )
    if a.report:
        from priorscope.engine import ReportConfig, write_report

        title = f"priorscope: {job.model.name} on {job.benchmark.name}"
        result = write_report(job.store, job.report_html, ReportConfig(decay=dcfg, title=title))
        decay = result.decay
    else:
        decay = compute_decay(job.store, dcfg)
    doc = decay.to_json()
    doc["sweep"] = marker
    doc["job"] = {"model": job.model.name, "benchmark": job.benchmark.name}
    write_json_atomic(job.decay_json, doc)  # last: its presence means the job is analysed
    return doc


def run_sweep(
    cfg: SweepConfig,
    *,
    shard: tuple[int, int] | None = None,
    scheduler: str | None = None,
    log: Log = _quiet,
    progress: bool = False,
) -> SweepResult:
    """Return what this rank did after capturing its part of every job (rank 0: and analysing).

    ``shard`` is (rank, world); by default RANK/WORLD_SIZE (torchrun), else a single process.
    ``scheduler`` overrides the analyses' dask scheduler (e.g. tcp://HOST:8786).
    """
    rank, world = shard if shard is not None else parse_shard(None)
    outcomes = capture_jobs(cfg, rank, world, log=log, progress=progress)
    if rank != 0 or not cfg.analyses.decay:
        return SweepResult(rank, world, tuple(outcomes))
    docs = []
    # Alone, nobody else can finish a store: an incomplete one is an error at once.
    wait_s = cfg.wait_s if world > 1 else 0.0
    for job in cfg.jobs():
        wait_complete(job, wait_s)
        check_finished(cfg, job)
        log(f"{job.label}: analysing")
        docs.append(analyse_job(cfg, job, scheduler=scheduler))
    table = write_table(cfg, list(zip(cfg.jobs(), docs, strict=True)))
    log(f"table: {table.html}")
    return SweepResult(rank, world, tuple(outcomes), tuple(docs), table)


__all__ = [
    "JobOutcome",
    "StoreState",
    "SweepResult",
    "analyse_job",
    "analysis_done",
    "capture_jobs",
    "check_finished",
    "rank_device",
    "recorded_drift",
    "run_sweep",
    "store_state",
    "wait_complete",
]
