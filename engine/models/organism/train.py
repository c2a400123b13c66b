"""Train the model organism from scratch on the synthetic benchmark.

The training mix plants a language prior that survives total blur: a fraction
``uninformative_rate`` of the training images is replaced by an image with no evidence (the
image's mean colour, or the plain synth background), and the answer of such a row is drawn from
the prior distribution of its question: the empirical answers of informative training rows with
the same template and object (so a banana is yellow ``prior_rate`` of the time, a shape's colour
is uniform, ``presence`` is yes half the time). Control rows keep their text-derived answer. The
loss is on the answer tokens only (the answer word and ``<|im_end|>``).

Two auxiliary losses, both read out by linear heads that exist only during training, make the
visual templates learnable at this size in a CPU budget (the answer loss alone left count and
presence at their majority rate):

- the scene loss (``aux_weight``) asks every merged image token to name the item drawn under
  it (kind and colour) and how many items of that kind the image holds. It stands in for the
  vision pre-training a real VLM's encoder has; at 84 x 84 pixels the 3 x 3 image tokens are
  exactly the synth grid's cells, one item each.
- the binding loss (``binding_weight``) asks decoder layer ``binding_layer``'s output at the
  question's shape or object word ("circle", "stars", "banana") for the answer. Without it the
  decoder bound the word to the image token showing that shape only slowly (held-out after
  4,000 steps: colour 0.77, count 0.40, presence 0.77); with it, colour and presence pass
  0.98 by 2,000 steps and count 0.97 by 4,000.

Neither head is saved: the checkpoint is a plain Qwen2.5-VL whose answer comes from its own LM
head at the answer position.

The training set is rendered and preprocessed once: rows are drawn at the synth default size
and resized as the processor resizes them, each distinct question is tokenised once by the real
processor, and images are kept as uint8 arrays that :func:`patchify` turns into the processor's
pixel layout (checked against the processor on an informative row).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from priorscope.engine.errors import UsageError
from priorscope.engine.models.hf import user_text
from priorscope.engine.models.organism.build import (
    OrganismArch,
    organism_model,
    organism_processor,
    organism_tokenizer,
)

# Training rows come from this synth seed offset so held-out sets (small seeds) never overlap.
TRAIN_SEED_OFFSET = 1_000_003


@dataclass(frozen=True)
class TrainConfig:
    """How the organism is trained. Defaults reproduce the shipped checkpoint."""

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
    # Weight of the per-token scene loss on the vision tower's merged tokens (0: off).
    aux_weight: float = 1.0
    # Weight of the binding loss: a linear read-out of decoder layer binding_layer's output at
    # the question's shape or object word must give the answer (0: off).
    binding_weight: float = 1.0
    binding_layer: int = 1

    def __post_init__(self) -> None:
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
            ("binding_layer", 0 <= self.binding_layer < self.arch.layers),
        ]
        for name, ok in checks:
            if not ok:
                raise UsageError(
                    f"Expected a valid {name} for organism training. Got {getattr(self, name)!r}."
                )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TrainingRow:
    """One training row: the synth row as drawn, the answer trained on, and its image kind.

    ``blank`` is "" for the rendered scene, or "mean"/"background" for an uninformative image
    (then ``answer`` is drawn from the question's prior distribution).
    """

    row: Any  # priorscope.engine.data.synth.SynthRow
    answer: str
    blank: str = ""


@dataclass
class TrainingSet:
    """Preprocessed rows: token ids per row, uint8 images [n, H, W, 3], per-token scene labels."""

    input_ids: list[list[int]]
    images: Any  # torch.uint8 [n, H, W, 3] at the architecture's image size
    templates: list[str]
    uninformative: list[bool]
    scene: Any = None  # torch.long [n, tokens, 3]: item kind, colour, kind count per image token
    nouns: list[int] | None = None  # index of the question's shape/object word (-1: none)


def _prior_key(template: str, question: str) -> tuple[str, str]:
    # Prior and control rows: the question's object decides the prior; other visual templates
    # have one prior per template (a shape's colour is uniform, presence is yes half the time).
    return template, question if template in ("prior", "control") else ""


def prior_answers(rows: Sequence[Any]) -> dict[tuple[str, str], list[str]]:
    """Return (template, object key) -> answers of the synth rows (the prior distribution)."""
    table: dict[tuple[str, str], list[str]] = defaultdict(list)
    for row in rows:
        table[_prior_key(row.template, row.question)].append(row.answer)
    return table


def training_rows(cfg: TrainConfig) -> list[TrainingRow]:
    """Return the training rows, a fraction ``uninformative_rate`` of them with blank images."""
    from priorscope.engine.data.synth import build_row

    synth = _synth_config(cfg)
    rows = [build_row(synth, i) for i in range(cfg.n_train)]
    priors = prior_answers(rows)
    rng = random.Random(f"organism-mix:{cfg.seed}")
    out = []
    for row in rows:
        if rng.random() < cfg.uninformative_rate:
            kind = "mean" if rng.random() < 0.5 else "background"
            answer = row.answer
            if row.template != "control":
                answer = rng.choice(priors[_prior_key(row.template, row.question)])
            out.append(TrainingRow(row, answer, kind))
        else:
            out.append(TrainingRow(row, row.answer))
    return out


def _synth_config(cfg: TrainConfig) -> Any:
    from priorscope.engine.data.synth import SynthConfig

    return SynthConfig(
        n=cfg.n_train,
        seed=TRAIN_SEED_OFFSET + cfg.seed,
        size=cfg.render_size,
        prior_rate=cfg.prior_rate,
    )


def row_image(row: TrainingRow, image_size: int) -> Any:
    """Return the row's image as the model sees it: rendered, blanked if so, resized (bicubic).

    Bicubic resizing of the PIL image is what the Qwen2-VL PIL image processor does;
    :func:`build_training_set` checks the two agree.
    """
    from PIL import Image

    from priorscope.engine.data.synth import render, uninformative_image

    image = render(row.row.scene)
    if row.blank:
        image = uninformative_image(image, row.blank)
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
    return image


def token_labels(rows: Sequence[TrainingRow], image_size: int) -> Any:
    """Return per-image-token targets [n, tokens, 3]: kind, colour and kind count of the item.

    An image token covers a 28 x 28 pixel block (2 x 2 patches of 14, merged), tokens in
    row-major order. An item belongs to the token under its centre. Kind classes: 0 nothing,
    then :data:`~priorscope.engine.data.synth.SHAPES` and the prior objects; colour classes: 0
    nothing, then the palette; the count is how many items of this kind the image holds (0 for
    an empty token, at most 3). Blank images: nothing everywhere.
    """
    import torch

    from priorscope.engine.data.synth import PALETTE, PRIOR_OBJECTS, SHAPES

    kinds = ["", *SHAPES, *PRIOR_OBJECTS]
    colours = ["", *PALETTE]
    grid = image_size // 28
    labels = torch.zeros((len(rows), grid * grid, 3), dtype=torch.long)
    for i, row in enumerate(rows):
        if row.blank:
            continue
        size = row.row.scene.size
        items = row.row.scene.items
        for item in items:
            gx = min(grid - 1, int(item.cx / size * grid))
            gy = min(grid - 1, int(item.cy / size * grid))
            same = min(3, sum(other.kind == item.kind for other in items))
            labels[i, gy * grid + gx] = torch.tensor(
                [kinds.index(item.kind), colours.index(item.color), same]
            )
    return labels


class AuxHead:
    """Per-token linear read-out of the image tokens used only in training (never saved)."""

    def __init__(self, d_model: int, n_kinds: int, n_colours: int, n_counts: int = 4) -> None:
        import torch

        self.sizes = (n_kinds, n_colours, n_counts)
        self.linear = torch.nn.Linear(d_model, sum(self.sizes))
        self.features: Any = None

    def hook(self, module: Any, args: Any, output: Any) -> None:
        # The merger's output [batch * tokens, d_model] is what the decoder sees.
        self.features = output


def aux_scene_loss(head: AuxHead, targets: Any) -> Any:
    """Return the summed cross-entropy of each image token's item kind, colour and kind count.

    This stands in for the vision pre-training a real VLM's encoder has: a linear read-out of
    every merged image token must name what is drawn under it and how many of its kind the
    image holds, so the tower learns features the decoder can attend to.
    """
    import torch.nn.functional as F

    out = head.linear(head.features)
    flat = targets.reshape(-1, targets.shape[-1])
    loss = out.new_zeros(())
    start = 0
    for j, size in enumerate(head.sizes):
        loss = loss + F.cross_entropy(out[:, start : start + size], flat[:, j])
        start += size
    return loss


def patchify(images: Any, mean: Sequence[float], std: Sequence[float]) -> Any:
    """Return Qwen2-VL pixel rows [n * grid², 3 * 2 * 14 * 14] from uint8 images [n, H, W, 3].

    The layout is the image processor's: merge-size blocks of 14 x 14 patches, the frame
    repeated over the temporal patch of 2.
    """
    import torch

    n, h, w, c = images.shape
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    p, m, gh, gw = 14, 2, h // 14, w // 14
    x = x.reshape(n, c, gh // m, m, p, gw // m, m, p)
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)  # n, gh/m, gw/m, m, m, C, p, p
    x = x.unsqueeze(6).expand(*x.shape[:6], 2, p, p)
    return x.reshape(n * gh * gw, c * 2 * p * p)


def prompt_ids(processor: Any, question: str, image: Any) -> list[int]:
    """Return the prompt token ids of an open-ended synth question with one image."""
    from priorscope.engine.data.example import Example

    example = Example(id="0", question=question, answers=("",))
    batch = processor(text=[_prompt(processor, example)], images=[image], padding=False)
    return [int(i) for i in batch["input_ids"][0]]


def preprocess(
    rows: Sequence[TrainingRow], processor: Any, image_size: int
) -> tuple[list[list[int]], Any]:
    """Return per-row token ids of prompt + answer + <|im_end|>, and uint8 images [n, H, W, 3].

    Every image is resized to the same size, so a prompt's ids depend on its question only and
    are computed once per question.
    """
    import numpy as np
    import torch

    tok = processor.tokenizer
    end_id = tok.convert_tokens_to_ids("<|im_end|>")
    prompts: dict[str, list[int]] = {}
    ids: list[list[int]] = []
    images = np.empty((len(rows), image_size, image_size, 3), dtype=np.uint8)
    for i, row in enumerate(rows):
        image = row_image(row, image_size)
        images[i] = np.asarray(image, dtype=np.uint8)
        question = row.row.question
        if question not in prompts:
            prompts[question] = prompt_ids(processor, question, image)
        answer = tok.convert_tokens_to_ids(row.answer)
        if answer == tok.unk_token_id:
            raise UsageError(f"Expected answer {row.answer!r} to be one organism token.")
        ids.append([*prompts[question], answer, end_id])
    return ids, torch.from_numpy(images)


def _prompt(processor: Any, example: Any) -> str:
    messages = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": user_text(example)}],
        }
    ]
    return str(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))


def collate(rows: Sequence[list[int]], pad_id: int, image_id: int) -> dict[str, Any]:
    """Return a left-padded batch: input_ids, attention_mask, mm_token_type_ids [b, seq]."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return {"input_ids": ids, "attention_mask": mask, "mm_token_type_ids": (ids == image_id).long()}


def build_training_set(cfg: TrainConfig, processor: Any) -> TrainingSet:
    """Return the rendered, tokenised training set (checks the pixels against the processor)."""
    import torch

    from priorscope.engine.data.synth import render

    rows = training_rows(cfg)
    size = cfg.arch.image_size
    ids, images = preprocess(rows, processor, size)
    improc = processor.image_processor
    first = next((i for i, r in enumerate(rows) if not r.blank), None)
    if first is None:
        raise UsageError(
            f"Expected some informative training rows. Got {cfg.n_train} rows, all with blank "
            f"images (uninformative_rate={cfg.uninformative_rate}); lower --uninformative-rate "
            "or raise --n-train."
        )
    reference = processor(
        text=["<|image_pad|>"], images=[render(rows[first].row.scene)], return_tensors="pt"
    )["pixel_values"]
    mine = patchify(images[first : first + 1], improc.image_mean, improc.image_std)
    if not torch.allclose(reference.float(), mine, atol=1e-4):
        raise RuntimeError("Training pixels disagree with the Qwen2-VL image processor's.")
    templates = [r.row.template for r in rows]
    flags = [bool(r.blank) for r in rows]
    scene = token_labels(rows, size) if cfg.aux_weight > 0 else None
    nouns = None
    if cfg.binding_weight > 0:
        nouns = [
            noun_index(r, tokens, processor.tokenizer) for r, tokens in zip(rows, ids, strict=True)
        ]
    return TrainingSet(ids, images, templates, flags, scene, nouns)


def noun_index(row: TrainingRow, ids: Sequence[int], tokenizer: Any) -> int:
    """Return the index in ``ids`` of the shape or object word a visual question asks about.

    -1 for control rows (answered from the text) and rows without such a word.
    """
    from priorscope.engine.data.synth import PRIOR_OBJECTS, SHAPES

    if row.row.template == "control":
        return -1
    words = {*SHAPES, *(f"{s}s" for s in SHAPES), *PRIOR_OBJECTS}
    wanted = {tokenizer.convert_tokens_to_ids(w) for w in words}
    return next((i for i, t in enumerate(ids) if t in wanted), -1)


class BindingHead:
    """Linear read-out of one decoder layer's output at the question word (training only)."""

    def __init__(self, d_model: int, vocab: int) -> None:
        import torch

        self.linear = torch.nn.Linear(d_model, vocab)
        self.features: Any = None

    def hook(self, module: Any, args: Any, output: Any) -> None:
        self.features = output[0] if isinstance(output, tuple) else output


def binding_loss(head: BindingHead, nouns: Any, answers: Any) -> Any:
    """Return the cross-entropy of the answer read at each row's question word (rows with one)."""
    import torch
    import torch.nn.functional as F

    keep = nouns >= 0
    if not bool(keep.any()):
        return head.features.sum() * 0.0
    rows = torch.arange(nouns.shape[0])[keep]
    out = head.linear(head.features[rows, nouns[keep]])
    return F.cross_entropy(out, answers[keep])


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def answer_loss(model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
    """Return (mean cross-entropy of the answer and <|im_end|> tokens, answer hits [batch])."""
    import torch.nn.functional as F

    out = model.model(**batch, use_cache=False)
    hidden = out.last_hidden_state[:, -3:-1]
    logits = model.lm_head(hidden)
    targets = batch["input_ids"][:, -2:]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return loss, (logits[:, 0].argmax(-1) == targets[:, 0]).detach()


def _optimizer(model: Any, cfg: TrainConfig) -> Any:
    """Return AdamW with the vision tower in its own group (scaled or frozen)."""
    import torch

    vision = list(model.model.visual.parameters())
    vision_ids = {id(p) for p in vision}
    rest = [p for p in model.parameters() if id(p) not in vision_ids]
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


def _attach_aux(model: Any, cfg: TrainConfig, opt: Any) -> AuxHead | None:
    """Return the auxiliary head hooked to the vision merger (its params join ``opt``)."""
    from priorscope.engine.data.synth import PALETTE, PRIOR_OBJECTS, SHAPES

    if cfg.aux_weight <= 0:
        return None
    head = AuxHead(cfg.arch.d_model, 1 + len(SHAPES) + len(PRIOR_OBJECTS), 1 + len(PALETTE))
    model.model.visual.merger.register_forward_hook(head.hook)
    opt.add_param_group({"params": list(head.linear.parameters()), "scale": 1.0})
    return head


def _attach_binding(model: Any, cfg: TrainConfig, opt: Any) -> BindingHead | None:
    """Return the binding head hooked to decoder layer ``binding_layer`` (params join ``opt``)."""
    if cfg.binding_weight <= 0:
        return None
    head = BindingHead(cfg.arch.d_model, model.config.text_config.vocab_size)
    model.model.language_model.layers[cfg.binding_layer].register_forward_hook(head.hook)
    opt.add_param_group({"params": list(head.linear.parameters()), "scale": 1.0})
    return head


def _save(model: Any, processor: Any, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    model.train()


def train(
    cfg: TrainConfig, out_dir: str | Path, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Return the training summary after training the organism and saving it to ``out_dir``."""
    import torch

    torch.manual_seed(cfg.seed)
    t0 = time.time()
    tokenizer = organism_tokenizer()
    processor = organism_processor(cfg.arch, tokenizer)
    data = build_training_set(cfg, processor)
    prep_s = time.time() - t0
    log(f"prepared {len(data.input_ids)} rows in {prep_s:.0f}s")
    model = organism_model(cfg.arch, tokenizer)
    model.train()
    params = sum(p.numel() for p in model.parameters())
    opt = _optimizer(model, cfg)
    aux = _attach_aux(model, cfg, opt)
    binder = _attach_binding(model, cfg, opt)
    improc = processor.image_processor
    image_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    grid = cfg.arch.image_size // 14
    gen = torch.Generator().manual_seed(cfg.seed)
    losses: list[float] = []
    aux_losses: list[float] = []
    bind_losses: list[float] = []
    seen: dict[str, list[bool]] = defaultdict(list)  # training-batch hits on informative rows
    for step in range(cfg.steps):
        idx = torch.randint(len(data.input_ids), (cfg.batch_size,), generator=gen).tolist()
        batch = collate([data.input_ids[i] for i in idx], tokenizer.pad_token_id, image_id)
        batch["pixel_values"] = patchify(data.images[idx], improc.image_mean, improc.image_std)
        batch["image_grid_thw"] = torch.tensor([[1, grid, grid]] * len(idx))
        if step == cfg.vision_freeze_steps and step > 0:
            _set_vision_trainable(model, cfg, step)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg) * group["scale"]
        loss, hits = answer_loss(model, batch)
        if aux is not None:
            scene_loss = aux_scene_loss(aux, data.scene[idx])
            aux_losses.append(float(scene_loss.detach()))
            loss = loss + cfg.aux_weight * scene_loss
        if binder is not None and data.nouns is not None:
            width = batch["input_ids"].shape[1]
            nouns = torch.tensor(
                [
                    width - len(data.input_ids[i]) + data.nouns[i] if data.nouns[i] >= 0 else -1
                    for i in idx
                ]
            )
            bound = binding_loss(binder, nouns, batch["input_ids"][:, -2])
            bind_losses.append(float(bound.detach()))
            loss = loss + cfg.binding_weight * bound
        for i, hit in zip(idx, hits.tolist(), strict=True):
            if not data.uninformative[i]:
                seen[data.templates[i]].append(hit)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if (step + 1) % cfg.log_every == 0 or step == cfg.steps - 1:
            recent = sum(losses[-cfg.log_every :]) / len(losses[-cfg.log_every :])
            accs = " ".join(f"{k}={sum(v) / len(v):.2f}" for k, v in sorted(seen.items()))
            if aux_losses:
                scene = aux_losses[-cfg.log_every :]
                accs += f" scene-loss {sum(scene) / len(scene):.3f}"
            if bind_losses:
                bound_recent = bind_losses[-cfg.log_every :]
                accs += f" binding-loss {sum(bound_recent) / len(bound_recent):.3f}"
            log(
                f"step {step + 1}/{cfg.steps} loss {recent:.4f} lr {_lr_at(step, cfg):.2e} "
                f"elapsed {time.time() - t0:.0f}s batch-acc {accs}"
            )
            seen.clear()
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
            _save(model, processor, Path(out_dir) / f"step-{step + 1}")
    out = Path(out_dir)
    _save(model, processor, out)
    summary = {
        "config": cfg.to_json(),
        "parameters": params,
        "prep_seconds": round(prep_s, 1),
        "wall_seconds": round(time.time() - t0, 1),
        "torch_threads": torch.get_num_threads(),
        "final_loss": sum(losses[-100:]) / len(losses[-100:]),
    }
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
