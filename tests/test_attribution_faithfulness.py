"""Deletion/insertion curves against a brute-force loop; the randomisation check on a deep copy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from attribution_nets import LinearNet

from cnnlens.attribution import deletion, faithfulness, gradcam, insertion, randomization_check, saliency
from cnnlens.attribution.faithfulness import parameter_layers, spearman
from cnnlens.results import Explanation

pytestmark = pytest.mark.usefixtures("one_thread")


def brute_curve(model, x, maps, cls, steps, base, kind):
    n, c, H, W = x.shape
    out = np.zeros((n, steps + 1))
    for i in range(n):
        order = sorted(range(H * W), key=lambda j: (-float(maps[i].reshape(-1)[j]), j))
        for s in range(steps + 1):
            k = round(s * H * W / steps)
            keep = torch.zeros(H * W, dtype=torch.bool)
            keep[order[:k]] = True
            keep = keep.view(H, W)
            if kind == "deletion":
                xi = torch.where(keep, base, x[i])
            else:
                xi = torch.where(keep, x[i], base)
            with torch.no_grad():
                out[i, s] = float(model(xi.unsqueeze(0)).softmax(1)[0, cls[i]])
    fr = np.linspace(0, 1, steps + 1)
    return out, np.trapezoid(out, fr, axis=1)


def test_curves_match_a_brute_force_loop(untouched):
    net = untouched(LinearNet(c=2, h=4, w=4, k=3))
    x = torch.rand(2, 2, 4, 4)
    maps = torch.randn(2, 4, 4)
    maps[0, 0, :2] = maps[0, 1, 0]  # ties keep the reading order
    for kind, fn in (("deletion", deletion), ("insertion", insertion)):
        cur = fn(net, x, maps, target=[0, 2], steps=8, baseline="grey", batch_size=3)
        scores, auc = brute_curve(net, x, maps, [0, 2], 8, torch.full((2, 4, 4), 0.5), kind)
        assert torch.allclose(cur.scores, torch.tensor(scores, dtype=torch.float32), atol=1e-6)
        assert torch.allclose(cur.auc, torch.tensor(auc, dtype=torch.float32), atol=1e-6)
        assert cur.fractions[0] == 0 and cur.fractions[-1] == 1 and cur.kind == kind


def test_a_true_attribution_beats_its_opposite(untouched):
    # two classes: p_c = σ(z_c − z_o), and pixel j moves z_c − z_o by (w_c − w_o)_j · x_j against a black
    # baseline, so deleting in that order lowers p_c fastest at every step (the top-k sums are largest)
    net = untouched(LinearNet(c=3, h=6, w=6, k=2, seed=3))
    x = torch.rand(3, 3, 6, 6)
    cls = net(x).argmax(1)
    w = torch.stack([net.weight_map(int(c)) - net.weight_map(1 - int(c)) for c in cls])
    true = Explanation(maps=(w * x).sum(1), method="exact", classes=cls)
    anti = Explanation(maps=-true.maps, method="reversed", classes=cls)
    f = faithfulness(net, x, true, baseline="black", steps=12)
    g = faithfulness(net, x, anti, baseline="black", steps=12)
    assert (f.deletion_auc < g.deletion_auc).all()
    assert (f.insertion_auc > g.insertion_auc).all()
    assert (f.deletion.scores[:, 1:] <= g.deletion.scores[:, 1:] + 1e-6).all()
    assert torch.equal(f.deletion.classes, cls)  # the explanation's classes are scored


def test_spearman():
    a = torch.rand(5, 5)
    assert spearman(a, a**3) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert np.isnan(spearman(a, torch.zeros(5, 5)))  # undefined for a constant map, reported as such


def test_randomization_works_on_a_copy_top_down(tiny_gap_net):
    x = torch.rand(2, 3, 6, 6)
    assert parameter_layers(tiny_gap_net, x) == ["features.0", "features.2", "fc"]
    rng = torch.get_rng_state()
    r = randomization_check(tiny_gap_net, x, "gradcam", layer="features.1", keep_maps=True)
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is left alone
    assert r.layers == ["fc", "features.2", "features.0"]
    assert r.correlations.shape == (3, 2)
    assert torch.allclose(r.original, gradcam(tiny_gap_net, x, layer="features.1").maps)
    # each step's map is the method on a model re-initialised from the top down to that layer
    for j in range(3):
        assert all(
            abs(float(r.correlations[j, i]) - spearman(r.maps[j, i], r.original[i])) < 1e-6
            or np.isnan(float(r.correlations[j, i]))
            for i in range(2)
        )
    assert (r.correlations[0] < 0.999).all()  # a new classifier changes Grad-CAM
    # seeded: the same numbers again
    r2 = randomization_check(tiny_gap_net, x, "gradcam", layer="features.1")
    assert torch.allclose(r.correlations, r2.correlations, equal_nan=True)


def test_a_method_blind_to_the_weights_stays_correlated(tiny_gap_net):
    def image_intensity(model, x, target="predicted", **kw):
        return Explanation(maps=x.mean(1), method="intensity", classes=torch.zeros(len(x), dtype=torch.long))

    x = torch.rand(2, 3, 6, 6)
    r = randomization_check(tiny_gap_net, x, image_intensity, stages=3)
    assert torch.allclose(r.correlations, torch.ones_like(r.correlations))
    r = randomization_check(tiny_gap_net, x, saliency, layers=["fc", "features.0"])
    assert r.layers == ["fc", "features.0"]
    with pytest.raises(ValueError, match="unknown method"):
        randomization_check(tiny_gap_net, x, "lime")
