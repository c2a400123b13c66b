"""Sweeps: two synthetic benchmarks x two models (the organism and a tiny random model).

End to end through the real CLI, a SIGKILL of a real sweep process mid-way and a resume that
equals the uninterrupted sweep bitwise, several ranks, status, the combined table, and the
errors of the sweep file.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from store_support import assert_stores_bitwise_equal

from priorscope.cli.main import main
from priorscope.engine import DecayConfig, compute_decay
from priorscope.engine.errors import ConfigMismatchError, UsageError
from priorscope.engine.models.tiny import build_tiny
from priorscope.engine.sweep import load_sweep, run_sweep, store_state, sweep_status

N_EXAMPLES = 8  # per benchmark: 4 shards of 2 examples, so a kill can land inside a store


def sweep_toml(root: str, extra: str = "", parallel: str = "auto", ladder: str = "0.04") -> str:
    return f"""
root = "{root}"
parallel = "{parallel}"
wait_s = 300
[[models]]
name = "organism"
path = "builtin:organism"
[[models]]
name = "tiny"
path = "tiny_model"
batch_size = 4
[[benchmarks]]
name = "alpha"
file = "alpha.tsv"
[[benchmarks]]
name = "beta"
file = "beta.tsv"
format = "tsv"
[conditions]
ladder = [{ladder}]
total = true
[capture]
batch_size = 2
max_new_tokens = 3
shard_examples = 2
device = "cpu"
dtype = "float32"
[analyses]
n_boot = 40
{extra}
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Two benchmark files written by 'priorscope synth', a tiny model, and a finished sweep."""
    folder = tmp_path_factory.mktemp("sweep")
    common = ["--n", str(N_EXAMPLES), "--size", "56"]
    assert main(["synth", "--out", str(folder / "alpha.tsv"), "--benchmark", "alpha", *common]) == 0
    beta = ["--benchmark", "beta", "--seed", "3", "--mc", *common]
    assert main(["synth", "--out", str(folder / "beta.tsv"), *beta]) == 0
    build_tiny("qwen2_5_vl", folder / "tiny_model")
    ref_toml = write(folder, "ref.toml", sweep_toml("ref"))
    assert main(["sweep", str(ref_toml)]) == 0
    return SimpleNamespace(folder=folder, ref_toml=ref_toml, ref=load_sweep(ref_toml))


def table_numbers(out_dir: Path) -> list[tuple]:
    doc = json.loads((out_dir / "sweep.json").read_text())
    return [
        (r["model"], r["benchmark"], r["n"], json.dumps(r["metrics"], sort_keys=True))
        for r in doc["rows"]
    ]


def assert_same_sweep(ref: Path, other: Path) -> None:
    for model in ("organism", "tiny"):
        for bench in ("alpha", "beta"):
            assert_stores_bitwise_equal(
                str(ref / model / f"{bench}.zarr"), str(other / model / f"{bench}.zarr")
            )
    assert table_numbers(ref) == table_numbers(other)


# --------------------------------------------------------------------------------------------
# The finished sweep


def test_sweep_writes_one_store_per_pair_and_the_table(project) -> None:
    cfg = project.ref
    root = project.folder / "ref"
    assert [j.label for j in cfg.jobs()] == [
        "organism/alpha",
        "organism/beta",
        "tiny/alpha",
        "tiny/beta",
    ]
    for job in cfg.jobs():
        state = store_state(job.store)
        assert (state.state, state.committed, state.total) == ("complete", N_EXAMPLES, N_EXAMPLES)
        assert job.report_html.is_file() and job.decay_json.is_file()
    doc = json.loads((root / "sweep.json").read_text())
    keys = [c["key"] for c in doc["columns"]]
    assert keys == [
        "accuracy_all",
        "accuracy@blur@0.04",
        "accuracy@total",
        "blind_answerable",
        "blind_answerable_adjusted",
        "accuracy_not_blind",
        "inflation",
    ]
    assert [(r["model"], r["benchmark"]) for r in doc["rows"]] == [
        (j.model.name, j.benchmark.name) for j in cfg.jobs()
    ]


def test_table_numbers_equal_decay_of_each_store(project) -> None:
    cfg = project.ref
    doc = json.loads((project.folder / "ref" / "sweep.json").read_text())
    dcfg = DecayConfig(by="category", n_boot=40)
    for job, row in zip(cfg.jobs(), doc["rows"], strict=True):
        g = compute_decay(job.store, dcfg, in_memory=True).group(job.benchmark.name)
        m = row["metrics"]
        for key in ("accuracy_all", "blind_answerable", "blind_answerable_adjusted", "inflation"):
            for i, part in enumerate(("value", "low", "high")):
                want = float((g.values, g.low, g.high)[i][key])
                got = m[key][part]
                assert (got is None and not np.isfinite(want)) or got == pytest.approx(
                    want, rel=1e-12
                ), (job.label, key, part)
        for level in ("blur@0.04", "total"):
            c = ["clean", "blur@0.04", "total"].index(level)
            assert m[f"accuracy@{level}"]["value"] == pytest.approx(
                float(g.values["accuracy"][c]), rel=1e-12
            )
    # The organism answers its own synthetic benchmark; a random tiny model cannot.
    clean = {
        (r["model"], r["benchmark"]): r["metrics"]["accuracy_all"]["value"] for r in doc["rows"]
    }
    assert clean[("organism", "alpha")] > clean[("tiny", "alpha")]


def test_table_csv_and_html_link_every_report(project) -> None:
    root = project.folder / "ref"
    rows = list(csv.DictReader((root / "sweep.csv").open()))
    assert len(rows) == 4
    assert {"accuracy_all", "accuracy_all_low", "accuracy_all_high", "inflation_high"} <= set(
        rows[0]
    )
    html = (root / "sweep.html").read_text()
    for row in rows:
        assert (root / row["report"]).is_file()
        assert f'href="{row["report"]}"' in html
    assert "blind-answerable − chance" in html


def test_status_and_rerun_skip_finished_jobs(project, capsys) -> None:
    statuses = sweep_status(project.ref)
    assert all(s.done for s in statuses)
    assert main(["sweep", str(project.ref_toml), "--status"]) == 0
    assert "4 of 4 jobs done" in capsys.readouterr().out
    result = run_sweep(project.ref)
    assert [o.action for o in result.outcomes] == ["skipped"] * 4
    assert result.table is not None and result.table.json.is_file()


def test_changed_settings_of_a_finished_sweep_are_refused(project) -> None:
    toml = write(project.folder, "changed.toml", sweep_toml("ref", ladder="0.08"))
    with pytest.raises(ConfigMismatchError, match=r"organism/alpha.*ladder"):
        run_sweep(load_sweep(toml))
    assert main(["sweep", str(toml)]) == 1


# --------------------------------------------------------------------------------------------
# Kill and resume


def sweep_process(toml: Path) -> subprocess.Popen:
    """Start 'priorscope sweep' as a real process (the console script's module entry)."""
    return subprocess.Popen(
        [sys.executable, "-m", "priorscope.cli", "sweep", str(toml)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.slow
def test_sigkill_mid_sweep_then_resume_equals_uninterrupted(project) -> None:
    toml = write(project.folder, "crash.toml", sweep_toml("crash"))
    cfg = load_sweep(toml)
    second = cfg.jobs()[1]
    proc = sweep_process(toml)
    deadline = time.monotonic() + 240
    try:
        # Kill once the second store holds a committed shard: the first job is finished,
        # the second half written.
        while proc.poll() is None and time.monotonic() < deadline:
            state = store_state(second.store)
            if (state.state == "partial" and state.committed > 0) or state.state == "complete":
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()[0].decode()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    statuses = sweep_status(cfg)
    assert statuses[0].store.state == "complete"
    assert not all(s.done for s in statuses)
    assert not (project.folder / "crash" / "sweep.json").exists()
    before = [s.store.state for s in statuses]
    result = run_sweep(cfg)
    actions = [o.action for o in result.outcomes]
    assert actions[0] == "skipped"
    expected = {"absent": "captured", "partial": "resumed", "complete": "skipped"}
    assert actions == [expected[s] for s in before]
    assert all(s.done for s in sweep_status(cfg))
    assert_same_sweep(project.folder / "ref", project.folder / "crash")


# --------------------------------------------------------------------------------------------
# Several ranks without a coordinator


def sweep_process_of_rank(toml: Path, rank: int, world: int) -> subprocess.Popen:
    """Start one rank as torchrun would: RANK and WORLD_SIZE in the environment."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "WORLD_SIZE": str(world)}
    return subprocess.Popen(
        [sys.executable, "-m", "priorscope.cli", "sweep", str(toml)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["shards", "jobs"])
def test_two_ranks_equal_one(project, parallel: str) -> None:
    root = f"ranks_{parallel}"
    toml = write(project.folder, f"{root}.toml", sweep_toml(root, parallel=parallel))
    procs = [sweep_process_of_rank(toml, rank, 2) for rank in (1, 0)]
    outputs = []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=300)[0].decode())
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail(f"a sweep rank did not finish within 300 s ({parallel})")
        assert proc.returncode == 0, outputs[-1]
    # Rank 1 captured its part and left the analyses and the table to rank 0.
    assert "Rank 1/2" in outputs[0] and "Table:" not in outputs[0]
    assert "Rank 0/2" in outputs[1] and "Table:" in outputs[1]
    assert_same_sweep(project.folder / "ref", project.folder / root)


# --------------------------------------------------------------------------------------------
# The sweep file


def test_sweep_file_round_trip(project) -> None:
    cfg = project.ref
    assert cfg.root == str(project.folder / "ref")
    assert cfg.models[0].path == "builtin:organism"
    assert cfg.models[1].path == str(project.folder / "tiny_model")
    assert cfg.models[1].batch_size == 4
    assert cfg.benchmarks[1].data_options() == {"format": "tsv"}  # defaults left out
    job = cfg.jobs()[3]
    ccfg = cfg.capture_config(job, (1, 2), "cpu")
    assert (ccfg.out, ccfg.batch_size, ccfg.shard, ccfg.ladder) == (
        str(project.folder / "ref" / "tiny" / "beta.zarr"),
        4,
        (1, 2),
        (0.04,),
    )


def test_capture_reading_options_reach_every_job(project) -> None:
    doc = sweep_toml("ref").replace(
        "[capture]\n", '[capture]\nscorer = "vlmevalkit"\nanswer_from = "candidates"\n'
    )
    cfg = load_sweep(write(project.folder, "reading.toml", doc))
    for job in cfg.jobs():
        ccfg = cfg.capture_config(job, (0, 1), "cpu")
        assert (ccfg.scorer, ccfg.answer_from) == ("vlmevalkit", "candidates")
    assert project.ref.capture_config(project.ref.jobs()[0], (0, 1), "cpu").scorer == "priorscope"


BAD = [
    ("[capture]", "batch_sise = 2", "capture.batch_sise", "Did you mean 'batch_size'"),
    ("[capture]", "full_seq = -1", "capture.full_seq", "a non-negative integer"),
    ("[capture]", "layers = 3", "capture.layers", "Expected a string"),
    ("[capture]", "hidden_dtype = 'fp8'", "capture", "fp8"),
    ("[capture]", "scorer = 'vlmeval'", "capture.scorer", "priorscope, vlmevalkit"),
    ("[capture]", "answer_from = 'logits'", "capture.answer_from", "generate, candidates"),
    ("[capture]", "attn = 'flash'", "capture.attn", "auto, sdpa, eager, flash_attention_2"),
    ("[conditions]", "none = 'yes'", "conditions.none", "Expected true or false"),
    ("[analyses]", "by = 'colour'", "analyses.by", "benchmark, category"),
    ("[analyses]", "probes = true", "analyses.probes", "decay and report only"),
    ("", "out = 3", "out", "Expected a string"),
]


@pytest.mark.parametrize(("table", "line", "key", "text"), BAD)
def test_bad_values_name_file_and_key(project, table: str, line: str, key: str, text: str) -> None:
    base = sweep_toml("ref")
    doc = f"{line}\n{base}" if not table else base.replace(f"{table}\n", f"{table}\n{line}\n")
    toml = write(project.folder, "bad.toml", doc)
    with pytest.raises(UsageError) as info:
        load_sweep(toml)
    message = str(info.value)
    assert message.startswith(f"{toml}: Key '{key}'"), message
    assert text in message
    assert "Expected" in message and "Got" in message


def test_bad_ladder_entry_and_parallel_mode(project) -> None:
    toml = write(project.folder, "bad.toml", sweep_toml("ref", ladder="0.02, 'x'"))
    with pytest.raises(UsageError, match=r"bad\.toml: Key 'conditions\.ladder\[1\]'"):
        load_sweep(toml)
    toml = write(project.folder, "bad.toml", sweep_toml("ref", parallel="nodes"))
    with pytest.raises(
        UsageError, match=r"bad\.toml: Key 'parallel': Expected one of auto, shards, jobs"
    ):
        load_sweep(toml)


def test_bad_entries_name_their_index(project) -> None:
    folder = project.folder
    cases = [
        (sweep_toml("r").replace('name = "tiny"', 'name = "ti/ny"'), "models[1].name"),
        (sweep_toml("r").replace('file = "beta.tsv"', 'file = "nope.tsv"'), "benchmarks[1].file"),
        (sweep_toml("r").replace('name = "beta"', 'name = "alpha"'), "benchmarks"),
        (sweep_toml("r").replace('root = "r"', 'root = "s3://bucket/r"'), "out"),
        (sweep_toml("r").replace('format = "tsv"', 'fromat = "tsv"'), "benchmarks[1].fromat"),
    ]
    for text, key in cases:
        toml = write(folder, "bad.toml", text)
        with pytest.raises(UsageError) as info:
            load_sweep(toml)
        assert str(info.value).startswith(f"{toml}: Key '{key}'"), str(info.value)
    toml = write(folder, "bad.toml", "root = \n")
    with pytest.raises(UsageError, match=r"bad\.toml: Expected TOML"):
        load_sweep(toml)
    assert main(["sweep", str(folder / "missing.toml")]) == 2


def test_auto_layout_gives_whole_jobs_only_when_ranks_stay_busy(project) -> None:
    cfg = project.ref  # 4 jobs
    assert cfg.parallel == "auto"
    assert [cfg.layout(w) for w in (1, 2, 3, 4, 5, 8)] == [
        "jobs",  # one rank: nothing to split
        "jobs",  # 4 jobs / (2 ranks x 2 rounds) = 1.0
        "shards",  # 4 / (3 x 2) = 0.67
        "jobs",
        "jobs",  # 4 / (5 x 1) = 0.8: one rank idle
        "shards",  # 4 / 8
    ]
