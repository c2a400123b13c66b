"""The xarray view of a store: outputs and hidden states with named dimensions and coordinates."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from priorscope.engine.store import schema

if TYPE_CHECKING:
    from priorscope.engine.store.handle import Store


def store_to_xarray(store: Store, include_uncommitted: bool = False) -> Any:
    """Return an xarray Dataset of the visible examples' outputs (eager) and hidden (lazy).

    Coordinates: ``example`` (store index) with ``id``, ``benchmark``, ``category`` beside it,
    ``condition`` names, ``layer`` (store layers) with ``site`` names, ``reduction`` and
    ``candidate``.
    """
    import xarray as xr

    table = store.examples(include_uncommitted=include_uncommitted)
    coords: dict[str, Any] = {
        "example": table.rows,
        "id": ("example", np.asarray(table.ids, dtype=object)),
        "benchmark": ("example", np.asarray(table.benchmark, dtype=object)),
        "category": ("example", np.asarray(table.category, dtype=object)),
        "condition": store.condition_names,
    }
    data: dict[str, Any] = {}
    for name in ("raw", "answer", "extracted", "score"):
        values = store.outputs(name, include_uncommitted)
        data[name] = (schema.DIMS[f"outputs/{name}"], values)
    if not store.answers_only:
        cand = store.outputs("cand_logprob", include_uncommitted)
        data["cand_logprob"] = (schema.DIMS[schema.OUT_CAND_LOGPROB], cand)
        data["hidden"] = (schema.DIMS[schema.HIDDEN], store.hidden_dask(include_uncommitted))
        coords.update(
            layer=store.layers,
            site=("layer", store.sites),
            reduction=store.reductions,
            candidate=store.candidates or [""],
        )
    return xr.Dataset(data, coords=coords, attrs={"path": store.path})
