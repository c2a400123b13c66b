"""Probe solvers against plain references: ridge vs a direct solve, logistic vs sklearn, the
grouped MLP vs each unit alone; targets, splits, controls and the config's validation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from priorscope.engine.errors import UnknownNameError, UsageError, did_you_mean
from priorscope.engine.probes import ProbeConfig, parse_kinds
from priorscope.engine.probes.cells import PERM, evaluate, probe_specs
from priorscope.engine.probes.controls import control_target, permutation_p, permuted, wilson
from priorscope.engine.probes.linear import (
    LogisticProblem,
    make_basis,
    one_hot_pm,
    ridge_fit,
    ridge_subset,
    solve_logistic,
)
from priorscope.engine.probes.mlp import Unit, train_units
from priorscope.engine.probes.splits import assign_folds, group_keys
from priorscope.engine.probes.targets import OTHER, TargetInputs, build_targets, encode


def _data(n: int, d: int, k: int, seed: int, offset: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
    """Return rows [n, d] with a large mean offset, a low-rank background and class signal."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    background = rng.standard_normal((n, 4)) @ rng.standard_normal((4, d)) * 3
    x = rng.standard_normal((n, d)) + background + rng.standard_normal((k, d))[y] * 0.4 + offset
    return x, y


def _standardise(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(0)) / x.std(0)


# ---- ridge ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "d"), [(300, 40), (60, 150)])  # Gram and n x n kernel paths
def test_ridge_matches_a_direct_solve(n: int, d: int) -> None:
    x, y = _data(n, d, 3, seed=n)
    basis = make_basis(torch.tensor(x))
    labels = torch.tensor(np.stack([y, (y + 1) % 3], 1))
    alpha = torch.tensor([7.0, 250.0], dtype=torch.float64)
    W, b = ridge_fit(basis, labels, [3, 3], alpha)
    z = _standardise(x)
    for j in range(2):
        codes = one_hot_pm(labels[:, j], 3).numpy()
        yc = codes - codes.mean(0)
        zc = z - z.mean(0)
        direct = np.linalg.solve(zc.T @ zc + alpha[j].item() * np.eye(d), zc.T @ yc)
        ours = W[:, 3 * j : 3 * j + 3].numpy() * x.std(0)[:, None]  # back to standardised units
        rel = np.abs(ours - direct).max() / np.abs(direct).max()
        assert rel < 1e-6, rel
        scores = x @ W[:, 3 * j : 3 * j + 3].numpy() + b[3 * j : 3 * j + 3].numpy()
        np.testing.assert_allclose(scores, zc @ direct + codes.mean(0), rtol=1e-6, atol=1e-9)


def test_ridge_on_a_row_subset_uses_woodbury_exactly() -> None:
    x, y = _data(400, 60, 4, seed=3)
    basis = make_basis(torch.tensor(x))
    keep = torch.from_numpy(np.random.default_rng(0).random(400) < 0.8)
    codes = one_hot_pm(torch.tensor(y)[keep], 4)
    alphas = torch.tensor([0.5, 30.0, 4000.0], dtype=torch.float64)
    coef, intercept = ridge_subset(basis, keep, codes, alphas)
    p = basis.P.numpy()[keep.numpy()]
    pc = p - p.mean(0)
    yc = codes.numpy() - codes.numpy().mean(0)
    for a, alpha in enumerate(alphas.tolist()):
        direct = np.linalg.solve(pc.T @ pc + alpha * np.eye(p.shape[1]), pc.T @ yc)
        assert np.abs(coef[a].numpy() - direct).max() / np.abs(direct).max() < 1e-6
        fitted = p @ coef[a].numpy() + intercept[a].numpy()
        np.testing.assert_allclose(
            fitted, pc @ direct + codes.numpy().mean(0), rtol=1e-6, atol=1e-9
        )


def test_ridge_probes_with_unlabelled_rows_fit_only_their_labelled_rows() -> None:
    x, y = _data(300, 20, 3, seed=5)
    y2 = y.copy()
    y2[::7] = -1
    basis = make_basis(torch.tensor(x))
    W, _ = ridge_fit(
        basis, torch.tensor(np.stack([y2], 1)), [3], torch.tensor([5.0], dtype=torch.float64)
    )
    keep = y2 >= 0
    z = _standardise(x)[keep]  # standardised on every row, fitted on the labelled ones
    codes = one_hot_pm(torch.tensor(y2[keep]), 3).numpy()
    zc, yc = z - z.mean(0), codes - codes.mean(0)
    direct = np.linalg.solve(zc.T @ zc + 5.0 * np.eye(20), zc.T @ yc)
    np.testing.assert_allclose(W.numpy() * x.std(0)[:, None], direct, rtol=1e-6, atol=1e-10)


# ---- logistic ------------------------------------------------------------------------------


def test_batched_logistic_matches_sklearn_coefficients() -> None:
    from sklearn.linear_model import LogisticRegression

    x, y = _data(500, 30, 4, seed=11)
    basis = make_basis(torch.tensor(x))
    cs = [1e-3, 1e-1, 10.0]
    labels = torch.tensor(np.stack([y] * 3 + [y % 2], 1))
    problem = LogisticProblem(
        basis.P,
        basis.lam,
        labels,
        [4, 4, 4, 2],
        torch.tensor([1 / c for c in cs] + [1.0], dtype=torch.float64),
    )
    fit = solve_logistic(problem, max_iter=2000, tol=1e-12)
    assert bool(fit.converged.all())
    z = _standardise(x)
    offsets = [0, 4, 8, 12, 14]
    for j, (c, target) in enumerate([*zip(cs, [y] * 3, strict=True), (1.0, y % 2)]):
        ref = LogisticRegression(C=c, tol=1e-12, max_iter=20000).fit(z, target)
        ours = (basis.V @ fit.theta[:-1, offsets[j] : offsets[j + 1]]).numpy()
        if ours.shape[1] == 2:  # sklearn keeps one column for two classes: w1 - w0
            ours = ours[:, 1:] - ours[:, :1]
        ref_w = ref.coef_.T
        assert np.abs(ours - ref_w).max() / np.abs(ref_w).max() < 1e-4


def test_logistic_in_a_float32_basis_matches_sklearn_and_the_float64_basis() -> None:
    """Fits use a float32 rotation (twice as fast); the problem solved is still sklearn's."""
    from sklearn.linear_model import LogisticRegression

    x, y = _data(600, 80, 5, seed=21)
    b32, b64 = make_basis(torch.tensor(x), torch.float32), make_basis(torch.tensor(x))
    assert b32.P.dtype == torch.float32 and b32.lam.dtype == torch.float64
    # diag(lam) bounds P^T P, as the majorisation step needs.
    gram = b32.P.double().T @ b32.P.double()
    assert torch.linalg.eigvalsh(torch.diag(b32.lam) - gram).min() >= 0
    # Fewer rows than features: the kernel path, computed in float64, kept in float32.
    k32 = make_basis(torch.tensor(x[:50]), torch.float32)
    eye = torch.eye(k32.V.shape[1], dtype=torch.float64)
    assert (
        k32.V.dtype == torch.float32
        and (k32.V.double().T @ k32.V.double() - eye).abs().max() < 1e-5
    )
    gram = k32.P.double().T @ k32.P.double()
    assert torch.linalg.eigvalsh(torch.diag(k32.lam) - gram).min() >= 0
    labels = torch.tensor(np.stack([y, y % 2], 1))
    inv_c = torch.tensor([1 / 0.05, 1.0], dtype=torch.float64)
    fits = [
        solve_logistic(LogisticProblem(b.P, b.lam, labels, [5, 2], inv_c), max_iter=3000, tol=1e-10)
        for b in (b32, b64)
    ]
    assert all(bool(f.converged.all()) for f in fits)
    z = _standardise(x)
    for j, (c, target, cols) in enumerate([(0.05, y, slice(0, 5)), (1.0, y % 2, slice(5, 7))]):
        ref = LogisticRegression(C=c, tol=1e-12, max_iter=20000).fit(z, target).coef_.T
        for b, fit in zip((b32, b64), fits, strict=True):
            ours = (b.V.double() @ fit.theta[:-1, cols]).numpy()
            if ours.shape[1] == 2:
                ours = ours[:, 1:] - ours[:, :1]
            assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-4, j


def test_constant_features_give_a_null_basis_and_a_finite_fit() -> None:
    """A site where every example holds the same vector (e.g. the last token's embedding before
    the decoder) has no direction to fit: the basis is all zero (empty on the n < d kernel
    path) and logistic probes still fit, finite, in either precision."""
    x = np.ones((40, 16), dtype=np.float32)
    y = np.arange(40) % 3
    for dtype, rows in ((torch.float32, 40), (torch.float64, 40), (torch.float32, 8)):
        b = make_basis(torch.tensor(x[:rows]), dtype)
        assert float(b.P.abs().sum()) == 0.0 and float(b.lam.abs().sum()) == 0.0
        assert (b.P.shape[1] == 0) == (rows < x.shape[1])
        problem = LogisticProblem(
            b.P, b.lam, torch.tensor(y[:rows, None]), [3], torch.tensor([1.0], dtype=torch.float64)
        )
        fit = solve_logistic(problem, max_iter=200, tol=1e-10)
        assert torch.isfinite(fit.theta).all()


def test_logistic_handles_unlabelled_rows_and_absent_classes() -> None:
    x, y = _data(200, 10, 3, seed=2)
    y = y.copy()
    y[y == 2] = 0  # class 2 never occurs: its logit must simply go down, stay finite
    y[:20] = -1
    basis = make_basis(torch.tensor(x))
    problem = LogisticProblem(
        basis.P, basis.lam, torch.tensor(y[:, None]), [3], torch.tensor([1.0], dtype=torch.float64)
    )
    fit = solve_logistic(problem, max_iter=500, tol=1e-10)
    assert bool(fit.converged.all()) and torch.isfinite(fit.theta).all()
    assert fit.theta[-1, 2].item() < -30 and fit.theta[:-1, 2].abs().max().item() == 0.0


# ---- MLP -----------------------------------------------------------------------------------


def test_grouped_mlp_units_train_as_if_alone() -> None:
    x, y = _data(240, 12, 3, seed=4, offset=0.0)
    z = torch.tensor(_standardise(x), dtype=torch.float32)
    y_all = torch.tensor(np.stack([y, (y + 1) % 3, y % 2], 1))
    cfg = ProbeConfig(mlp_max_epochs=15, mlp_patience=100, mlp_batch=64)
    units = [Unit(0, 3, 8, 1e-4, [1]), Unit(1, 3, 16, 1e-2, [2]), Unit(2, 2, 8, 1e-4, [3])]
    tr, va = slice(0, 180), slice(180, 240)
    group, loss, _, _ = train_units(z[tr], y_all[tr], z[va], y_all[va], units, cfg, [9])
    for i, unit in enumerate(units):
        alone, loss1, _, _ = train_units(
            z[tr], y_all[tr, i : i + 1], z[va], y_all[va, i : i + 1], [unit], cfg, [9]
        )
        group.mu, group.sigma = torch.zeros(12), torch.ones(12)
        alone.mu, alone.sigma = torch.zeros(12), torch.ones(12)
        together = group.select([i]).logits(z[va])
        np.testing.assert_allclose(
            together.detach().numpy(), alone.logits(z[va]).detach().numpy(), rtol=1e-4, atol=1e-5
        )
        assert loss[i].item() == pytest.approx(loss1.item(), rel=1e-5)


# ---- labels, splits, controls -------------------------------------------------------------


def _inputs(n: int = 60) -> TargetInputs:
    conds = ("clean", "total")
    answer = np.array([["red", "blue"]] * (n // 2) + [["green", ""]] * (n // 2), dtype=object)
    answer[0, 0] = "pink"  # one rare answer
    score = np.tile([[1.0, 0.0]], (n, 1))
    gold = tuple((c,) for c in ["red"] * (n // 2) + ["green"] * (n // 2))
    meta = {"template": np.array(["color", "count", "shape"] * (n // 3), dtype=object)}

    def column(name: str) -> np.ndarray:
        if name not in meta:
            raise UnknownNameError(f"Unknown example column {name!r}.")
        return meta[name]

    return TargetInputs(conds, answer, score, column, gold)


def test_targets_per_condition_prior_and_rare_classes() -> None:
    gold, answer, prior, correct, template = build_targets(
        ("gold", "answer", "prior", "correct", "template"), _inputs(), ("clean",), 5, "pool"
    )
    assert gold.classes == ("green", "red") and (gold.labels[:, 0] == gold.labels[:, 1]).all()
    assert answer.per_condition and answer.dropped == ("pink",)  # alone it is too rare to pool
    assert (answer.labels[30:, 1] == -1).all()  # no answer extracted under total
    assert prior.classes == ("blue",) and not prior.usable  # one class left: nothing to probe
    assert correct.classes == ("1",) and not correct.usable  # always right under clean
    assert template.n_classes == 3
    rare = encode(
        "t", np.array([["a"]] * 20 + [["b"]] * 3 + [["c"]] * 3, dtype=object), [0], 5, "pool", False
    )
    assert rare.classes == (OTHER, "a") and rare.pooled == ("b", "c")
    with pytest.raises(UsageError, match="total"):
        inputs = _inputs()
        build_targets(
            ("prior",),
            TargetInputs(
                ("clean",), inputs.answer[:, :1], inputs.score[:, :1], inputs.column, inputs.gold
            ),
            ("clean",),
            1,
            "pool",
        )
    with pytest.raises(UnknownNameError):
        build_targets(("tempalte",), _inputs(), ("clean",), 1, "pool")


def test_folds_keep_image_groups_together_and_are_seeded() -> None:
    ids = tuple(f"e{i}" for i in range(103))
    images = np.array([f"img{i // 3}" for i in range(103)], dtype=object)
    keys, by = group_keys(ids, ["image_sha256"], lambda name: images, "auto")
    assert by == "image_sha256"
    split = assign_folds(keys, 5, seed=1, group_by=by)
    for img in np.unique(images):
        assert len(set(split.fold[images == img].tolist())) == 1
    sizes = np.bincount(split.fold, minlength=5)
    assert sizes.max() - sizes.min() <= 3
    assert np.array_equal(split.fold, assign_folds(keys, 5, seed=1, group_by=by).fold)
    assert not np.array_equal(split.fold, assign_folds(keys, 5, seed=2, group_by=by).fold)

    def no_columns(name: str) -> np.ndarray:  # a table without that column refuses the name
        raise did_you_mean(name, ["question"], "example column")

    assert group_keys(ids, [], no_columns, "auto")[1] == "id"
    with pytest.raises(UsageError, match="groups"):
        assign_folds(np.array(["a", "a", "b"], dtype=object), 5, 0)


def test_control_task_is_a_function_of_the_item_type_with_the_targets_balance() -> None:
    inputs = _inputs(600)
    (gold,) = build_targets(("gold",), inputs, ("clean",), 1, "pool")
    types = np.array([f"q{i % 40}" for i in range(600)], dtype=object)
    control = control_target(gold, types, seed=3)
    for t in np.unique(types):
        assert len(set(control.labels[types == t, 0].tolist())) == 1
    assert control.name == "gold~control" and control.n_classes == gold.n_classes
    share = (control.labels[:, 0] == 0).mean()
    assert abs(share - 0.5) < 0.25  # drawn from the target's 50/50 balance over 40 types
    y = np.array([0, 1, 2, -1, 2, 1])
    p = permuted(y, 0, "x")
    assert (p[y < 0] == -1).all() and sorted(p[y >= 0]) == sorted(y[y >= 0])


def test_wilson_interval_and_permutation_p() -> None:
    low, high = wilson(50, 100)
    assert low == pytest.approx(0.4038315, abs=1e-6) and high == pytest.approx(0.5961685, abs=1e-6)
    assert permutation_p(0.9, np.array([0.5, 0.6, 0.95])) == pytest.approx(2 / 4)
    assert np.isnan(wilson(0, 0)[0])


def test_evaluate_pools_folds_and_scores_the_majority_baseline() -> None:
    specs = probe_specs(["a"], [2], {}, 0)
    fold = np.array([0, 0, 1, 1])
    labels = np.array([[0], [1], [1], [1]])
    x = torch.tensor([[1.0], [2.0], [3.0], [float("nan")]])

    def predict(rows: torch.Tensor, f: int) -> torch.Tensor:
        return torch.cat([torch.zeros_like(rows), rows], 1)  # always class 1

    held = evaluate(specs, predict, True, x, fold, labels, labels, 2)
    assert held.n[0] == 3 and held.correct[0] == 2  # the nan row is absent
    # Fold 0's training rows say 1 (right once); fold 1's tie 0/1, broken to 0 (wrong).
    assert held.majority_correct[0] == 1


def test_probe_specs_order_controls_and_permutations() -> None:
    specs = probe_specs(["a", "b", "a~control", "b~control"], [2, 3, 2, 3], {0: 2, 1: 3}, 2)
    assert [s.name for s in specs][:4] == ["a", "b", "a~control", "b~control"]
    perms = [s for s in specs if s.role == PERM]
    assert len(perms) == 4 and {s.base for s in perms} == {0, 1}


# ---- config --------------------------------------------------------------------------------


def test_config_validates_and_expands_kinds() -> None:
    assert parse_kinds("linear,mlp") == ("ridge", "logistic", "mlp")
    cfg = ProbeConfig(targets="gold, template", kinds="linear", train="clean", test="all")
    assert cfg.targets == ("gold", "template") and cfg.kinds == ("ridge", "logistic")
    assert cfg.to_json()["kinds"] == ["ridge", "logistic"]
    for bad in (
        {"folds": 1},
        {"kinds": "lasso"},
        {"logistic_cs": (0.0,)},
        {"rare": "keep"},
        {"targets": ""},
        {"mlp_hidden": (0,)},
        {"backend": "tpu"},
        {"permutations": -1},
    ):
        with pytest.raises(UsageError):
            ProbeConfig(**bad)  # type: ignore[arg-type]


def test_no_sklearn_warnings_leak() -> None:
    # The solvers never call sklearn; this guards against an accidental dependency.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        import priorscope.engine.probes.linear  # noqa: F401
