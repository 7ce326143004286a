"""Notebook-native results: figures never touch the user's matplotlib backend or pyplot's registry."""

from __future__ import annotations

import io

import matplotlib
import matplotlib.pyplot as plt
import pytest
import torch
from PIL import Image


@pytest.fixture(scope="module")
def digits():
    import cnnlens

    model = cnnlens.load_model("digits-cnn")
    ds = cnnlens.as_dataset("digits", model)
    x = torch.stack([ds[i][0] for i in range(4)])
    return model, ds, x


def _png_size(fig) -> tuple[int, int]:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return Image.open(io.BytesIO(buf.getvalue())).size


def test_figures_leave_backend_and_pyplot_alone(digits, monkeypatch, untouched):
    import cnnlens
    from cnnlens import attacks, attribution, viz

    model, ds, x = digits
    untouched(model)
    plt.close("all")
    backend = matplotlib.get_backend()

    def refuse(*a, **k):
        raise AssertionError("cnnlens called matplotlib.use")

    monkeypatch.setattr(matplotlib, "use", refuse)
    e = attribution.gradcam(model, x)
    figs = [e.figure(x), attribution.saliency(model, x).figure(x), viz.image_grid(list(x)),
            cnnlens.evaluate(model, ds, batch_size=128).figure(),
            attacks.fgsm(model, x, eps=0.1).figure(x)]
    assert matplotlib.get_backend() == backend
    assert plt.get_fignums() == []
    assert all(isinstance(f, matplotlib.figure.Figure) for f in figs)
    # the same size in pixels as before: figsize × dpi (method_figure: 3.2 in × 3.0 in per image, one row)
    w, h = _png_size(figs[0])
    assert (w, h) == (round(3.2 * 4 * figs[0].dpi), round(3.0 * figs[0].dpi))
    assert tuple(figs[0].get_size_inches()) == pytest.approx((12.8, 3.0))
    # a user's own pyplot figure still works afterwards
    fig = plt.figure()
    assert plt.get_fignums() == [fig.number]
    plt.close(fig)
