"""Adapters over tiny real models of every family, saved and loaded through the real path.

What every family must do (sites, token kinds, positions, candidate ids, padding, writes) is the
shared suite in test_adapter_conformance.py; this file holds the family-specific checks.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from priorscope.engine.data.example import Example
from priorscope.engine.data.synth import SynthConfig, generate
from priorscope.engine.errors import ModelError, UnknownNameError
from priorscope.engine.models import (
    FAMILIES,
    TOKEN_IMAGE,
    TOKEN_PAD,
    TOKEN_SPECIAL,
    TOKEN_TEXT,
    load_model,
)
from priorscope.engine.models.generic import GenericAdapter
from priorscope.engine.models.hf import MC_INSTRUCTION, OPEN_INSTRUCTION, HFAdapter
from priorscope.engine.models.tiny import build_tiny

FAMILY_NAMES = sorted(FAMILIES)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {fam: build_tiny(fam, root / fam, seed=3) for fam in FAMILY_NAMES}


@pytest.fixture(scope="module")
def adapters(tiny_dirs: dict[str, Path]) -> dict[str, HFAdapter]:
    return {fam: load_model(str(path)) for fam, path in tiny_dirs.items()}


@pytest.fixture(scope="module")
def examples() -> list[Example]:
    # Five templates, so question lengths differ and left padding is exercised.
    return generate(SynthConfig(n=5, seed=11, size=56))


@pytest.fixture(scope="module")
def mc_example() -> Example:
    return generate(SynthConfig(n=1, seed=12, size=56, mc=True))[0]


def _last_logits(adapter: HFAdapter, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return adapter.model(**batch, use_cache=False).logits[:, -1].float()


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_load_round_trip_gives_identical_logits(
    family: str, adapters: dict[str, HFAdapter], examples: list[Example], tmp_path: Path
) -> None:
    adapter = adapters[family]
    assert adapter.family == family
    assert adapter.model.config.model_type == family
    batch = adapter.encode(examples, [ex.image for ex in examples])
    before = _last_logits(adapter, batch)
    adapter.model.save_pretrained(tmp_path)
    adapter.processor.save_pretrained(tmp_path)
    again = load_model(str(tmp_path))
    batch2 = again.encode(examples, [ex.image for ex in examples])
    for key in batch:
        assert torch.equal(batch[key], batch2[key]), key
    assert torch.equal(before, _last_logits(again, batch2))
    assert again.tokenizer.padding_side == "left"


def test_build_tiny_is_deterministic_and_seed_dependent(tmp_path: Path) -> None:
    a = load_model(str(build_tiny("qwen2_5_vl", tmp_path / "a", seed=5)))
    b = load_model(str(build_tiny("qwen2_5_vl", tmp_path / "b", seed=5)))
    c = load_model(str(build_tiny("qwen2_5_vl", tmp_path / "c", seed=6)))
    wa, wb, wc = (m.lm_head().weight for m in (a, b, c))
    assert torch.equal(wa, wb)
    assert not torch.equal(wa, wc)
    assert a.weights_sha256() == b.weights_sha256() != c.weights_sha256()


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_prompt_building(
    family: str, adapters: dict[str, HFAdapter], examples: list[Example], mc_example: Example
) -> None:
    adapter = adapters[family]
    image_token = adapter.processor.image_token
    open_prompt = adapter.build_prompt(examples[0])
    assert examples[0].question in open_prompt
    assert OPEN_INSTRUCTION in open_prompt and MC_INSTRUCTION not in open_prompt
    assert open_prompt.count(image_token) == 1
    assert image_token not in adapter.build_prompt(examples[0], with_image=False)
    mc_prompt = adapter.build_prompt(mc_example)
    for label, option in zip(mc_example.option_labels, mc_example.options, strict=True):
        assert f"{label}. {option}" in mc_prompt
    assert MC_INSTRUCTION in mc_prompt
    hinted = adapter.build_prompt(replace(examples[0], hint="look closely"))
    assert hinted.index("Hint: look closely") < hinted.index(examples[0].question)
    ending = "<|im_start|>assistant\n" if family.startswith("qwen") else "ASSISTANT:"
    assert open_prompt.endswith(ending)


def _expected_image_tokens(
    adapter: HFAdapter, batch: dict[str, torch.Tensor], size: tuple[int, int]
) -> list[int]:
    if "image_grid_thw" in batch:
        merge = adapter.processor.image_processor.merge_size
        return [int(g.prod()) // merge**2 for g in batch["image_grid_thw"]]
    data = adapter.processor._get_num_multimodal_tokens(image_sizes=[size])
    return [int(data["num_image_tokens"][0])] * batch["input_ids"].shape[0]


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_token_kinds_match_processor_expansion(
    family: str, adapters: dict[str, HFAdapter], examples: list[Example]
) -> None:
    adapter = adapters[family]
    batch = adapter.encode(examples, [ex.image for ex in examples])
    kinds = adapter.token_kinds(batch)
    assert kinds.shape == batch["input_ids"].shape and kinds.dtype == torch.int8
    expected = _expected_image_tokens(adapter, batch, examples[0].image.size[::-1])
    assert (kinds == TOKEN_IMAGE).sum(1).tolist() == expected
    assert torch.equal(kinds == TOKEN_PAD, batch["attention_mask"] == 0)
    assert (batch["attention_mask"] == 0).any(), "examples of unequal length must be padded"
    assert (kinds[:, -1] == TOKEN_SPECIAL).all()
    for row, ex in enumerate(examples):
        text_ids = batch["input_ids"][row][kinds[row] == TOKEN_TEXT]
        decoded = adapter.tokenizer.decode(text_ids).replace(" ", "")
        assert decoded == ex.question.replace(" ", "")
    if "mm_token_type_ids" in batch:
        assert torch.equal(batch["mm_token_type_ids"] == 1, kinds == TOKEN_IMAGE)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_token_kinds_without_image(
    family: str, adapters: dict[str, HFAdapter], examples: list[Example]
) -> None:
    adapter = adapters[family]
    batch = adapter.encode(examples, [None] * len(examples))
    kinds = adapter.token_kinds(batch)
    assert not (kinds == TOKEN_IMAGE).any()
    for row, ex in enumerate(examples):
        decoded = adapter.tokenizer.decode(batch["input_ids"][row][kinds[row] == TOKEN_TEXT])
        assert decoded.replace(" ", "") == ex.question.replace(" ", "")


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_generate_and_structure(
    family: str, adapters: dict[str, HFAdapter], examples: list[Example]
) -> None:
    adapter = adapters[family]
    batch = adapter.encode(examples[:2], [ex.image for ex in examples[:2]])
    texts = adapter.generate(batch, max_new_tokens=3)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    assert all(len(t.split()) <= 3 for t in texts)
    # Greedy generation's first token is the argmax of the answer-position logits.
    first = _last_logits(adapter, batch).argmax(-1)
    with torch.no_grad():
        out = adapter.model.generate(**batch, max_new_tokens=1, do_sample=False)
    assert torch.equal(out[:, -1], first)
    assert adapter.num_layers == len(adapter.decoder_layers()) == 2
    info = adapter.describe()
    assert info["family"] == family and info["num_layers"] == 2 and info["d_model"] == 64
    assert "{text}" in info["prompt_template"] and len(info["weights_sha256"]) == 64


def test_generic_fallback_loads_a_llava_checkpoint(
    tiny_dirs: dict[str, Path], examples: list[Example]
) -> None:
    adapter = GenericAdapter.load(
        str(tiny_dirs["llava"]),
        device="cpu",
        dtype=None,
        attn_implementation="sdpa",
        trust_remote_code=False,
        local_files_only=True,
    )
    reference = load_model(str(tiny_dirs["llava"]))
    images = [ex.image for ex in examples[:2]]
    torch.testing.assert_close(
        _last_logits(adapter, adapter.encode(examples[:2], images)),
        _last_logits(reference, reference.encode(examples[:2], images)),
    )


def test_generic_fallback_names_what_is_missing(adapters: dict[str, HFAdapter]) -> None:
    processor = adapters["llava"].processor
    with pytest.raises(ModelError, match="language_model"):
        GenericAdapter(torch.nn.Linear(2, 2), processor, "somewhere")
    holder = torch.nn.Module()
    holder.language_model = torch.nn.Module()  # type: ignore[assignment]
    with pytest.raises(ModelError, match=r"'\.layers'"):
        GenericAdapter(holder, processor, "somewhere")


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'organism'"):
        load_model("builtin:organsim")
    with pytest.raises(ModelError, match=r"config\.json"):
        load_model(str(tmp_path))
    with pytest.raises(ModelError, match="Hugging Face cache"):
        load_model("nobody-has/this-model-xyz")
    with pytest.raises(UnknownNameError, match="attention"):
        load_model(str(tmp_path), attn_implementation="flash")


def test_auto_attention_is_flash_attention_only_where_it_runs() -> None:
    import importlib.util

    from priorscope.engine.models.registry import resolve_attention

    has_flash = importlib.util.find_spec("flash_attn") is not None
    assert resolve_attention("auto", "cpu", "bfloat16") == "sdpa"
    assert resolve_attention("auto", "cuda", "float32") == "sdpa"  # flash-attn: fp16/bf16 only
    ampere = torch.cuda.is_available() and torch.cuda.get_device_capability(0)[0] >= 8
    want = "flash_attention_2" if has_flash and ampere else "sdpa"
    assert resolve_attention("auto", "cuda:0", "bfloat16") == want
    assert resolve_attention("auto", "cuda", torch.float16) == want
    assert resolve_attention("eager", "cuda", "bfloat16") == "eager"
    adapter = load_model("builtin:organism", attn_implementation="auto")
    assert adapter.describe()["attn_implementation"] == "sdpa"


def test_encode_rejects_mixed_image_batches(
    adapters: dict[str, HFAdapter], examples: list[Example]
) -> None:
    adapter = adapters["qwen2_5_vl"]
    with pytest.raises(ModelError, match="every row has an image or none"):
        adapter.encode(examples[:2], [examples[0].image, None])
    with pytest.raises(ModelError, match=r"one image \(or None\)"):
        adapter.encode(examples[:2], [examples[0].image])
