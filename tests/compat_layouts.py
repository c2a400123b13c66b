"""Small files that mirror the real layouts of common benchmarks, written from their documentation.

One builder per (benchmark, format): VLMEvalKit TSV (``vlmeval/dataset``: ``index``, base64
``image`` or a list literal of them, ``A``.. option columns, ``answer``), Hugging Face parquet as
the lmms-lab and original dataset cards describe the columns (``datasets`` Image structs,
``choices`` lists, ``image_1``.., ``choice_a``..), and LLaVA's evaluation question files
(``question_id``, ``image``, ``text``; gold answers live in separate annotation files except for
POPE's ``label``). Three or four rows each, with the quirks of the real files: repeated
``question_id`` (MME), "nan" hints and options (lmms-lab MMBench), integer answers that index
the options (AI2D, ScienceQA), 1/0 answers (HallusionBench), null images (ScienceQA,
HallusionBench), multi-image rows (MMMU, BLINK, SEED), options inside the question (MMStar).

Nothing here is downloaded: cells are made up in the documented shape.
"""

from __future__ import annotations

import base64
import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from priorscope.engine.data.images import encode_png


def png(i: int, size: int = 8) -> bytes:
    """Return a tiny distinct PNG (colour from ``i``)."""
    return encode_png(Image.new("RGB", (size, size), ((37 * i) % 256, (91 * i) % 256, 60)))


def b64(i: int) -> str:
    return base64.b64encode(png(i)).decode()


def struct(i: int) -> dict[str, Any]:
    return {"bytes": png(i), "path": f"{i}.png"}


def write_tsv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_records(path: Path, records: Sequence[dict[str, object]]) -> Path:
    """Write dict rows as a TSV whose header is the keys of the first row."""
    header = list(records[0])
    return write_tsv(path, header, [[r.get(h, "") for h in header] for r in records])


def write_parquet(path: Path, columns: dict[str, list[Any]]) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def write_jsonl(path: Path, records: Sequence[dict[str, Any]], images: Sequence[str]) -> Path:
    for i, name in enumerate(images):
        (path.parent / name).parent.mkdir(parents=True, exist_ok=True)
        (path.parent / name).write_bytes(png(i))
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@dataclass(frozen=True)
class Layout:
    """A benchmark file layout and what loading and scoring it must give.

    ``scoring`` is 'choice', 'yes/no', 'vqa', 'relaxed', 'anls' or 'unscored' (no gold answers in
    the file); ``golds`` are the expected gold answers of the first examples; ``replies`` are
    (example index, reply, expected score).
    """

    benchmark: str
    format: str
    build: Callable[[Path], Path]
    scoring: str
    n: int
    golds: tuple[tuple[str, ...], ...]
    replies: tuple[tuple[int, str, float], ...] = ()
    load: dict[str, Any] = field(default_factory=dict)
    text_only: int = 0
    multi_image: int = 0
    derived_ids: int = 0
    refused: str = ""  # regex of the refusal message when the layout cannot load


# -- VLMEvalKit TSV ---------------------------------------------------------------------------
def _mmbench_tsv(d: Path) -> Path:
    common = {"source": "mmb", "l2-category": "perception", "comment": "", "split": "dev"}
    records = [
        {"index": 0, "question": "What is shown?", "hint": "", "A": "cat", "B": "dog"}
        | {"C": "bird", "D": "fish", "answer": "B", "category": "object", "image": b64(0)},
        {"index": 1, "question": "Which season?", "hint": "Look at the trees.", "A": "spring"}
        | {"B": "winter", "C": "", "D": "", "answer": "A", "category": "scene", "image": b64(1)},
        {"index": 2, "question": "Same picture, other question?", "hint": "", "A": "yes"}
        | {"B": "no", "C": "", "D": "", "answer": "B", "category": "object", "image": "0"},
    ]
    return write_records(d / "MMBench_DEV_EN.tsv", [r | common for r in records])


def _mme_tsv(d: Path) -> Path:
    header = ["index", "image", "question", "answer", "category", "image_path"]
    rows = [
        [0, b64(0), "Is there a cat? Please answer yes or no.", "Yes", "existence", "e/1.png"],
        [1, "0", "Is there a dog? Please answer yes or no.", "No", "existence", "e/1.png"],
        [2, b64(2), "Is it red? Please answer yes or no.", "Yes", "color", "c/2.png"],
    ]
    return write_tsv(d / "MME.tsv", header, rows)


def _pope_tsv(d: Path) -> Path:
    header = ["index", "image", "question", "answer", "category", "image_source"]
    rows = [
        [0, b64(0), "Is there a snowboard in the image?", "yes", "adversarial", "COCO_1"],
        [1, b64(1), "Is there a car in the image?", "no", "random", "COCO_2"],
    ]
    return write_tsv(d / "POPE.tsv", header, rows)


def _hallusion_tsv(d: Path) -> Path:
    header = ["index", "image", "question", "answer", "category", "l2-category", "set_id"]
    rows = [
        [0, b64(0), "Is the left line longer than the right?", "No", "VS", "illusion", 0],
        [1, b64(1), "Is China the most populous country in this chart?", "Yes", "VD", "chart", 1],
    ]
    return write_tsv(d / "HallusionBench.tsv", header, rows)


def _seed_tsv(d: Path) -> Path:
    header = ["index", "image", "question", "A", "B", "C", "D", "answer", "category"]
    rows = [
        [0, b64(0), "How many towels?", "1", "2", "3", "4", "C", "Instances Counting"],
        [
            1,
            b64(1),
            "Where is the cup?",
            "left",
            "right",
            "top",
            "bottom",
            "A",
            "Instance Location",
        ],
    ]
    return write_tsv(d / "SEEDBench_IMG.tsv", header, rows)


def _mmstar_tsv(d: Path) -> Path:
    record = {"index": 0, "question": "Which option describes the image?", "A": "a cat"}
    record |= {"B": "a dog", "C": "a bird", "D": "a fish", "answer": "D"}
    record |= {"category": "coarse perception", "l2-category": "image scene", "image": b64(0)}
    return write_records(d / "MMStar.tsv", [record])


def _scienceqa_tsv(d: Path) -> Path:
    records = [
        {"index": 0, "question": "Which is a mammal?", "hint": "", "A": "frog", "B": "whale"}
        | {"C": "trout", "answer": "B", "category": "biology", "image": b64(0), "split": "val"},
        {"index": 1, "question": "Which pair attracts?", "hint": "Context: two magnets."}
        | {"A": "pair 1", "B": "pair 2", "C": "", "answer": "A", "category": "physics"}
        | {"image": b64(1), "split": "val"},
    ]
    return write_records(d / "ScienceQA_VAL.tsv", records)


def _ai2d_tsv(d: Path) -> Path:
    header = ["index", "question", "A", "B", "C", "D", "answer", "image", "category"]
    rows = [
        [0, "How many legs?", "2", "4", "6", "8", "C", b64(0), "insects"],
        [1, "Which stage is the egg?", "A", "B", "C", "D", "A", b64(1), "lifecycle"],
    ]
    return write_tsv(d / "AI2D_TEST.tsv", header, rows)


def _textvqa_tsv(d: Path) -> Path:
    header = ["index", "image", "question", "answer", "category"]
    golds = json.dumps(["nokia"] * 8 + ["nokia phone"] * 2)
    rows = [[0, b64(0), "what brand is the phone?", golds, "ocr"]]
    rows.append([1, b64(1), "what number is on the jersey?", json.dumps(["23"] * 10), "ocr"])
    return write_tsv(d / "TextVQA_VAL.tsv", header, rows)


def _chartqa_tsv(d: Path) -> Path:
    header = ["index", "image", "question", "answer", "split"]
    rows = [
        [0, b64(0), "What is the value of the tallest bar?", "45", "human"],
        [1, b64(1), "Which country has the lowest share?", "Brazil", "augmented"],
    ]
    return write_tsv(d / "ChartQA_TEST.tsv", header, rows)


def _mmmu_tsv(d: Path) -> Path:
    records = [
        {"index": 0, "question": "<image 1> <image 2> Which diagram is a cell?", "A": "first"}
        | {"B": "second", "C": "neither", "answer": "A", "question_type": "multiple-choice"}
        | {"image": json.dumps([b64(0), b64(1)]), "image_path": '["0_1.png", "0_2.png"]'}
        | {"category": "Biology", "split": "dev"},
        {"index": 1, "question": "<image 1> What is the area in m^2?", "A": "", "B": "", "C": ""}
        | {"answer": "12.5", "question_type": "open", "image": b64(2), "image_path": "1.png"}
        | {"category": "Math", "split": "dev"},
    ]
    return write_records(d / "MMMU_DEV_VAL.tsv", records)


def _gqa_tsv(d: Path) -> Path:
    header = ["index", "image", "question", "answer"]
    rows = [[0, b64(0), "What color is the car?", "red"], [1, b64(1), "Is it sunny?", "yes"]]
    return write_tsv(d / "GQA_TestDev_Balanced.tsv", header, rows)


def _vizwiz_tsv(d: Path) -> Path:
    header = ["index", "image", "question", "answer", "category"]
    golds = json.dumps(["unanswerable"] * 6 + ["unsuitable"] * 4)
    rows = [[0, b64(0), "What is this?", golds, "other"]]
    rows.append([1, b64(1), "What color is this shirt?", json.dumps(["blue"] * 10), "other"])
    return write_tsv(d / "VizWiz.tsv", header, rows)


def _mmvet_tsv(d: Path) -> Path:
    header = ["index", "image", "question", "answer", "category"]
    rows = [
        [0, b64(0), "What is the total price?", "14", "ocr,math"],
        [1, b64(1), "What is the man doing?", "playing tennis", "rec"],
    ]
    return write_tsv(d / "MMVet.tsv", header, rows)


# -- Hugging Face parquet ---------------------------------------------------------------------
def _mmbench_parquet(d: Path) -> Path:
    return write_parquet(
        d / "mmbench_dev.parquet",
        {
            "index": [0, 1],
            "question": ["What is shown?", "Which season?"],
            "hint": ["nan", "Look at the trees."],
            "A": ["cat", "spring"],
            "B": ["dog", "winter"],
            "C": ["bird", "nan"],
            "D": ["fish", "nan"],
            "answer": ["B", "A"],
            "category": ["object", "scene"],
            "image": [struct(0), struct(1)],
            "source": ["mmb", "mmb"],
            "L2-category": ["perception", "reasoning"],
            "split": ["dev", "dev"],
        },
    )


def _mme_parquet(d: Path) -> Path:
    return write_parquet(
        d / "mme_test.parquet",
        {
            "question_id": ["existence/1.png", "existence/1.png", "color/2.png"],
            "image": [struct(0), struct(0), struct(2)],
            "question": ["Is there a cat?", "Is there a dog?", "Is it red?"],
            "answer": ["Yes", "No", "Yes"],
            "category": ["existence", "existence", "color"],
        },
    )


def _pope_parquet(d: Path) -> Path:
    return write_parquet(
        d / "pope_test.parquet",
        {
            "id": ["0", "1"],
            "question_id": ["1", "2"],
            "question": ["Is there a snowboard in the image?", "Is there a car in the image?"],
            "answer": ["yes", "no"],
            "image_source": ["COCO_1", "COCO_2"],
            "image": [struct(0), struct(1)],
            "category": ["adversarial", "random"],
        },
    )


def _hallusion_parquet(d: Path) -> Path:
    return write_parquet(
        d / "hallusionbench_image.parquet",
        {
            "category": ["VS", "VD", "VD"],
            "subcategory": ["illusion", "chart", "chart"],
            "visual_input": ["1", "1", "0"],
            "set_id": ["0", "1", "1"],
            "figure_id": ["0", "0", "0"],
            "question_id": ["0", "0", "1"],
            "question": [
                "Is the left line longer than the right?",
                "Is China the most populous country in this chart?",
                "Is China the most populous country in the world?",
            ],
            "gt_answer_details": ["Both lines are equal.", "China is.", "India is."],
            "gt_answer": ["0", "1", "0"],
            "filename": ["VS/0_0.png", "VD/1_0.png", None],
            "image": [struct(0), struct(1), None],
        },
    )


def _seed_parquet(d: Path) -> Path:
    return write_parquet(
        d / "seed_bench.parquet",
        {
            "answer": ["C", "A"],
            "choice_a": ["1", "left"],
            "choice_b": ["2", "right"],
            "choice_c": ["3", "top"],
            "choice_d": ["4", "bottom"],
            "data_id": ["a.jpg", "b.jpg"],
            "data_type": ["image", "video"],
            "question": ["How many towels?", "Where is the cup at the end?"],
            "question_id": ["101", "102"],
            "question_type_id": [5, 10],
            "image": [[struct(0)], [struct(1), struct(2), struct(3)]],
            "segment": [None, "[0, 8]"],
        },
    )


def _mmstar_parquet(d: Path) -> Path:
    return write_parquet(
        d / "mmstar_val.parquet",
        {
            "index": [0, 1],
            "question": [
                "Which option describe the object relationship in the image correctly?\n"
                "Options: A: The suitcase is on the book., B: The suitcase is beneath the cat., "
                "C: The suitcase is beneath the bed., D: The suitcase is beneath the book.",
                "What is the main color?\nOptions: A: red, B: blue, C: green, D: white",
            ],
            "image": [struct(0), struct(1)],
            "answer": ["A", "C"],
            "category": ["coarse perception", "fine-grained perception"],
            "l2_category": ["image scene", "attribute"],
            "meta_info": ["{}", "{}"],
        },
    )


def _scienceqa_parquet(d: Path) -> Path:
    return write_parquet(
        d / "scienceqa_validation.parquet",
        {
            "image": [struct(0), None, struct(2)],
            "question": ["Which is a mammal?", "Which word is a noun?", "How many moons?"],
            "choices": [["frog", "whale", "trout"], ["run", "table"], ["1", "2", "3"]],
            "answer": [1, 1, 0],
            "hint": ["", "", "nan"],
            "task": ["closed choice"] * 3,
            "grade": ["grade4", "grade2", "grade5"],
            "subject": ["natural science", "language science", "natural science"],
            "topic": ["biology", "grammar", "earth-science"],
            "category": ["Classify", "Nouns", "Moons"],
            "skill": ["x", "y", "z"],
            "lecture": ["", "", ""],
            "solution": ["", "", ""],
        },
    )


def _ai2d_parquet(d: Path) -> Path:
    return write_parquet(
        d / "ai2d_test.parquet",
        {
            "question": ["Which stage is the egg?", "How many legs does it have?"],
            "options": [["larva", "egg", "adult", "pupa"], ["2", "4", "6", "8"]],
            "answer": ["1", "2"],
            "image": [struct(0), struct(1)],
        },
    )


def _textvqa_parquet(d: Path) -> Path:
    return write_parquet(
        d / "textvqa_validation.parquet",
        {
            "question_id": [34602, 34603],
            "question": ["what brand is the phone?", "what number is on the jersey?"],
            "image_id": ["003a", "003b"],
            "image": [struct(0), struct(1)],
            "answers": [["nokia"] * 8 + ["nokia phone"] * 2, ["23"] * 10],
            "ocr_tokens": [["nokia"], ["23"]],
        },
    )


def _chartqa_parquet(d: Path) -> Path:
    return write_parquet(
        d / "chartqa_test.parquet",
        {
            "type": ["human_test", "augmented_test"],
            "question": ["What is the value of the tallest bar?", "Which country is lowest?"],
            "answer": ["45", "Brazil"],
            "image": [struct(0), struct(1)],
        },
    )


def _mmmu_parquet(d: Path) -> Path:
    return write_parquet(
        d / "mmmu_validation.parquet",
        {
            "id": ["validation_Biology_1", "validation_Math_2"],
            "question": ["<image 1> <image 2> Which is a cell?", "<image 1> Area in m^2?"],
            "options": ["['first', 'second', 'neither']", "[]"],
            "explanation": ["", ""],
            "image_1": [struct(0), struct(2)],
            "image_2": [struct(1), None],
            "image_3": [None, None],
            "img_type": ["['Diagrams']", "['Plots']"],
            "answer": ["A", "12.5"],
            "topic_difficulty": ["Easy", "Hard"],
            "question_type": ["multiple-choice", "open"],
            "subfield": ["Cell Biology", "Geometry"],
        },
    )


def _blink_parquet(d: Path) -> Path:
    return write_parquet(
        d / "blink_val.parquet",
        {
            "idx": ["val_Jigsaw_1", "val_Jigsaw_2"],
            "question": ["Which image fits the missing part?", "Which image fits?"],
            "sub_task": ["Jigsaw", "Jigsaw"],
            "image_1": [struct(0), struct(3)],
            "image_2": [struct(1), struct(4)],
            "image_3": [struct(2), None],
            "image_4": [None, None],
            "choices": [["(A) the first image", "(B) the second image"], ["yes", "no"]],
            "answer": ["(B)", "(A)"],
            "prompt": ["...", "..."],
        },
    )


def _gqa_parquet(d: Path) -> Path:
    return write_parquet(
        d / "gqa_testdev_balanced_instructions.parquet",
        {
            "id": ["201307251"],
            "imageId": ["n161313"],
            "question": ["What color is the car?"],
            "answer": ["red"],
            "fullAnswer": ["The car is red."],
        },
    )


def _vizwiz_parquet(d: Path) -> Path:
    return write_parquet(
        d / "vizwiz_val.parquet",
        {
            "question_id": ["VizWiz_val_0.jpg", "VizWiz_val_1.jpg"],
            "image": [struct(0), struct(1)],
            "question": ["What is this?", "What color is this shirt?"],
            "answers": [["unanswerable"] * 6 + ["unsuitable"] * 4, ["blue"] * 10],
            "category": ["other", "other"],
        },
    )


def _mmvet_parquet(d: Path) -> Path:
    return write_parquet(
        d / "mmvet_test.parquet",
        {
            "question_id": ["v1_0", "v1_1"],
            "image": [struct(0), struct(1)],
            "question": ["What is the total price?", "What is the man doing?"],
            "answer": ["14", "playing tennis"],
            "capability": ["ocr,math", "rec"],
        },
    )


# -- LLaVA JSONL ------------------------------------------------------------------------------
def _mme_jsonl(d: Path) -> Path:
    records = [
        {"question_id": "existence/1.png", "image": "existence/1.png", "text": "Is there a cat?"},
        {"question_id": "existence/1.png", "image": "existence/1.png", "text": "Is there a dog?"},
        {"question_id": "color/2.png", "image": "color/2.png", "text": "Is it red?"},
    ]
    for r in records:
        r["category"] = r["image"].split("/")[0]
        r["text"] += " Please answer yes or no."
    return write_jsonl(d / "llava_mme.jsonl", records, ["existence/1.png", "color/2.png"])


def _pope_jsonl(d: Path) -> Path:
    records = [
        {"question_id": 1, "image": "COCO_1.jpg", "text": "Is there a snowboard?", "label": "yes"},
        {"question_id": 2, "image": "COCO_2.jpg", "text": "Is there a car?", "label": "no"},
    ]
    return write_jsonl(d / "coco_pope_adversarial.jsonl", records, ["COCO_1.jpg", "COCO_2.jpg"])


def _question_only_jsonl(name: str, text: str) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        records = [
            {"question_id": i, "image": f"{i}.jpg", "text": f"{text}\n{suffix}"}
            for i, suffix in enumerate(["Answer the question using a single word or phrase."] * 2)
        ]
        return write_jsonl(d / name, records, ["0.jpg", "1.jpg"])

    return build


def _seed_jsonl(d: Path) -> Path:
    text = "How many towels?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer with the option's letter directly."
    records = [{"image": "0.jpg", "text": text, "category": "Instances Counting"}]
    records[0]["question_id"] = "101"
    return write_jsonl(d / "llava-seed-bench.jsonl", records, ["0.jpg"])


def _scienceqa_llava_json(d: Path) -> Path:
    # LLaVA's ScienceQA question file is one JSON array of conversations, not JSON lines.
    record = {
        "id": "4",
        "image": "4/image.png",
        "conversations": [
            {"from": "human", "value": "<image>\nWhich is a mammal?\nA. frog\nB. whale"},
            {"from": "gpt", "value": "B"},
        ],
    }
    path = d / "llava_test_CQM-A.json"
    path.write_text(json.dumps([record], indent=1))
    return path


LAYOUTS: tuple[Layout, ...] = (
    # MMBench
    Layout("MMBench", "vlmevalkit-tsv", _mmbench_tsv, "choice", 3, (("B",), ("A",), ("B",))),
    Layout("MMBench", "hf-parquet", _mmbench_parquet, "choice", 2, (("B",), ("A",))),
    # MME
    Layout("MME", "vlmevalkit-tsv", _mme_tsv, "yes/no", 3, (("Yes",), ("No",), ("Yes",))),
    Layout("MME", "hf-parquet", _mme_parquet, "yes/no", 3, (("Yes",), ("No",)), derived_ids=2),
    Layout("MME", "llava-jsonl", _mme_jsonl, "unscored", 3, ((), ()), derived_ids=2),
    # POPE
    Layout("POPE", "vlmevalkit-tsv", _pope_tsv, "yes/no", 2, (("yes",), ("no",))),
    Layout("POPE", "hf-parquet", _pope_parquet, "yes/no", 2, (("yes",), ("no",))),
    Layout("POPE", "llava-jsonl", _pope_jsonl, "yes/no", 2, (("yes",), ("no",))),
    # HallusionBench
    Layout("HallusionBench", "vlmevalkit-tsv", _hallusion_tsv, "yes/no", 2, (("No",), ("Yes",))),
    Layout(
        "HallusionBench",
        "hf-parquet",
        _hallusion_parquet,
        "yes/no",
        3,
        (("no",), ("yes",), ("no",)),
        replies=((0, "No, they are equal.", 1.0), (1, "No", 0.0)),
        text_only=1,
        derived_ids=2,  # question_id counts within a figure set, so it repeats
    ),
    # SEED-Bench
    Layout("SEED-Bench", "vlmevalkit-tsv", _seed_tsv, "choice", 2, (("C",), ("A",))),
    Layout("SEED-Bench", "hf-parquet", _seed_parquet, "choice", 2, (("C",), ("A",)), multi_image=1),
    Layout("SEED-Bench", "llava-jsonl", _seed_jsonl, "unscored", 1, ((),)),
    # MMStar
    Layout("MMStar", "vlmevalkit-tsv", _mmstar_tsv, "choice", 1, (("D",),)),
    Layout("MMStar", "hf-parquet", _mmstar_parquet, "choice", 2, (("A",), ("C",))),
    # ScienceQA
    Layout("ScienceQA", "vlmevalkit-tsv", _scienceqa_tsv, "choice", 2, (("B",), ("A",))),
    Layout(
        "ScienceQA",
        "hf-parquet",
        _scienceqa_parquet,
        "choice",
        3,
        (("B",), ("B",), ("A",)),
        text_only=1,
    ),
    Layout(
        "ScienceQA",
        "llava-jsonl",
        _scienceqa_llava_json,
        "refused",
        0,
        (),
        refused=r"extension and first line match none of them",
    ),
    # AI2D
    Layout("AI2D", "vlmevalkit-tsv", _ai2d_tsv, "choice", 2, (("C",), ("A",))),
    Layout("AI2D", "hf-parquet", _ai2d_parquet, "choice", 2, (("B",), ("C",))),
    # TextVQA
    Layout(
        "TextVQA",
        "vlmevalkit-tsv",
        _textvqa_tsv,
        "vqa",
        2,
        (("nokia",) * 8 + ("nokia phone",) * 2,),
        replies=((0, "Nokia", 1.0), (0, "nokia phone", 0.6)),
    ),
    Layout(
        "TextVQA",
        "hf-parquet",
        _textvqa_parquet,
        "vqa",
        2,
        (("nokia",) * 8 + ("nokia phone",) * 2,),
    ),
    Layout(
        "TextVQA",
        "llava-jsonl",
        _question_only_jsonl("llava_textvqa_val_v051_ocr.jsonl", "what brand is the phone?"),
        "unscored",
        2,
        ((),),
    ),
    # ChartQA
    Layout(
        "ChartQA",
        "vlmevalkit-tsv",
        _chartqa_tsv,
        "relaxed",
        2,
        (("45",), ("Brazil",)),
        replies=((0, "46", 1.0), (0, "48", 0.0), (1, "brazil", 1.0)),
    ),
    Layout("ChartQA", "hf-parquet", _chartqa_parquet, "relaxed", 2, (("45",), ("Brazil",))),
    # MMMU
    Layout(
        "MMMU",
        "vlmevalkit-tsv",
        _mmmu_tsv,
        "choice",
        2,
        (("A",), ("12.5",)),
        replies=((0, "A", 1.0), (1, "12.5", 1.0)),
        multi_image=1,
    ),
    Layout("MMMU", "hf-parquet", _mmmu_parquet, "choice", 2, (("A",), ("12.5",)), multi_image=1),
    # BLINK
    Layout("BLINK", "hf-parquet", _blink_parquet, "choice", 2, (("B",), ("A",)), multi_image=2),
    # GQA
    Layout("GQA", "vlmevalkit-tsv", _gqa_tsv, "vqa", 2, (("red",), ("yes",))),
    Layout("GQA", "hf-parquet", _gqa_parquet, "refused", 0, (), refused=r"Column 'image' missing"),
    Layout(
        "GQA",
        "llava-jsonl",
        _question_only_jsonl("llava_gqa_testdev_balanced.jsonl", "What color is the car?"),
        "unscored",
        2,
        ((),),
    ),
    # VizWiz
    Layout(
        "VizWiz",
        "vlmevalkit-tsv",
        _vizwiz_tsv,
        "vqa",
        2,
        (("unanswerable",) * 6 + ("unsuitable",) * 4,),
    ),
    Layout(
        "VizWiz",
        "hf-parquet",
        _vizwiz_parquet,
        "vqa",
        2,
        (("unanswerable",) * 6 + ("unsuitable",) * 4,),
    ),
    Layout(
        "VizWiz",
        "llava-jsonl",
        _question_only_jsonl("llava_test.jsonl", "What is this?"),
        "unscored",
        2,
        ((),),
    ),
    # MM-Vet
    Layout("MM-Vet", "vlmevalkit-tsv", _mmvet_tsv, "vqa", 2, (("14",), ("playing tennis",))),
    Layout("MM-Vet", "hf-parquet", _mmvet_parquet, "vqa", 2, (("14",), ("playing tennis",))),
    Layout(
        "MM-Vet",
        "llava-jsonl",
        _question_only_jsonl("llava-mm-vet.jsonl", "What is the total price?"),
        "unscored",
        2,
        ((),),
    ),
)
