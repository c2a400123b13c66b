"""Named sites and the one hook mechanism, on tiny real models: reads, writes, prefill-only, cleanup."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from priorscope.engine.data.synth import SynthConfig, generate
from priorscope.engine.errors import ModelError, UnknownNameError, UsageError
from priorscope.engine.models import TOKEN_IMAGE, load_model
from priorscope.engine.models.hf import HFAdapter
from priorscope.engine.models.sites import (
    Write,
    hooks,
    parse_site,
    residual_sites,
    resolvable,
    site_name,
)
from priorscope.engine.models.tiny import build_tiny
from priorscope.kernels import total_image

RTOL = 1e-5


@pytest.fixture(scope="module", params=["qwen2_5_vl", "llava"])
def adapter(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> HFAdapter:
    folder = build_tiny(request.param, tmp_path_factory.mktemp(request.param), seed=1)
    return load_model(str(folder))


@pytest.fixture(scope="module")
def examples() -> list[Any]:
    return generate(SynthConfig(n=3, seed=4, size=56))  # unequal lengths: left padding


@pytest.fixture(scope="module")
def batch(adapter: HFAdapter, examples: list[Any]) -> dict[str, torch.Tensor]:
    return adapter.encode(examples, [ex.image for ex in examples])


def close(actual: torch.Tensor, desired: torch.Tensor) -> None:
    """Assert equality within RTOL of the value, or of the tensor's scale near zero."""
    scale = float(desired.abs().max())
    torch.testing.assert_close(actual, desired, rtol=RTOL, atol=RTOL * scale)


def hook_ids(adapter: HFAdapter) -> dict[str, tuple[list[int], list[int]]]:
    return {
        name: (sorted(m._forward_hooks), sorted(m._forward_pre_hooks))
        for name, m in adapter.model.named_modules()
    }


def forward(adapter: HFAdapter, batch: dict[str, torch.Tensor], **kwargs: Any) -> Any:
    with torch.no_grad():
        return adapter.model(**batch, use_cache=False, **kwargs)


def test_site_names_and_the_one_normaliser() -> None:
    assert site_name(-1) == "embed" and site_name(3) == "resid.3"
    assert parse_site("resid.3", 4).store_layer == 3 and parse_site("embed", 4).store_layer == -1
    assert parse_site("mlp.2", 4).name == "mlp.2"
    assert residual_sites("all", 2) == ["embed", "resid.0", "resid.1"]
    assert residual_sites("embed,resid.3,1", 4) == ["embed", "resid.1", "resid.3"]
    assert residual_sites("0:8:2", 8) == ["resid.0", "resid.2", "resid.4", "resid.6"]
    assert residual_sites([-1, 1, "resid.1"], 2) == ["embed", "resid.1"]
    with pytest.raises(UsageError, match="Expected a residual site"):
        _ = parse_site("logits", 2).store_layer


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [("resid1", "resid.1"), ("blocks.1.hook_resid_post", "resid.1"), ("logit", "logits")],
)
def test_unknown_sites_get_did_you_mean(adapter: HFAdapter, name: str, suggestion: str) -> None:
    before = hook_ids(adapter)
    reads = {"embed": lambda h: None, name: lambda h: None}
    with (
        pytest.raises(UnknownNameError, match=f"Did you mean '{suggestion}'") as info,
        hooks(adapter, reads=reads),
    ):
        pass
    assert "resid.N" in str(info.value)
    assert hook_ids(adapter) == before  # the hook already installed for 'embed' is gone too
    with pytest.raises(UsageError, match="Expected a layer between 0 and 1"):
        parse_site("resid.7", adapter.num_layers)


def test_reads_equal_output_hidden_states_and_logits(
    adapter: HFAdapter, batch: dict[str, torch.Tensor]
) -> None:
    sites = residual_sites("all", adapter.num_layers)
    seen: dict[str, torch.Tensor] = {}
    reads = {s: (lambda h, s=s: seen.__setitem__(s, h)) for s in [*sites, "logits"]}
    with hooks(adapter, reads=reads) as session:
        out = forward(adapter, batch, output_hidden_states=True)
        assert session.missing(list(reads)) == []
    states = out.hidden_states
    for i, s in enumerate(sites[:-1]):  # same forward: bitwise by design
        assert torch.equal(seen[s], states[i]), s
    # transformers' last entry is after the final norm; the site is the residual before it.
    assert torch.equal(adapter.final_norm()(seen[sites[-1]]), states[-1])
    assert torch.equal(seen["logits"], out.logits)
    plain = forward(adapter, batch)
    assert torch.equal(plain.logits, out.logits)


def test_block_writes_sum_to_the_residual(
    adapter: HFAdapter, batch: dict[str, torch.Tensor]
) -> None:
    seen: dict[str, torch.Tensor] = {}
    names = ["embed", "attn.0", "mlp.0", "resid.0"]
    with hooks(adapter, reads={s: (lambda h, s=s: seen.__setitem__(s, h)) for s in names}):
        forward(adapter, batch)
    close(seen["embed"] + seen["attn.0"] + seen["mlp.0"], seen["resid.0"])


def test_vision_and_positions(adapter: HFAdapter, batch: dict[str, torch.Tensor]) -> None:
    seen: dict[str, torch.Tensor] = {}
    names = ["vision", "positions", "embed"]
    with hooks(adapter, reads={s: (lambda h, s=s: seen.__setitem__(s, h)) for s in names}):
        forward(adapter, batch)
    image = adapter.token_kinds(batch) == TOKEN_IMAGE
    vision = seen["vision"].reshape(-1, adapter.d_model)
    assert torch.equal(seen["embed"][image], vision)  # image tokens enter the decoder as is
    rope = 3 if adapter.family.startswith("qwen") else 1
    assert seen["positions"].shape == (rope, *batch["input_ids"].shape)
    assert resolvable(adapter, "positions") and resolvable(adapter, "vision")


def _layer_inputs(adapter: HFAdapter, index: int, batch: dict[str, torch.Tensor]) -> dict:
    """Return the keyword arguments decoder layer ``index`` gets in a plain forward."""
    got: dict[str, Any] = {}

    def grab(module: Any, args: Any, kwargs: Any) -> None:
        got.update(kwargs)

    handle = adapter.decoder_layers()[index].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        forward(adapter, batch)
    finally:
        handle.remove()
    return got


def test_replace_write_equals_a_manual_splice(
    adapter: HFAdapter, examples: list[Any], batch: dict[str, torch.Tensor]
) -> None:
    """Write('resid.0', total-image states, image positions) == running layer 1 by hand."""
    blank = adapter.encode(examples, [total_image(ex.image) for ex in examples])
    source: dict[str, torch.Tensor] = {}
    with hooks(adapter, reads={"resid.0": lambda h: source.__setitem__("h", h)}):
        forward(adapter, blank)
    target: dict[str, torch.Tensor] = {}
    with hooks(adapter, reads={"resid.0": lambda h: target.__setitem__("h", h)}):
        clean = forward(adapter, batch)
    image = adapter.token_kinds(batch) == TOKEN_IMAGE
    write = Write("resid.0", source["h"], positions=image)
    with hooks(adapter, writes=[write]):
        patched = forward(adapter, batch)
    spliced = torch.where(image.unsqueeze(-1), source["h"], target["h"])
    kwargs = _layer_inputs(adapter, 1, batch)
    kwargs.pop("hidden_states", None)
    with torch.no_grad():
        h = adapter.decoder_layers()[1](spliced, **kwargs)
        manual = adapter.lm_head()(adapter.final_norm()(h[0] if isinstance(h, tuple) else h))
    close(patched.logits, manual)
    assert not torch.allclose(patched.logits, clean.logits, rtol=1e-3, atol=1e-3)


def test_add_write_changes_only_the_chosen_positions(
    adapter: HFAdapter, batch: dict[str, torch.Tensor]
) -> None:
    seen: dict[str, torch.Tensor] = {}
    with hooks(adapter, reads={"resid.0": lambda h: seen.__setitem__("before", h)}):
        forward(adapter, batch)
    last = torch.zeros(batch["input_ids"].shape, dtype=torch.bool)
    last[:, -1] = True
    delta = torch.randn(seen["before"].shape)
    write = Write("resid.0", delta, positions=last, mode="add")
    with hooks(adapter, reads={"resid.0": lambda h: seen.__setitem__("after", h)}, writes=[write]):
        forward(adapter, batch)
    assert torch.equal(seen["after"][:, :-1], seen["before"][:, :-1])
    assert torch.equal(seen["after"][:, -1], seen["before"][:, -1] + delta[:, -1])


def test_identity_writes_leave_outputs_bitwise_equal(
    adapter: HFAdapter, batch: dict[str, torch.Tensor]
) -> None:
    plain = forward(adapter, batch).logits
    writes = [
        Write("embed", lambda h: h * 1.0),
        Write("resid.0", lambda h: h.clone()),
        Write("mlp.0", lambda h: h + 0.0),
    ]
    with hooks(adapter, writes=writes):
        assert torch.equal(forward(adapter, batch).logits, plain)


def test_prefill_only_fires_once_per_arm_during_generate(
    adapter: HFAdapter, batch: dict[str, torch.Tensor]
) -> None:
    calls: list[tuple[int, ...]] = []
    logits: list[torch.Tensor] = []
    reads = {"resid.0": lambda h: calls.append(tuple(h.shape)), "logits": logits.append}
    with hooks(adapter, reads=reads, prefill_only=True) as session:
        adapter.generate(batch, max_new_tokens=3)
        adapter.generate(batch, max_new_tokens=3)  # not armed again: nothing fires
        assert calls == [(*batch["input_ids"].shape, adapter.d_model)]
        session.arm()
        adapter.generate(batch, max_new_tokens=3)
        assert len(calls) == 2 and session.missing(["resid.0", "logits"]) == []
        session.disarm()
        forward(adapter, batch)
        assert len(calls) == 2
    # Generation's prefill gives the last position's logits, as a plain forward of the prompt
    # does (positions of left-padded rows may differ between the two, so compare unpadded rows).
    full = batch["attention_mask"].bool().all(dim=1)
    close(logits[0][full, -1], forward(adapter, batch).logits[full, -1])
    with hooks(adapter, reads=reads) as session:
        adapter.generate(batch, max_new_tokens=3)
        assert len(calls) >= 4  # every decode step fires without prefill_only


def test_hooks_are_removed_when_an_error_is_raised(
    adapter: HFAdapter, batch: dict[str, torch.Tensor]
) -> None:
    before = hook_ids(adapter)
    reads, writes = {"resid.0": lambda h: None}, [Write("embed", lambda h: h)]
    with pytest.raises(RuntimeError, match="boom"), hooks(adapter, reads=reads, writes=writes):
        assert hook_ids(adapter) != before
        raise RuntimeError("boom")
    assert hook_ids(adapter) == before
    wrong = Write("resid.0", torch.zeros(1, 2, adapter.d_model))
    with (
        pytest.raises(ModelError, match=r"Expected a write to resid\.0 of shape"),
        hooks(adapter, writes=[wrong]),
    ):
        forward(adapter, batch)  # raised inside the model's forward, by the hook
    assert hook_ids(adapter) == before
    with (
        pytest.raises(UsageError, match="'positions'"),
        hooks(adapter, writes=[Write("positions", torch.zeros(1))]),
    ):
        pass
    assert hook_ids(adapter) == before
    with pytest.raises(UsageError, match="write mode"):
        Write("embed", torch.zeros(1), mode="multiply")


def test_site_names_round_trip_store_layers() -> None:
    # One name per store layer index, and back: the store and the hooks agree on sites.
    assert [parse_site(site_name(v), 4).store_layer for v in range(-1, 4)] == list(range(-1, 4))
