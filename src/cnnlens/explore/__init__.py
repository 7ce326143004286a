"""``cnnlens explore``: a local web app from a confusion cell to the explanation of each sample.

* :mod:`~cnnlens.explore.store` — the per-sample scan (:class:`SampleAccumulator`) and its
  SQLite :class:`Store`, keyed by the model and the dataset.
* :mod:`~cnnlens.explore.service` — :class:`Explorer`: the queries and drawings the pages
  show, and the one worker thread through which all model access runs.
* :mod:`~cnnlens.explore.app` — the Starlette routes (thin: validate, call the explorer, respond).
"""

from __future__ import annotations

from .store import SampleAccumulator, Store, build_store, dataset_hash, model_hash

__all__ = ["SampleAccumulator", "Store", "build_store", "dataset_hash", "model_hash"]
