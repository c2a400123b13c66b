"""One-hidden-layer MLP probes (the paper's probe), trained as one grouped model.

Every probe of one (site, training condition, fold) and every capacity setting (hidden size,
weight decay) is a unit of one model: the first layers of all units are one ``[d, sum H]``
matrix, so a minibatch costs one large matrix product instead of hundreds of small ones, and
the second layers form one block-diagonal ``[sum H, sum K]`` matrix (a mask keeps units apart).
Units never share a parameter, and Adam is elementwise, so training the group is training each
unit on its own. Each unit keeps the parameters of its best validation loss (early stopping per
probe); a unit that has not improved for ``patience`` epochs leaves the group, so the
remaining units train on alone (the group shrinks) and the run ends when none is left.

Objective per unit (sklearn's MLPClassifier): mean cross-entropy over the minibatch's labelled
rows + ``alpha / (2 m)`` times the squared weights (m the minibatch rows). Initialisation:
Glorot uniform, seeded per unit, so a unit starts the same whatever else is in its group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from priorscope.engine.probes.cells import PERM, ProbeSpec, fold_labels
from priorscope.engine.probes.config import ProbeConfig
from priorscope.engine.probes.controls import stable_seed

F32 = torch.float32
# Validation-loss improvement that resets a unit's patience (sklearn MLPClassifier's tol).
MLP_TOL = 1e-4


@dataclass(frozen=True)
class Unit:
    """One MLP to train: labels column ``column``, ``k`` classes, ``hidden`` units, ``alpha``."""

    column: int
    k: int
    hidden: int
    alpha: float
    seed: list[int]


@dataclass
class Grouped:
    """Parameters of a group of units (units ordered as given) and their standardisation."""

    mu: torch.Tensor
    sigma: torch.Tensor
    W1: torch.Tensor  # [d, sum H]
    b1: torch.Tensor  # [sum H]
    W2: torch.Tensor  # [sum H, sum K] block diagonal
    b2: torch.Tensor  # [sum K]
    mask: torch.Tensor  # [sum H, sum K] block-diagonal ones
    units: list[Unit]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits [m, sum K] of raw rows ``x`` [m, d] (already-standardised when mu is None)."""
        z = (x.to(F32) - self.mu) / self.sigma
        return torch.relu(z @ self.W1 + self.b1) @ (self.W2 * self.mask) + self.b2

    def select(self, chosen: list[int]) -> Grouped:
        """Return a Grouped holding only units ``chosen`` (in that order)."""
        hs = _offsets([u.hidden for u in self.units])
        ks = _offsets([u.k for u in self.units])
        hcols = torch.cat([torch.arange(hs[i], hs[i + 1]) for i in chosen])
        kcols = torch.cat([torch.arange(ks[i], ks[i + 1]) for i in chosen])
        units = [self.units[i] for i in chosen]
        return Grouped(
            self.mu,
            self.sigma,
            self.W1[:, hcols].clone(),
            self.b1[hcols].clone(),
            self.W2[hcols][:, kcols].clone(),
            self.b2[kcols].clone(),
            _block_mask(units),
            units,
        )


def _offsets(sizes: list[int]) -> list[int]:
    out = [0]
    for s in sizes:
        out.append(out[-1] + s)
    return out


def _block_mask(units: list[Unit]) -> torch.Tensor:
    hs, ks = _offsets([u.hidden for u in units]), _offsets([u.k for u in units])
    mask = torch.zeros(hs[-1], ks[-1], dtype=F32)
    for i in range(len(units)):
        mask[hs[i] : hs[i + 1], ks[i] : ks[i + 1]] = 1.0
    return mask


def _init(units: list[Unit], d: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Return (W1, b1, W2, b2) with each unit's Glorot-uniform draw from its own seed.

    Draws happen on the CPU (one generator per unit), so a GPU run starts where a CPU run does.
    """
    w1: list[torch.Tensor] = []
    b1: list[torch.Tensor] = []
    w2: list[torch.Tensor] = []
    b2: list[torch.Tensor] = []
    for u in units:
        gen = torch.Generator().manual_seed(
            int(np.random.SeedSequence(u.seed).generate_state(1)[0])
        )
        for fan_in, fan_out, ws, bs in ((d, u.hidden, w1, b1), (u.hidden, u.k, w2, b2)):
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            draw = torch.rand(fan_in, fan_out, generator=gen, dtype=F32, device="cpu")
            ws.append((draw * 2 - 1) * bound)
            bs.append((torch.rand(fan_out, generator=gen, dtype=F32, device="cpu") * 2 - 1) * bound)
    out = (torch.cat(w1, 1), torch.cat(b1), torch.block_diag(*w2), torch.cat(b2))
    return tuple(t.to(device) for t in out)


def _k_groups(units: list[Unit]) -> list[tuple[int, int, int]]:
    """Return (first column, unit count, k) runs of consecutive units with equal k."""
    runs: list[tuple[int, int, int]] = []
    col = 0
    for u in units:
        if runs and runs[-1][2] == u.k and runs[-1][0] + runs[-1][1] * u.k == col:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1, u.k)
        else:
            runs.append((col, 1, u.k))
        col += u.k
    return runs


def unit_losses(
    logits: torch.Tensor, y: torch.Tensor, units: list[Unit]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (mean cross-entropy [units] over labelled rows, correct predictions [units])."""
    losses, correct = [], []
    start_unit = 0
    for col, count, k in _k_groups(units):
        block = logits[:, col : col + count * k].reshape(-1, count, k)
        labels = y[:, start_unit : start_unit + count]
        ok = labels >= 0
        logp = torch.log_softmax(block, 2)
        picked = logp.gather(2, labels.clamp_min(0).unsqueeze(2)).squeeze(2)
        n = ok.sum(0).clamp_min(1)
        losses.append(-(picked * ok).sum(0) / n)
        correct.append(((block.argmax(2) == labels) & ok).sum(0))
        start_unit += count
    return torch.cat(losses), torch.cat(correct)


@dataclass
class _Active:
    """The units still training: their parameters [W1, b1, W2, b2], optimiser and positions."""

    units: list[Unit]
    index: list[int]  # position of each active unit in the full unit list
    params: list[torch.Tensor]
    mask: torch.Tensor
    lr: float

    def __post_init__(self) -> None:
        self.alpha_h = torch.tensor(
            [u.alpha for u in self.units for _ in range(u.hidden)], dtype=F32
        )
        self.alpha_k = torch.tensor([u.alpha for u in self.units for _ in range(u.k)], dtype=F32)
        # Adam is elementwise, so one optimiser over the group is one per unit; fused: one pass.
        self.opt = torch.optim.Adam(self.params, lr=self.lr, fused=True)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        W1, b1, W2, b2 = self.params
        return torch.relu(z @ W1 + b1) @ (W2 * self.mask) + b2

    def step(self, m: int) -> None:
        """Add the weight-decay gradient (alpha W / m, sklearn's) and take one Adam step."""
        W1, _, W2, _ = self.params
        with torch.no_grad():
            W1.grad.add_(W1 * self.alpha_h, alpha=1.0 / m)  # type: ignore[union-attr]
            W2.grad.add_(W2 * self.mask * self.alpha_k, alpha=1.0 / m)  # type: ignore[union-attr]
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def keep(self, local: list[int]) -> _Active:
        """Return the state (parameters and Adam moments) of the units at ``local`` only."""
        hs, ks = _offsets([u.hidden for u in self.units]), _offsets([u.k for u in self.units])
        h = torch.cat([torch.arange(hs[i], hs[i + 1]) for i in local])
        k = torch.cat([torch.arange(ks[i], ks[i + 1]) for i in local])
        cuts = (lambda t: t[:, h], lambda t: t[h], lambda t: t[h][:, k], lambda t: t[k])
        units = [self.units[i] for i in local]
        params = [
            cut(p.detach()).clone().requires_grad_(True)
            for cut, p in zip(cuts, self.params, strict=True)
        ]
        new = _Active(units, [self.index[i] for i in local], params, _block_mask(units), self.lr)
        for cut, old, p in zip(cuts, self.params, params, strict=True):
            st = self.opt.state.get(old)
            if st:
                new.opt.state[p] = {
                    "step": st["step"].clone(),
                    "exp_avg": cut(st["exp_avg"]).clone(),
                    "exp_avg_sq": cut(st["exp_avg_sq"]).clone(),
                }
        return new


def train_units(
    z: torch.Tensor,
    y: torch.Tensor,
    z_val: torch.Tensor,
    y_val: torch.Tensor,
    units: list[Unit],
    config: ProbeConfig,
    seed: list[int],
) -> tuple[Grouped, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (best parameters, validation loss, validation accuracy, epochs), each [units].

    ``z``, ``z_val`` are standardised rows; ``y`` [n, units] / ``y_val`` [m, units] the units'
    labels (-1: not in that unit's loss). A unit leaves the group once it has not improved
    for ``patience`` epochs, so the work shrinks as units stop.
    """
    params = [p.requires_grad_(True) for p in _init(units, z.shape[1], z.device)]
    state = _Active(list(units), list(range(len(units))), params, _block_mask(units), config.mlp_lr)
    W1, b1, W2, b2 = (p.detach().clone() for p in params)
    best = Grouped(torch.zeros(0), torch.zeros(0), W1, b1, W2 * state.mask, b2, state.mask, units)
    best_loss = torch.full((len(units),), float("inf"))
    best_acc = torch.zeros(len(units), dtype=torch.float64)
    epochs = torch.zeros(len(units), dtype=torch.int64)
    stale = torch.zeros(len(units), dtype=torch.int64)
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence(seed).generate_state(1)[0]))
    n, bs = z.shape[0], min(config.mlp_batch, z.shape[0])
    for _ in range(config.mlp_max_epochs):
        cols = torch.tensor(state.index)
        for idx in torch.randperm(n, generator=gen, device="cpu").split(bs):
            ce, _ = unit_losses(state.forward(z[idx]), y[idx][:, cols], state.units)
            ce.sum().backward()
            state.step(idx.numel())
        epochs[cols] += 1
        with torch.no_grad():
            vloss, vcorrect = unit_losses(state.forward(z_val), y_val[:, cols], state.units)
            improved = vloss < best_loss[cols] - MLP_TOL
            stale[cols] = torch.where(improved, 0, stale[cols] + 1)
            if bool(improved.any()):
                _keep(best, state, improved)
                n_val = (y_val[:, cols] >= 0).sum(0).clamp_min(1)
                best_loss[cols] = torch.where(improved, vloss, best_loss[cols])
                best_acc[cols] = torch.where(improved, vcorrect.double() / n_val, best_acc[cols])
        going = [i for i, u in enumerate(state.index) if stale[u] < config.mlp_patience]
        if not going:
            break
        if len(going) < len(state.index):
            state = state.keep(going)
    return best, best_loss, best_acc, epochs


def _keep(best: Grouped, state: _Active, improved: torch.Tensor) -> None:
    """Copy the parameters of the active units that ``improved`` into ``best``."""
    hs, ks = _offsets([u.hidden for u in best.units]), _offsets([u.k for u in best.units])
    ah, ak = _offsets([u.hidden for u in state.units]), _offsets([u.k for u in state.units])
    W1, b1, W2, b2 = (p.detach() for p in state.params)
    for i in torch.nonzero(improved).flatten().tolist():
        u = state.index[i]
        h, k = slice(hs[u], hs[u + 1]), slice(ks[u], ks[u + 1])
        lh, lk = slice(ah[i], ah[i + 1]), slice(ak[i], ak[i + 1])
        best.W1[:, h] = W1[:, lh]
        best.b1[h] = b1[lh]
        best.W2[h, k] = W2[lh, lk]
        best.b2[k] = b2[lk]


@dataclass
class MLPModels:
    """Fitted MLP probes of one site and training condition.

    ``parts[f]`` lists (model, probe indices) pairs that together score every probe of held-out
    fold f; ``reg`` / ``hidden`` [probes, k] the weight decay and hidden size chosen by inner
    validation; ``iterations`` [probes, k] the epochs trained.
    """

    parts: list[list[tuple[Grouped, list[int]]]]
    sizes: list[int]
    reg: torch.Tensor
    hidden: torch.Tensor
    iterations: torch.Tensor

    def predict(self, x: torch.Tensor, fold: int) -> torch.Tensor:
        """Return logits [m, sum of classes] (probe-major) of raw rows ``x`` for fold ``fold``."""
        offsets = _offsets(self.sizes)
        out = torch.zeros(x.shape[0], offsets[-1], dtype=F32)
        with torch.no_grad():
            for model, probes in self.parts[fold]:
                logits = model.logits(x)
                start = 0
                for j in probes:
                    k = self.sizes[j]
                    out[:, offsets[j] : offsets[j] + k] = logits[:, start : start + k]
                    start += k
        return out


def _standardise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x64 = x.to(torch.float64)
    mu = x64.mean(0)
    sigma = torch.sqrt(((x64 - mu) ** 2).mean(0))
    sigma = torch.where(sigma > 1e-12 * (1.0 + mu.abs()), sigma, torch.ones_like(sigma))
    return mu.to(F32), sigma.to(F32)


def _train_round(
    probes: list[tuple[int, float, int]],
    specs: list[ProbeSpec],
    data: tuple[torch.Tensor, ...],
    config: ProbeConfig,
    seed: list[int],
) -> tuple[Grouped, list[int], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train units (probe, alpha, hidden), ordered by class count; return them in that order."""
    z, y, z_val, y_val = data
    order = sorted(range(len(probes)), key=lambda i: specs[probes[i][0]].n_classes)
    units = [
        Unit(
            probes[i][0],
            specs[probes[i][0]].n_classes,
            probes[i][2],
            probes[i][1],
            [
                *seed,
                *map(int, stable_seed(specs[probes[i][0]].name, probes[i][2], str(probes[i][1]))),
            ],
        )
        for i in order
    ]
    cols = torch.tensor([u.column for u in units])
    model, vloss, vacc, epochs = train_units(
        z, y[:, cols], z_val, y_val[:, cols], units, config, seed
    )
    return model, order, vloss, vacc, epochs


def fit_mlp_group(
    x: torch.Tensor,
    fold: np.ndarray,
    k_folds: int,
    labels: np.ndarray,
    specs: list[ProbeSpec],
    config: ProbeConfig,
) -> MLPModels:
    """Return MLP probes of one site and training condition for every held-out fold.

    Per fold f the units train on every fold but f and (f + 1) % k, stop early and are chosen
    (hidden size, weight decay) on fold (f + 1) % k. Permutation probes use their target's
    chosen setting (trained in a second round when there is more than one setting).
    """
    present = ~torch.isnan(x).any(1).cpu().numpy()
    grid = [(a, h) for h in config.mlp_hidden for a in config.mlp_weight_decays]
    q = len(specs)
    models = MLPModels(
        [],
        [s.n_classes for s in specs],
        torch.full((q, k_folds), float("nan"), dtype=torch.float64),
        torch.zeros(q, k_folds, dtype=torch.int64),
        torch.zeros(q, k_folds, dtype=torch.int64),
    )
    for f in range(k_folds):
        v = (f + 1) % k_folds
        out_rows = np.flatnonzero(present & (fold != f))
        y_out = torch.from_numpy(fold_labels(specs, labels, out_rows, config.seed, f)).to(x.device)
        train = np.flatnonzero(fold[out_rows] != v)
        val = np.flatnonzero(fold[out_rows] == v)
        x_tr = x[torch.from_numpy(out_rows[train])]
        mu, sigma = _standardise(x_tr)
        z = (x_tr.to(F32) - mu) / sigma
        z_val = (x[torch.from_numpy(out_rows[val])].to(F32) - mu) / sigma
        data = (z, y_out[torch.from_numpy(train)], z_val, y_out[torch.from_numpy(val)])
        models.parts.append(_fit_fold(specs, grid, data, config, f, models, (mu, sigma)))
    return models


def _fit_fold(
    specs: list[ProbeSpec],
    grid: list[tuple[float, int]],
    data: tuple[torch.Tensor, ...],
    config: ProbeConfig,
    f: int,
    models: MLPModels,
    stats: tuple[torch.Tensor, torch.Tensor],
) -> list[tuple[Grouped, list[int]]]:
    """Return the parts scoring every probe of fold ``f``; record choices in ``models``."""
    own = [j for j, s in enumerate(specs) if s.role != PERM]
    perms = [j for j, s in enumerate(specs) if s.role == PERM]
    seed = [*stable_seed(config.seed, "mlp", f)]
    first = [(j, a, h) for j in own for a, h in grid]
    if len(grid) == 1:
        first += [(j, *grid[0]) for j in perms]
    model, order, vloss, vacc, epochs = _train_round(first, specs, data, config, seed)
    chosen: dict[int, int] = {}  # probe -> unit position in ``model``
    score = [(float(vacc[pos]), -float(vloss[pos])) for pos in range(len(order))]
    for pos, i in enumerate(order):
        j = first[i][0]
        if j not in chosen or score[pos] > score[chosen[j]]:
            chosen[j] = pos
    parts = []
    probes1 = sorted(chosen)
    part = model.select([chosen[j] for j in probes1])
    part.mu, part.sigma = stats
    parts.append((part, probes1))
    for j in probes1:
        u = model.units[chosen[j]]
        models.reg[j, f], models.hidden[j, f] = u.alpha, u.hidden
        models.iterations[j, f] = epochs[chosen[j]]
    rest = [j for j in perms if j not in chosen]
    if rest:
        second = [
            (j, float(models.reg[specs[j].base, f]), int(models.hidden[specs[j].base, f]))
            for j in rest
        ]
        model2, order2, _, _, epochs2 = _train_round(second, specs, data, config, [*seed, 2])
        probes2 = [second[i][0] for i in order2]
        part2 = model2.select(list(range(len(order2))))
        part2.mu, part2.sigma = stats
        parts.append((part2, probes2))
        for pos, j in enumerate(probes2):
            models.reg[j, f], models.hidden[j, f] = (
                models.reg[specs[j].base, f],
                models.hidden[specs[j].base, f],
            )
            models.iterations[j, f] = epochs2[pos]
    return parts
