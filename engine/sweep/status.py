"""What a sweep has done so far (``priorscope sweep SWEEP.toml --status``), read from its files."""

from __future__ import annotations

from dataclasses import dataclass

from priorscope.engine.sweep.config import Job, SweepConfig
from priorscope.engine.sweep.run import StoreState, analysis_done, store_state


@dataclass(frozen=True)
class JobStatus:
    """One job's progress: its store's state and whether its analyses are up to date."""

    job: Job
    store: StoreState
    analysed: bool

    @property
    def done(self) -> bool:
        return self.store.state == "complete" and self.analysed

    @property
    def progress(self) -> str:
        if self.store.state in ("absent", "unreadable"):
            return "—"
        return f"{self.store.committed}/{self.store.total}"


def sweep_status(cfg: SweepConfig) -> list[JobStatus]:
    """Return the status of every job, in sweep order; reads only commit logs and JSON files."""
    out = []
    for job in cfg.jobs():
        state = store_state(job.store)
        analysed = state.state == "complete" and cfg.analyses.decay and analysis_done(cfg, job)
        out.append(JobStatus(job, state, bool(analysed)))
    return out


def status_json(statuses: list[JobStatus]) -> list[dict[str, object]]:
    """Return the statuses as plain JSON rows."""
    return [
        {
            "model": s.job.model.name,
            "benchmark": s.job.benchmark.name,
            "store": s.job.store,
            "state": s.store.state,
            "committed": s.store.committed,
            "examples": s.store.total,
            "analysed": s.analysed,
            "done": s.done,
            "problem": s.store.problem,
        }
        for s in statuses
    ]


__all__ = ["JobStatus", "status_json", "sweep_status"]
