"""The synthetic benchmark with planted priors: the known answer later diagnostics are checked on.

Each row is one of five templates (recorded in the metadata column ``template``):

- ``color``: "what color is the circle?" -- the colour of a named shape; needs the image.
- ``count``: "how many stars are there?" -- 1 to 3; needs the image.
- ``presence``: "is there a square?" -- yes or no (half the rows each); needs the image.
- ``prior``: "what color is the banana?" -- an object with a canonical colour (banana yellow,
  strawberry red, carrot orange, leaf green, grape purple, blueberry blue) drawn as a simple
  icon. With probability ``prior_rate`` it is drawn in its canonical colour, otherwise in another
  palette colour (``counter_prior`` = 1). A model that answers from the prior is right on the
  first kind and wrong on the second.
- ``control``: "how many sides does a triangle have?" -- answerable from the text alone; the
  image shows unrelated shapes (``needs_image`` = 0).
- ``detail`` (only with ``not_retrieved``, never in the default cycle): "what color is the
  triangle?" about one of the ``not_retrieved`` shapes, drawn alone in a uniformly drawn colour.

Planted groups (issue 13): with ``suppressed`` (prior objects) or ``not_retrieved`` (shapes) set,
every row also gets a ``planted`` column naming the behaviour a model organism was trained to
show on it: ``used`` (colour, count and presence rows: the answer follows the image, and is at
chance without it), ``prior`` (prior rows of the other objects: the image when visible, the
canonical colour without it, as in ``builtin:organism``), ``suppressed`` (prior rows of the
``suppressed`` objects: answered with the canonical colour even when drawn otherwise),
``not_retrieved`` (``detail`` rows: the colour is never moved from the image tokens, so it is
answered at chance) and ``control``. ``color``
rows then never ask about a ``not_retrieved`` shape. Without these options the output is the
same, byte for byte, as before they existed.

Answers are single words: colour names, digits for numbers (``"3"``, never ``"three"``; the
scorer maps number words to digits), and ``yes``/``no``. With ``mc=True`` each row gets options
(four for colour and number questions, always including the canonical colour on prior rows;
two, ``yes`` and ``no``, for yes/no questions) and the answer is the option letter.

Metadata columns: ``template``, ``canonical`` (the canonical answer: the object's usual colour
on prior rows, the text-derived answer on control rows, "" otherwise), ``counter_prior`` ("0"/"1"),
``needs_image`` ("0"/"1") and, with planted options, ``planted``.

Images are ``size`` x ``size`` PNGs with one to three filled shapes from :data:`PALETTE` on the
plain background :data:`BACKGROUND`, placed in distinct cells of a 3x3 grid so they never touch.
The same config gives the same examples and :func:`write_tsv` the same bytes.
"""

from __future__ import annotations

import base64
import csv
import json
import math
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image, ImageDraw

from priorscope.engine.data.example import OPTION_LABELS, Example
from priorscope.engine.data.images import encode_png
from priorscope.engine.errors import DataError, UsageError, did_you_mean

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "orange": (245, 140, 20),
    "yellow": (240, 215, 30),
    "green": (40, 165, 60),
    "blue": (40, 90, 225),
    "purple": (135, 60, 190),
    "brown": (125, 78, 40),
    "pink": (240, 128, 185),
}
BACKGROUND: tuple[int, int, int] = (236, 236, 236)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
PRIOR_OBJECTS: dict[str, str] = {
    "banana": "yellow",
    "strawberry": "red",
    "carrot": "orange",
    "leaf": "green",
    "grape": "purple",
    "blueberry": "blue",
}
TEMPLATES: tuple[str, ...] = ("color", "count", "presence", "prior", "control")
# Templates that exist only with planted options; never part of the default cycle.
PLANTED_TEMPLATES: tuple[str, ...] = ("detail",)
ALL_TEMPLATES: tuple[str, ...] = TEMPLATES + PLANTED_TEMPLATES
PLANTED_GROUPS: tuple[str, ...] = ("used", "prior", "suppressed", "not_retrieved", "control")
NUMBERS: tuple[str, ...] = ("0", "1", "2", "3", "4", "5")
# Facts a language model knows without the image: (question, answer).
CONTROL_FACTS: tuple[tuple[str, str], ...] = (
    ("how many sides does a triangle have?", "3"),
    ("how many sides does a square have?", "4"),
    ("how many points does a star have?", "5"),
    ("is a circle round?", "yes"),
    ("is a square round?", "no"),
    ("is a banana a fruit?", "yes"),
    ("is a leaf a fruit?", "no"),
)
_GRID = 3


def split_words(text: str) -> list[str]:
    """Return the word tokens of a synth text: lowercased, whitespace-split, '?' on its own."""
    return re.sub(r"\?", " ? ", text.lower()).split()


def _question_texts() -> list[str]:
    texts = [f"what color is the {s}?" for s in SHAPES]
    texts += [f"how many {s}s are there?" for s in SHAPES]
    texts += [f"is there a {s}?" for s in SHAPES]
    texts += [f"what color is the {o}?" for o in PRIOR_OBJECTS]
    texts += [q for q, _ in CONTROL_FACTS]
    return texts


def _vocabulary() -> tuple[str, ...]:
    words: set[str] = set()
    for text in _question_texts():
        words.update(split_words(text))
    words.update(PALETTE)
    words.update(NUMBERS)
    words.update(("yes", "no"))
    words.update(label.lower() for label in OPTION_LABELS[:4])
    return tuple(sorted(words))


VOCABULARY: tuple[str, ...] = _vocabulary()


def vocabulary() -> tuple[str, ...]:
    """Return every word that can appear in a synth question, option or answer (sorted).

    Words are lowercase; a text splits into them with :func:`split_words` (whitespace, and "?"
    as its own token). The option letters appear lowercased ("a", "b", "c", "d"; "a" doubles as
    the article). The 49 words are::

        0 1 2 3 4 5 ? a are b banana blue blueberry brown c carrot circle circles color d does
        fruit grape green have how is leaf many no orange pink points purple red round sides
        square squares star stars strawberry the there triangle triangles what yellow yes

    (the list above is checked against :data:`VOCABULARY` by the tests).
    """
    return VOCABULARY


@dataclass(frozen=True)
class SynthConfig:
    """How to generate the synthetic benchmark; ``n`` rows cycle through ``templates`` in order.

    ``suppressed`` (prior objects) and ``not_retrieved`` (shapes) plant the issue-13 groups and
    add the ``planted`` column; ``suppressed_prior_rate`` is the canonical-colour rate of the
    suppressed objects (None: ``prior_rate``; 0.125 draws their colour uniformly).
    """

    n: int
    seed: int = 0
    size: int = 112
    prior_rate: float = 0.8
    mc: bool = False
    templates: tuple[str, ...] = TEMPLATES
    benchmark: str = "synth"
    suppressed: tuple[str, ...] = ()
    not_retrieved: tuple[str, ...] = ()
    suppressed_prior_rate: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise UsageError(f"Expected n to be a positive integer. Got {self.n!r} instead.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise UsageError(f"Expected an integer seed. Got {self.seed!r} instead.")
        if not isinstance(self.size, int) or not 32 <= self.size <= 4096:
            raise UsageError(
                f"Expected size between 32 and 4096 pixels. Got {self.size!r} instead."
            )
        if not (isinstance(self.prior_rate, int | float) and 0.0 <= self.prior_rate <= 1.0):
            raise UsageError(
                f"Expected prior_rate in [0, 1]. Got {self.prior_rate!r} instead; e.g. 0.8 "
                "draws 80% of prior objects in their canonical colour."
            )
        if not self.templates:
            raise UsageError(f"Expected at least one template of {', '.join(TEMPLATES)}.")
        for name in self.templates:
            if name not in ALL_TEMPLATES:
                raise did_you_mean(name, ALL_TEMPLATES, "synth template")
        if not self.benchmark:
            raise UsageError("Expected a non-empty benchmark name. Got '' instead.")
        self._check_planted()

    def _check_planted(self) -> None:
        for name in self.suppressed:
            if name not in PRIOR_OBJECTS:
                raise did_you_mean(name, tuple(PRIOR_OBJECTS), "prior object (suppressed)")
        for name in self.not_retrieved:
            if name not in SHAPES:
                raise did_you_mean(name, SHAPES, "shape (not_retrieved)")
        if len(set(self.not_retrieved)) >= len(SHAPES):
            raise UsageError(
                f"Expected at least one shape left for colour questions. Got not_retrieved="
                f"{self.not_retrieved!r}, every shape; drop one of them."
            )
        if "detail" in self.templates and not self.not_retrieved:
            raise UsageError(
                "Expected not_retrieved shapes for the 'detail' template. Got none; pass e.g. "
                "not_retrieved=('triangle',) (--not-retrieved triangle)."
            )
        rate = self.suppressed_prior_rate
        if rate is not None and not (isinstance(rate, int | float) and 0.0 <= rate <= 1.0):
            raise UsageError(f"Expected suppressed_prior_rate in [0, 1] or None. Got {rate!r}.")

    @property
    def planted(self) -> bool:
        """Return whether planted groups are on (rows then carry the ``planted`` column)."""
        return bool(self.suppressed or self.not_retrieved)


def parse_templates(text: str) -> tuple[str, ...]:
    """Return the template names in a comma-separated list such as ``"color,prior"``."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names:
        raise UsageError(
            f"Expected a comma-separated list of templates from {', '.join(ALL_TEMPLATES)}. "
            f"Got {text!r} instead."
        )
    for name in names:
        if name not in ALL_TEMPLATES:
            raise did_you_mean(name, ALL_TEMPLATES, "synth template")
    return names


def parse_names(text: str, known: Sequence[str], what: str) -> tuple[str, ...]:
    """Return the names in a comma-separated list such as ``"banana,carrot"`` (may be empty)."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    for name in names:
        if name not in known:
            raise did_you_mean(name, tuple(known), what)
    return names


# --------------------------------------------------------------------------- drawing


@dataclass(frozen=True)
class Item:
    """One drawn thing: a shape or prior object ``kind`` of ``color`` centred at (cx, cy)."""

    kind: str
    color: str
    cx: float
    cy: float
    r: float


@dataclass(frozen=True)
class Scene:
    """What :func:`render` draws: the image side and its items."""

    size: int
    items: tuple[Item, ...] = field(default_factory=tuple)
    background: tuple[int, int, int] = BACKGROUND


def _regular(cx: float, cy: float, r: float, n: int, phase: float) -> list[tuple[float, float]]:
    return [
        (
            cx + r * math.cos(phase + 2 * math.pi * k / n),
            cy + r * math.sin(phase + 2 * math.pi * k / n),
        )
        for k in range(n)
    ]


def _star(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    points = []
    for k in range(10):
        radius = r if k % 2 == 0 else 0.45 * r
        angle = -math.pi / 2 + math.pi * k / 5
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return points


def _crescent(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    # Outer arc below, inner arc (same radius, shifted up) back: a banana lying on its side.
    outer = [
        (cx + 1.1 * r * math.cos(t), cy - 0.5 * r + 1.1 * r * math.sin(t)) for t in _span(0.35, 2.8)
    ]
    inner = [
        (cx + 1.1 * r * math.cos(t), cy - 0.75 * r + 1.1 * r * math.sin(t))
        for t in _span(2.6, 0.55)
    ]
    return outer + inner


def _span(start: float, stop: float, steps: int = 16) -> list[float]:
    return [start + (stop - start) * k / (steps - 1) for k in range(steps)]


def _lens(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    # A leaf: pointed at both ends, tilted 45 degrees.
    points = []
    for t in _span(-1.0, 1.0, 20):
        points.append((t, 0.45 * (1 - t * t)))
    for t in _span(1.0, -1.0, 20):
        points.append((t, -0.45 * (1 - t * t)))
    c, s = math.cos(math.pi / 4), math.sin(math.pi / 4)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in points]


def _draw_item(draw: ImageDraw.ImageDraw, item: Item, background: tuple[int, int, int]) -> None:
    rgb = PALETTE[item.color]
    cx, cy, r = item.cx, item.cy, item.r
    kind = item.kind
    if kind in ("circle", "blueberry"):
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=rgb)
        if kind == "blueberry":  # the crown tells a blueberry from a circle
            draw.polygon(_star(cx, cy - 0.45 * r, 0.3 * r), fill=background)
    elif kind == "square":
        h = 0.85 * r
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=rgb)
    elif kind == "triangle":
        draw.polygon(_regular(cx, cy + 0.15 * r, r, 3, -math.pi / 2), fill=rgb)
    elif kind == "star":
        draw.polygon(_star(cx, cy, r), fill=rgb)
    elif kind == "banana":
        draw.polygon(_crescent(cx, cy, r), fill=rgb)
    elif kind == "strawberry":
        draw.ellipse((cx - r, cy - r, cx, cy - 0.1 * r), fill=rgb)
        draw.ellipse((cx, cy - r, cx + r, cy - 0.1 * r), fill=rgb)
        draw.polygon([(cx - r, cy - 0.5 * r), (cx + r, cy - 0.5 * r), (cx, cy + r)], fill=rgb)
    elif kind == "carrot":
        draw.polygon([(cx - 0.4 * r, cy - r), (cx + 0.4 * r, cy - r), (cx, cy + r)], fill=rgb)
    elif kind == "leaf":
        draw.polygon(_lens(cx, cy, r), fill=rgb)
    elif kind == "grape":
        small = 0.3 * r
        for gx, gy in (
            (-0.6, -0.5),
            (0.0, -0.5),
            (0.6, -0.5),
            (-0.3, 0.05),
            (0.3, 0.05),
            (0.0, 0.6),
        ):
            x, y = cx + gx * r, cy + gy * r
            draw.ellipse((x - small, y - small, x + small, y + small), fill=rgb)
    else:
        raise UsageError(f"Expected a shape or prior object. Got item kind {kind!r} instead.")


def render(scene: Scene) -> Image.Image:
    """Return the RGB image of ``scene`` (``scene.size`` x ``scene.size``)."""
    image = Image.new("RGB", (scene.size, scene.size), scene.background)
    draw = ImageDraw.Draw(image)
    for item in scene.items:
        _draw_item(draw, item, scene.background)
    return image


def _place(rng: random.Random, size: int, kinds: Sequence[tuple[str, str]]) -> tuple[Item, ...]:
    """Return items for (kind, colour) pairs, each in its own cell of a 3x3 grid."""
    cell = size / _GRID
    cells = rng.sample(range(_GRID * _GRID), len(kinds))
    items = []
    for (kind, color), index in zip(kinds, cells, strict=True):
        r = cell * rng.uniform(0.30, 0.40)
        slack = cell / 2 - r
        cx = (index % _GRID + 0.5) * cell + rng.uniform(-slack, slack)
        cy = (index // _GRID + 0.5) * cell + rng.uniform(-slack, slack)
        items.append(Item(kind, color, cx, cy, r))
    return tuple(items)


# --------------------------------------------------------------------------- templates


@dataclass(frozen=True)
class _Row:
    question: str
    answer: str
    kinds: tuple[tuple[str, str], ...]
    canonical: str = ""
    counter_prior: bool = False
    needs_image: bool = True


def _colors(rng: random.Random, k: int) -> list[str]:
    return [rng.choice(list(PALETTE)) for _ in range(k)]


def _row_color(rng: random.Random, cfg: SynthConfig) -> _Row:
    shapes = rng.sample(SHAPES, rng.randint(1, 3))
    colors = _colors(rng, len(shapes))
    if cfg.not_retrieved:
        target = _askable_target(rng, shapes, cfg.not_retrieved)
    else:
        target = rng.randrange(len(shapes))  # the stream every default row was drawn with
    question = f"what color is the {shapes[target]}?"
    return _Row(question, colors[target], tuple(zip(shapes, colors, strict=True)))


def _askable_target(rng: random.Random, shapes: list[str], hidden: Sequence[str]) -> int:
    """Return the index of a shape a colour row may ask about (swapping one in if none is)."""
    askable = [i for i, s in enumerate(shapes) if s not in hidden]
    if not askable:
        shapes[0] = rng.choice([s for s in SHAPES if s not in hidden and s not in shapes])
        askable = [0]
    return rng.choice(askable)


def _row_count(rng: random.Random, cfg: SynthConfig) -> _Row:
    target = rng.choice(SHAPES)
    count = rng.randint(1, 3)
    others = rng.sample([s for s in SHAPES if s != target], rng.randint(0, 3 - count))
    shapes = [target] * count + others
    kinds = tuple(zip(shapes, _colors(rng, len(shapes)), strict=True))
    return _Row(f"how many {target}s are there?", str(count), kinds)


def _row_presence(rng: random.Random, cfg: SynthConfig) -> _Row:
    target = rng.choice(SHAPES)
    present = rng.random() < 0.5
    others = [s for s in SHAPES if s != target]
    k = rng.randint(1, 3)
    shapes = [target, *rng.sample(others, k - 1)] if present else rng.sample(others, k)
    kinds = tuple(zip(shapes, _colors(rng, len(shapes)), strict=True))
    return _Row(f"is there a {target}?", "yes" if present else "no", kinds)


def _row_prior(rng: random.Random, cfg: SynthConfig) -> _Row:
    obj = rng.choice(list(PRIOR_OBJECTS))
    canonical = PRIOR_OBJECTS[obj]
    rate = cfg.prior_rate
    if obj in cfg.suppressed and cfg.suppressed_prior_rate is not None:
        rate = cfg.suppressed_prior_rate
    counter = rng.random() >= rate
    color = rng.choice([c for c in PALETTE if c != canonical]) if counter else canonical
    extra = rng.sample(SHAPES, rng.randint(0, 1))
    kinds = ((obj, color), *zip(extra, _colors(rng, len(extra)), strict=True))
    return _Row(f"what color is the {obj}?", color, kinds, canonical, counter)


def _row_control(rng: random.Random, cfg: SynthConfig) -> _Row:
    question, answer = rng.choice(CONTROL_FACTS)
    shapes = rng.sample(SHAPES, rng.randint(1, 3))
    kinds = tuple(zip(shapes, _colors(rng, len(shapes)), strict=True))
    return _Row(question, answer, kinds, canonical=answer, needs_image=False)


def _row_detail(rng: random.Random, cfg: SynthConfig) -> _Row:
    # One shape alone, so its colour is the only colour in the image: decodable from the mean of
    # the image tokens, and a model that answers it must have moved it from them.
    shape = rng.choice(cfg.not_retrieved)
    color = rng.choice(list(PALETTE))
    return _Row(f"what color is the {shape}?", color, ((shape, color),))


_BUILDERS = {
    "color": _row_color,
    "count": _row_count,
    "presence": _row_presence,
    "prior": _row_prior,
    "control": _row_control,
    "detail": _row_detail,
}


def planted_group(cfg: SynthConfig, template: str, question: str) -> str:
    """Return the planted group of a row ("" when ``cfg`` plants nothing)."""
    if not cfg.planted:
        return ""
    if template == "control":
        return "control"
    if template == "detail":
        return "not_retrieved"
    if template == "prior":
        return "suppressed" if split_words(question)[-2] in cfg.suppressed else "prior"
    return "used"


def _options(rng: random.Random, row: _Row) -> tuple[tuple[str, ...], str]:
    """Return (option texts, answer letter) for a multiple-choice version of ``row``."""
    if row.answer in ("yes", "no"):
        options: list[str] = ["yes", "no"]
    else:
        pool = list(PALETTE) if row.answer in PALETTE else list(NUMBERS)
        fixed = [row.answer]
        if row.canonical and row.canonical != row.answer:
            fixed.append(row.canonical)  # prior rows always offer the prior's answer
        rest = [c for c in pool if c not in fixed]
        options = fixed + rng.sample(rest, 4 - len(fixed))
        rng.shuffle(options)
    return tuple(options), OPTION_LABELS[options.index(row.answer)]


@dataclass(frozen=True)
class SynthRow:
    """Everything drawn for one row: the open-ended question and answer, and the scene."""

    index: int
    template: str
    question: str
    answer: str
    canonical: str
    counter_prior: bool
    needs_image: bool
    scene: Scene
    options: tuple[str, ...] = ()
    answer_label: str = ""
    planted: str = ""  # the planted group ("" without planted options)


def build_row(cfg: SynthConfig, index: int) -> SynthRow:
    """Return row ``index`` of the benchmark ``cfg`` describes (independent of other rows)."""
    rng = random.Random(f"priorscope-synth:{cfg.seed}:{index}")
    template = cfg.templates[index % len(cfg.templates)]
    row = _BUILDERS[template](rng, cfg)
    scene = Scene(cfg.size, _place(rng, cfg.size, row.kinds))
    # Options are drawn last so the open-ended and MC versions of a seed share every image.
    options, label = _options(rng, row) if cfg.mc else ((), "")
    return SynthRow(
        index,
        template,
        row.question,
        row.answer,
        row.canonical,
        row.counter_prior,
        row.needs_image,
        scene,
        options,
        label,
        planted_group(cfg, template, row.question),
    )


def generate_one(cfg: SynthConfig, index: int) -> Example:
    """Return row ``index`` as an Example (answer: the option letter when ``cfg.mc``)."""
    row = build_row(cfg, index)
    metadata = {
        "template": row.template,
        "canonical": row.canonical,
        "counter_prior": "1" if row.counter_prior else "0",
        "needs_image": "1" if row.needs_image else "0",
    }
    if cfg.planted:  # only then: the default TSV keeps its columns
        metadata["planted"] = row.planted
    return Example(
        id=str(index),
        question=row.question,
        answers=(row.answer_label if cfg.mc else row.answer,),
        image_bytes=encode_png(render(row.scene)),
        options=row.options,
        category=row.template,
        benchmark=cfg.benchmark,
        metadata=metadata,
    )


def generate(cfg: SynthConfig) -> list[Example]:
    """Return the ``cfg.n`` examples of the synthetic benchmark, ids "0".."n-1"."""
    return [generate_one(cfg, i) for i in range(cfg.n)]


# --------------------------------------------------------------------------- uninformative images


def uninformative_image(image: Image.Image, kind: str = "mean") -> Image.Image:
    """Return an image of the same size carrying no visual evidence.

    ``kind="mean"`` fills every pixel with the image's per-channel mean (rounded), what the
    ``total`` condition shows; ``kind="background"`` fills it with the synth background colour.
    """
    rgb = image.convert("RGB")
    if kind == "mean":
        stat = [round(sum(i * c for i, c in enumerate(h)) / max(1, sum(h))) for h in _channels(rgb)]
        fill = (stat[0], stat[1], stat[2])
    elif kind == "background":
        fill = BACKGROUND
    else:
        raise did_you_mean(kind, ("mean", "background"), "uninformative image kind")
    return Image.new("RGB", rgb.size, fill)


def _channels(image: Image.Image) -> list[list[int]]:
    histogram = image.histogram()
    return [histogram[0:256], histogram[256:512], histogram[512:768]]


def with_uninformative_image(example: Example, kind: str = "mean") -> Example:
    """Return ``example`` with its image replaced by :func:`uninformative_image` (PNG bytes)."""
    blank = uninformative_image(example.image, kind)
    metadata = {**example.metadata, "image": f"uninformative:{kind}"}
    return replace(example, image_bytes=encode_png(blank), metadata=metadata)


# --------------------------------------------------------------------------- TSV output

_BASE_COLUMNS = ("index", "image", "question", "hint")


def _answer_cell(answers: tuple[str, ...]) -> str:
    # One gold answer is written as-is, unless it would read back as a list literal; several
    # are written as a JSON list, which the TSV loader parses back into separate answers.
    if not answers:
        return ""
    single = answers[0]
    if len(answers) == 1 and not (single.startswith("[") and single.endswith("]")):
        return single
    return json.dumps(list(answers), ensure_ascii=False)


def write_tsv(examples: Iterable[Example], path: str | Path) -> Path:
    """Write ``examples`` as a VLMEvalKit TSV and return its path.

    Columns: index, image (base64), question, hint, A.. (as many as the most options), answer,
    category, benchmark, then the metadata keys in order of first appearance. The same examples
    give the same bytes.
    """
    rows = list(examples)
    n_options = max((len(e.options) for e in rows), default=0)
    meta_keys: list[str] = []
    for example in rows:
        meta_keys += [k for k in example.metadata if k not in meta_keys]
    header = [*_BASE_COLUMNS, *OPTION_LABELS[:n_options], "answer", "category", "benchmark"]
    header += [k for k in meta_keys if k not in header]
    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        handle = out.open("w", encoding="utf-8", newline="")
    except OSError as exc:
        raise DataError(
            f"Expected a writable file path. Got {str(out)!r}, which cannot be written "
            f"({exc.strerror or exc}), instead. Pick another --out."
        ) from exc
    with handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        for example in rows:
            image = (
                base64.b64encode(example.image_bytes).decode("ascii") if example.image_bytes else ""
            )
            options = [*example.options, *[""] * (n_options - len(example.options))]
            cells = [example.id, image, example.question, example.hint, *options]
            cells += [_answer_cell(example.answers), example.category, example.benchmark]
            cells += [str(example.metadata.get(k, "")) for k in header[len(cells) :]]
            writer.writerow(cells)
    return out
