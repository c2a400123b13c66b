"""Results stores (probes, patch, lens write through them) and group declarations."""

from __future__ import annotations

import numpy as np
import pytest

from priorscope.engine.errors import ConfigMismatchError, StoreError, UnknownNameError, UsageError
from priorscope.engine.store import (
    ArraySpec,
    GroupSpec,
    declared_group,
    declared_groups,
    open_results,
    register_group,
)

SPEC = GroupSpec(
    name="test_probe_results",
    owner="tests",
    arrays=(
        ArraySpec("accuracy", ("target", "layer", "fold"), "float32"),
        ArraySpec("labels", ("target",), "str", required=False),
    ),
    description="Accuracy of a probe per target, layer and fold.",
    store_kind="probes",
)


def test_create_write_reopen_and_xarray(tmp_path) -> None:
    path = tmp_path / "probes.zarr"
    rs = open_results(path, SPEC, attrs={"config": {"folds": 3}})
    rs.require_array("accuracy", (2, 4, 3), "float32", (1, 4, 3), fill_value=np.nan)
    values = np.random.default_rng(0).random((2, 4, 3)).astype(np.float32)
    rs.write("accuracy", (slice(None), slice(None), slice(None)), values)
    rs.set_coords("target", ["gold", "prior"])
    rs.update_attrs({"note": "ok"})

    again = open_results(path, SPEC, mode="r", attrs={"config": {"folds": 3}})
    assert np.array_equal(again.read("accuracy"), values)
    assert np.array_equal(again.read("accuracy", (1, 2)), values[1, 2])
    ds = again.to_xarray()
    assert ds["accuracy"].dims == ("target", "layer", "fold")
    assert ds["target"].values.tolist() == ["gold", "prior"]
    np.testing.assert_array_equal(ds["accuracy"].sel(target="prior").values, values[1])
    assert again.attrs["note"] == "ok" and again.attrs["store_kind"] == "probes"
    # A resume with the same shape is accepted; another shape is refused.
    resumed = open_results(path, SPEC, attrs={"config": {"folds": 3}})
    resumed.require_array("accuracy", (2, 4, 3), "float32", (1, 4, 3))
    with pytest.raises(StoreError, match=r"shape \(2, 5, 3\)"):
        resumed.require_array("accuracy", (2, 5, 3), "float32", (1, 5, 3))
    with pytest.raises(UsageError, match="mode='r'"):
        again.write("accuracy", 0, values[0])


def test_resume_with_other_config_or_kind_is_refused(tmp_path) -> None:
    path = tmp_path / "probes.zarr"
    open_results(path, SPEC, attrs={"config": {"folds": 3}})
    with pytest.raises(ConfigMismatchError, match=r"folds: store has 3, this run asks for 5"):
        open_results(path, SPEC, attrs={"config": {"folds": 5}})
    other = GroupSpec("test_patch_results", "tests", SPEC.arrays, "patch", store_kind="patch")
    with pytest.raises(StoreError, match="Expected a patch results store"):
        open_results(path, other)
    with pytest.raises(StoreError, match="no such path"):
        open_results(tmp_path / "missing.zarr", SPEC, mode="r")


def test_arrays_are_checked_against_the_declaration(tmp_path) -> None:
    rs = open_results(tmp_path / "p.zarr", SPEC)
    with pytest.raises(UnknownNameError, match="Did you mean 'accuracy'"):
        rs.require_array("acuracy", (2,), "float32", (2,))
    with pytest.raises(UsageError, match="Expected 3 dimensions"):
        rs.require_array("accuracy", (2, 4), "float32", (2, 4))
    with pytest.raises(UsageError, match="Expected dtype float32"):
        rs.require_array("accuracy", (2, 4, 3), "int64", (2, 4, 3))


def test_declarations_are_registered_once_and_discoverable() -> None:
    register_group(SPEC)
    assert declared_group(SPEC.name) is SPEC or declared_group(SPEC.name) == SPEC
    assert SPEC in declared_groups("probes")
    capture = {g.name for g in declared_groups("capture")}
    # grad: optional margin gradients (capture --grad)
    assert capture == {"examples", "outputs", "commit", "activations", "fullseq", "grad"}
    clash = GroupSpec(SPEC.name, "someone else", SPEC.arrays[:1], "other", store_kind="probes")
    with pytest.raises(UsageError, match="one declaration"):
        register_group(clash)
    with pytest.raises(UnknownNameError, match="Did you mean 'probes'"):
        declared_groups("probe")
    assert GroupSpec.from_json(SPEC.to_json()) == SPEC


def test_results_beside_a_store_are_found_without_their_writer(tmp_path) -> None:
    from priorscope.engine.store import find_results, results_info, results_path

    store = tmp_path / "run.zarr"
    assert results_path(store, "probes") == str(tmp_path / "run.probes.zarr")
    assert results_path("s3://b/run.zarr/", "lens") == "s3://b/run.lens.zarr"
    assert find_results(store) == {}
    open_results(results_path(store, "probes"), SPEC, attrs={"config": {"folds": 3}})
    found = find_results(store)
    assert list(found) == ["probes"] and found["probes"]["group"] == SPEC
    assert results_info(store) is None  # no store there at all
