"""Rich progress for a capture: examples/s, tokens/s, MB/s written and the ETA."""

from __future__ import annotations

import sys
import time
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class CaptureProgress:
    """A progress bar over examples whose description carries the capture's rates."""

    def __init__(self, total: int, *, enabled: bool = True) -> None:
        self.total = total
        self.enabled = enabled
        self.done = 0
        self.tokens = 0
        self.bytes = 0
        self._start = time.perf_counter()
        self._progress = Progress(
            TextColumn("capture"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rates]}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            disable=not enabled,
        )
        self._task = self._progress.add_task("capture", total=total, rates="")

    def __enter__(self) -> CaptureProgress:
        self._progress.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.__exit__(exc_type, exc, tb)

    def rates(self) -> dict[str, float]:
        """Return examples/s, tokens/s and MB/s since the start."""
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        return {
            "examples_per_s": self.done / elapsed,
            "tokens_per_s": self.tokens / elapsed,
            "mb_per_s": self.bytes / elapsed / 1e6,
        }

    def advance(self, examples: int, tokens: int, bytes_written: int) -> None:
        """Record ``examples`` more done; ``tokens`` and ``bytes_written`` are running totals."""
        self.done += examples
        self.tokens, self.bytes = tokens, bytes_written
        r = self.rates()
        text = (
            f"{r['examples_per_s']:.2f} ex/s  {r['tokens_per_s']:.0f} tok/s  "
            f"{r['mb_per_s']:.1f} MB/s"
        )
        self._progress.update(self._task, advance=examples, rates=text)


class RankLog:
    """One line per step of a sharded capture on stderr, prefixed with the rank.

    Ranks of a torchrun (or ``--shard i/n``) capture run side by side: each says what it owns,
    what it waits for and what it did, so a silent rank is a stuck rank. A single-process
    capture (world 1) stays quiet; its progress bar says enough.
    """

    def __init__(self, rank: int, world: int) -> None:
        self.prefix = f"[rank {rank}/{world}]"
        self.enabled = world > 1

    def say(self, text: str) -> None:
        if self.enabled:
            print(f"{self.prefix} {text}", file=sys.stderr, flush=True)


def describe_runs(indices: list[int]) -> str:
    """Return ascending ints as compact ranges ('0-3, 8, 12-15'); at most 8 runs shown."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    parts = [f"{a}-{b}" if b > a else f"{a}" for a, b in runs]
    more = f" and {len(parts) - 8} more ranges" if len(parts) > 8 else ""
    return ", ".join(parts[:8]) + more
