"""Channel influence: on a GAP + linear head, gradient × activation equals the exact ablation drop."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TinyGapNet
from inside_nets import pixel_chain_net

from cnnlens import LayerTap, Target
from cnnlens.inside import influence

pytestmark = pytest.mark.usefixtures("one_thread")


def test_gap_linear_influence_equals_ablation_exactly(untouched):
    model = untouched(TinyGapNet(c2=7, seed=3).eval())
    x = torch.rand(6, 3, 9, 9, generator=torch.Generator().manual_seed(0))
    inf = influence(model, x, "features.3", target=2, batch_size=4)
    with LayerTap(model, ["features.3"], detach=True) as tap, torch.no_grad():
        tap.run(x)
        A = tap["features.3"].double()
    w = model.fc.weight[2].detach().double()
    drop = (w.view(1, -1) * A.mean((2, 3))).mean(0)  # w_k^c · mean(A_k), averaged over the images
    assert torch.allclose(inf.ablation.double(), drop, atol=1e-5)
    assert torch.allclose(inf.taylor.double(), drop, atol=1e-5)
    assert torch.allclose(inf.gradient.double(), w / 81, atol=1e-7)  # ∂y/∂A_ij = w / (H·W)
    assert inf.ranking == inf.ablation_ranking == torch.argsort(drop, descending=True).tolist()
    assert inf.count == 6 and inf.channels == tuple(range(7))


def test_ablation_is_the_real_drop_on_a_deeper_net(untouched):
    """Independent check: zero channel k's conv filter and bias (ReLU(0) = 0) in a copy of the net."""
    model = untouched(pixel_chain_net(seed=4))
    x = torch.rand(5, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    inf = influence(model, x, "features.4", target="predicted", chunk=4)
    with torch.no_grad():
        classes = model(x).argmax(1)
        base = model(x).gather(1, classes[:, None]).squeeze(1)
        for k in range(6):
            m2 = copy.deepcopy(model)
            m2.net.features[3].weight[k] = 0
            m2.net.features[3].bias[k] = 0
            y2 = m2(x).gather(1, classes[:, None]).squeeze(1)
            assert torch.allclose(inf.ablation[k].float(), (base - y2).mean(), atol=1e-5), k
    # not a linear head here: the first-order estimate is an estimate
    assert not torch.allclose(inf.taylor, inf.ablation, atol=1e-4)


def test_dataset_equals_tensor_and_channel_targets(untouched):
    model = untouched(pixel_chain_net(seed=5))
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(9, 1, 16, 16, generator=g), torch.randint(0, 3, (9,), generator=g)
    ds = torch.utils.data.TensorDataset(x, y)
    a = influence(model, ds, "features.1", target="true", batch_size=4)
    b = influence(model, x, "features.1", target="true", y=y, batch_size=9)
    for f in ("gradient", "taylor", "ablation"):
        assert torch.allclose(getattr(a, f), getattr(b, f), atol=1e-5), f
    # a channel of a later layer as the target: zeroing a conv-1 channel changes conv-2 channel 0's mean
    t = Target.channel("features.4", 0)
    c = influence(model, x, "features.1", target=t)
    with torch.no_grad(), LayerTap(model, ["features.4"], detach=True) as tap:
        tap.run(x)
        base = tap["features.4"][:, 0].mean((1, 2))
    m2 = copy.deepcopy(model)  # (outside the tap: a deep copy would copy its hooks)
    with torch.no_grad():
        m2.net.features[0].weight[1] = 0
        m2.net.features[0].bias[1] = 0
    with torch.no_grad(), LayerTap(m2, ["features.4"], detach=True) as tap:
        tap.run(x)
        after = tap["features.4"][:, 0].mean((1, 2))
    assert torch.allclose(c.ablation[1].float(), (base - after).mean(), atol=1e-5)


def test_errors_leave_the_model_untouched(untouched):
    model = untouched(pixel_chain_net())
    x = torch.rand(2, 1, 16, 16)
    with pytest.raises(ValueError, match="labels"):
        influence(model, x, "features.4", target="true")
    with pytest.raises(ValueError, match="out of range"):
        influence(model, x, "features.4", target=7)
    with pytest.raises(ValueError, match="out of range"):
        influence(model, x, "features.4", channels=[0, 40])
    with pytest.raises(ValueError, match="spatial"):
        influence(model, x, "fc")


def test_ablate_top_zeroes_only_the_top_channels_by_taylor(untouched):
    """ablate_top=k: every channel ranked by a·∂y/∂a; only the k highest zeroed, with the same drops as zeroing all."""
    model = untouched(pixel_chain_net(seed=4))
    x = torch.rand(5, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    full = influence(model, x, "features.4", target="predicted", batch_size=2)
    seen = []
    part = influence(
        model,
        x,
        "features.4",
        target="predicted",
        ablate_top=3,
        batch_size=2,
        progress=lambda d, t: seen.append((d, t)),
    )
    top = full.ranking[:3]
    assert part.settings["ablated"] == top and part.ranking == full.ranking
    torch.testing.assert_close(part.taylor, full.taylor)
    for i, c in enumerate(part.channels):
        if c in top:
            assert torch.allclose(part.ablation[i], full.ablation[i], atol=1e-6)
        else:
            assert torch.isnan(part.ablation[i])
    assert part.ablation_ranking == [c for c in full.ablation_ranking if c in top]
    # progress counts image forwards with a known total: 5 (ranking) + 5 (gradients again) + 5 × 3 (zeroing)
    assert seen[-1] == (25, 25) and all(t == 25 for _, t in seen) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    with pytest.raises(ValueError, match="ablate_top=0"):
        influence(model, x, "features.4", ablate_top=0)
