"""The Qwen-VL index tensors computed once per grid and row equal transformers' own, bit for bit.

``engine/models/qwen_layout`` replaces, inside a ``with`` block, the host loops that build
the vision tower's rotary positions and window permutation and the decoder's M-RoPE positions.
Checked against transformers' functions on random batches (repeated rows, left padding, two
images in a row, grids of many sizes), and end to end: a forward inside the block gives the
same hidden states and answers as one outside, and the block leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import vision_utils

from priorscope.engine.data import Example
from priorscope.engine.models.qwen_layout import GridIndexCache, memo_rope_index, supported
from priorscope.engine.models.registry import load_model
from priorscope.engine.models.tiny import build_tiny


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen2_vl"])
def adapter(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = build_tiny(request.param, tmp_path_factory.mktemp(request.param))
    return load_model(str(folder), dtype="float32")


def random_grids(rng: np.random.Generator, n: int, most_t: int = 1) -> torch.Tensor:
    """Return [n, 3] grids: t from 1 to ``most_t``, even h and w from 2 to 40 patches."""
    return torch.tensor(
        [
            [rng.integers(1, most_t + 1), 2 * rng.integers(1, 21), 2 * rng.integers(1, 21)]
            for _ in range(n)
        ]
    )


def random_rows(
    rng: np.random.Generator, rows: int, merge: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (input_ids, mm_token_type_ids, attention_mask, image_grid_thw) of a left-padded batch.

    Distinct rows (0-2 images each, text around them) repeated in a shuffled order, so that a
    batch holds both repeated rows and rows that differ only in their grids or their padding.
    """
    distinct = []
    for _ in range(max(2, rows // 3)):
        grids = random_grids(rng, int(rng.integers(0, 3)))
        ids: list[int] = []
        types: list[int] = []
        for g in grids.tolist():
            text = int(rng.integers(1, 6))
            ids += rng.integers(10, 90, text).tolist() + [7] * (g[0] * g[1] * g[2] // merge**2)
            types += [0] * text + [1] * (g[0] * g[1] * g[2] // merge**2)
        tail = int(rng.integers(1, 8))
        distinct.append((ids + rng.integers(10, 90, tail).tolist(), types + [0] * tail, grids))
    order = rng.integers(0, len(distinct), rows)
    width = max(len(distinct[i][0]) for i in order) + int(rng.integers(0, 3))
    input_ids = torch.zeros(rows, width, dtype=torch.long)
    types = torch.zeros(rows, width, dtype=torch.int32)
    mask = torch.zeros(rows, width, dtype=torch.long)
    grids = []
    for r, i in enumerate(order):
        ids, kinds, g = distinct[i]
        input_ids[r, width - len(ids) :] = torch.tensor(ids)
        types[r, width - len(ids) :] = torch.tensor(kinds, dtype=torch.int32)
        mask[r, width - len(ids) :] = 1
        grids.append(g)
    return input_ids, types, mask, torch.cat(grids).long()


def test_rope_index_equals_transformers(adapter: Any) -> None:
    inner = adapter.model.model
    stock = type(inner).get_rope_index.__get__(inner)
    memo = memo_rope_index(stock)
    merge = int(inner.config.vision_config.spatial_merge_size)
    rng = np.random.default_rng(0)
    for trial in range(36):
        ids, types, mask, grids = random_rows(rng, int(rng.integers(1, 24)), merge)
        if trial % 6 == 0:  # no attention mask: every row its full length
            mask = None
        elif trial % 6 == 1:
            mask = mask.bool()
        want = stock(ids, types, image_grid_thw=grids, attention_mask=mask)
        got = memo(ids, types, image_grid_thw=grids, attention_mask=mask, pixel_values=None)
        for w, g in zip(want, got, strict=True):
            assert g.dtype == w.dtype and g.shape == w.shape
            assert torch.equal(g, w), f"trial {trial}"


def test_rope_index_falls_back_outside_left_padding(adapter: Any) -> None:
    """Right padding (or holes) is passed to transformers as it is, not deduplicated."""
    inner = adapter.model.model
    stock = type(inner).get_rope_index.__get__(inner)
    calls: list[int] = []

    def counting(ids: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(ids))
        return stock(ids, *args, **kwargs)

    merge = int(inner.config.vision_config.spatial_merge_size)
    ids, types, mask, grids = random_rows(np.random.default_rng(1), 12, merge)
    right = torch.flip(mask, dims=[1])
    ids, types = torch.flip(ids, dims=[1]), torch.flip(types, dims=[1])
    want = stock(ids, types, image_grid_thw=grids, attention_mask=right)
    got = memo_rope_index(counting)(ids, types, image_grid_thw=grids, attention_mask=right)
    assert calls == [12]
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    calls.clear()
    left = torch.flip(right, dims=[1])
    flipped = [torch.flip(t, dims=[1]) for t in (ids, types)]
    memo_rope_index(counting)(*flipped, image_grid_thw=grids, attention_mask=left)
    assert calls and calls[0] < 12  # the repeated rows ran once


def test_vision_indices_equal_transformers(adapter: Any) -> None:
    visual = adapter.model.model.visual
    cache = GridIndexCache(visual)
    rng = np.random.default_rng(2)
    for trial in range(40):
        grids = random_grids(rng, int(rng.integers(1, 7)), most_t=1 + trial % 3)
        if trial % 4 == 0:
            grids = torch.cat([grids, grids[:1], grids])  # repeated grids hit the cache
        got = cache.batch(grids)
        want = vision_utils.get_vision_position_ids(grids, cache.merge)
        assert torch.equal(got["position_ids"], want)
        if cache.windowed:
            index, cu = vision_utils.get_vision_window_index(
                grids,
                spatial_merge_size=cache.merge,
                window_size=cache.window_size,
                patch_size=cache.patch_size,
            )
            assert got["window_index"].dtype == index.dtype
            assert torch.equal(got["window_index"], index), f"trial {trial}"
            assert got["cu_window_seqlens"].dtype == cu.dtype
            assert torch.equal(got["cu_window_seqlens"], cu), f"trial {trial}"
        else:
            assert set(got) == {"position_ids"}
    assert cache.windowed == (adapter.family == "qwen2_5_vl")


def test_the_block_uses_the_memo_and_leaves_nothing_behind(
    adapter: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Transformers' M-RoPE code sees one row per distinct row; the vision tower, given indices."""
    assert supported(adapter.model)
    inner = adapter.model.model
    rows_seen: list[int] = []
    stock = type(inner).get_rope_index

    def counting(self: Any, input_ids: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        rows_seen.append(len(input_ids))
        return stock(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(type(inner), "get_rope_index", counting)
    modeling = importlib.import_module(type(inner).__module__)
    given: list[bool] = []
    own = modeling.get_vision_position_ids

    def noting(*args: Any, kwargs: dict | None = None, **rest: Any) -> Any:
        given.append(kwargs is not None and "position_ids" in kwargs)
        return own(*args, kwargs=kwargs, **rest)

    monkeypatch.setattr(modeling, "get_vision_position_ids", noting)
    examples = [
        Example(id=f"e{i}", question="What colour is it?", answers=("red",)) for i in range(3)
    ]
    batch = adapter.encode(examples * 2, [noise(0, 56, 56)] * 6)  # 2 conditions x 3 examples
    with torch.no_grad(), adapter.forward_context():
        adapter.model(**batch, use_cache=False)
    assert rows_seen == [1] and given == [True]
    rows_seen.clear()
    given.clear()
    with torch.no_grad():
        adapter.model(**batch, use_cache=False)
    assert rows_seen == [6] and given == [False]
    with pytest.raises(RuntimeError, match="inside"), adapter.forward_context():
        raise RuntimeError("inside")
    assert "get_rope_index" not in vars(inner) and not inner.visual._forward_pre_hooks


def noise(seed: int, width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_forward_inside_the_block_is_bitwise_the_same(adapter: Any) -> None:
    """Mixed image sizes and repeated rows, as a sweep's batch has them."""
    examples = [
        Example(id=f"e{i}", question=q, answers=("red",))
        for i, q in enumerate(["What colour is it?", "Which shape?", "What colour is it?"] * 2)
    ]
    images = [noise(0, 56, 56), noise(1, 112, 56), noise(0, 56, 56)] * 2
    images[3] = noise(3, 84, 140)
    batch = adapter.encode(examples, images)
    inner = adapter.model.model
    outs = {}
    for name, block in (("stock", contextlib.nullcontext()), ("memo", adapter.forward_context())):
        with torch.no_grad(), block:
            out = adapter.model(**batch, output_hidden_states=True, use_cache=False)
        outs[name] = [h.clone() for h in out.hidden_states]
        assert "get_rope_index" not in vars(inner)
        assert not inner.visual._forward_pre_hooks
    for want, got in zip(outs["stock"], outs["memo"], strict=True):
        assert torch.equal(want, got)
    with adapter.forward_context(), adapter.forward_context():  # nested: the outer one undoes
        assert "get_rope_index" in vars(inner)
    assert "get_rope_index" not in vars(inner) and not inner.visual._forward_pre_hooks
    answers = adapter.generate(batch, max_new_tokens=3)
    with torch.no_grad():
        plain = adapter.model.generate(
            **batch, max_new_tokens=3, do_sample=False, pad_token_id=adapter.tokenizer.pad_token_id
        )
    decoded = adapter.tokenizer.batch_decode(
        plain[:, batch["input_ids"].shape[1] :], skip_special_tokens=True
    )
    assert answers == [t.strip() for t in decoded]
