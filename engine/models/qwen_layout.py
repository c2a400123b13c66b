"""The Qwen-VL family's index tensors, computed once per distinct image grid and prompt row.

Before the first layer runs, a Qwen-VL forward builds integer index tensors in Python loops on
the host: the vision tower's rotary positions and (Qwen2.5-VL) its window permutation, one
image at a time, and the decoder's 3-D M-RoPE positions, one row at a time
(``get_rope_index``). A decay sweep asks for the same ones over and over: every condition of an
example has the same grid and the same prompt row, and every image of one size the same grid.
In a cProfile of a CPU capture on the organism these loops were 14% of the time (2.8 s of
20 s, 400 items); on a GPU each of their ``.tolist()`` calls also waits for the device.

:func:`layout_memo` installs, for the duration of a ``with`` block, versions that call
transformers' own functions once per distinct grid and once per distinct row and assemble the
batch from those, so every tensor is the one transformers would build (integers, bitwise; the
tests compare them on random batches). The M-RoPE rows go to transformers' own code unchanged
for a batch of one row, video grids, or a mask that is not left padding; the vision tower keeps
indices a caller precomputed. :func:`supported` says whether the installed transformers has the
hooks this relies on (``transformers.vision_utils``, whose functions accept precomputed
indices, and ``get_rope_index`` reading ``mm_token_type_ids``); without them nothing changes.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
from collections import OrderedDict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn


def supported(model: Any) -> bool:
    """Return whether the installed transformers and ``model`` have what the memo relies on."""
    inner = getattr(model, "model", None)
    stock = getattr(type(inner), "get_rope_index", None)
    if stock is None or getattr(inner, "visual", None) is None:
        return False
    if importlib.util.find_spec("transformers.vision_utils") is None:
        return False  # before transformers' precomputed vision indices: keys would leak on
    return "mm_token_type_ids" in inspect.signature(stock).parameters


class GridIndexCache:
    """Vision index tensors per image grid (t, h, w), assembled for a batch of grids.

    Keeps the ``MAX_GRIDS`` grids used last: capture groups batches by image size, so a few
    cover nearly every hit, and a benchmark at native resolutions cannot fill device memory.
    """

    MAX_GRIDS = 256

    def __init__(self, visual: Any) -> None:
        self.merge = int(visual.spatial_merge_size)
        self.windowed = hasattr(visual, "window_size") and hasattr(visual, "patch_size")
        self.window_size = int(getattr(visual, "window_size", 0))
        self.patch_size = int(getattr(visual, "patch_size", 0))
        self._one: OrderedDict[tuple[tuple[int, int, int], str], dict[str, torch.Tensor]] = (
            OrderedDict()
        )

    def _single(self, grid: tuple[int, int, int], device: torch.device) -> dict[str, torch.Tensor]:
        """Return transformers' own index tensors for one image of ``grid``."""
        import torch
        from transformers import vision_utils

        key = (grid, str(device))
        got = self._one.get(key)
        if got is not None:
            self._one.move_to_end(key)
        else:
            thw = torch.tensor([grid], dtype=torch.long, device=device)
            got = {"position_ids": vision_utils.get_vision_position_ids(thw, self.merge)}
            if self.windowed:
                index, cu = vision_utils.get_vision_window_index(
                    thw,
                    spatial_merge_size=self.merge,
                    window_size=self.window_size,
                    patch_size=self.patch_size,
                )
                got["window_index"], got["cu_window_seqlens"] = index, cu
            self._one[key] = got
            if len(self._one) > self.MAX_GRIDS:
                self._one.popitem(last=False)
        return got

    def batch(self, grid_thw: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return the vision forward's precomputed kwargs for ``grid_thw`` [images, 3].

        Per image: rotary positions as they are; window indices offset by the merged tokens of
        the images before it; window boundaries offset by their patches. The first window of an
        image is never empty (it holds the image's first token), so concatenating the per-image
        boundaries leaves nothing for transformers' final ``unique_consecutive`` to remove.
        """
        import torch

        grids = [(int(t), int(h), int(w)) for t, h, w in grid_thw.tolist()]
        parts = [self._single(g, grid_thw.device) for g in grids]
        out = {"position_ids": torch.cat([p["position_ids"] for p in parts])}
        if self.windowed:
            unit = self.merge**2
            indices, bounds = [], [parts[0]["cu_window_seqlens"][:1]]
            tokens = 0
            for (t, h, w), part in zip(grids, parts, strict=True):
                indices.append(part["window_index"] + tokens // unit)
                bounds.append(part["cu_window_seqlens"][1:] + tokens)
                tokens += t * h * w
            out["window_index"] = torch.cat(indices)
            out["cu_window_seqlens"] = torch.cat(bounds)
        return out


def _row_grids(
    image_types: torch.Tensor, grid_thw: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Return (grids padded per row [rows, most*3], image groups per row), or None on mismatch.

    ``get_rope_index`` takes one grid per run of image tokens, in row order; a row's grids are
    the next ``count`` of ``grid_thw``.
    """
    import torch

    grid_thw = grid_thw.to(image_types.device)
    prev = torch.nn.functional.pad(image_types[:, :-1], (1, 0), value=False)
    counts = (image_types & ~prev).sum(dim=1)
    if int(counts.sum()) != int(grid_thw.shape[0]):
        return None
    most = int(counts.max()) if counts.numel() else 0
    padded = torch.full(
        (image_types.shape[0], max(most, 1) * 3), -1, dtype=grid_thw.dtype, device=grid_thw.device
    )
    first = torch.cumsum(counts, 0) - counts
    for j in range(most):
        has = counts > j
        padded[has, 3 * j : 3 * j + 3] = grid_thw[first[has] + j]
    return padded, counts


def memo_rope_index(stock: Any) -> Any:
    """Return ``get_rope_index`` computed once per distinct row (ids, mask, types, grids).

    Other keyword arguments (generate passes every model input) go to ``stock`` as they are.
    """
    import torch

    def rope_index(
        input_ids: torch.Tensor,
        mm_token_type_ids: torch.Tensor,
        image_grid_thw: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
        second_per_grid_ts: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        def own() -> tuple[torch.Tensor, torch.Tensor]:
            return stock(
                input_ids,
                mm_token_type_ids,
                image_grid_thw=image_grid_thw,
                video_grid_thw=video_grid_thw,
                second_per_grid_ts=second_per_grid_ts,
                attention_mask=attention_mask,
                **kwargs,
            )

        if video_grid_thw is not None or image_grid_thw is None or len(input_ids) < 2:
            return own()
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        if bool((mask[:, 1:] < mask[:, :-1]).any()):  # not left padding: rows compact unevenly
            return own()
        valid = mask.bool()
        types = mm_token_type_ids.masked_fill(~valid, -1)
        row_grids = _row_grids(types == 1, image_grid_thw)
        if row_grids is None:
            return own()
        padded, counts = row_grids
        # The ids are part of the key though transformers 5.24 reads only the token types: an
        # older Qwen2-VL found images by token id, and repeated conditions share ids anyway.
        key = torch.cat([types.long(), input_ids.masked_fill(~valid, -1).long(), padded.long()], 1)
        _, inverse = torch.unique(key, dim=0, return_inverse=True)
        n, rows = len(input_ids), torch.arange(len(input_ids), device=input_ids.device)
        first = torch.full((n,), n, dtype=torch.long, device=input_ids.device)
        first = first.scatter_reduce(0, inverse, rows, "amin")[: int(inverse.max()) + 1]
        if len(first) == n:
            return own()
        per_row = counts.tolist()
        grids = torch.cat([padded[r, : 3 * per_row[r]].view(-1, 3) for r in first.tolist()])
        position_ids, deltas = stock(
            input_ids[first],
            mm_token_type_ids[first],
            image_grid_thw=grids.to(image_grid_thw.dtype),
            attention_mask=None if attention_mask is None else attention_mask[first],
            **kwargs,
        )
        return position_ids[:, inverse], deltas[inverse]

    return rope_index


@contextlib.contextmanager
def layout_memo(model: nn.Module, grids: GridIndexCache) -> Iterator[None]:
    """Within the block, ``model``'s Qwen-VL index tensors come from the memoised versions.

    ``model`` is a ``Qwen2VLForConditionalGeneration``-like model for which :func:`supported`
    holds; ``grids`` is the adapter's cache, kept across calls. Both changes are undone on exit,
    an exception's included; an inner block nested in an outer one leaves the outer's in place.
    One thread at a time: the block changes the model object itself.
    """
    inner: Any = model.model
    with contextlib.ExitStack() as undo:

        def add_indices(_: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            grid_thw = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
            wanted = ("position_ids", "window_index", "cu_window_seqlens")
            if grid_thw is None or len(grid_thw) == 0 or any(k in kwargs for k in wanted):
                return args, kwargs
            return args, {**kwargs, **grids.batch(grid_thw)}

        undo.callback(inner.visual.register_forward_pre_hook(add_indices, with_kwargs=True).remove)
        if "get_rope_index" not in vars(inner):  # else an outer block's memo is in place
            stock = type(inner).get_rope_index.__get__(inner)
            inner.get_rope_index = memo_rope_index(stock)
            undo.callback(delattr, inner, "get_rope_index")
        yield
