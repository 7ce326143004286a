"""The core: layer tap, targets, scan accumulators, result values."""

from __future__ import annotations

import pytest
import torch
from modelstate import snapshot
from torch import nn

from cnnlens import LayerTap, Target, as_target, find_last_spatial_layer, resolve_layer, scan
from cnnlens.results import Explanation, jsonable


class Boom(nn.Module):
    """Raises in forward after its first layer ran."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)

    def forward(self, x):
        self.bn(self.conv(x))
        raise RuntimeError("boom inside the model")


# -- LayerTap ----------------------------------------------------------------


def test_tap_records_exact_outputs_and_gradients(tiny_gap_net):
    x = torch.rand(2, 3, 6, 6, requires_grad=True)
    with LayerTap(tiny_gap_net, ["features.1", "features.3"]) as tap:
        y = tap.run(x)
        a1, a3 = tap["features.1"], tap["features.3"]
        g = tap.grad(y[:, 1], "features.3")
    # independent computation of the same activations
    f = tiny_gap_net.features
    assert torch.equal(a1, f[1](f[0](x)))
    assert torch.equal(a3, f(x))
    # y = W · mean(A) + b  ⇒  ∂y_1/∂A = W[1] / (H·W) at every position
    expected = (tiny_gap_net.fc.weight[1] / 36).view(1, -1, 1, 1).expand_as(a3)
    assert torch.allclose(g, expected)


def test_tap_restores_flags_and_requires_grad_after_error(untouched):
    m = Boom()
    m.train()
    m.conv.weight.requires_grad_(False)  # a user's partial freeze must survive
    untouched(m)
    before = snapshot(m)
    with pytest.raises(RuntimeError, match="boom"):
        with LayerTap(m, ["conv"]) as tap:
            assert not m.training and not any(p.requires_grad for p in m.parameters())
            tap.run(torch.rand(1, 1, 5, 5))
    assert m.training and m.bn.training
    assert [p.requires_grad for p in m.parameters()] == before["requires_grad"] == [False, True, True, True]


def test_tap_eval_mode_keeps_batchnorm_buffers(untouched):
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(18, 2))
    m.train()
    untouched(m)
    with LayerTap(m, ["1"]) as tap:
        tap.run(torch.rand(4, 1, 5, 5))


def _bn_net(seed: int = 0) -> nn.Module:
    """conv → BN (affine) → tanh → conv → BN (no affine) → flatten → BN1d → linear, with random statistics."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3),
        nn.BatchNorm2d(4),
        nn.Tanh(),
        nn.Conv2d(4, 3, 3),
        nn.BatchNorm2d(3, affine=False),
        nn.Flatten(),
        nn.BatchNorm1d(12),
        nn.Linear(12, 5),
    )
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.2, 3)
            if m.affine:
                nn.init.uniform_(m.weight, -2, 2)
                nn.init.uniform_(m.bias, -1, 1)
    return net


def _grad_fns(t: torch.Tensor) -> set[str]:
    seen, stack, names = set(), [t.grad_fn], set()
    while stack:
        f = stack.pop()
        if f is None or f in seen:
            continue
        seen.add(f)
        names.add(type(f).__name__)
        stack.extend(g for g, _ in f.next_functions)
    return names


def test_tap_frozen_batchnorm_backward_equals_autograd(untouched):
    """In a frozen eval tap, batch norm's backward is the per-channel scale γ/√(σ²+ε): the outputs
    are bit-identical, first and second input derivatives equal plain autograd's."""
    net = untouched(_bn_net().eval())
    x = torch.randn(3, 2, 6, 6)
    ref = _bn_net().eval()
    xr = x.clone().requires_grad_(True)
    y_ref = ref(xr)
    (g_ref,) = torch.autograd.grad(y_ref[:, 1].sum(), xr, create_graph=True)
    (h_ref,) = torch.autograd.grad(g_ref.pow(2).sum(), xr)
    with LayerTap(net) as tap:
        xt = x.clone().requires_grad_(True)
        y = tap.run(xt)
        assert "_FrozenBatchNormFnBackward" in _grad_fns(y)
        assert "NativeBatchNormBackward0" not in _grad_fns(y)
        (g,) = torch.autograd.grad(y[:, 1].sum(), xt, create_graph=True)
        (h,) = torch.autograd.grad(g.pow(2).sum(), xt)
    assert torch.equal(y, y_ref.detach())
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-6)


def test_tap_keeps_autograd_batchnorm_when_it_trains_or_learns():
    """Training-mode batch norm (batch statistics) and unfrozen parameters keep autograd's own backward."""
    net = _bn_net(1).train()
    x = torch.randn(4, 2, 6, 6, requires_grad=True)
    with LayerTap(net, eval=False) as tap:
        names = _grad_fns(tap.run(x))
    assert "NativeBatchNormBackward0" in names and "_FrozenBatchNormFnBackward" not in names
    with LayerTap(net.eval(), freeze=False) as tap:
        y = tap.run(x)
        names = _grad_fns(y)
        y.sum().backward()
    assert "NativeBatchNormBackward0" in names and "_FrozenBatchNormFnBackward" not in names
    assert net[1].weight.grad is not None and net[1].weight.grad.abs().sum() > 0


def test_tap_edit_replaces_output_and_stop_after_skips_the_rest(tiny_gap_net):
    x = torch.rand(1, 3, 5, 5)
    zero_ch = lambda mod, inp, out: out * torch.tensor([0, 1, 1, 1, 1.0]).view(1, -1, 1, 1)
    with LayerTap(tiny_gap_net, ["features.3"], edits={"features.3": zero_ch}) as tap:
        y = tap.run(x)
        assert torch.all(tap["features.3"][:, 0] == 0)
    with torch.no_grad():
        feats = tiny_gap_net.features(x)
        feats[:, 0] = 0
        expected = tiny_gap_net.fc(feats.mean((2, 3)))
    assert torch.allclose(y, expected)
    with LayerTap(tiny_gap_net, stop_after="features.1") as tap:
        assert tap.run(x) is None and tap.stopped
        assert "features.1" in tap.outputs


def test_tap_errors_name_the_cause(tiny_gap_net):
    with pytest.raises(ValueError, match=r"did you mean .*'features.1'"):
        LayerTap(tiny_gap_net, ["features.l"])
    with pytest.raises(TypeError, match="nn.Module"):
        LayerTap(object(), [])
    with pytest.raises(ValueError, match="not a submodule"):
        LayerTap(tiny_gap_net, [nn.ReLU()])

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.relu = nn.ReLU()
            self.conv = nn.Conv2d(1, 1, 1)

        def forward(self, x):
            return self.relu(self.conv(self.relu(x)))

    m = Twice()
    snap = snapshot(m)
    with pytest.raises(ValueError, match="ran twice"):
        with LayerTap(m, ["relu"]) as tap:
            tap.run(torch.rand(1, 1, 2, 2))
    from modelstate import assert_unchanged

    assert_unchanged(m, snap)


def test_resolve_layer_accepts_suffix_and_module(tiny_gap_net):
    wrapped = nn.Sequential()
    wrapped.add_module("net", tiny_gap_net)
    assert resolve_layer(wrapped, "features.3")[0] == "net.features.3"
    assert resolve_layer(wrapped, tiny_gap_net.fc)[0] == "net.fc"


def test_find_last_spatial_layer(tiny_gap_net):
    assert find_last_spatial_layer(tiny_gap_net, torch.rand(1, 3, 6, 6)) == "features"
    flat = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    with pytest.raises(ValueError, match="no layer with a spatial"):
        find_last_spatial_layer(flat, torch.rand(1, 3, 2, 2))


# -- Targets -----------------------------------------------------------------

LOGITS = torch.tensor([[0.1, 3.0, 2.0, -1.0], [5.0, 4.0, 0.0, 1.0]])


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("predicted", [1, 0]),
        ("second", [2, 1]),
        (3, [3, 3]),
        ([2, 0], [2, 0]),
        (torch.tensor([0, 1]), [0, 1]),
        ("2", [2, 2]),
        ("cat", [1, 1]),
    ],
)
def test_targets_resolve(spec, expected):
    t = as_target(spec, class_names=["dog", "cat", "cow", "eel"])
    assert t.classes(LOGITS).tolist() == expected
    assert t.score(LOGITS, t.classes(LOGITS)).tolist() == [LOGITS[i, c].item() for i, c in enumerate(expected)]


def test_true_target_and_validation():
    assert as_target("true").classes(LOGITS, torch.tensor([3, 2])).tolist() == [3, 2]
    with pytest.raises(ValueError, match="needs labels"):
        as_target("true").classes(LOGITS)
    with pytest.raises(ValueError, match="out of range: the model has 4 classes"):
        as_target(7).classes(LOGITS)
    with pytest.raises(ValueError, match="3 per-sample targets for 2 inputs"):
        as_target([0, 1, 2]).classes(LOGITS)
    with pytest.raises(ValueError, match="unknown target 'zebra'"):
        as_target("zebra", class_names=["dog"])
    with pytest.raises(ValueError, match="matches several classes"):
        as_target("c", class_names=["cat", "cow"])
    with pytest.raises(ValueError, match="N×K"):
        as_target(0).classes(torch.zeros(2, 3, 4))


def test_channel_and_neuron_targets():
    act = torch.arange(2 * 3 * 2 * 2, dtype=torch.float).view(2, 3, 2, 2)
    assert Target.channel("l", 1).layer_score(act).tolist() == act[:, 1].mean((1, 2)).tolist()
    assert Target.neuron("l", 2, 1, 0).layer_score(act).tolist() == act[:, 2, 1, 0].tolist()
    with pytest.raises(ValueError, match="out of range"):
        Target.channel("l", 3).layer_score(act)


# -- Scan --------------------------------------------------------------------


class SumAcc:
    """Sums logits and counts samples; records seen indices."""

    layers = ("features.3",)

    def __init__(self):
        self.total = torch.zeros(3)
        self.act_total = torch.zeros(())
        self.seen: list[int] = []

    def update(self, b):
        self.total += b.logits.sum(0)
        self.act_total += b.acts["features.3"].sum()
        self.seen += b.index.tolist()

    def merge(self, other):
        out = SumAcc()
        out.total = self.total + other.total
        out.act_total = self.act_total + other.act_total
        out.seen = self.seen + other.seen
        return out

    def compute(self):
        return self.total, self.act_total, sorted(self.seen)


def test_scan_sees_every_sample_once_and_shards_merge(tiny_gap_net, monkeypatch):
    x = torch.rand(11, 3, 5, 5)
    y = torch.randint(0, 3, (11,))
    ds = torch.utils.data.TensorDataset(x, y)
    ((total, act_total, seen),) = scan(tiny_gap_net, ds, [SumAcc()], batch_size=4)
    with torch.no_grad():
        assert torch.allclose(total, tiny_gap_net(x).sum(0), atol=1e-5)
        assert torch.allclose(act_total, tiny_gap_net.features(x).sum(), rtol=1e-5)
    assert seen == list(range(11))
    # two shards merged equal one pass, with no sample dropped or repeated
    import sys

    sc = sys.modules["cnnlens.scanning"]  # the module (cnnlens.scan is the function)
    monkeypatch.setattr(sc, "_gather_merge", lambda accs, world: accs)
    parts = []
    for rank in range(2):
        monkeypatch.setattr(sc, "distributed_info", lambda r=rank: (r, 2))
        acc = SumAcc()
        sc.scan(tiny_gap_net, ds, [acc], batch_size=4)
        assert acc.seen == list(range(rank, 11, 2))
        parts.append(acc)
    merged = parts[0].merge(parts[1]).compute()
    assert merged[2] == list(range(11))
    assert torch.allclose(merged[0], total, atol=1e-5)


def test_scan_accepts_dataloader_with_custom_collate(tiny_gap_net):
    x = torch.rand(5, 3, 4, 4)
    ds = [(x[i], i % 3) for i in range(5)]
    dl = torch.utils.data.DataLoader(
        ds,
        batch_size=2,
        collate_fn=lambda items: (torch.stack([a for a, _ in items]), torch.tensor([b for _, b in items])),
    )
    ((_, _, seen),) = scan(tiny_gap_net, dl, [SumAcc()])
    assert seen == [0, 1, 2, 3, 4]


# -- Results -----------------------------------------------------------------


def test_explanation_normalized_never_nan_and_json(tmp_path):
    e = Explanation(
        maps=torch.stack([torch.zeros(3, 3), torch.arange(9.0).view(3, 3)]),
        method="m",
        classes=torch.tensor([1, 2]),
        settings={"eps": float("nan")},
    )
    n = e.normalized()
    assert torch.equal(n[0], torch.zeros(3, 3)) and n[1].max() == 1 and n[1].min() == 0
    d = e.to_dict()
    assert d["settings"]["eps"] is None and d["classes"] == [1, 2]
    e.save(tmp_path, "e")
    assert torch.equal(torch.load(tmp_path / "e.pt")["maps"], e.maps)
    assert jsonable(torch.zeros(100, 100)) == {"shape": [100, 100], "dtype": "float32"}
