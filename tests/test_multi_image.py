"""Rows with several images (MMMU, BLINK, SEED) and rows with none (ScienceQA) through capture.

Every image of a row goes through the blur ladder; families that take several images get one
placeholder per image; LLaVA-1.5 refuses such rows (or skips them, counted, under on_bad skip);
text-only rows hold the 'none' condition only. The store's example table says, per example,
the scoring rule, the image count and whether it has an image.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from compat_layouts import _scienceqa_parquet, write_records
from PIL import Image
from test_capture import assert_close, reference_reductions, total_image

from priorscope.engine.capture import CaptureConfig, capture
from priorscope.engine.capture.images import condition_images
from priorscope.engine.conditions import build_conditions
from priorscope.engine.data import Example, load
from priorscope.engine.data.images import encode_png
from priorscope.engine.errors import ModelError, UsageError
from priorscope.engine.models.base import TOKEN_IMAGE
from priorscope.engine.models.registry import load_model
from priorscope.engine.models.tiny import CLIP_SIZE, QWEN_IMAGE_SIZE, build_tiny
from priorscope.engine.store import open_store, verify

SIDE = {
    "qwen2_5_vl": QWEN_IMAGE_SIZE,
    "qwen2_vl": QWEN_IMAGE_SIZE,
    "llava_next": CLIP_SIZE,
    "organism": QWEN_IMAGE_SIZE,
}


def noise_png(seed: int, width: int, height: int) -> bytes:
    """Return a PNG of random pixels (blur changes every one of them)."""
    rng = np.random.default_rng(seed)
    return encode_png(Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def write_multi_bench(path: Path, side: int) -> Path:
    """Write an MMMU-style TSV: rows m0 and m2 hold two images (a list literal), s1 one."""
    first, wide = noise_png(0, side, side), noise_png(1, 2 * side, side)
    records = [
        {"index": "m0", "image": json.dumps([b64(first), b64(wide)]), "question": "Which?"}
        | {"A": "left", "B": "right", "answer": "A", "category": "pair"},
        {"index": "s1", "image": b64(noise_png(2, side, side)), "question": "What colour?"}
        | {"A": "", "B": "", "answer": "red", "category": "single"},
        {"index": "m2", "image": json.dumps([b64(noise_png(3, side, side)), b64(first)])}
        | {"question": "Same?", "A": "yes", "B": "no", "answer": "B", "category": "pair"},
    ]
    return write_records(path, records)


def config(model: Path | str, data: Path, out: Path, **extra) -> CaptureConfig:
    base = dict(
        model=str(model),
        data=str(data),
        out=str(out),
        ladder=(0.04,),
        total=True,
        none=True,
        full_seq=3,
        full_seq_layers="embed,1",
        batch_size=2,
        device="cpu",
        dtype="float32",
        hidden_dtype="float32",
        max_new_tokens=2,
        progress=False,
    )
    return CaptureConfig(**(base | extra))


# The tiny random families that take several images, and the shipped organism (Qwen2.5-VL).
@pytest.fixture(scope="module", params=tuple(SIDE))
def multi(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    family = request.param
    folder: Path | str = "builtin:organism"
    if family != "organism":
        folder = build_tiny(family, tmp_path_factory.mktemp(family) / "model")
    adapter = load_model(str(folder), device="cpu", dtype="float32")
    data = write_multi_bench(tmp_path_factory.mktemp("data") / "mmmu.tsv", SIDE[family])
    out = tmp_path_factory.mktemp("store") / "s.zarr"
    capture(config(folder, data, out), adapter=adapter)
    return adapter, open_store(out), {ex.id: ex for ex in load(data).examples}


def test_store_records_rule_image_count_and_has_image(multi) -> None:
    _, store, _ = multi
    assert verify(store.path, deep=True).ok
    table = store.examples()
    by_id = dict(zip(table.ids, range(table.n), strict=True))
    n_images = table.column("n_images")
    assert [n_images[by_id[i]] for i in ("m0", "s1", "m2")] == [2, 1, 2]
    assert table.column("has_image").tolist() == [True] * 3
    metric = table.column("metric")
    assert [metric[by_id[i]] for i in ("m0", "s1", "m2")] == ["choice", "vqa", "choice"]


def _image_runs(kind: np.ndarray) -> list[int]:
    """Return the lengths of the runs of consecutive image tokens."""
    runs, length = [], 0
    for is_image in [*(kind == TOKEN_IMAGE).tolist(), False]:
        if is_image:
            length += 1
        elif length:
            runs.append(length)
            length = 0
    return runs


def test_every_image_reaches_the_model_blurred_alike(multi) -> None:
    adapter, store, examples = multi
    ids = list(store.examples().ids)
    hidden = store.hidden()
    none = store.condition_index("none")
    image_mean = store.reductions.index("image_mean")
    for name in ("m0", "m2"):
        i, ex = ids.index(name), examples[name]
        assert ex.extra_images  # the loader kept both images
        rows = store.fullseq(i)
        # The total condition, computed by hand: both images replaced by their mean colour.
        totals = tuple(total_image(img) for img in ex.decoded_images())
        batch = adapter.encode([ex], [totals])
        with torch.no_grad():
            out = adapter.model(**batch, output_hidden_states=True)
        np.testing.assert_array_equal(rows.input_ids, batch["input_ids"][0].numpy())
        np.testing.assert_array_equal(rows.kind, adapter.token_kinds(batch)[0].numpy())
        assert_close(rows.values[:, 2, 0], out.hidden_states[0][0].numpy())
        # The stored reductions average over the image tokens of both images.
        slot = store.layers.index(0)
        want = reference_reductions(out.hidden_states[1][0], adapter.token_kinds(batch)[0])
        assert_close(hidden[i, store.condition_index("total"), slot], want)
        # One run of image tokens per image, each as long as that image alone gives.
        alone = [
            int((adapter.token_kinds(adapter.encode([ex], [img]))[0] == TOKEN_IMAGE).sum())
            for img in ex.decoded_images()
        ]
        assert sum(_image_runs(rows.kind)) == sum(alone) and len(alone) == 2
        if adapter.family.startswith("qwen"):
            assert _image_runs(rows.kind) == alone
        # States exist under every image condition; under 'none' there are no image tokens.
        for c in range(len(store.condition_names)):
            assert np.isfinite(hidden[i, c][:, image_mean]).all() == (c != none)
        assert np.isfinite(hidden[i][:, :, store.reductions.index("last")]).all()


def test_each_image_of_a_row_gets_the_whole_ladder() -> None:
    side = 40
    pngs = (noise_png(5, side, side), noise_png(6, 2 * side, side))
    pair = Example(id="p", question="q", answers=("a",), image_bytes=pngs[0], extra_images=pngs[1:])
    conditions = build_conditions((0.04,), total=True, none=True)
    got = condition_images([pair], conditions, torch.device("cpu"))
    assert isinstance(got["clean"][0], tuple) and got["none"] == [None]
    for k, data in enumerate(pngs):
        alone = Example(id=f"a{k}", question="q", answers=("a",), image_bytes=data)
        want = condition_images([alone], conditions, torch.device("cpu"))
        for name in ("clean", "blur@0.04", "total"):
            ours = np.asarray(got[name][0][k], dtype=np.int16)
            np.testing.assert_array_equal(ours, np.asarray(want[name][0], dtype=np.int16))
        blurred = np.asarray(got["blur@0.04"][0][k], dtype=np.int16)
        assert np.abs(blurred - np.asarray(got["clean"][0][k], dtype=np.int16)).mean() > 5


@pytest.fixture(scope="module")
def llava(tmp_path_factory: pytest.TempPathFactory):
    folder = build_tiny("llava", tmp_path_factory.mktemp("llava") / "model")
    return folder, load_model(str(folder), device="cpu", dtype="float32")


def test_llava_refuses_several_images_before_writing(tmp_path, llava) -> None:
    folder, adapter = llava
    data = write_multi_bench(tmp_path / "mmmu.tsv", CLIP_SIZE)
    out = tmp_path / "s.zarr"
    with pytest.raises(ModelError) as caught:
        capture(config(folder, data, out), adapter=adapter)
    message = str(caught.value)
    assert "'llava'" in message and "'m0'" in message and "data row 0 of" in message
    assert "qwen2_5_vl" in message and "--on-bad skip" in message  # what to do
    assert not out.exists()


def test_llava_skips_several_images_with_a_count_under_on_bad_skip(tmp_path, llava) -> None:
    folder, adapter = llava
    data = write_multi_bench(tmp_path / "mmmu.tsv", CLIP_SIZE)
    out = tmp_path / "s.zarr"
    capture(config(folder, data, out, data_options={"on_bad": "skip"}), adapter=adapter)
    store = open_store(out)
    assert list(store.examples().ids) == ["s1"]
    assert store.attrs["dataset"]["skipped"] == 2
    assert store.attrs["dataset"]["skip_report"] == str(tmp_path / "mmmu.tsv.skipped.tsv")
    report = (tmp_path / "mmmu.tsv.skipped.tsv").read_text().splitlines()
    assert len(report) == 3 and all("'llava'" in line for line in report[1:])
    assert [line.split("\t")[1] for line in report[1:]] == ["0", "2"]


def test_text_only_rows_need_none_and_hold_it_only(tmp_path) -> None:
    folder = build_tiny("qwen2_5_vl", tmp_path / "model")
    adapter = load_model(str(folder), device="cpu", dtype="float32")
    data = _scienceqa_parquet(tmp_path)  # row 1 has a null image: a text-only item
    with pytest.raises(UsageError, match="--none"):
        capture(config(folder, data, tmp_path / "x.zarr", none=False), adapter=adapter)
    assert not (tmp_path / "x.zarr").exists()
    out = tmp_path / "s.zarr"
    capture(config(folder, data, out, full_seq=0), adapter=adapter)
    store = open_store(out)
    table = store.examples()
    text = ~table.column("has_image").astype(bool)
    assert text.sum() == 1 and table.column("n_images")[text].tolist() == [0]
    assert set(table.column("metric")) == {"choice"}
    score, hidden = store.outputs("score"), store.hidden()
    none = store.condition_index("none")
    others = [c for c in range(len(store.condition_names)) if c != none]
    assert np.isnan(score[text][:, others]).all() and np.isnan(hidden[text][:, others]).all()
    assert np.isfinite(score[text][:, none]).all()
    assert np.isfinite(score[~text]).all()


def test_cli_names_the_row_and_family_without_a_traceback(tmp_path, llava, capsys) -> None:
    from priorscope.cli.main import main

    folder, _ = llava
    data = write_multi_bench(tmp_path / "mmmu.tsv", CLIP_SIZE)
    args = ["capture", "--model", str(folder), "--data", str(data), "--ladder", "0.04"]
    args += ["--device", "cpu", "--max-new-tokens", "1", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "x.zarr")]) == 1
    printed = capsys.readouterr()
    said = " ".join((printed.err + printed.out).split())
    assert "'llava'" in said and "'m0'" in said and "Traceback" not in said
    assert not (tmp_path / "x.zarr").exists()


def test_a_store_without_the_columns_reads_them_as_none(tmp_path) -> None:
    from priorscope.engine.store.answers import write_answer_store

    conditions = build_conditions((0.04,), total=False)
    path = write_answer_store(
        tmp_path / "a.zarr",
        conditions=conditions,
        ids=["x", "y"],
        gold=[["A"], ["B"]],
        answer=np.array([["A", "A"], ["B", ""]]),
        score=np.array([[1.0, 1.0], [1.0, 0.0]]),
    )
    table = open_store(path).examples()
    for name in ("metric", "n_images", "has_image"):
        assert table.column(name).tolist() == [None, None]
    assert table.take(np.array([1])).column("metric").tolist() == [None]
