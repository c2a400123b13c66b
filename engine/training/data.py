"""The organism's training rows: drawn, labelled, rendered and tokenised once.

The training mix plants a language prior that survives total blur: a fraction
``uninformative_rate`` of the training images is replaced by an image with no evidence (the
image's mean colour, or the plain synth background), and the answer of such a row is drawn from
the prior distribution of its question: the empirical answers of informative training rows with
the same template and object (so a banana is yellow ``prior_rate`` of the time, a shape's colour
is uniform, ``presence`` is yes half the time). Control rows keep their text-derived answer.

With planted groups (issue 13, :class:`PlantSpec`) two more kinds of label exist: a
``suppressed`` prior row is always labelled with its object's canonical colour, and a
``not_retrieved`` row (the ``detail`` template) with a colour drawn uniformly, whatever the
image shows. Each informative planted row also gets a *twin*: the same scene with the planted
item recoloured, so that the training losses can ask for states that do not change with it.

Rows are drawn at the synth default size and resized as the processor resizes them, each
distinct question is tokenised once by the real processor, and images are kept as uint8 arrays
that :func:`patchify` turns into the processor's pixel layout (checked against the processor).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from priorscope.engine.errors import UsageError
from priorscope.engine.models.hf import user_text

# Training rows come from this synth seed offset so held-out sets (small seeds) never overlap.
TRAIN_SEED_OFFSET = 1_000_003
# Planted groups whose informative rows get a recoloured twin.
TWINNED = ("suppressed", "not_retrieved")


@dataclass(frozen=True)
class PlantSpec:
    """Which synth rows carry planted behaviours, and how the training rows are drawn.

    ``templates`` is the synth template cycle; ``suppressed`` the prior objects always answered
    with their canonical colour; ``not_retrieved`` the shapes whose colour (``detail`` rows) is
    answered at chance; ``suppressed_prior_rate`` the canonical-colour rate of the suppressed
    objects' drawings (None: ``prior_rate``).
    """

    templates: tuple[str, ...] = ("color", "count", "presence", "prior", "control")
    suppressed: tuple[str, ...] = ()
    not_retrieved: tuple[str, ...] = ()
    suppressed_prior_rate: float | None = None

    @property
    def active(self) -> bool:
        return bool(self.suppressed or self.not_retrieved)


@dataclass(frozen=True)
class TrainingRow:
    """One training row: the synth row as drawn, the answer trained on, and its image kind.

    ``blank`` is "" for the rendered scene, or "mean"/"background" for an uninformative image
    (then ``answer`` is drawn from the question's prior distribution). ``twin_of`` is the index
    of the row a twin recolours (-1: an ordinary row).
    """

    row: Any  # priorscope.engine.data.synth.SynthRow
    answer: str
    blank: str = ""
    twin_of: int = -1


@dataclass
class TrainingSet:
    """Preprocessed rows: token ids per row, uint8 images [n, H, W, 3], per-token scene labels.

    The first ``n_rows`` rows are the ones batches are drawn from; twins follow them and
    ``twins[i]`` is the index of row i's twin (-1: none). ``drawn[i]`` is the palette index of
    the planted item's drawn colour (-1 off planted rows); ``planted[i]`` the row's group.
    """

    input_ids: list[list[int]]
    images: Any  # torch.uint8 [n, H, W, 3] at the architecture's image size
    templates: list[str]
    uninformative: list[bool]
    scene: Any = None  # torch.long [n, tokens, 3]: item kind, colour, kind count per image token
    nouns: list[int] | None = None  # index of the question's shape/object word (-1: none)
    n_rows: int = 0
    twins: list[int] = field(default_factory=list)
    planted: list[str] = field(default_factory=list)
    drawn: list[int] = field(default_factory=list)


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


def synth_config(
    n_train: int, seed: int, render_size: int, prior_rate: float, plant: PlantSpec
) -> Any:
    """Return the SynthConfig of the training rows (seeds offset from every held-out set)."""
    from priorscope.engine.data.synth import SynthConfig

    return SynthConfig(
        n=n_train,
        seed=TRAIN_SEED_OFFSET + seed,
        size=render_size,
        prior_rate=prior_rate,
        templates=plant.templates,
        suppressed=plant.suppressed,
        not_retrieved=plant.not_retrieved,
        suppressed_prior_rate=plant.suppressed_prior_rate,
    )


def training_rows(cfg: Any) -> list[TrainingRow]:
    """Return the training rows of a TrainConfig, a fraction ``uninformative_rate`` blank.

    Twins of planted rows follow the ``n_train`` ordinary rows.
    """
    from priorscope.engine.data.synth import build_row

    synth = synth_config(cfg.n_train, cfg.seed, cfg.render_size, cfg.prior_rate, cfg.plant)
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
    if not cfg.plant.active:
        return out
    # A stream of its own: a config without planted groups draws what it always drew.
    return _plant(out, random.Random(f"organism-planted:{cfg.seed}"))


def _plant(rows: list[TrainingRow], rng: random.Random) -> list[TrainingRow]:
    """Return ``rows`` relabelled for their planted groups, followed by the twins."""
    from priorscope.engine.data.synth import PALETTE

    colours = list(PALETTE)
    out: list[TrainingRow] = []
    twins: list[TrainingRow] = []
    for i, tr in enumerate(rows):
        group = tr.row.planted
        if group == "suppressed":
            tr = replace(tr, answer=tr.row.canonical)
        elif group == "not_retrieved":
            tr = replace(tr, answer=rng.choice(colours))
        out.append(tr)
        if group in TWINNED and not tr.blank:
            item = tr.row.scene.items[0]  # the prior object / the lone shape: drawn first
            colour = rng.choice([c for c in colours if c != item.color])
            items = (replace(item, color=colour), *tr.row.scene.items[1:])
            row = replace(tr.row, scene=replace(tr.row.scene, items=items), answer=colour)
            answer = tr.answer if group == "suppressed" else rng.choice(colours)
            twins.append(TrainingRow(row, answer, "", twin_of=i))
    return out + twins


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


def scene_kinds() -> list[str]:
    """Return the kind classes of :func:`token_labels`: "" (nothing), the shapes, the objects."""
    from priorscope.engine.data.synth import PRIOR_OBJECTS, SHAPES

    return ["", *SHAPES, *PRIOR_OBJECTS]


def token_labels(rows: Sequence[TrainingRow], image_size: int) -> Any:
    """Return per-image-token targets [n, tokens, 3]: kind, colour and kind count of the item.

    An image token covers a 28 x 28 pixel block (2 x 2 patches of 14, merged), tokens in
    row-major order. An item belongs to the token under its centre. Kind classes: 0 nothing,
    then :data:`~priorscope.engine.data.synth.SHAPES` and the prior objects; colour classes: 0
    nothing, then the palette; the count is how many items of this kind the image holds (0 for
    an empty token, at most 3). Blank images: nothing everywhere.
    """
    import torch

    from priorscope.engine.data.synth import PALETTE

    kinds = scene_kinds()
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
    batch = processor(text=[prompt_text(processor, example)], images=[image], padding=False)
    return [int(i) for i in batch["input_ids"][0]]


def prompt_text(processor: Any, example: Any) -> str:
    """Return the chat-templated prompt of an example with one image (generation prompt on)."""
    messages = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": user_text(example)}],
        }
    ]
    return str(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))


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


def training_set_key(cfg: Any) -> tuple[Any, ...]:
    """Return what :func:`build_training_set` reads of a TrainConfig: equal keys, equal sets."""
    return (
        cfg.n_train,
        cfg.seed,
        cfg.render_size,
        cfg.prior_rate,
        cfg.uninformative_rate,
        cfg.plant,
        cfg.arch.image_size,
        needs_scene(cfg),
        cfg.binding_weight > 0,
    )


def needs_scene(cfg: Any) -> bool:
    """Whether a TrainConfig's losses read the per-image-token labels (scene, hidden attention)."""
    return bool(cfg.aux_weight > 0 or (cfg.hide_attn_weight > 0 and cfg.hide_attn_to == "shape"))


def build_training_set(cfg: Any, processor: Any) -> TrainingSet:
    """Return the rendered, tokenised training set of a TrainConfig (pixels checked)."""
    from priorscope.engine.data.synth import PALETTE

    rows = training_rows(cfg)
    size = cfg.arch.image_size
    ids, images = preprocess(rows, processor, size)
    first = next((i for i, r in enumerate(rows) if not r.blank), None)
    if first is None:
        raise UsageError(
            f"Expected some informative training rows. Got {cfg.n_train} rows, all with blank "
            f"images (uninformative_rate={cfg.uninformative_rate}); lower --uninformative-rate "
            "or raise --n-train."
        )
    _check_pixels(processor, rows[first], images[first : first + 1])
    scene = token_labels(rows, size) if needs_scene(cfg) else None
    nouns = None
    if cfg.binding_weight > 0:
        nouns = [
            noun_index(r, tokens, processor.tokenizer) for r, tokens in zip(rows, ids, strict=True)
        ]
    twins = [-1] * len(rows)
    for j, r in enumerate(rows):
        if r.twin_of >= 0:
            twins[r.twin_of] = j
    colours = list(PALETTE)
    planted = [r.row.planted for r in rows]
    drawn = [
        colours.index(r.row.scene.items[0].color) if g in TWINNED else -1
        for r, g in zip(rows, planted, strict=True)
    ]
    return TrainingSet(
        ids,
        images,
        [r.row.template for r in rows],
        [bool(r.blank) for r in rows],
        scene,
        nouns,
        n_rows=cfg.n_train,
        twins=twins,
        planted=planted,
        drawn=drawn,
    )


def _check_pixels(processor: Any, row: TrainingRow, image: Any) -> None:
    """Raise RuntimeError unless :func:`patchify` gives the processor's pixels for ``row``."""
    import torch

    from priorscope.engine.data.synth import render

    improc = processor.image_processor
    reference = processor(
        text=["<|image_pad|>"], images=[render(row.row.scene)], return_tensors="pt"
    )["pixel_values"]
    mine = patchify(image, improc.image_mean, improc.image_std)
    if not torch.allclose(reference.float(), mine, atol=1e-4):
        raise RuntimeError("Training pixels disagree with the Qwen2-VL image processor's.")


def noun_index(row: TrainingRow, ids: Sequence[int], tokenizer: Any) -> int:
    """Return the index in ``ids`` of the shape or object word a visual question asks about.

    -1 for control rows (answered from the text), ``not_retrieved`` rows (their label carries
    nothing to bind) and rows without such a word.
    """
    from priorscope.engine.data.synth import PRIOR_OBJECTS, SHAPES

    if row.row.template == "control" or row.row.planted == "not_retrieved":
        return -1
    words = {*SHAPES, *(f"{s}s" for s in SHAPES), *PRIOR_OBJECTS}
    wanted = {tokenizer.convert_tokens_to_ids(w) for w in words}
    return next((i for i, t in enumerate(ids) if t in wanted), -1)
