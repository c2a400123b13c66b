"""Training-only read-outs of the organism and their losses (never saved with the checkpoint).

Every read-out reads the model through :func:`priorscope.engine.models.sites.hooks`: a
:class:`SiteCache` holds the latest forward's tensor of each site it was asked for, and the
heads below turn those tensors into losses.

- :class:`AuxHead` (site ``vision``): the scene loss; every merged image token names the item
  under it. It stands in for the vision pre-training a real VLM's encoder has.
- :class:`BindingHead` (site ``resid.{binding_layer}``): the answer, read at the question's
  shape or object word.
- :class:`ColourHead` (site ``resid.{readout_layer}``): the drawn colour of a ``suppressed``
  row's object, read at the answer position (issue 13: retrieved, then suppressed).
- :func:`invariance_loss`: how much a site's text-position states change between a planted row
  and its recoloured twin, relative to how much they vary across the batch.
- :func:`whitened_change` (with a :class:`Whitener` per site): the same change at the answer
  position, measured as a linear probe would see it.
- :func:`attention_mass_loss`: how much attention the text positions of a decoder layer pay
  to chosen image tokens (read from the layer's attention weights, not from a site).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# The last prompt position of a training sequence (prompt, answer, <|im_end|>): the answer is
# read there, as ``last`` is at capture.
ANSWER_POSITION = -3


class SiteCache:
    """The latest forward's tensor of each of ``sites``, filled by read hooks."""

    def __init__(self, sites: Iterable[str]) -> None:
        self.sites = sorted(set(sites))
        self.tensors: dict[str, Any] = {}

    def reads(self) -> dict[str, Any]:
        """Return the ``reads`` mapping for :func:`~priorscope.engine.models.sites.hooks`."""
        return {site: self._reader(site) for site in self.sites}

    def _reader(self, site: str) -> Any:
        def read(tensor: Any) -> None:
            self.tensors[site] = tensor

        return read

    def __getitem__(self, site: str) -> Any:
        return self.tensors[site]


class AuxHead:
    """Per-token linear read-out of the image tokens (site ``vision``)."""

    site = "vision"

    def __init__(self, d_model: int, n_kinds: int, n_colours: int, n_counts: int = 4) -> None:
        import torch

        self.sizes = (n_kinds, n_colours, n_counts)
        self.linear = torch.nn.Linear(d_model, sum(self.sizes))


def aux_scene_loss(head: AuxHead, features: Any, targets: Any) -> Any:
    """Return the summed cross-entropy of each image token's item kind, colour and kind count.

    ``features`` [batch * tokens, d_model] are the merged image tokens (the ``vision`` site);
    ``targets`` [batch, tokens, 3]. A linear read-out of every merged image token must name what
    is drawn under it and how many of its kind the image holds, so the tower learns features
    the decoder can attend to.
    """
    import torch.nn.functional as F

    out = head.linear(features)
    flat = targets.reshape(-1, targets.shape[-1])
    loss = out.new_zeros(())
    start = 0
    for j, size in enumerate(head.sizes):
        loss = loss + F.cross_entropy(out[:, start : start + size], flat[:, j])
        start += size
    return loss


class BindingHead:
    """Linear read-out of one decoder layer's output at the question word (training only)."""

    def __init__(self, d_model: int, vocab: int, layer: int) -> None:
        import torch

        self.linear = torch.nn.Linear(d_model, vocab)
        self.site = f"resid.{layer}"


def binding_loss(head: BindingHead, features: Any, nouns: Any, answers: Any) -> Any:
    """Return the cross-entropy of the answer read at each row's question word (rows with one).

    ``features`` [batch, seq, d_model]; ``nouns`` [batch] positions (-1: none); ``answers``
    [batch] token ids.
    """
    import torch
    import torch.nn.functional as F

    keep = nouns >= 0
    if not bool(keep.any()):
        return features.sum() * 0.0
    rows = torch.arange(nouns.shape[0])[keep]
    out = head.linear(features[rows, nouns[keep]])
    return F.cross_entropy(out, answers[keep])


class ColourHead:
    """Linear read-out of the drawn colour at the answer position of one decoder layer."""

    def __init__(self, d_model: int, n_colours: int, layer: int) -> None:
        import torch

        self.linear = torch.nn.Linear(d_model, n_colours)
        self.site = f"resid.{layer}"


def colour_loss(head: ColourHead, features: Any, rows: Any, colours: Any) -> Any:
    """Return the cross-entropy of the drawn colour read at the answer position of ``rows``.

    ``features`` [batch, seq, d_model]; ``rows`` [k] batch indices; ``colours`` [k] classes.
    """
    import torch.nn.functional as F

    if rows.numel() == 0:
        return features.sum() * 0.0
    return F.cross_entropy(head.linear(features[rows, ANSWER_POSITION]), colours)


def invariance_loss(features: Any, pairs: Any, positions: Any) -> Any:
    """Return the mean squared change of the states at ``positions`` between twins, relative.

    ``features`` [batch, seq, d_model] of one site; ``pairs`` [k, 2] batch indices of a row and
    its twin; ``positions`` [batch, seq] bool, the text positions of the prompt. The change is
    divided by the batch variance of the answer-position state (not differentiated), so the
    loss reads the same at every layer whatever the residual stream's scale.
    """
    if pairs.numel() == 0:
        return features.sum() * 0.0
    a, b = features[pairs[:, 0]], features[pairs[:, 1]]
    mask = positions[pairs[:, 0]].to(features.dtype)
    change = ((a - b) ** 2).sum(-1)
    mean_change = (change * mask).sum() / mask.sum().clamp(min=1.0)
    last = features[:, ANSWER_POSITION]
    spread = ((last - last.mean(0)) ** 2).sum(-1).mean().detach()
    return mean_change / (spread + 1e-6)


def attention_mass_loss(weights: Any, rows: Any, keys: Any, queries: Any) -> Any:
    """Return the attention the ``queries`` of ``rows`` pay to their ``keys``, as a loss.

    ``weights`` [batch, heads, seq, seq] of one decoder layer (softmax over the last axis);
    ``rows`` [k] batch indices; ``keys`` and ``queries`` [k, seq] bool. Each (head, query) pair
    puts mass ``m`` on the keys and adds ``-log(1 - m)``: about ``m`` when small, and unlike
    ``m`` itself its gradient does not vanish when a head sits wholly on a key (the softmax is
    saturated there). Summed over the queries, averaged over heads and rows.
    """
    import torch

    if rows.numel() == 0:
        return weights.sum() * 0.0
    w = weights[rows]  # [k, heads, seq, seq]
    # 1 - m as the mass on every other key: where a head sits wholly on the keys, m rounds to
    # 1.0 in float32 but that mass is still positive (1e-10, say), and the tiny floor below
    # keeps both the cost finite and its gradient (d cost / d key logit = m) whole.
    rest = (w * (~keys)[:, None, None, :].to(w.dtype)).sum(-1)  # [k, heads, seq]
    cost = -torch.log(rest + 1e-30)
    per_row = (cost * queries[:, None, :].to(w.dtype)).sum(-1)  # [k, heads]
    return per_row.mean()


class Whitener:
    """The within-colour covariance of one site's states: the metric a linear probe sees.

    A linear probe reads a class difference against the spread of the states in the same
    direction, so a change that is tiny in absolute terms is still read where the states hardly
    vary. :func:`whitened_change` measures twin differences in this metric. :meth:`fit` sets it
    from the current model's states of a fixed bank of planted rows (the training loop refits
    it every few dozen steps). Running averages over training batches failed twice: centred on
    a running mean they held the model's drift between steps (far larger than a fixed model's
    spread) and hid a colour a fresh probe read at 0.98; centred per batch, a few pairs a step
    left them rank-deficient or stale. ``shrink`` adds that fraction of the mean variance to
    every direction.
    """

    def __init__(self, shrink: float = 1e-3) -> None:
        self.shrink = shrink
        self.precision: Any = None

    def fit(self, states: Any, labels: Any) -> None:
        """Set the metric from states [n, d] and their colour classes [n] (not differentiated)."""
        import torch

        h = states.detach().double()
        centred = torch.empty_like(h)
        for c in labels.unique().tolist():
            rows = labels == c
            centred[rows] = h[rows] - h[rows].mean(0)
        classes = int(labels.unique().numel())
        cov = centred.T @ centred / max(1, h.shape[0] - classes)
        d = cov.shape[0]
        ridge = self.shrink * torch.trace(cov) / d + 1e-30
        self.precision = torch.linalg.inv(cov + ridge * torch.eye(d, dtype=torch.float64))

    @property
    def ready(self) -> bool:
        return self.precision is not None


def whitened_change(whitener: Whitener, states: Any, pairs: Any) -> Any:
    """Return the mean of log(1 + Mahalanobis length) of the twin differences [batch, d].

    ``pairs`` [k, 2] are batch indices of a planted row and its recoloured twin; the metric is
    the whitener's. 0 before the whitener is fitted.
    """
    import torch

    if pairs.numel() == 0 or not whitener.ready:
        return states.sum() * 0.0
    a, b = states[pairs[:, 0]], states[pairs[:, 1]]
    delta = a - b
    squared = torch.einsum("kd,de,ke->k", delta, whitener.precision.to(delta.dtype), delta)
    # log1p of the length, not its square: its gradient neither fades as the difference shrinks
    # nor grows without bound when one direction of the metric is extreme.
    return torch.log1p(torch.sqrt(squared + 1e-12)).mean()
