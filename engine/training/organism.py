"""Train a model organism from scratch on the synthetic benchmark.

Two presets (:data:`PRESETS`): ``organism`` reproduces ``builtin:organism`` (same seed, same
data, same losses) and ``bottleneck`` trains ``builtin:bottleneck``, the organism with planted
``used``, ``suppressed`` and ``not_retrieved`` item groups (issue 13).

The loss is on the answer tokens only (the answer word and ``<|im_end|>``), plus training-only
read-outs (:mod:`.heads`) that read the model through the one hook mechanism,
:func:`priorscope.engine.models.sites.hooks`, installed once around the training loop:

- the scene loss (``aux_weight``, site ``vision``): every merged image token names the item
  drawn under it (kind and colour) and how many items of that kind the image holds. At 84 x 84
  pixels the 3 x 3 image tokens are exactly the synth grid's cells, one item each.
- the binding loss (``binding_weight``, site ``resid.{binding_layer}``): the answer read at the
  question's shape or object word. Without it the decoder bound the word to the image token
  showing that shape only slowly (held-out after 4,000 steps: colour 0.77, count 0.40,
  presence 0.77); with it, colour and presence pass 0.98 by 2,000 steps and count 0.97 by 4,000.
- planted groups (bottleneck only): ``readout_weight`` asks ``resid.{readout_layer}`` at the
  answer position for the drawn colour of a suppressed row's object (retrieved);
  ``suppress_weight`` asks the text-position states of ``suppress_layers`` not to change when
  that object is recoloured (suppressed); ``hide_weight`` asks the text-position states of every
  decoder layer not to change when a ``not_retrieved`` shape is recoloured (never retrieved);
  ``erase_weight`` asks the same of the answer position in the metric a linear probe uses:
  the twin difference against the within-colour covariance of the current model's states,
  refitted every ``erase_refresh`` steps on a bank of planted rows (:class:`~.heads.Whitener`).
  A change that is tiny against the whole batch but consistent where these items hardly vary
  is still read by a fresh probe: the plain invariance alone left the colour decodable at 0.99.
  ``hide_erase_weight`` adds the ``not_retrieved`` group's erasure (every layer) as a term of its
  own: inside ``erase_weight`` it shares the weight with the suppressed group and its eight
  layers, and the ``last`` probe still read the triangle's colour at 0.17 to 0.32.
  ``swap_weight`` asks a suppressed row's answer logits not to move when the answer-position
  write of a ``swap_layers`` layer is exchanged with its recoloured twin's and the layers above
  are replayed (:func:`swap_loss`): the suppression may not rest on one layer's write alone,
  so replacing that write (``priorscope patch``) leaves the answer where it was.
  ``hide_attn_weight`` acts on the route instead of the states: the text positions of a
  ``not_retrieved`` row (question and answer position) may pay no attention to the image token
  that shows its shape (``hide_attn_to`` "shape") or to any image token ("image"), at
  ``hide_attn_layers`` (:func:`~.heads.attention_mass_loss`; the decoder runs with eager
  attention while it trains, so the weights can be read). An attention read-out of the first
  stage found the colour reaching the text positions through one layer-0 head that sits wholly
  on that token, and the answer position through whole heads at layers 5 to 7; the other image
  tokens hold the colour too, so the shipped second stage keeps the text from all of them.
  These losses start at ``plant_start``, once the answers are learnt.

None of the heads is saved: the checkpoint is a plain Qwen2.5-VL whose answer comes from its
own LM head at the answer position.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from priorscope.engine.errors import UsageError, did_you_mean
from priorscope.engine.models.organism.build import (
    OrganismArch,
    organism_model,
    organism_processor,
    organism_tokenizer,
)
from priorscope.engine.training.data import (
    TWINNED,
    PlantSpec,
    TrainingSet,
    build_training_set,
    collate,
    patchify,
    scene_kinds,
    training_set_key,
)
from priorscope.engine.training.heads import (
    ANSWER_POSITION,
    AuxHead,
    BindingHead,
    ColourHead,
    SiteCache,
    Whitener,
    attention_mass_loss,
    aux_scene_loss,
    binding_loss,
    colour_loss,
    invariance_loss,
    whitened_change,
)


@dataclass(frozen=True)
class TrainConfig:
    """How an organism is trained. Defaults reproduce the shipped ``builtin:organism``."""

    seed: int = 0
    steps: int = 8000
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    n_train: int = 40000
    uninformative_rate: float = 0.3
    prior_rate: float = 0.8
    # Rows are drawn at the synth default size, then resized to arch.image_size as the processor
    # would resize any benchmark image.
    render_size: int = 112
    arch: OrganismArch = field(default_factory=OrganismArch)
    log_every: int = 100
    save_every: int = 0  # also save DIR/step-N every this many steps (0: only at the end)
    # The vision tower may stay frozen at its random init for the first vision_freeze_steps,
    # then trains at lr x vision_lr_scale; a scale of 0 keeps it frozen throughout.
    vision_freeze_steps: int = 0
    vision_lr_scale: float = 1.0
    # Decoder layers whose weights stay as they are (e.g. a fine-tune that must not move the
    # layers where a planted behaviour lives); gradients still flow through them.
    freeze_layers: tuple[int, ...] = ()
    # Weight of the per-token scene loss on the vision tower's merged tokens (0: off).
    aux_weight: float = 1.0
    # Weight of the binding loss: a linear read-out of decoder layer binding_layer's output at
    # the question's shape or object word must give the answer (0: off).
    binding_weight: float = 1.0
    binding_layer: int = 1
    # Planted groups (issue 13); all off by default.
    plant: PlantSpec = field(default_factory=PlantSpec)
    readout_weight: float = 0.0
    readout_layer: int = 2
    suppress_weight: float = 0.0
    suppress_layers: tuple[int, ...] = ()
    hide_weight: float = 0.0
    erase_weight: float = 0.0
    # Weight of a separate erasure term for the not_retrieved group (answer position, every
    # layer), on top of its share of erase_weight.
    hide_erase_weight: float = 0.0
    # Weight of the attention a not_retrieved row's text positions pay to the image at
    # hide_attn_layers (empty: every decoder layer): to the token showing its shape
    # (hide_attn_to "shape") or to every image token ("image"; the vision tower and the image
    # tokens' own attention spread the shape's colour to the others).
    hide_attn_weight: float = 0.0
    hide_attn_layers: tuple[int, ...] = ()
    hide_attn_to: str = "shape"
    # Weight of a loss that keeps a suppressed row's answer logits where they are when one of
    # swap_layers' writes at the answer position is exchanged with its recoloured twin's (the
    # layers above replayed): no single layer's write may carry the suppression on its own.
    swap_weight: float = 0.0
    swap_layers: tuple[int, ...] = ()
    # The invariance and erasure losses start at plant_start and reach full weight plant_ramp
    # steps later: switched on from the first step, they kept any colour from reaching the
    # answer position (the read-out at readout_layer stayed at chance for 800 steps).
    plant_start: int = 0
    plant_ramp: int = 0
    # The erasure metric is refitted every erase_refresh steps on the current model's states of
    # erase_bank planted rows per group (and their twins), from plant_start on.
    erase_bank: int = 192
    erase_refresh: int = 50
    # Start from this checkpoint's weights (a folder or builtin:NAME of the same architecture)
    # instead of a random initialisation: "" trains from scratch.
    init: str = ""
    # A second stage, run after this one from its weights (saved in OUT/stage-1): the settings
    # it changes (e.g. a fine-tune's steps, lr and loss weights). Empty: one stage.
    then: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        layers = self.arch.layers
        checks = [
            ("steps", self.steps >= 1),
            ("batch_size", self.batch_size >= 1),
            ("lr", self.lr > 0),
            ("n_train", self.n_train >= self.batch_size),
            ("uninformative_rate", 0.0 <= self.uninformative_rate < 1.0),
            ("prior_rate", 0.0 <= self.prior_rate <= 1.0),
            ("warmup", self.warmup >= 0),
            ("vision_lr_scale", self.vision_lr_scale >= 0),
            ("vision_freeze_steps", self.vision_freeze_steps >= 0),
            ("aux_weight", self.aux_weight >= 0),
            ("render_size", 32 <= self.render_size <= 4096),
            ("binding_weight", self.binding_weight >= 0),
            ("binding_layer", 0 <= self.binding_layer < layers),
            ("readout_weight", self.readout_weight >= 0),
            ("readout_layer", 0 <= self.readout_layer < layers),
            ("suppress_weight", self.suppress_weight >= 0),
            ("suppress_layers", all(0 <= i < layers for i in self.suppress_layers)),
            ("freeze_layers", all(0 <= i < layers for i in self.freeze_layers)),
            ("swap_weight", self.swap_weight >= 0),
            ("swap_layers", all(1 <= i < layers for i in self.swap_layers)),
            ("hide_weight", self.hide_weight >= 0),
            ("erase_weight", self.erase_weight >= 0),
            ("hide_erase_weight", self.hide_erase_weight >= 0),
            ("hide_attn_weight", self.hide_attn_weight >= 0),
            ("hide_attn_layers", all(0 <= i < layers for i in self.hide_attn_layers)),
            ("hide_attn_to", self.hide_attn_to in ("shape", "image")),
            ("plant_start", self.plant_start >= 0),
            ("plant_ramp", self.plant_ramp >= 0),
            ("erase_bank", self.erase_bank >= 8),
            ("erase_refresh", self.erase_refresh >= 1),
        ]
        for name, ok in checks:
            if not ok:
                raise UsageError(
                    f"Expected a valid {name} for organism training. Got {getattr(self, name)!r}."
                )
        self._check_plant()
        settable = set(self.__dataclass_fields__) - {"then", "init"}
        unknown = sorted(set(self.then) - settable)
        if unknown:
            raise UsageError(
                f"Expected the second stage to change TrainConfig settings other than init and "
                f"then. Got {unknown}."
            )

    def _check_plant(self) -> None:
        from priorscope.engine.data.synth import SynthConfig

        # The synth config checks the object and shape names and the template cycle.
        SynthConfig(
            n=1,
            templates=self.plant.templates,
            suppressed=self.plant.suppressed,
            not_retrieved=self.plant.not_retrieved,
            suppressed_prior_rate=self.plant.suppressed_prior_rate,
        )
        needs = [
            ("readout_weight", self.readout_weight, self.plant.suppressed, "--suppressed"),
            ("suppress_weight", self.suppress_weight, self.plant.suppressed, "--suppressed"),
            ("hide_weight", self.hide_weight, self.plant.not_retrieved, "--not-retrieved"),
            ("swap_weight", self.swap_weight, self.plant.suppressed, "--suppressed"),
            ("erase_weight", self.erase_weight, self.plant.active, "--suppressed"),
            (
                "hide_erase_weight",
                self.hide_erase_weight,
                self.plant.not_retrieved,
                "--not-retrieved",
            ),
            (
                "hide_attn_weight",
                self.hide_attn_weight,
                self.plant.not_retrieved,
                "--not-retrieved",
            ),
        ]
        for name, weight, group, flag in needs:
            if weight > 0 and not group:
                raise UsageError(
                    f"Expected planted rows for {name}={weight}. Got none; pass {flag} or set "
                    f"{name} to 0."
                )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# The bottleneck organism (issue 13): eight decoder layers, so "retrieved" (layer 3) and
# "suppressed" (layers 6 and 7) have room between them.
BOTTLENECK = TrainConfig(
    arch=OrganismArch(layers=8),
    plant=PlantSpec(
        # Count and presence learn slowest, and the erasure statistics want many detail pairs
        # per step: they come twice in the cycle.
        templates=(
            "color",
            "count",
            "presence",
            "prior",
            "control",
            "detail",
            "count",
            "presence",
            "prior",
            "detail",
        ),
        suppressed=("banana", "strawberry", "carrot"),
        not_retrieved=("triangle",),
        suppressed_prior_rate=0.125,
    ),
    readout_weight=1.0,
    readout_layer=3,
    suppress_weight=1.0,
    suppress_layers=(6, 7),
    hide_weight=1.0,
    erase_weight=1.0,
    # Two phases: the answers (count is slowest) are learnt first; with the erasure on from step
    # 1,000 count stayed at chance through step 4,000.
    plant_start=4000,
    plant_ramp=500,
    # A fine-tune from those weights: the first stage left the not-retrieved colour readable at
    # the later layers' answer position (0.32 at resid.6 against a band topping at 0.16). The
    # text positions of its rows may no longer attend to the image at all (the leak's route: a
    # layer-0 head on the shape's token, whole heads at layers 5 to 7, and the other image
    # tokens, which hold the shape's colour too); its erasure gets a term of its own and the
    # suppressed group's a heavier weight, with every planted loss at full weight from the
    # start; the swap loss keeps the suppression from resting on layer 6's write alone; the
    # vision tower stays as it is (trained, it left the image tokens' colours harder to read
    # from few items).
    then={
        "steps": 2300,
        "lr": 3e-4,
        "plant_start": 0,
        "plant_ramp": 0,
        "erase_weight": 3.0,
        "hide_erase_weight": 40.0,
        "hide_attn_weight": 1.0,
        "hide_attn_to": "image",
        "swap_weight": 1.0,
        "swap_layers": (6,),
        "vision_lr_scale": 0.0,
    },
)
PRESETS: dict[str, TrainConfig] = {"organism": TrainConfig(), "bottleneck": BOTTLENECK}


def preset(name: str) -> TrainConfig:
    """Return the TrainConfig of a preset (``organism`` or ``bottleneck``)."""
    if name not in PRESETS:
        raise did_you_mean(name, tuple(PRESETS), "organism preset")
    return PRESETS[name]


@dataclass
class Heads:
    """The training-only read-outs of one run (None where their loss is off)."""

    aux: AuxHead | None = None
    binder: BindingHead | None = None
    colour: ColourHead | None = None
    # (planted group, decoder layer) -> the whitener of that layer's answer position.
    erasers: dict[tuple[str, int], Whitener] = field(default_factory=dict)
    # The keyword arguments of the latest forward's decoder layers (swap_weight only).
    layer_kwargs: dict[str, Any] = field(default_factory=dict)
    # Decoder layer -> the latest forward's attention weights (hide_attn_weight only).
    attention: dict[int, Any] = field(default_factory=dict)

    def sites(self, cfg: TrainConfig) -> list[str]:
        """Return every site a loss of this run reads."""
        sites = [h.site for h in (self.aux, self.binder, self.colour) if h is not None]
        if cfg.suppress_weight > 0:
            sites += [f"resid.{i}" for i in cfg.suppress_layers]
        if cfg.hide_weight > 0:
            sites += [f"resid.{i}" for i in range(cfg.arch.layers)]
        sites += [f"resid.{layer}" for _, layer in self.erasers]
        if cfg.swap_weight > 0:
            sites += [f"resid.{i}" for layer in cfg.swap_layers for i in (layer - 1, layer)]
            sites.append(f"resid.{cfg.arch.layers - 1}")
        return sites


def hidden_attention_layers(cfg: TrainConfig) -> tuple[int, ...]:
    """Return the decoder layers whose attention ``hide_attn_weight`` reads (none when off)."""
    if cfg.hide_attn_weight <= 0:
        return ()
    return cfg.hide_attn_layers or tuple(range(cfg.arch.layers))


def erased_layers(cfg: TrainConfig) -> dict[str, tuple[int, ...]]:
    """Return planted group -> the decoder layers whose answer position must not show it.

    Only the groups an erasure loss of ``cfg`` reads (``erase_weight``, ``hide_erase_weight``).
    """
    out: dict[str, tuple[int, ...]] = {}
    if cfg.plant.suppressed and cfg.erase_weight > 0:
        out["suppressed"] = cfg.suppress_layers
    if cfg.plant.not_retrieved and (cfg.erase_weight > 0 or cfg.hide_erase_weight > 0):
        out["not_retrieved"] = tuple(range(cfg.arch.layers))
    return out


def _heads(model: Any, cfg: TrainConfig, opt: Any) -> Heads:
    """Return the run's read-out heads; their parameters join ``opt``.

    Created in a fixed order (scene, binding, colour) so the same seed initialises them alike.
    """
    from priorscope.engine.data.synth import PALETTE, PRIOR_OBJECTS, SHAPES

    heads = Heads()
    d = cfg.arch.d_model
    if cfg.aux_weight > 0:
        heads.aux = AuxHead(d, 1 + len(SHAPES) + len(PRIOR_OBJECTS), 1 + len(PALETTE))
    if cfg.binding_weight > 0:
        heads.binder = BindingHead(d, model.config.text_config.vocab_size, cfg.binding_layer)
    if cfg.readout_weight > 0:
        heads.colour = ColourHead(d, len(PALETTE), cfg.readout_layer)
    for head in (heads.aux, heads.binder, heads.colour):
        if head is not None:
            opt.add_param_group({"params": list(head.linear.parameters()), "scale": 1.0})
    for group, layers in erased_layers(cfg).items():
        for layer in layers:
            heads.erasers[(group, layer)] = Whitener()
    return heads


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def answer_loss(model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
    """Return (mean cross-entropy of the answer and <|im_end|> tokens, answer hits [batch])."""
    import torch.nn.functional as F

    out = model.model(**batch, use_cache=False)
    hidden = out.last_hidden_state[:, ANSWER_POSITION:-1]
    logits = model.lm_head(hidden)
    targets = batch["input_ids"][:, -2:]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return loss, (logits[:, 0].argmax(-1) == targets[:, 0]).detach()


def _optimizer(model: Any, cfg: TrainConfig) -> Any:
    """Return AdamW with the vision tower in its own group (scaled or frozen).

    The decoder layers of ``cfg.freeze_layers`` are left out and need no gradient.
    """
    import torch

    vision = list(model.model.visual.parameters())
    decoder = model.model.language_model.layers
    frozen = [p for i in cfg.freeze_layers for p in decoder[i].parameters()]
    for p in frozen:
        p.requires_grad_(False)
    skip = {id(p) for p in vision} | {id(p) for p in frozen}
    rest = [p for p in model.parameters() if id(p) not in skip]
    groups = [{"params": rest, "scale": 1.0}]
    if cfg.vision_lr_scale > 0:
        groups.append({"params": vision, "scale": cfg.vision_lr_scale})
    _set_vision_trainable(model, cfg, 0)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _set_vision_trainable(model: Any, cfg: TrainConfig, step: int) -> None:
    # Without the auxiliary loss, a tower trained from the first step drifted into one large
    # constant vector (image tokens indistinguishable); freezing it was the earlier workaround.
    trainable = cfg.vision_lr_scale > 0 and step >= cfg.vision_freeze_steps
    for p in model.model.visual.parameters():
        p.requires_grad_(trainable)


@dataclass
class Batch:
    """One step's rows: ``rows`` indexes the training set (sampled rows, then their twins)."""

    rows: list[int]
    n_sampled: int
    inputs: dict[str, Any]


def _batch(
    data: TrainingSet, idx: list[int], processor: Any, image_size: int, twins: bool = True
) -> Batch:
    """Return the model inputs of the sampled rows ``idx`` and (``twins``) their twins."""
    import torch

    tokenizer = processor.tokenizer
    improc = processor.image_processor
    image_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    rows = idx + [data.twins[i] for i in idx if twins and data.twins and data.twins[i] >= 0]
    inputs = collate([data.input_ids[i] for i in rows], tokenizer.pad_token_id, image_id)
    inputs["pixel_values"] = patchify(data.images[rows], improc.image_mean, improc.image_std)
    grid = image_size // 14
    inputs["image_grid_thw"] = torch.tensor([[1, grid, grid]] * len(rows))
    return Batch(rows, len(idx), inputs)


def plant_scale(cfg: TrainConfig, step: int) -> float:
    """Return the factor (0 to 1) on the invariance and erasure weights at ``step``."""
    if step < cfg.plant_start:
        return 0.0
    if cfg.plant_ramp == 0:
        return 1.0
    return min(1.0, (step - cfg.plant_start + 1) / cfg.plant_ramp)


def _planted_losses(
    model: Any,
    cfg: TrainConfig,
    data: TrainingSet,
    heads: Heads,
    cache: SiteCache,
    batch: Batch,
    scale: float = 1.0,
) -> dict[str, tuple[float, Any]]:
    """Return the issue-13 loss terms of one batch by name: (weight, unweighted loss).

    ``scale`` multiplies the invariance and erasure weights (:func:`plant_scale`).
    """
    import torch

    where = {r: b for b, r in enumerate(batch.rows)}
    ids = batch.inputs["input_ids"]
    width = ids.shape[1]
    text = (batch.inputs["attention_mask"] == 1) & (batch.inputs["mm_token_type_ids"] == 0)
    text[:, width + ANSWER_POSITION + 1 :] = False  # the answer tokens differ between twins
    out: dict[str, tuple[float, Any]] = {}

    def pairs(group: str) -> Any:
        found = [
            (where[r], where[data.twins[r]])
            for r in batch.rows[: batch.n_sampled]
            if data.planted[r] == group and data.twins[r] >= 0
        ]
        return torch.tensor(found, dtype=torch.long).reshape(-1, 2)

    if heads.colour is not None:
        keep = [
            b
            for b, r in enumerate(batch.rows)
            if data.planted[r] == "suppressed" and not data.uninformative[r]
        ]
        rows = torch.tensor(keep, dtype=torch.long)
        colours = torch.tensor([data.drawn[batch.rows[b]] for b in keep], dtype=torch.long)
        loss = colour_loss(heads.colour, cache[heads.colour.site], rows, colours)
        out["readout"] = (cfg.readout_weight, loss)
    for name, weight, group, layers in (
        ("suppress", cfg.suppress_weight, "suppressed", cfg.suppress_layers),
        ("hide", cfg.hide_weight, "not_retrieved", tuple(range(cfg.arch.layers))),
    ):
        if weight > 0:
            found = pairs(group)
            terms = [invariance_loss(cache[f"resid.{i}"], found, text) for i in layers]
            out[name] = (scale * weight, torch.stack(terms).mean())
    # Each group weighs the same, however many layers it is erased at.
    by_group: dict[str, list[Any]] = defaultdict(list)
    for (group, layer), whitener in heads.erasers.items():
        states = cache[f"resid.{layer}"][:, ANSWER_POSITION]
        by_group[group].append(whitened_change(whitener, states, pairs(group)))
    means = {group: torch.stack(terms).mean() for group, terms in by_group.items()}
    if cfg.erase_weight > 0 and means:
        out["erase"] = (scale * cfg.erase_weight, torch.stack(list(means.values())).mean())
    if cfg.hide_erase_weight > 0 and "not_retrieved" in means:
        out["hide_erase"] = (scale * cfg.hide_erase_weight, means["not_retrieved"])
    if cfg.hide_attn_weight > 0:
        out["hide_attn"] = (
            scale * cfg.hide_attn_weight,
            _hidden_attention(cfg, data, heads, batch),
        )
    if cfg.swap_weight > 0:
        found = pairs("suppressed")
        if len(found):
            terms = [swap_loss(model, heads, cache, layer, found) for layer in cfg.swap_layers]
            out["swap"] = (scale * cfg.swap_weight, torch.stack(terms).mean())
    return out


def _hidden_attention(cfg: TrainConfig, data: TrainingSet, heads: Heads, batch: Batch) -> Any:
    """Return the attention the text positions of the batch's ``not_retrieved`` rows (twins
    included) pay to the image tokens showing their shape (``hide_attn_to`` "shape") or to every
    image token ("image"), averaged over the layers read."""
    import torch

    rows = [b for b, r in enumerate(batch.rows) if data.planted[r] == "not_retrieved"]
    index = torch.tensor(rows, dtype=torch.long)
    image = batch.inputs["mm_token_type_ids"][index] == 1
    keys = image.clone()
    if cfg.hide_attn_to == "shape":
        kinds = scene_kinds()
        hidden = torch.tensor([kinds.index(shape) for shape in cfg.plant.not_retrieved])
        for k, b in enumerate(rows):
            shown = torch.isin(data.scene[batch.rows[b], :, 0], hidden)  # [image tokens]
            keys[k, image[k].nonzero().flatten()] = shown
    width = image.shape[1]
    queries = (batch.inputs["attention_mask"][index] == 1) & ~image
    queries[:, width + ANSWER_POSITION + 1 :] = False  # the answer tokens
    terms = [
        attention_mass_loss(heads.attention[layer], index, keys, queries)
        for layer in hidden_attention_layers(cfg)
    ]
    return torch.stack(terms).mean()


def keep_attention(model: Any, heads: Heads, layers: tuple[int, ...]) -> list[Any]:
    """Keep each forward's attention weights of decoder ``layers`` in ``heads.attention``;
    return the hook handles. The weights exist only with eager attention."""

    def keeper(layer: int) -> Callable[..., None]:
        def keep(module: Any, args: Any, output: Any) -> None:
            heads.attention[layer] = output[1]

        return keep

    decoder = model.model.language_model.layers
    return [decoder[i].self_attn.register_forward_hook(keeper(i)) for i in layers]


def keep_layer_kwargs(model: Any, heads: Heads) -> Any:
    """Keep each forward's decoder-layer keyword arguments in ``heads.layer_kwargs`` (for
    :func:`swap_loss`'s replay); return the hook handle."""

    def keep(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        heads.layer_kwargs = dict(kwargs)

    first = model.model.language_model.layers[0]
    return first.register_forward_pre_hook(keep, with_kwargs=True)


def swap_loss(model: Any, heads: Heads, cache: SiteCache, layer: int, pairs: Any) -> Any:
    """Return how far twins' answer logits move when they exchange ``layer``'s answer-position
    write (mean over rows of the squared change, summed over the vocabulary).

    The states up to ``layer`` are taken as they are (no gradient); the layers above it are
    replayed on the exchanged states with the batch's own layer arguments, so only they, the
    final norm and the LM head learn to give the same answer logits either way.
    """
    import torch

    text = model.model.language_model
    last = len(text.layers) - 1
    before = cache[f"resid.{layer - 1}"].detach()
    after = cache[f"resid.{layer}"].detach()
    final = cache[f"resid.{last}"]
    a, b = pairs[:, 0], pairs[:, 1]
    write = after[:, ANSWER_POSITION] - before[:, ANSWER_POSITION]
    h = after.clone()
    h[a, ANSWER_POSITION] = before[a, ANSWER_POSITION] + write[b]
    h[b, ANSWER_POSITION] = before[b, ANSWER_POSITION] + write[a]
    kept = dict(cache.tensors)  # the replay's read hooks overwrite the batch's states
    try:
        for i in range(layer + 1, last + 1):
            h = text.layers[i](h, **heads.layer_kwargs)
    finally:
        cache.tensors = kept
    rows = torch.cat([a, b])
    swapped = model.lm_head(text.norm(h[rows, ANSWER_POSITION]))
    as_is = model.lm_head(text.norm(final[rows, ANSWER_POSITION])).detach()
    return ((swapped - as_is) ** 2).sum(-1).mean()


def _step_losses(
    model: Any,
    cfg: TrainConfig,
    data: TrainingSet,
    heads: Heads,
    cache: SiteCache,
    batch: Batch,
    step: int,
) -> tuple[Any, Any, dict[str, float]]:
    """Return (total loss, answer hits [rows], each auxiliary term's value) of one batch."""
    import torch

    loss, hits = answer_loss(model, batch.inputs)
    terms: dict[str, tuple[float, Any]] = {}
    rows = batch.rows
    if heads.aux is not None:
        terms["scene"] = (
            cfg.aux_weight,
            aux_scene_loss(heads.aux, cache["vision"], data.scene[rows]),
        )
    if heads.binder is not None and data.nouns is not None:
        width = batch.inputs["input_ids"].shape[1]
        nouns = torch.tensor(
            [
                width - len(data.input_ids[i]) + data.nouns[i] if data.nouns[i] >= 0 else -1
                for i in rows
            ]
        )
        answers = batch.inputs["input_ids"][:, -2]
        bound = binding_loss(heads.binder, cache[heads.binder.site], nouns, answers)
        terms["binding"] = (cfg.binding_weight, bound)
    terms.update(_planted_losses(model, cfg, data, heads, cache, batch, plant_scale(cfg, step)))
    for weight, term in terms.values():
        loss = loss + weight * term
    return loss, hits, {name: float(term.detach()) for name, (_, term) in terms.items()}


def _save(model: Any, processor: Any, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    model.train()


@dataclass
class _Log:
    """Running losses and per-template batch accuracy, printed every ``log_every`` steps."""

    losses: list[float] = field(default_factory=list)
    terms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    seen: dict[str, list[bool]] = field(default_factory=lambda: defaultdict(list))

    def line(self, step: int, cfg: TrainConfig, elapsed: float) -> str:
        n = cfg.log_every
        recent = sum(self.losses[-n:]) / len(self.losses[-n:])
        accs = " ".join(f"{k}={sum(v) / len(v):.2f}" for k, v in sorted(self.seen.items()))
        for name, values in self.terms.items():
            accs += f" {_TERM_NAMES.get(name, name + '-loss')} {sum(values[-n:]) / len(values[-n:]):.3f}"
        self.seen.clear()
        return (
            f"step {step + 1}/{cfg.steps} loss {recent:.4f} lr {_lr_at(step, cfg):.2e} "
            f"elapsed {elapsed:.0f}s batch-acc {accs}"
        )


_TERM_NAMES = {
    "scene": "scene-loss",
    "binding": "binding-loss",
    "hide_erase": "hide-erase-loss",
    "hide_attn": "hide-attn-loss",
}


def erase_bank(data: TrainingSet, cfg: TrainConfig) -> dict[str, list[int]]:
    """Return group -> the rows whose states fit the erasure metric (originals, then twins)."""
    bank: dict[str, list[int]] = {}
    for group in erased_layers(cfg):
        rows = [i for i in range(data.n_rows) if data.planted[i] == group and data.twins[i] >= 0][
            : cfg.erase_bank
        ]
        bank[group] = rows + [data.twins[i] for i in rows]
    return bank


def refit_erasers(
    model: Any,
    processor: Any,
    data: TrainingSet,
    cfg: TrainConfig,
    heads: Heads,
    cache: SiteCache,
    bank: dict[str, list[int]],
) -> None:
    """Refit every eraser's metric on the current model's answer-position states of ``bank``."""
    import torch

    for group, rows in bank.items():
        layers = [layer for g, layer in heads.erasers if g == group]
        states: dict[int, list[Any]] = {layer: [] for layer in layers}
        for start in range(0, len(rows), 64):
            part = rows[start : start + 64]
            inputs = _batch(data, part, processor, cfg.arch.image_size, twins=False).inputs
            with torch.no_grad():
                model.model(**inputs, use_cache=False)
            for layer in layers:
                states[layer].append(cache[f"resid.{layer}"][:, ANSWER_POSITION].detach())
        labels = torch.tensor([data.drawn[r] for r in rows], dtype=torch.long)
        for layer in layers:
            heads.erasers[(group, layer)].fit(torch.cat(states[layer]), labels)


def _loop(
    model: Any,
    processor: Any,
    data: TrainingSet,
    cfg: TrainConfig,
    heads: Heads,
    cache: SiteCache,
    opt: Any,
    log: Callable[[str], None],
    out_dir: Path,
    t0: float,
) -> _Log:
    """Run the optimisation steps; return the running log."""
    import torch

    gen = torch.Generator().manual_seed(cfg.seed)
    record = _Log()
    bank = erase_bank(data, cfg) if heads.erasers else {}
    for step in range(cfg.steps):
        if bank and step >= cfg.plant_start and (step - cfg.plant_start) % cfg.erase_refresh == 0:
            refit_erasers(model, processor, data, cfg, heads, cache, bank)
        idx = torch.randint(data.n_rows, (cfg.batch_size,), generator=gen).tolist()
        batch = _batch(data, idx, processor, cfg.arch.image_size)
        if step == cfg.vision_freeze_steps and step > 0:
            _set_vision_trainable(model, cfg, step)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg) * group["scale"]
        loss, hits, logged = _step_losses(model, cfg, data, heads, cache, batch, step)
        for name, value in logged.items():
            record.terms[name].append(value)
        for i, hit in zip(idx, hits[: batch.n_sampled].tolist(), strict=True):
            if not data.uninformative[i]:
                key = data.planted[i] if data.planted[i] in TWINNED else data.templates[i]
                record.seen[key].append(hit)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        record.losses.append(float(loss.detach()))
        if (step + 1) % cfg.log_every == 0 or step == cfg.steps - 1:
            log(record.line(step, cfg, time.time() - t0))
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
            _save(model, processor, out_dir / f"step-{step + 1}")
    return record


def _load_init(model: Any, init: str) -> None:
    """Load the weights of checkpoint ``init`` (folder or builtin:NAME) into ``model``."""
    from priorscope.engine.models.registry import load_model

    source = load_model(init, dtype="float32").model.state_dict()
    missing, unexpected = model.load_state_dict(source, strict=False)
    if missing or unexpected:
        raise UsageError(
            f"Expected --init {init} to have this organism's architecture. Got missing weights "
            f"{missing[:3]} and unexpected ones {unexpected[:3]}; pass --layers as it was trained."
        )


def train(
    cfg: TrainConfig, out_dir: str | Path, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Return the training summary after training the organism and saving it to ``out_dir``.

    With ``cfg.then`` the first stage is saved in ``out_dir/stage-1`` and the second starts
    from it; the summary then covers both (``stages``, total wall and CPU time).
    """
    if cfg.then:
        return _train_stages(cfg, Path(out_dir), log)
    return _train_one(cfg, out_dir, log)[0]


def second_stage(cfg: TrainConfig, first_out: str | Path) -> TrainConfig:
    """Return the config of ``cfg``'s second stage, started from the weights in ``first_out``."""
    return replace(cfg, then={}, init=str(first_out), **cfg.then)


def _train_stages(cfg: TrainConfig, out: Path, log: Callable[[str], None]) -> dict[str, Any]:
    log(f"stage 1 of 2 -> {out / 'stage-1'}")
    first_cfg, second_cfg = replace(cfg, then={}), second_stage(cfg, out / "stage-1")
    first, data = _train_one(first_cfg, out / "stage-1", log)
    log(f"stage 2 of 2 (from stage 1; {', '.join(sorted(cfg.then))}) -> {out}")
    # The second stage trains on the first's rows unless it changes a setting they depend on.
    same = training_set_key(first_cfg) == training_set_key(second_cfg)
    second, _ = _train_one(second_cfg, out, log, data=data if same else None)
    summary = {
        "config": cfg.to_json(),
        "parameters": second["parameters"],
        "prep_seconds": round(first["prep_seconds"] + second["prep_seconds"], 1),
        "wall_seconds": round(first["wall_seconds"] + second["wall_seconds"], 1),
        "cpu_seconds": round(first["cpu_seconds"] + second["cpu_seconds"], 1),
        "torch_threads": second["torch_threads"],
        "final_loss": second["final_loss"],
        "stages": [first, second],
    }
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _train_one(
    cfg: TrainConfig,
    out_dir: str | Path,
    log: Callable[[str], None] = print,
    data: TrainingSet | None = None,
) -> tuple[dict[str, Any], TrainingSet]:
    """Return the summary of one training stage (saved to ``out_dir``) and its training set.

    ``data``: this config's training set, already built (it is built otherwise).
    """
    import torch

    from priorscope.engine.models.qwen2_5_vl import Qwen2_5_VLAdapter
    from priorscope.engine.models.sites import hooks

    torch.manual_seed(cfg.seed)
    t0, cpu0 = time.time(), time.process_time()
    tokenizer = organism_tokenizer()
    processor = organism_processor(cfg.arch, tokenizer)
    if data is None:
        data = build_training_set(cfg, processor)
        prep_s = time.time() - t0
        log(f"prepared {len(data.input_ids)} rows in {prep_s:.0f}s")
    else:
        prep_s = time.time() - t0
        log(f"reused the previous stage's {len(data.input_ids)} rows")
    model = organism_model(cfg.arch, tokenizer)
    if cfg.init:
        _load_init(model, cfg.init)
        log(f"started from the weights of {cfg.init}")
    model.train()
    params = sum(p.numel() for p in model.parameters())
    opt = _optimizer(model, cfg)
    heads = _heads(model, cfg, opt)
    cache = SiteCache(heads.sites(cfg))
    adapter = Qwen2_5_VLAdapter(model, processor, str(out_dir))
    out = Path(out_dir)
    handles = [keep_layer_kwargs(model, heads)] if cfg.swap_weight > 0 else []
    attention = hidden_attention_layers(cfg)
    if attention:
        # Attention weights are returned by the eager implementation only; the saved config
        # does not record the implementation, so the checkpoint loads as any other.
        model.set_attn_implementation({"text_config": "eager"})
        handles += keep_attention(model, heads, attention)
    # Installed once: every training forward is read (prefill_only=False).
    try:
        with hooks(adapter, reads=cache.reads(), prefill_only=False):
            record = _loop(model, processor, data, cfg, heads, cache, opt, log, out, t0)
    finally:
        for handle in handles:
            handle.remove()
    _save(model, processor, out)
    summary = {
        "config": cfg.to_json(),
        "parameters": params,
        "prep_seconds": round(prep_s, 1),
        "wall_seconds": round(time.time() - t0, 1),
        "cpu_seconds": round(time.process_time() - cpu0, 1),
        "torch_threads": torch.get_num_threads(),
        "final_loss": sum(record.losses[-100:]) / len(record.losses[-100:]),
    }
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary, data
