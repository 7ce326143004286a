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
    figs = [
        e.figure(x),
        attribution.saliency(model, x).figure(x),
        viz.image_grid(list(x)),
        cnnlens.evaluate(model, ds, batch_size=128).figure(),
        attacks.fgsm(model, x, eps=0.1).figure(x),
    ]
    assert matplotlib.get_backend() == backend
    assert plt.get_fignums() == []
    assert all(isinstance(f, matplotlib.figure.Figure) for f in figs)
    # shown by Jupyter also before pyplot is imported (its inline formatter is registered only then)
    assert all(f._repr_png_().startswith(b"\x89PNG\r\n\x1a\n") for f in figs)
    # the same size in pixels as before: figsize × dpi (method_figure: 3.2 in × 3.0 in per image, one row)
    w, h = _png_size(figs[0])
    assert (w, h) == (round(3.2 * 4 * figs[0].dpi), round(3.0 * figs[0].dpi))
    assert tuple(figs[0].get_size_inches()) == pytest.approx((12.8, 3.0))
    # a user's own pyplot figure still works afterwards
    fig = plt.figure()
    assert plt.get_fignums() == [fig.number]
    plt.close(fig)


def test_short_repr_and_html(digits):
    from cnnlens import attacks, attribution

    model, ds, x = digits
    e = attribution.gradcam(model, x)
    r = repr(e)
    assert len(r) < 600 and len(r.splitlines()) <= 10, r
    assert r.splitlines()[0].startswith("Explanation: gradcam of 4 image(s), 32×32")
    assert "maps: float32 4×32×32" in r and f"classes: int64 4 {e.classes.tolist()}" in r
    html = e._repr_html_()
    assert "<img" in html and "data:image/png;base64," in html and "maps" in html
    a = attacks.fgsm(model, x, eps=0.1)
    ra = repr(a)
    assert len(ra) < 800 and len(ra.splitlines()) <= 10, ra
    assert f"success {int(a.success.sum())}/4" in ra.splitlines()[0]
    assert "<img" in a._repr_html_()
    # a result whose figure needs no argument shows it; a nested result is described by its headline
    f = attribution.faithfulness(model, x, e, steps=4)
    assert repr(f).splitlines()[1] == "  deletion: Curve"
    ev_html = __import__("cnnlens").evaluate(model, ds, batch_size=128)._repr_html_()
    assert ev_html.count("<img") == 1 and "top-1" in ev_html


def test_dir_and_lazy_submodules():
    import subprocess
    import sys

    code = (
        "import cnnlens, sys; d = dir(cnnlens); "
        "assert 'annotations' not in d, d; "
        "assert {'load_model', 'load_images', 'evaluate', 'scan', 'LayerTap', 'Explanation', 'attribution', "
        "'inside', 'attacks', 'metrics'} <= set(d), d; "
        "assert 'torch' not in sys.modules; "
        "assert callable(cnnlens.metrics.pointing_game); "
        "assert {'robustness', 'from_torchattacks', 'robust'} <= set(dir(cnnlens.attacks)); "
        "assert cnnlens.attacks.robust.__name__ == 'cnnlens.attacks.robust'; "
        "assert set(cnnlens.__all__) <= set(d)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_no_pyplot_and_no_backend_switch_in_the_library():
    import re
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "src" / "cnnlens"
    bad = [
        f"{p.relative_to(src)}:{i}"
        for p in src.rglob("*.py")
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"matplotlib\.use\(|import matplotlib\.pyplot|from matplotlib import pyplot|\bplt\.", line)
    ]
    assert bad == [], "draw on matplotlib.figure.Figure (cnnlens.viz.subplots), never pyplot: " + ", ".join(bad)
