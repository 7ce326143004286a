"""Lucent's objectives in cnnlens: neuron at (x, y), directions, channel interactions, diversity — values by hand
and against Lucent's own objective functions, and each goes up under maximize."""

from __future__ import annotations

import pytest
import torch
from inside_nets import pixel_chain_net

from cnnlens import LayerTap
from cnnlens.inside import maximize, objectives
from cnnlens.inside.maximize import _Ctx

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = dict(steps=40, lr=0.1, param="pixel")


def _ctx(b=3, k=4, h=5, w=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return _Ctx(torch.rand(b, 1, 8, 8, generator=g), {"l": torch.randn(b, k, h, w, generator=g)}, None)


def test_values_by_hand():
    c = _ctx()
    a = c.acts["l"]
    # a neuron at x (column) = 1, y (row) = 3, as Lucent names it
    assert torch.equal(objectives.neuron("l", 2, x=1, y=3)(c), a[:, 2, 3, 1])
    assert torch.equal(objectives.neuron("l", 2, x=1, y=3)(c), objectives.neuron("l", 2, 3, 1)(c))
    # a direction is linear in the activations: a basis vector is a channel, a vector a weighted sum of channels
    e2 = torch.tensor([0.0, 0.0, 1.0, 0.0])
    assert torch.allclose(objectives.direction("l", e2)(c), objectives.channel("l", 2)(c), atol=1e-6)
    v = torch.tensor([0.5, -1.0, 2.0, 0.25])
    by_hand = sum(float(v[k]) * a[:, k].mean((1, 2)) for k in range(4))
    assert torch.allclose(objectives.direction("l", v)(c), by_hand, atol=1e-6)
    # channel interaction is the objective algebra: the sum and the difference of two channels
    plus = objectives.channel("l", 1) + objectives.channel("l", 3)
    minus = objectives.channel("l", 1) - objectives.channel("l", 3)
    assert torch.allclose(plus(c), objectives.direction("l", [0, 1, 0, 1])(c), atol=1e-6)
    assert torch.allclose(minus(c), a[:, 1].mean((1, 2)) - a[:, 3].mean((1, 2)), atol=1e-6)
    # one direction per image
    vs = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    per = objectives.direction("l", vs)
    assert per.batch == 3
    assert torch.allclose(
        per(c), torch.stack([(a[b] * vs[b].view(4, 1, 1)).sum(0).mean() for b in range(3)]), atol=1e-6
    )
    # at one position
    dn = objectives.direction_neuron("l", v, 2, 4)
    assert torch.allclose(dn(c), (a[:, :, 2, 4] * v).sum(1), atol=1e-6)
    # diversity: −(1/B) Σ_{b'≠b} ⟨Ĝ_b, Ĝ_b'⟩ with Ĝ the Frobenius-normalised Gram matrices
    f = a.reshape(3, 4, -1)
    G = [f[b] @ f[b].T for b in range(3)]
    G = [g / g.norm() for g in G]
    want = torch.stack([-sum((G[b] * G[o]).sum() for o in range(3) if o != b) / 3 for b in range(3)])
    assert torch.allclose(objectives.diversity("l")(c), want, atol=1e-6)
    with pytest.raises(ValueError, match="batch=2 or more"):
        objectives.diversity("l")(_ctx(b=1))
    with pytest.raises(ValueError, match="3 values; layer l has 4 channels"):
        objectives.direction("l", [1.0, 2.0, 3.0])(c)
    with pytest.raises(ValueError, match="not both"):
        objectives.neuron("l", 0, 1, 2, x=1, y=2)


def test_the_same_values_as_lucent():
    from lucent.optvis import objectives as lo  # torch-lucent is in the test extra

    c = _ctx(seed=4)
    a = c.acts["l"]
    acts = lambda name: a  # noqa: E731  (Lucent's objectives read a layer through a callable)
    v = torch.randn(4, generator=torch.Generator().manual_seed(2))
    # Lucent's objectives are losses (minimised): each is −(cnnlens value), averaged or summed over the batch
    assert torch.allclose(lo.diversity("l")(acts), objectives.diversity("l")(c).sum(), atol=1e-5)
    assert torch.allclose(lo.direction("l", v)(acts), -objectives.direction("l", v, cosine=True)(c).mean(), atol=1e-6)
    assert torch.allclose(lo.neuron("l", 2, x=1, y=3)(acts), -objectives.neuron("l", 2, x=1, y=3)(c).mean())
    assert torch.allclose(
        lo.direction_neuron("l", v, x=4, y=2)(acts),
        -objectives.direction_neuron("l", v, 2, 4, cosine=True)(c).mean(),
        atol=1e-6,
    )


def _gram_similarity(model, images, layer="features.4"):
    with LayerTap(model, [layer], detach=True) as tap, torch.no_grad():
        tap.run(images)
        f = tap[layer].flatten(2)
    g = f @ f.transpose(1, 2)
    g = g / g.flatten(1).norm(dim=1).view(-1, 1, 1)
    s = torch.einsum("bij,cij->bc", g, g)
    return float((s.sum() - s.diagonal().sum()) / (len(g) * (len(g) - 1)))


def test_each_objective_goes_up_under_maximize(untouched):
    model = untouched(pixel_chain_net())
    for J in (
        objectives.neuron("features.4", 2, x=1, y=2),
        objectives.direction("features.4", torch.tensor([1.0, 0.0, -1.0, 0.5, 0.0, 0.0])),
        objectives.direction_neuron("features.4", torch.tensor([0.0, 1.0, 1.0, 0.0, 0.0, 0.0])),
        objectives.channel("features.4", 2) - objectives.channel("features.4", 4),
    ):
        v = maximize(model, J, **FAST)
        assert float(v.final) > float(v.start) + 0.5, J.name
    # diversity: the images of a batch end up further apart than without it, the channel still high
    same = maximize(model, objectives.channel("features.4", 2), batch=3, **FAST)
    div = maximize(model, objectives.channel("features.4", 2) + 5 * objectives.diversity("features.4"), batch=3, **FAST)
    assert _gram_similarity(model, div.images) < _gram_similarity(model, same.images) - 0.01
    alone = maximize(model, objectives.diversity("features.4"), batch=3, **FAST)
    assert float(alone.final.sum()) > float(alone.start.sum())
