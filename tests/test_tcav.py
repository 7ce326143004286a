"""TCAV (Kim et al. 2018): equal to Captum's on the same CAV; significant for a digit's own fragments on the
cluttered test bed and not for random concepts."""

from __future__ import annotations

import pytest
import torch

import cnnlens
from cnnlens.data import cluttered_digits
from cnnlens.inside import tcav
from cnnlens.inside.tcav import layer_gradients, tcav_scores, train_cav
from cnnlens.models.cluttered import fragment_canvases

LAYER = "net.features.7"  # the third stage's ReLU (16×16×32): below the pooled, linear head


@pytest.fixture(scope="module")
def model():
    return cnnlens.load_model("cluttered-digits-cnn")


def test_scores_by_hand():
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    sign, mag = tcav_scores(g, torch.tensor([[1.0, 0.5], [-1.0, 0.0]]))
    assert sign.tolist() == pytest.approx([2 / 3, 1 / 3]) and mag.tolist() == pytest.approx([1 / 6, 0.0])
    # the CAV points from the counter-examples to the concept, unit length; separable sets: accuracy 1
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(30, 5, dtype=torch.float64, generator=g) + torch.tensor([8.0, 0, 0, 0, 0], dtype=torch.float64)
    neg = torch.randn(30, 5, dtype=torch.float64, generator=g)
    for clf in ("sgd", "logistic"):
        cav, acc = train_cav(pos, neg, clf, seed=0)
        assert float(cav.norm()) == pytest.approx(1.0) and float(cav[0]) > 0.8 and acc == 1.0


def test_equals_captum_tcav_with_the_same_cav(model, tmp_path, untouched):
    """Captum's TCAV with a classifier that returns our CAV gives our sign-count and magnitude scores."""
    from captum.concept import TCAV as CaptumTCAV
    from captum.concept import Concept
    from captum.concept._utils.classifier import Classifier

    from cnnlens.tap import guarded

    untouched(model)
    ds = cluttered_digits("test")
    x = ds.x[ds.y == 5][:12]
    conc, pool = fragment_canvases(5, 12, seed=1), fragment_canvases(None, 40, seed=2)
    r = tcav(model, LAYER, concepts={"5": conc}, random=pool, inputs=x, target=5, runs=2)
    cav = r.cavs[0, 1].double()

    class Given(Classifier):
        def __init__(self):
            pass

        def train_and_eval(self, dataloader, **kw):
            return {"accs": torch.tensor(1.0)}

        def weights(self):
            return torch.stack([-cav, cav]).float()

        def classes(self):
            return [0, 1]

    with guarded(model) as m:
        t = CaptumTCAV(m, [LAYER], classifier=Given(), save_path=str(tmp_path / "cav"))
        c_rand, c_con = Concept(0, "random", [pool[:12]]), Concept(1, "five", [conc])
        out = t.interpret(x, experimental_sets=[[c_rand, c_con]], target=5)
    got = out["0-1"][LAYER]
    assert float(got["sign_count"][1]) == pytest.approx(float(r.scores[0, 1]), abs=1e-6)
    assert float(got["magnitude"][1]) == pytest.approx(float(r.magnitudes[0, 1]), rel=1e-5, abs=1e-6)
    # and by our own pieces, in float64
    sign, mag = tcav_scores(layer_gradients(model, LAYER, x, 5), cav[None])
    assert float(sign) == pytest.approx(float(got["sign_count"][1]), abs=1e-6)
    assert float(mag) == pytest.approx(float(got["magnitude"][1]), rel=1e-5, abs=1e-6)


def test_a_digits_fragments_are_significant_for_its_class_and_random_concepts_are_not(model, untouched):
    untouched(model)
    ds = cluttered_digits("test")
    x = ds.x[ds.y == 3][:40]
    concepts = {"3-fragments": fragment_canvases(3, 50, seed=1)}
    for s in range(4):
        concepts[f"random-{s}"] = fragment_canvases(None, 50, seed=10 + s)
    r = tcav(
        model, LAYER, concepts=concepts, random=fragment_canvases(None, 500, seed=3), inputs=x, target="3", runs=10
    )
    assert r.concepts[0] == "3-fragments" and r.target == 3
    assert bool(r.significant[0]) and float(r.p_values[0]) < 1e-3 and float(r.scores[0].mean()) > 0.9
    assert not r.significant[1:].any(), r
    assert float(r.random_scores.mean()) < 0.6
    assert "3-fragments: 0.95" in repr(r) and "n.s." in repr(r)
    assert [row["significant"] for row in r.rows()] == [True, False, False, False, False]
    fig = r.figure()
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any(t.startswith("*") for t in texts) and sum(t.startswith("n.s.") for t in texts) == 4
    # with Bonferroni (α / 5 = 0.01) the fragments stay significant (p < 1e-3 above)
    assert r.settings["level"] == 0.05 and float(r.p_values[0]) < 0.05 / 5


def test_bad_input_is_one_line(model):
    x = torch.rand(4, 1, 64, 64)
    with pytest.raises(ValueError, match="runs must be"):
        tcav(model, LAYER, concepts={"a": x}, random=x, inputs=x, target=1, runs=1)
    with pytest.raises(ValueError, match="not a class of the model"):
        tcav(model, LAYER, concepts={"a": x}, random=x, inputs=x, target="cat")
    with pytest.raises(ValueError, match="at least 4"):
        tcav(model, LAYER, concepts={"a": x}, random=x[:3], inputs=x, target=1)
    with pytest.raises(TypeError, match="N×C×H×W"):
        tcav(model, LAYER, concepts={"a": x[0]}, random=x, inputs=x, target=1)


def _write(folder, imgs):
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    for i, t in enumerate(imgs):
        Image.fromarray((t[0].numpy() * 255).round().astype(np.uint8)).save(folder / f"{i:03d}.png")


def test_cli_tcav_writes_the_report(tmp_path, run_cli):
    _write(tmp_path / "three", fragment_canvases(3, 20, seed=1))
    _write(tmp_path / "random", fragment_canvases(None, 60, seed=3))
    out = tmp_path / "out"
    code, cap = run_cli(
        "inside",
        "tcav",
        "--model",
        "cluttered-digits-cnn",
        "--layer",
        LAYER,
        "--concept",
        f"three={tmp_path / 'three'}",
        "--random",
        tmp_path / "random",
        "--target",
        "3",
        "--n",
        "20",
        "--runs",
        "3",
        "--out",
        out,
    )
    assert code == 0, cap.out + cap.err
    assert "TCAV for class 3" in cap.out and "three" in cap.out
    html = (out / "index.html").read_text()
    assert "Concepts: TCAV" in html and "Kim et al." in html and (out / "tcav.png").stat().st_size > 1000
    import json

    saved = json.loads((out / "tcav.json").read_text())
    assert saved["concepts"] == ["three"] and saved["target"] == 3 and saved["settings"]["runs"] == 3
    code, cap = run_cli(
        "inside",
        "tcav",
        "-m",
        "cluttered-digits-cnn",
        "--layer",
        LAYER,
        "--concept",
        "three",
        "--random",
        tmp_path / "random",
        "--target",
        "3",
        "--out",
        tmp_path / "o2",
    )
    assert code == 2 and "NAME=folder" in cap.err
