"""What a probe run computes: :class:`ProbeConfig`, frozen and validated on construction.

A config built in Python is checked exactly like one built by ``priorscope probe``: every field
is validated in ``__post_init__`` and errors say what was expected and how to fix it. The store
decides the rest (which layers, sites and conditions exist); :func:`resolve` checks the config
against one store and returns the concrete lists a run iterates over.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from priorscope.engine.errors import UsageError, did_you_mean

if TYPE_CHECKING:
    from priorscope.engine.store import Store

KINDS: tuple[str, ...] = ("ridge", "logistic", "mlp")
KIND_ALIASES: dict[str, tuple[str, ...]] = {"linear": ("ridge", "logistic")}
BUILTIN_TARGETS: tuple[str, ...] = ("gold", "answer", "prior", "correct")
BACKENDS: tuple[str, ...] = ("auto", "cpu", "cuda", "cuml")
RARE_POLICIES: tuple[str, ...] = ("pool", "drop")
# Metadata columns that identify an image, most specific first; examples sharing one stay in
# one fold (a benchmark may ask several questions about one image).
IMAGE_COLUMNS: tuple[str, ...] = ("image_sha256", "image_hash", "image_id")


def parse_kinds(text: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Return canonical probe kinds from ``linear,mlp`` style text (``linear`` = ridge + logistic)."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    out: list[str] = []
    for part in (p.strip() for p in parts):
        if not part:
            continue
        if part in KIND_ALIASES:
            out += [k for k in KIND_ALIASES[part] if k not in out]
        elif part in KINDS:
            if part not in out:
                out.append(part)
        else:
            raise did_you_mean(part, [*KINDS, *KIND_ALIASES], "probe kind")
    if not out:
        raise UsageError(f"Expected at least one probe kind of {', '.join(KINDS)}. Got {text!r}.")
    return tuple(sorted(out, key=KINDS.index))


def split_list(text: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Return the non-empty stripped items of a comma list (or of a sequence) in order, once."""
    parts = text.split(",") if isinstance(text, str) else [str(p) for p in text]
    out: list[str] = []
    for part in (p.strip() for p in parts):
        if part and part not in out:
            out.append(part)
    return tuple(out)


def _positive_grid(name: str, values: tuple[float, ...]) -> None:
    if not values or not all(
        isinstance(v, int | float) and math.isfinite(v) and v > 0 for v in values
    ):
        raise UsageError(
            f"Expected {name} as a non-empty tuple of positive finite numbers. Got {values!r}."
        )


def _int_in(name: str, value: Any, low: int, high: int, fix: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UsageError(
            f"Expected {name} as an integer between {low} and {high}. Got {value!r} instead.{fix}"
        )


@dataclass(frozen=True)
class ProbeConfig:
    """Which probes to train on a store and how.

    Cells are every (target, kind, train condition, test condition, layer, site). ``sites`` are
    site reductions (``last``, ``image_mean``, ``text_mean``; None: every one the store has);
    ``layers`` a layer spec (``all``, ``embed,resid.3``, ``0:36:2``); ``test`` condition names
    or ``("all",)``. Regularisation is chosen per cell and fold from ``ridge_alphas`` /
    ``logistic_cs`` (sklearn's ``alpha`` and ``C``) and the MLP grid (``mlp_hidden`` x
    ``mlp_weight_decays``) by inner validation on the next fold; the logistic C search solves
    to 100 x ``logistic_tol``, the refit to ``logistic_tol``. ``controls`` adds the Hewitt & Liang control task (labels drawn per
    ``control_column`` value) and a ``permutations``-probe permutation null. Classes with fewer
    than ``min_class`` examples in every training condition are pooled into one class
    ``rare="pool"`` (dropped when still too rare) or dropped (``rare="drop"``).
    """

    targets: tuple[str, ...] = ("gold", "answer", "prior")
    kinds: tuple[str, ...] = ("ridge", "logistic", "mlp")
    sites: tuple[str, ...] | None = None
    layers: str = "all"
    train: tuple[str, ...] = ("clean",)
    test: tuple[str, ...] = ("all",)
    folds: int = 5
    seed: int = 0
    controls: bool = False
    permutations: int = 10
    control_column: str = "question"
    group_column: str = "auto"
    min_class: int = 10
    rare: str = "pool"
    ridge_alphas: tuple[float, ...] = (1.0, 10.0, 100.0, 1e3, 1e4, 1e5)
    logistic_cs: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    logistic_max_iter: int = 200
    logistic_tol: float = 1e-6
    mlp_hidden: tuple[int, ...] = (64,)
    mlp_weight_decays: tuple[float, ...] = (1e-4, 1e-2)
    mlp_max_epochs: int = 100
    mlp_patience: int = 10
    mlp_lr: float = 1e-3
    mlp_batch: int = 256
    backend: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", split_list(self.targets))
        object.__setattr__(self, "kinds", parse_kinds(self.kinds))
        object.__setattr__(self, "train", split_list(self.train))
        object.__setattr__(self, "test", split_list(self.test))
        if self.sites is not None:
            object.__setattr__(self, "sites", split_list(self.sites))
        if not self.targets:
            raise UsageError(
                f"Expected at least one target (e.g. {', '.join(BUILTIN_TARGETS)} or an example "
                "column such as template). Got none."
            )
        if not self.train or not self.test:
            raise UsageError("Expected --train and --test to name at least one condition each.")
        _int_in("folds", self.folds, 2, 100, " Use --folds 5 for five-fold cross-validation.")
        _int_in("seed", self.seed, 0, 2**32 - 1)
        _int_in("permutations", self.permutations, 0, 10_000)
        _int_in("min_class", self.min_class, 1, 10**9)
        _int_in("logistic_max_iter", self.logistic_max_iter, 1, 100_000)
        _int_in("mlp_max_epochs", self.mlp_max_epochs, 1, 100_000)
        _int_in("mlp_patience", self.mlp_patience, 1, 100_000)
        _int_in("mlp_batch", self.mlp_batch, 1, 10**7)
        if self.rare not in RARE_POLICIES:
            raise did_you_mean(self.rare, RARE_POLICIES, "rare-class policy")
        if self.backend not in BACKENDS:
            raise did_you_mean(self.backend, BACKENDS, "backend")
        for name in ("ridge_alphas", "logistic_cs", "mlp_weight_decays"):
            values = tuple(float(v) for v in getattr(self, name))
            object.__setattr__(self, name, values)
            _positive_grid(name, values)
        hidden = tuple(self.mlp_hidden)
        if not hidden or not all(
            isinstance(h, int) and not isinstance(h, bool) and 1 <= h <= 65536 for h in hidden
        ):
            raise UsageError(f"Expected mlp_hidden as positive integers. Got {hidden!r}.")
        object.__setattr__(self, "mlp_hidden", hidden)
        for name in ("logistic_tol", "mlp_lr"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise UsageError(f"Expected {name} as a positive number. Got {value!r}.")
        if not self.control_column or not self.group_column:
            raise UsageError("Expected non-empty control_column and group_column names.")

    def to_json(self) -> dict[str, Any]:
        """Return the config as JSON-able values (recorded in the results store for resume)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Resolved:
    """A config checked against one store: the concrete axes of the cell grid."""

    layers: tuple[int, ...]  # store layers (-1 is embed)
    sites: tuple[str, ...]  # site reductions
    train: tuple[str, ...]
    test: tuple[str, ...]
    backend: str  # 'cpu', 'cuda' or 'cuml'


def _resolve_layers(spec: str, store: Store) -> tuple[int, ...]:
    from priorscope.engine.models.sites import parse_site, residual_sites

    known = store.layers
    if spec.strip() == "all":
        return tuple(known)
    num_layers = max(known) + 1 if known else 0
    try:
        names = residual_sites(spec, max(num_layers, 1))
    except UsageError as exc:
        raise UsageError(f"{exc} The store has layers {store.sites}.") from None
    chosen = [parse_site(n, max(num_layers, 1)).store_layer for n in names]
    missing = [n for n, layer in zip(names, chosen, strict=True) if layer not in known]
    if missing:
        raise UsageError(
            f"Expected layers the store captured ({', '.join(store.sites)}). Got {missing} "
            "instead. Re-capture with those layers or pick from the list."
        )
    return tuple(chosen)


def _resolve_names(what: str, wanted: tuple[str, ...], known: list[str]) -> tuple[str, ...]:
    if wanted == ("all",):
        return tuple(known)
    for name in wanted:
        if name not in known:
            raise did_you_mean(name, known, what)
    return tuple(n for n in known if n in wanted)


def resolve_backend(name: str) -> str:
    """Return the backend a run uses: ``auto`` picks ``cuda`` when torch sees a GPU."""
    if name != "auto":
        if name in ("cuda", "cuml"):
            import torch

            if not torch.cuda.is_available():
                raise UsageError(
                    f"Expected a CUDA device for --backend {name}. Got none. Use --backend cpu."
                )
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve(config: ProbeConfig, store: Store) -> Resolved:
    """Return the layers, sites and conditions ``config`` selects in ``store``; raise if absent."""
    sites = _resolve_names("site", config.sites or ("all",), store.reductions)
    train = _resolve_names("condition", config.train, store.condition_names)
    test = _resolve_names("condition", config.test, store.condition_names)
    layers = _resolve_layers(config.layers, store)
    if not layers or not sites:
        raise UsageError(
            f"Expected at least one layer and site in the store. Got layers {store.sites} and "
            f"sites {store.reductions}."
        )
    return Resolved(layers, sites, train, test, resolve_backend(config.backend))
