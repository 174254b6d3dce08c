"""Explaining a whole dataset: images streamed in batches through every method, maps and numbers
written to a resumable store (zarr arrays + a Parquet table), per-class aggregates at the end.

The engine behind ``cnnlens explain-dataset``: :func:`~cnnlens.dataset_explain.engine.explain_dataset`
runs it in this process (``engine="local"``) or on Ray Data (``engine="ray"``, the optional extra
``cnnlens[ray]``); :class:`~cnnlens.dataset_explain.store.Store` is the on-disk layout, readable with
plain zarr and pandas.
"""

from cnnlens.dataset_explain.engine import Job, Recipe, explain_dataset
from cnnlens.dataset_explain.store import Store

__all__ = ["Job", "Recipe", "Store", "explain_dataset"]
