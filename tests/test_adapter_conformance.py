"""The adapter conformance suite: every model family passes the same tests (zarr's store tests).

One test class, run against a tiny real model of each family (``build_tiny``; ``generic`` is a
model type that only the generic fallback adapter loads). A new family adds its name to
FAMILIES and a tiny builder, and must pass all of it: sites, token kinds, positions,
encode/generate, candidate ids, and a write hook that changes the answer.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from priorscope.engine.data.synth import SynthConfig, generate
from priorscope.engine.models import (
    FAMILIES as ADAPTER_FAMILIES,
)
from priorscope.engine.models import (
    TOKEN_IMAGE,
    TOKEN_PAD,
    TOKEN_SPECIAL,
    TOKEN_TEXT,
    load_model,
)
from priorscope.engine.models.generic import GenericAdapter
from priorscope.engine.models.hf import HFAdapter
from priorscope.engine.models.sites import (
    LOGITS,
    POSITIONS,
    VISION,
    Write,
    hooks,
    residual_sites,
    resolvable,
)
from priorscope.engine.models.tiny import BUILDERS, build_tiny

FAMILIES = ("qwen2_5_vl", "qwen2_vl", "llava", "llava_next", "generic")
CANDIDATES = ["red", "yes", "no", "3", "A", "banana", "blue circle"]
RTOL = 1e-5


@pytest.fixture(scope="module", params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def adapter(family: str, tmp_path_factory: pytest.TempPathFactory) -> HFAdapter:
    return load_model(str(build_tiny(family, tmp_path_factory.mktemp(family), seed=2)))


@pytest.fixture(scope="module")
def examples() -> list[Any]:
    # Five templates with questions of different lengths, so batches are left-padded.
    return generate(SynthConfig(n=4, seed=21, size=56))


@pytest.fixture(scope="module")
def batch(adapter: HFAdapter, examples: list[Any]) -> dict[str, torch.Tensor]:
    return adapter.encode(examples, [ex.image for ex in examples])


def prefill_reads(
    adapter: HFAdapter, batch: dict[str, torch.Tensor], sites: list[str]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Return each site's tensor from generate's prefill, and the sites that did not fire."""
    seen: dict[str, torch.Tensor] = {}
    reads = {s: (lambda t, s=s: seen.__setitem__(s, t)) for s in sites}
    with hooks(adapter, reads=reads, prefill_only=True) as session:
        adapter.generate(batch, max_new_tokens=2)
        missing = session.missing(sites)
    return seen, missing


def last_logits(adapter: HFAdapter, batch: dict[str, torch.Tensor], **kw: Any) -> torch.Tensor:
    with torch.no_grad():
        return adapter.model(**batch, use_cache=False, **kw).logits[:, -1].float()


def test_every_family_is_covered() -> None:
    assert set(FAMILIES) == set(ADAPTER_FAMILIES) | {"generic"} == set(BUILDERS)


class TestAdapterConformance:
    """What every adapter must do; each test runs once per family."""

    def test_family_and_structure(self, family: str, adapter: HFAdapter) -> None:
        assert adapter.family == family
        assert isinstance(adapter, GenericAdapter) == (family == "generic")
        assert adapter.num_layers == len(adapter.decoder_layers()) == 2
        assert adapter.d_model == adapter.lm_head().weight.shape[1] == 64
        assert adapter.tokenizer.padding_side == "left"

    def test_every_site_resolves_and_fires(
        self, adapter: HFAdapter, batch: dict[str, torch.Tensor]
    ) -> None:
        n = adapter.num_layers
        blocks = [f"{kind}.{i}" for kind in ("attn", "mlp") for i in range(n)]
        sites = [*residual_sites("all", n), *blocks, LOGITS, VISION]
        if resolvable(adapter, POSITIONS):
            sites.append(POSITIONS)
        seen, missing = prefill_reads(adapter, batch, sites)
        assert missing == []
        shape = (*batch["input_ids"].shape, adapter.d_model)
        for site in [*residual_sites("all", n), *blocks]:
            assert tuple(seen[site].shape) == shape, site
        assert seen[LOGITS].shape[:2] == (shape[0], 1)  # generate computes the last position

    def test_residual_reads_equal_hidden_states(
        self, adapter: HFAdapter, batch: dict[str, torch.Tensor]
    ) -> None:
        sites = residual_sites("all", adapter.num_layers)
        seen: dict[str, torch.Tensor] = {}
        reads = {s: (lambda t, s=s: seen.__setitem__(s, t)) for s in sites}
        with hooks(adapter, reads=reads), torch.no_grad():
            states = adapter.model(**batch, use_cache=False, output_hidden_states=True)
        for i, site in enumerate(sites[:-1]):
            assert torch.equal(seen[site], states.hidden_states[i]), site
        normed = adapter.final_norm()(seen[sites[-1]])
        assert torch.equal(normed, states.hidden_states[-1])

    def test_token_kinds(
        self, adapter: HFAdapter, examples: list[Any], batch: dict[str, torch.Tensor]
    ) -> None:
        kinds = adapter.token_kinds(batch)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        assert kinds.shape == ids.shape and kinds.dtype == torch.int8
        assert torch.equal(kinds == TOKEN_IMAGE, ids == adapter.image_token_id)
        assert ((kinds == TOKEN_TEXT).sum(dim=1) > 0).all()
        assert torch.equal(kinds == TOKEN_PAD, mask == 0)
        assert (mask == 0).any(), "the examples must differ in length"
        for row in range(ids.shape[0]):  # left padding: pads first, the answer position last
            n_pad = int((mask[row] == 0).sum())
            assert (mask[row, :n_pad] == 0).all() and (mask[row, n_pad:] == 1).all()
        assert (kinds[:, -1] == TOKEN_SPECIAL).all()
        blind = adapter.encode(examples, [None] * len(examples))
        assert not (adapter.token_kinds(blind) == TOKEN_IMAGE).any()

    def test_positions(
        self, family: str, adapter: HFAdapter, batch: dict[str, torch.Tensor]
    ) -> None:
        seen, missing = prefill_reads(adapter, batch, [POSITIONS])
        assert missing == []
        pos = seen[POSITIONS]
        rope = 3 if family.startswith("qwen") else 1
        assert pos.shape == (rope, *batch["input_ids"].shape)
        mask = batch["attention_mask"].bool()
        for row in range(pos.shape[1]):
            valid = pos[:, row, mask[row]]
            # Text positions count up after padding is stripped; the answer position is last.
            assert int(valid[0, -1]) == int(valid[0].max())
            if rope == 3:  # M-RoPE: one temporal position for all image tokens of a row
                image = (adapter.token_kinds(batch)[row] == TOKEN_IMAGE)[mask[row]]
                assert len(set(valid[0, image].tolist())) == 1
            else:
                assert torch.equal(valid[0], torch.arange(int(mask[row].sum())))

    def test_encode_and_generate_are_deterministic(
        self, adapter: HFAdapter, examples: list[Any], batch: dict[str, torch.Tensor]
    ) -> None:
        again = adapter.encode(examples, [ex.image for ex in examples])
        assert batch.keys() == again.keys()
        for key in batch:
            assert torch.equal(batch[key], again[key]), key
        assert torch.equal(last_logits(adapter, batch), last_logits(adapter, again))
        texts = adapter.generate(batch, max_new_tokens=3)
        assert texts == adapter.generate(again, max_new_tokens=3)
        assert len(texts) == len(examples) and all(isinstance(t, str) for t in texts)

    def test_left_padded_rows_equal_single_rows(
        self, adapter: HFAdapter, examples: list[Any], batch: dict[str, torch.Tensor]
    ) -> None:
        batched = last_logits(adapter, batch)
        scale = float(batched.abs().max())
        for row, ex in enumerate(examples):
            single = last_logits(adapter, adapter.encode([ex], [ex.image]))[0]
            # Padding changes the arithmetic (measured: at most 4e-7 of the logits' scale).
            torch.testing.assert_close(batched[row], single, rtol=RTOL, atol=RTOL * scale)

    def test_candidate_ids_round_trip(self, adapter: HFAdapter) -> None:
        ids = adapter.candidate_token_ids(CANDIDATES)
        firsts = [adapter.tokenizer.decode([i]).strip() for i in ids]
        assert firsts == [c.split()[0] for c in CANDIDATES]
        rows = adapter.unembed_rows(CANDIDATES)
        assert torch.equal(rows, adapter.lm_head().weight[ids])

    def test_answer_tokens_and_prefill(
        self, adapter: HFAdapter, batch: dict[str, torch.Tensor]
    ) -> None:
        # One-token answers are their candidate id; a two-word answer is no single token.
        ids = adapter.candidate_token_ids(CANDIDATES)
        got = [adapter.answer_token(c) for c in CANDIDATES]
        assert got == [
            i if len(c.split()) == 1 else None for c, i in zip(CANDIDATES, ids, strict=True)
        ]
        # prefill() is generate's prefill: every decoder layer and the answer position's logits.
        sites = [*residual_sites("all", adapter.num_layers), LOGITS]
        want, _ = prefill_reads(adapter, batch, sites)
        seen: dict[str, torch.Tensor] = {}
        reads = {s: (lambda t, s=s: seen.__setitem__(s, t.detach().clone())) for s in sites}
        with hooks(adapter, reads=reads, prefill_only=True) as session:
            adapter.prefill(batch)
            assert not session.missing(sites)
        for site in sites:
            a, b = want[site], seen[site]
            if site == LOGITS:
                a, b = a[:, -1], b[:, -1]
            torch.testing.assert_close(b, a, rtol=RTOL, atol=1e-6, msg=site)

    def test_vision_output_is_what_the_decoder_gets(
        self, family: str, adapter: HFAdapter, batch: dict[str, torch.Tensor]
    ) -> None:
        seen, missing = prefill_reads(adapter, batch, [VISION, "embed"])
        assert missing == []
        image = adapter.token_kinds(batch) == TOKEN_IMAGE
        vision = seen[VISION].reshape(-1, adapter.d_model)
        if family == "llava_next":
            # Tiling adds image_newline rows after the projector: only the sizes can be compared.
            assert vision.shape[0] <= int(image.sum())
        else:
            assert torch.equal(seen["embed"][image], vision)

    def test_write_hook_changes_the_answer(
        self, adapter: HFAdapter, batch: dict[str, torch.Tensor]
    ) -> None:
        """Swapping the last position's residual between rows swaps their answers."""
        n = adapter.num_layers
        before = last_logits(adapter, batch)
        last = torch.zeros(batch["input_ids"].shape, dtype=torch.bool)
        last[:, -1] = True
        for site in (f"resid.{n - 1}", "resid.0"):
            swap = Write(site, lambda h: h.roll(1, dims=0), positions=last)
            with hooks(adapter, writes=[swap]):
                after = last_logits(adapter, batch)
            assert not torch.allclose(after, before, rtol=1e-3, atol=1e-3), site
            if site == f"resid.{n - 1}":
                # After the last layer only the final norm and the head act, per position.
                scale = float(before.abs().max())
                torch.testing.assert_close(
                    after, before.roll(1, dims=0), rtol=RTOL, atol=RTOL * scale
                )
                assert torch.equal(after.argmax(-1), before.argmax(-1).roll(1))
