"""What the explorer's in-process tests share: a slice of the digits test split and a served Explorer."""

from __future__ import annotations

import contextlib

import torch
from modelstate import assert_unchanged, snapshot

import cnnlens
from cnnlens.explore.app import make_app
from cnnlens.explore.service import Explorer


def digits_every(step: int) -> torch.utils.data.TensorDataset:
    """Every ``step``-th sample of the digits test split."""
    from cnnlens.models.digits import digits_split

    ds = digits_split("test")
    xs, ys = zip(*(ds[i] for i in range(0, len(ds), step)), strict=True)
    return torch.utils.data.TensorDataset(torch.stack(xs), torch.tensor(ys))


@contextlib.contextmanager
def serve_digits(cache, data, model_name="digits-cnn", **kw):
    """Yield (TestClient, Explorer, model) for ``model_name`` (digits-cnn) on ``data``, scanned; on exit close it
    and check the model is unchanged."""
    from starlette.testclient import TestClient

    model = cnnlens.load_model(model_name)
    before = snapshot(model)
    ex = Explorer(model, data, cache, **kw)
    ex.start_scan()
    ex.wait_ready()
    try:
        with TestClient(make_app(ex)) as client:
            yield client, ex, model
    finally:
        ex.close()
    assert_unchanged(model, before, "the model after every request")
