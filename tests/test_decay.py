"""Decay metrics on hand-made stores where every number is worked out by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from priorscope.engine.analysis import decay as D
from priorscope.engine.conditions import build_conditions, parse_condition
from priorscope.engine.errors import StoreError, UsageError
from priorscope.engine.store import open_store, write_answer_store

CONDS = build_conditions((0.04, 0.01), total=True, none=True)  # clean, b.01, b.04, total, none
MC = ("w", "x", "y", "z")

# Multiple-choice benchmark "m": four items, worked out in the comments of each test.
M_ANSWER = [
    ["A", "A", "A", "A", "A"],  # e0: right everywhere
    ["B", "B", "C", "C", "C"],  # e1: flips at blur@0.04
    ["C", "D", "D", "C", "D"],  # e2: flips at blur@0.01, back to C at total
    ["A", "D", "D", "D", ""],  # e3: wrong on clean, right when blurred, nothing extracted on none
]
M_GOLD = ["A", "B", "C", "D"]
# Open-ended benchmark "o": always answers "yes"; golds yes, yes, no (majority "yes").
O_ANSWER = [["yes"] * 5] * 3
O_GOLD = ["yes", "yes", "no"]


def _score(answers: list[list[str]], gold: list[str]) -> np.ndarray:
    return np.array([[float(a == g) for a in row] for row, g in zip(answers, gold, strict=True)])


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("decay") / "store.zarr"
    answer = M_ANSWER + O_ANSWER
    gold = M_GOLD + O_GOLD
    write_answer_store(
        path,
        conditions=CONDS,
        ids=[f"m{i}" for i in range(4)] + [f"o{i}" for i in range(3)],
        gold=[[g] for g in gold],
        options=[MC] * 4 + [()] * 3,
        answer=np.array(answer),
        score=_score(answer, gold),
        benchmark=["m"] * 4 + ["o"] * 3,
        category=["p", "p", "q", "q", "x", "x", "y"],
        chunk_rows=2,
    )
    return path


@pytest.fixture(scope="module")
def result(store):
    return D.compute_decay(store, D.DecayConfig(by="category", n_boot=200))


def _v(group: D.GroupResult, name: str) -> np.ndarray:
    return np.asarray(group.values[name])


def test_levels_order_clean_blur_ascending_total_and_none_apart() -> None:
    lv = D.resolve_levels(CONDS)
    assert lv.ladder_names == ("clean", "blur@0.01", "blur@0.04", "total")
    assert lv.names[lv.severe] == "blur@0.04" and lv.names[lv.none] == "none"
    assert D.resolve_levels(CONDS, "blur@0.01").severe == lv.names.index("blur@0.01")
    with pytest.raises(UsageError, match=r"blur@0\.02"):
        D.resolve_levels(CONDS, "blur@0.02")
    with pytest.raises(StoreError, match="clean"):
        D.resolve_levels([parse_condition("total")])


def test_accuracy_invariance_and_auc_by_hand(result) -> None:
    m = result.group("m")
    # axis order clean, blur@0.01, blur@0.04, total, none
    np.testing.assert_allclose(_v(m, "accuracy"), [0.75, 0.75, 0.5, 0.75, 0.25])
    np.testing.assert_allclose(_v(m, "invariance"), [1.0, 0.5, 0.25, 0.5, 0.25])
    # trapezoid over .75 .75 .5 .75 = 2.0, divided by K=3 times clean .75
    assert _v(m, "normalised_auc") == pytest.approx(8 / 9)
    assert _v(m, "strict_invariance") == pytest.approx(0.25)  # e2 returns to C, still not strict
    np.testing.assert_allclose(_v(m, "flip_distribution"), [0.25, 0.5, 0.25, 0.0])


def test_blind_answerable_gain_and_inflation_by_hand(result) -> None:
    m = result.group("m")
    assert _v(m, "blind_answerable") == pytest.approx(0.5)  # e0 and e3
    assert _v(m, "chance") == pytest.approx(0.25)  # 1 / four options
    assert _v(m, "majority_rate") == pytest.approx(0.25)  # golds A-D once each: "A" wins ties
    assert _v(m, "blind_answerable_adjusted") == pytest.approx(0.25)
    assert _v(m, "visual_gain") == pytest.approx(0.0)
    assert _v(m, "multimodal_gain") == pytest.approx(0.5)
    assert _v(m, "leakage") == pytest.approx(0.0)
    assert _v(m, "accuracy_all") == pytest.approx(0.75)
    assert _v(m, "accuracy_not_blind") == pytest.approx(1.0)  # e1, e2 both right on clean
    assert _v(m, "inflation") == pytest.approx(-0.25)
    np.testing.assert_allclose(_v(m, "became_correct"), [0, 0.25, 0.25, 0.25, 0])
    assert _v(m, "became_correct_any_blur") == pytest.approx(0.25)
    np.testing.assert_allclose(_v(m, "extraction_failure"), [0, 0, 0, 0, 0.25])


def test_open_ended_chance_is_a_uniform_guess_and_majority_rate_apart(result) -> None:
    o = result.group("o")
    assert _v(o, "chance") == pytest.approx(1 / 2)  # two distinct gold answers: yes, no
    assert _v(o, "majority_rate") == pytest.approx(2 / 3)  # "yes" is right on two of three
    assert _v(o, "blind_answerable") == pytest.approx(2 / 3)
    # Always "yes" beats a uniform guess: that is a prior, and the adjusted rate shows it.
    assert _v(o, "blind_answerable_adjusted") == pytest.approx(2 / 3 - 1 / 2)
    assert _v(o, "leakage") == pytest.approx(2 / 3 - 1 / 2)
    # Category y holds one item whose gold is "no": one candidate answer, chance 1, while the
    # model's constant "yes" is wrong, so blind-answerable sits one below chance.
    y = result.group("o", "y")
    assert y.n == 1 and _v(y, "chance") == pytest.approx(1.0)
    assert _v(y, "majority_rate") == pytest.approx(1.0)
    assert _v(y, "blind_answerable_adjusted") == pytest.approx(-1.0)
    assert _v(result.group("m", "q"), "accuracy")[0] == pytest.approx(0.5)


def test_result_reads_like_the_cli_from_python(store, result) -> None:
    est = result.metric("blind_answerable", benchmark="m")
    assert est.value == pytest.approx(0.5) and est.low <= est.value <= est.high
    assert str(est).startswith("50.0% [")
    assert result.metric("accuracy", "m", condition="blur@0.04").value == pytest.approx(0.5)
    curve = result.curve("accuracy", "m")
    assert list(curve) == list(result.levels.names) and curve["clean"].value == pytest.approx(0.75)
    frame = result.to_frame(intervals=True)
    row = frame[(frame.benchmark == "m") & frame.category.isna()].iloc[0]
    assert row["blind_answerable"] == pytest.approx(0.5) and row["n"] == 4
    assert row["accuracy@total"] == pytest.approx(0.75)
    assert row["flip_distribution@never"] == pytest.approx(0.25)
    assert row["chance_low"] <= row["chance"] <= row["chance_high"]
    with pytest.raises(UsageError, match="benchmark=NAME"):
        result.metric("chance")
    with pytest.raises(UsageError, match="condition=NAME"):
        result.metric("accuracy", "m")
    # A Store works wherever a path does, with the same numbers.
    again = D.compute_decay(open_store(store), D.DecayConfig(by="category", n_boot=200))
    assert again.metric("majority_rate", "o") == result.metric("majority_rate", "o")


def test_per_example_table(result) -> None:
    ex = result.examples
    order = list(ex["id"])
    flips = dict(zip(order, ex["flip_level"], strict=True))
    assert flips["m0"] is None and flips["m1"] == "blur@0.04" and flips["m2"] == "blur@0.01"
    blind = dict(zip(order, ex["blind_answerable"], strict=True))
    assert [blind[f"m{i}"] for i in range(4)] == [True, False, False, True]
    assert dict(zip(order, ex["became_correct_under_blur"], strict=True))["m3"]


def test_intervals_contain_value_are_seeded_and_degenerate_when_constant(store, result) -> None:
    for g in result.groups:
        for name, v in g.values.items():
            v, lo, hi = np.asarray(v), np.asarray(g.low[name]), np.asarray(g.high[name])
            ok = np.isnan(v) | ((lo <= v + 1e-12) & (v <= hi + 1e-12))
            assert ok.all(), (g.key, name)
    o = result.group("o")
    # Every item answered "yes" everywhere: invariance is 1 in every resample.
    assert np.asarray(o.low["invariance"]) == pytest.approx(np.ones(5))
    again = D.compute_decay(store, D.DecayConfig(by="category", n_boot=200))
    assert np.array_equal(again.group("m").low["accuracy"], result.group("m").low["accuracy"])
    other = D.compute_decay(store, D.DecayConfig(n_boot=200, seed=1))
    assert not np.array_equal(other.group("m").low["accuracy"], result.group("m").low["accuracy"])


def test_bootstrap_interval_matches_binomial_width(tmp_path) -> None:
    # 400 items, 200 right: the 95% interval of a proportion is about ±1.96*sqrt(.25/400).
    n = 400
    score = np.zeros((n, 2))
    score[: n // 2] = 1
    ans = np.where(score > 0, "A", "B")
    path = write_answer_store(
        tmp_path / "s.zarr",
        conditions=build_conditions((), total=True),
        ids=[str(i) for i in range(n)],
        gold=[["A"]] * n,
        answer=ans,
        score=score,
        options=[("a", "b")] * n,
    )
    g = D.compute_decay(path, D.DecayConfig(n_boot=2000)).groups[0]
    half = 1.96 * np.sqrt(0.25 / n)
    assert g.low["accuracy"][0] == pytest.approx(0.5 - half, abs=0.012)
    assert g.high["accuracy"][0] == pytest.approx(0.5 + half, abs=0.012)


def test_json_has_every_number_and_no_nan(result) -> None:
    doc = result.to_json()
    text = json.dumps(doc, allow_nan=False)
    back = json.loads(text)
    m = next(g for g in back["groups"] if g["benchmark"] == "m" and g["category"] is None)
    assert m["metrics"]["accuracy"]["blur@0.04"]["value"] == pytest.approx(0.5)
    assert m["metrics"]["flip_distribution"]["never"]["value"] == pytest.approx(0.25)
    assert back["ladder"] == ["clean", "blur@0.01", "blur@0.04", "total"]
    assert len(back["examples"]) == 7


def test_uncommitted_rows_are_left_out_and_counted(tmp_path) -> None:
    answer = np.array(M_ANSWER)
    path = write_answer_store(
        tmp_path / "s.zarr",
        conditions=CONDS,
        ids=list("abcd"),
        gold=[[g] for g in M_GOLD],
        options=[MC] * 4,
        answer=answer,
        score=_score(M_ANSWER, M_GOLD),
        done=[True, True, False, True],
    )
    r = D.compute_decay(path, D.DecayConfig(n_boot=50))
    assert r.n_uncommitted == 1 and r.groups[0].n == 3
    np.testing.assert_allclose(r.groups[0].values["accuracy"][0], 2 / 3)


def test_bad_scores_and_configs_are_refused(tmp_path) -> None:
    score = _score(M_ANSWER, M_GOLD)
    score[2, 1] = 1.5
    path = write_answer_store(
        tmp_path / "s.zarr",
        conditions=CONDS,
        ids=list("abcd"),
        gold=[[g] for g in M_GOLD],
        answer=np.array(M_ANSWER),
        score=score,
    )
    with pytest.raises(StoreError, match=r"example 2, condition 1"):
        D.compute_decay(path)
    with pytest.raises(UsageError, match="--by"):
        D.DecayConfig(by="template")
    with pytest.raises(UsageError, match="--correct-at"):
        D.DecayConfig(correct_at=0)
    # Checked in Python as on the CLI: the dataclass validates itself.
    with pytest.raises(UsageError, match=r"n_boot \(--n-boot\) of at least 10"):
        D.DecayConfig(n_boot=1)
    with pytest.raises(UsageError, match="--ci"):
        D.DecayConfig(ci=1.0)
    with pytest.raises(StoreError, match="no such path"):
        D.compute_decay(tmp_path / "missing.zarr")


# ---- property tests: the vectorised definitions against plain per-example loops ----------


def _reference(score: np.ndarray, answer: np.ndarray, lv: D.Levels) -> dict[str, float]:
    n = len(score)
    ladder = lv.ladder
    flips = []
    for i in range(n):
        first = next((p for p, c in enumerate(ladder) if answer[i, c] != answer[i, lv.clean]), 0)
        flips.append(first)
    correct = score >= 0.5
    blind = [all(correct[i, c] for c in (lv.severe, lv.total)) for i in range(n)]
    accs = [sum(score[i, c] for i in range(n)) / n for c in ladder]
    area = sum((accs[j] + accs[j + 1]) / 2 for j in range(len(accs) - 1))
    return {
        "never": sum(f == 0 for f in flips) / n,
        "blind": sum(blind) / n,
        "auc": area / ((len(accs) - 1) * accs[0]) if accs[0] > 0 else float("nan"),
        "strict": sum(all(answer[i, c] == answer[i, lv.clean] for c in ladder) for i in range(n))
        / n,
    }


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 12).flatmap(
        lambda n: st.tuples(
            st.lists(
                st.lists(st.sampled_from("ABC"), min_size=5, max_size=5), min_size=n, max_size=n
            ),
            st.lists(st.sampled_from("ABC"), min_size=n, max_size=n),
        )
    )
)
def test_definitions_match_plain_loops(data) -> None:
    rows, gold = data
    answer = np.array(rows)
    score = (answer == np.array(gold)[:, None]).astype(float)
    lv = D.resolve_levels(CONDS)
    inv = D.invariant_answers(answer, lv.clean)
    ex = D.derive_per_example(
        [[g] for g in gold],
        [("a", "b", "c")] * len(gold),
        score,
        inv,
        np.ones_like(inv),
        lv,
        D.DecayConfig(),
    )
    stats = D.group_statistics(ex, lv)
    ref = _reference(score, answer, lv)
    assert stats["flip_distribution"][0] == pytest.approx(ref["never"])
    assert stats["flip_distribution"].sum() == pytest.approx(1.0)
    assert stats["strict_invariance"] == pytest.approx(ref["strict"])
    assert stats["strict_invariance"] == pytest.approx(stats["flip_distribution"][0])
    assert stats["blind_answerable"] == pytest.approx(ref["blind"])
    assert stats["invariance"][lv.clean] == 1.0
    if np.isnan(ref["auc"]):
        assert np.isnan(stats["normalised_auc"])
    else:
        assert stats["normalised_auc"] == pytest.approx(ref["auc"])
