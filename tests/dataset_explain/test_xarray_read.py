"""An explain-dataset store read without cnnlens: ``xarray.open_zarr`` for the maps (named dimensions
from zarr v3's ``dimension_names``), pandas for the table. cnnlens only writes the store here; every
read below is xarray, pandas or numpy, and must give back what the methods computed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from cnnlens.data.folders import read_data
from cnnlens.data.stream import stream_batches
from cnnlens.dataset_explain import explain_dataset
from tests.dataset_explain.test_store import METHODS, setup


def test_xarray_and_pandas_read_the_store_as_written(tmp_path: Path) -> None:
    data, job, built = setup(tmp_path)
    model, methods = built
    store = tmp_path / "store"
    explain_dataset(job, store, built=built)

    # --- reading, with xarray and pandas only
    maps = xr.open_zarr(store / "maps.zarr", consolidated=False)
    means = xr.open_zarr(store / "maps.zarr", group="class_mean", consolidated=False)
    table = pd.read_parquet(store / "table.parquet").set_index("index")
    assert set(maps.data_vars) == set(METHODS)
    assert dict(maps.sizes) == {"image": len(table), "y": 32, "x": 32}
    assert list(maps.attrs["methods"]) == list(METHODS)
    assert list(means.attrs["class_names"]) == ["circle", "triangle"]
    labelled = maps.assign_coords(image=table.index.to_numpy(), label=("image", table["label"].to_numpy()))
    for m in METHODS:
        stored = labelled[m].astype("float64")
        # the table's numbers are the maps' own
        max_abs = abs(stored).max(dim=("y", "x")).to_numpy()
        np.testing.assert_allclose(table[f"{m}_max_abs"].to_numpy(), max_abs, rtol=1e-3)
        # the class means are the means of the stored maps per label
        grouped = stored.groupby("label").mean("image")
        np.testing.assert_allclose(means[m].to_numpy(), grouped.to_numpy(), rtol=1e-5, atol=1e-12)
        np.testing.assert_array_equal(means["count"].to_numpy(), table.groupby("label").size().to_numpy())

    # --- what xarray gave back is what the methods computed (stored as float16)
    samples = read_data(data / "manifest.csv").samples
    for batch in stream_batches(samples, model.preprocessing, batch_size=5):
        rows = batch.indices.numpy()
        for method in methods:
            direct = method.explain(batch.inputs).attributions.numpy().astype(np.float16)
            np.testing.assert_array_equal(maps[method.name].isel(image=rows).to_numpy(), direct)
