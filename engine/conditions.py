"""Canonical names for image conditions and capture sites.

Conditions say what was done to the image: ``clean``, ``blur@0.02`` (Gaussian sigma as a fraction
of the image's short side), ``total`` (every pixel set to its channel's mean) and ``none`` (the
question asked with no image). Sites name where the residual stream is read: ``embed`` is the
input of decoder layer 0 and ``resid.{layer}`` the output of decoder layer ``layer`` (the site
names live in priorscope.engine.models.sites); a site is reduced over token positions by ``last``,
``image_mean`` or ``text_mean`` (priorscope.kernels.reduce).
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from priorscope.engine.errors import KernelError, PriorscopeError, UsageError, did_you_mean
from priorscope.kernels.reduce import REDUCTIONS

DEFAULT_LADDER: tuple[float, ...] = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16)


@dataclass(frozen=True)
class Condition:
    """One way of showing (or not showing) the image. ``sigma`` is relative; inf for total."""

    name: str
    kind: str  # "clean" | "blur" | "total" | "none"
    sigma: float  # 0 for clean, inf for total, nan for none

    @property
    def has_image(self) -> bool:
        return self.kind != "none"

    def to_json(self) -> dict[str, object]:
        sigma: object = self.sigma
        if math.isinf(self.sigma):
            sigma = "inf"
        elif math.isnan(self.sigma):
            sigma = None
        return {"name": self.name, "kind": self.kind, "sigma": sigma}

    @staticmethod
    def from_json(obj: dict[str, object]) -> Condition:
        raw = obj["sigma"]
        sigma = math.nan if raw is None else float(raw)  # type: ignore[arg-type]
        return Condition(str(obj["name"]), str(obj["kind"]), sigma)


def blur_name(sigma: float) -> str:
    """Return the canonical condition name for a relative blur sigma, e.g. ``blur@0.02``."""
    return f"blur@{sigma:g}"


def parse_condition(name: str) -> Condition:
    """Return the Condition a canonical name denotes; raise UsageError on anything else."""
    if name == "clean":
        return Condition("clean", "clean", 0.0)
    if name == "total":
        return Condition("total", "total", math.inf)
    if name == "none":
        return Condition("none", "none", math.nan)
    match = re.fullmatch(r"blur@([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)", name)
    if match:
        sigma = float(match.group(1))
        if sigma <= 0:
            raise UsageError(
                f"Expected a positive blur sigma in {name!r}. Use 'clean' for sigma 0."
            )
        return Condition(blur_name(sigma), "blur", sigma)
    raise UsageError(
        f"Unknown condition {name!r}. Expected 'clean', 'blur@S' with S a fraction of the "
        "short side (e.g. blur@0.02), 'total' or 'none'."
    )


def build_conditions(
    ladder: Sequence[float] = DEFAULT_LADDER, *, total: bool = True, none: bool = False
) -> list[Condition]:
    """Return the ordered condition list: clean, the ladder ascending, total, then none."""
    sigmas = sorted(set(float(s) for s in ladder))
    for s in sigmas:
        if not (s > 0 and math.isfinite(s)):
            raise UsageError(
                f"Expected ladder sigmas that are positive finite fractions of the short side. "
                f"Got {s} instead. Use --total for total obfuscation."
            )
        if s > MAX_LADDER_SIGMA:
            # Checked here, before any store exists: the kernel would refuse it mid-capture.
            raise UsageError(
                f"Expected ladder sigmas of at most {MAX_LADDER_SIGMA:g} (fractions of the image's "
                f"short side; far beyond that the image is uniform). Got {s:g} instead. Use "
                "--total for total obfuscation."
            )
    out = [Condition("clean", "clean", 0.0)]
    out += [Condition(blur_name(s), "blur", s) for s in sigmas]
    if total:
        out.append(Condition("total", "total", math.inf))
    if none:
        out.append(Condition("none", "none", math.nan))
    return out


def parse_ladder(text: str) -> list[float]:
    """Return the sigmas of a comma-separated ladder such as ``0.005,0.01,0.02``."""
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(
            f"Expected --ladder as comma-separated numbers such as 0.005,0.01,0.02. Got {text!r}."
        ) from None
    if not values:
        raise UsageError("Expected at least one sigma in --ladder. Got an empty list.")
    return values


# A blur of 100 short sides is already uniform; larger ones only overflow the kernel's radius.
MAX_LADDER_SIGMA = 100.0


def _layer_range(part: str, spec: str, num_layers: int) -> range:
    """Return the layers of one ``start:stop:step`` part; refuse bounds outside the model."""
    bits = [int(b) if b else None for b in part.split(":")]
    if len(bits) > 3 or (bits[-1] == 0 and len(bits) == 3):
        raise ValueError(part)
    start, stop = bits[0], bits[1] if len(bits) > 1 else None
    out_of_model = [b for b in (start, stop) if b is not None and not 0 <= b <= num_layers]
    chosen = range(num_layers)[slice(*bits)]
    if out_of_model or not chosen:
        raise UsageError(
            f"Expected a --layers range within 0:{num_layers} selecting at least one layer of "
            f"this {num_layers}-layer model. Got {part!r} (in {spec!r}) instead. Pass e.g. "
            f"0:{num_layers} or 'all'."
        )
    return chosen


def parse_layers(spec: str, num_layers: int) -> list[int]:
    """Return the sorted layer indices a spec selects: ``all``, ``0,4,8`` or ``start:stop:step``.

    Layer ``-1`` means ``embed`` (the input of decoder layer 0); ``0..num_layers-1`` are the
    outputs of the decoder layers. ``all`` selects ``-1`` and every decoder layer.
    """
    spec = spec.strip()
    if spec == "all":
        return list(range(-1, num_layers))
    chosen: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        if part == "embed":
            chosen.add(-1)
            continue
        try:
            if ":" in part:
                chosen.update(_layer_range(part, spec, num_layers))
            else:
                chosen.add(int(part))
        except ValueError:
            raise UsageError(
                f"Expected --layers as 'all', a list like 0,4,8 or a range like 0:36:2. "
                f"Got {spec!r} instead."
            ) from None
    bad = [layer for layer in chosen if not -1 <= layer < num_layers]
    if bad:
        raise UsageError(
            f"Expected layers between 0 and {num_layers - 1} (or 'embed'). Got {sorted(bad)} "
            f"for a model with {num_layers} decoder layers."
        )
    return sorted(chosen)


def parse_reductions(text: str) -> list[str]:
    """Return the canonical reductions named in a comma-separated list, in canonical order."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    for name in names:
        if name not in REDUCTIONS:
            raise did_you_mean(name, REDUCTIONS, "site reduction")
    return [r for r in REDUCTIONS if r in names]


@contextlib.contextmanager
def kernel_errors() -> Iterator[None]:
    """Re-raise an error of priorscope.kernels as the engine's UsageError or KernelError.

    Kernels import nothing from the engine, so their errors are not PriorscopeErrors; the engine
    calls them inside this block so that a user sees one paragraph, not a traceback.
    """
    from priorscope.kernels.errors import KernelError as BareKernelError
    from priorscope.kernels.errors import KernelUsageError

    try:
        yield
    except PriorscopeError:
        raise
    except KernelUsageError as exc:
        raise UsageError(str(exc)) from exc
    except BareKernelError as exc:
        raise KernelError(str(exc)) from exc
