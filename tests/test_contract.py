"""The no-side-effect contract, across every public method of every family.

Each method runs (1) on a small conv/BN/ReLU/max-pool/GAP/linear net left in
*training* mode, with one parameter frozen by the user and a ``.grad`` already
set, and (2) on the same net made to raise inside its forward. After both, the
model must be exactly as it was: weights and BatchNorm buffers bit-identical,
``training`` flags, ``requires_grad`` and ``.grad`` unchanged, and no hook left.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlens import attacks, attribution, inside
from cnnlens.evaluation import evaluate
from cnnlens.scan import scan
from modelstate import assert_unchanged, snapshot


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)

    def arm(self):
        """Make the BatchNorm raise mid-forward (after the first conv ran), without changing its type."""

        def boom(x):
            raise RuntimeError("boom inside the model")

        self.features[1].forward = boom

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def _model():
    m = Net()
    m.train()
    m.features[0].bias.requires_grad_(False)  # a user's partial freeze
    m.fc.weight.grad = torch.full_like(m.fc.weight, 0.25)  # a gradient the user has not consumed
    return m


X = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
DATA = torch.utils.data.TensorDataset(torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(2)),
                                      torch.tensor([0, 1, 2, 0, 1, 2]))

CALLS = {
    **{f"attribution.{name}": (lambda fn: lambda m: fn(m, X))(fn)
       for name, fn in attribution.METHODS.items() if name not in ("occlusion", "augmented_gradcam", "smoothgrad",
                                                                   "integrated_gradients")},
    "attribution.smoothgrad": lambda m: attribution.smoothgrad(m, X, n=3),
    "attribution.integrated_gradients": lambda m: attribution.integrated_gradients(m, X, steps=4),
    "attribution.occlusion": lambda m: attribution.occlusion(m, X, window=4, stride=4),
    "attribution.ablation_cam(layer=features.2)": lambda m: attribution.ablation_cam(m, X, layer="features.2"),
    "attribution.occlusion(incremental=False)": lambda m: attribution.occlusion(m, X, window=4, stride=4,
                                                                                incremental=False),
    "attribution.augmented_gradcam": lambda m: attribution.augmented_gradcam(m, X[:1], augmentations=3, steps=5),
    "attribution.faithfulness": lambda m: attribution.faithfulness(m, X, attribution.gradcam(m, X), steps=4),
    "attribution.randomization_check": lambda m: attribution.randomization_check(m, X, attribution.saliency),
    "inside.filters": lambda m: inside.filters(m, "features.0"),
    "inside.feature_maps": lambda m: inside.feature_maps(m, X, "features.2"),
    "inside.receptive_field": lambda m: inside.receptive_field(m, "features.5", input_size=8, channels=3),
    "inside.dataset_search": lambda m: inside.dataset_search(m, DATA, "features.5", k=2),
    "inside.neuron_stats": lambda m: inside.neuron_stats(m, DATA, "features.5"),
    "inside.influence": lambda m: inside.influence(m, X, "features.5"),
    "inside.maximize": lambda m: inside.maximize(m, inside.objectives.channel("features.5", 0), steps=3, size=8),
    "inside.deconvnet": lambda m: inside.deconvnet(m, X, "features.5", 0),
    "inside.deep_dream": lambda m: inside.deep_dream(m, X[:1], "features.5", octaves=1, steps=2),
    "attacks.fgsm": lambda m: attacks.fgsm(m, X, eps=2 / 255),
    "attacks.pgd": lambda m: attacks.pgd(m, X, eps=2 / 255, steps=2),
    "attacks.minimal_eps": lambda m: attacks.minimal_eps(m, X, max_iter=3),
    "attacks.robustness": lambda m: attacks.robustness(m, DATA, eps=[0, 2 / 255], steps=2),
    "evaluate": lambda m: evaluate(m, DATA, topk=(1, 2)),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_model_untouched_after_success_and_after_an_error_inside(name):
    call = CALLS[name]
    m = _model()
    before = snapshot(m)
    try:
        call(m)
    except ValueError as e:  # a method may refuse this architecture, but must say so and leave it alone
        pytest.fail(f"{name} refused the test net: {e}")
    assert_unchanged(m, before, name)

    m.arm()
    before = snapshot(m)
    if name == "inside.filters":  # reads the weights only, runs no forward
        call(m)
    else:
        with pytest.raises(RuntimeError, match="boom inside the model"):
            call(m)
    assert_unchanged(m, before, name + " (after an error)")


def test_one_scan_feeds_evaluation_search_and_statistics_with_the_results_of_separate_calls():
    m = _model()
    before = snapshot(m)
    from cnnlens.evaluation import EvaluationAccumulator
    from cnnlens.inside import SearchAccumulator, StatsAccumulator

    EDGES = torch.linspace(0, 4, 21)
    calls = []
    real_forward = Net.forward

    def counting(self, x):
        calls.append(len(x))
        return real_forward(self, x)

    accs = [EvaluationAccumulator(3, topk=(1, 2)), SearchAccumulator(m, "features.5", k=2, input_size=8),
            StatsAccumulator("features.5", EDGES, num_classes=3)]  # the search traces its receptive field here
    Net.forward = counting
    try:
        ev, se, st = scan(m, DATA, accs, batch_size=4)
        shared_forwards = sum(calls)
    finally:
        Net.forward = real_forward
    assert shared_forwards == len(DATA)  # one forward per sample feeds all three
    alone_ev = evaluate(m, DATA, topk=(1, 2))
    alone_se = inside.dataset_search(m, DATA, "features.5", k=2)
    alone_st = inside.neuron_stats(m, DATA, "features.5", edges=EDGES)
    assert torch.equal(ev.confusion, alone_ev.confusion)
    assert torch.equal(se.activations, alone_se.activations) and torch.equal(se.indices, alone_se.indices)
    assert torch.allclose(st.mean, alone_st.mean) and torch.allclose(st.sparsity, alone_st.sparsity)
    assert_unchanged(m, before)
