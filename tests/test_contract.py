"""The no-side-effect contract, across every public method of every family.

Each method runs (1) on a small conv/BN/ReLU/max-pool/GAP/linear net left in
*training* mode, with one parameter frozen by the user and a ``.grad`` already
set, and (2) on the same net made to raise inside its forward. After both, the
model must be exactly as it was: weights and BatchNorm buffers bit-identical,
``training`` flags, ``requires_grad`` and ``.grad`` unchanged, and no hook left.
Every method also runs on the net's in-place twin, under the caller's
``torch.no_grad()`` and ``torch.inference_mode()``, and in bfloat16 — and must
neither refuse nor change the model in any of them.
"""

from __future__ import annotations

import tempfile

import pytest
import torch
from modelstate import assert_unchanged, snapshot
from torch import nn

from cnnlens import attacks, attribution, inside, metrics
from cnnlens.evaluation import evaluate
from cnnlens.explore import build_store
from cnnlens.metrics.benchmark import benchmark
from cnnlens.scanning import scan


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 6, 3, padding=1),
            nn.ReLU(),
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
DATA = torch.utils.data.TensorDataset(
    torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(2)), torch.tensor([0, 1, 2, 0, 1, 2])
)


def _in_temp_dir(fn):
    with tempfile.TemporaryDirectory(prefix="cnnlens-contract-") as d:
        return fn(d)


CALLS = {
    **{
        f"attribution.{name}": (lambda fn: lambda m: fn(m, X))(fn)
        for name, fn in attribution.METHODS.items()
        if name not in ("occlusion", "augmented_gradcam", "smoothgrad", "integrated_gradients")
    },
    "attribution.smoothgrad": lambda m: attribution.smoothgrad(m, X, n=3),
    "attribution.integrated_gradients": lambda m: attribution.integrated_gradients(m, X, steps=4),
    "attribution.occlusion": lambda m: attribution.occlusion(m, X, window=4, stride=4),
    "attribution.ablation_cam(layer=features.2)": lambda m: attribution.ablation_cam(m, X, layer="features.2"),
    "attribution.occlusion(incremental=False)": lambda m: attribution.occlusion(
        m, X, window=4, stride=4, incremental=False
    ),
    "attribution.augmented_gradcam": lambda m: attribution.augmented_gradcam(m, X[:1], augmentations=3, steps=5),
    "attribution.layercam(fused)": lambda m: attribution.layercam(m, X, layer=["features.2", "features.5"]),
    "attribution.captum(DeepLift)": lambda m: attribution.captum(m, X, "DeepLift"),
    "attribution.captum(FeatureAblation)": lambda m: attribution.captum(m, X, "FeatureAblation", blocks=2),
    "attribution.captum(LRP)": lambda m: attribution.captum(m, X, "LRP"),
    "attacks.from_torchattacks(PGD)": lambda m: attacks.from_torchattacks("PGD", m, X, eps=2 / 255, steps=2),
    "attribution.faithfulness": lambda m: attribution.faithfulness(m, X, attribution.gradcam(m, X), steps=4),
    "attribution.randomization_check": lambda m: attribution.randomization_check(m, X, attribution.saliency),
    "inside.filters": lambda m: inside.filters(m, "features.0"),
    "inside.feature_maps": lambda m: inside.feature_maps(m, X, "features.2"),
    "inside.receptive_field": lambda m: inside.receptive_field(m, "features.5", input_size=8, channels=3),
    "inside.dataset_search": lambda m: inside.dataset_search(m, DATA, "features.5", k=2),
    "inside.neuron_stats": lambda m: inside.neuron_stats(m, DATA, "features.5"),
    "inside.influence": lambda m: inside.influence(m, X, "features.5"),
    "inside.maximize": lambda m: inside.maximize(m, inside.objectives.channel("features.5", 0), steps=3, size=8),
    "inside.maximize(direction+diversity)": lambda m: inside.maximize(
        m,
        inside.objectives.direction("features.5", torch.ones(6)) + inside.objectives.diversity("features.5"),
        batch=2,
        steps=3,
        size=8,
    ),
    "inside.deconvnet": lambda m: inside.deconvnet(m, X, "features.5", 0),
    "inside.deep_dream": lambda m: inside.deep_dream(m, X[:1], "features.5", octaves=1, steps=2),
    "inside.microscope_scan": lambda m: inside.microscope_scan(m, DATA, ["features.2", "features.5"], k=2),
    "inside.layer_edges": lambda m: inside.layer_edges(m, DATA, ["features.2", "features.5"]),
    "inside.maximize_channels": lambda m: inside.maximize_channels(
        m, "features.5", [0, 1], steps=2, size=8, robust=True, diversity=2
    ),
    # twice into one cache folder: rendered and stored, then read back
    "inside.maximize_channels(cache)": lambda m: _in_temp_dir(
        lambda d: [inside.maximize_channels(m, "features.5", [0, 1], steps=2, size=8, cache=d) for _ in range(2)][-1]
    ),
    "inside.building_blocks": lambda m: inside.building_blocks(m, X, "features.5"),
    "inside.class_influence": lambda m: inside.class_influence(m, X, "features.5"),
    "inside.top_maps": lambda m: inside.top_maps(
        m, DATA, inside.microscope_scan(m, DATA, ["features.5"], k=2)["features.5"]
    ),
    "inside.unit_projections": lambda m: inside.unit_projections(
        m, X, "features.5", 1, torch.tensor([[0, 1], [2, 3]]), inside.receptive_field(m, "features.5", input_size=8)
    ),
    "attacks.fgsm": lambda m: attacks.fgsm(m, X, eps=2 / 255),
    "attacks.pgd": lambda m: attacks.pgd(m, X, eps=2 / 255, steps=2),
    "attacks.minimal_eps": lambda m: attacks.minimal_eps(m, X, max_iter=3, steps=2),
    "attacks.robustness": lambda m: attacks.robustness(m, DATA, eps=[0, 2 / 255], steps=2),
    "attacks.robustness(deepfool,cw)": lambda m: attacks.robustness(
        m, DATA, eps=[0, 0.5], attacks=["deepfool", "cw"], deepfool_steps=2, cw_steps=2
    ),
    "attacks.deepfool": lambda m: attacks.deepfool(m, X, steps=3),
    "attacks.cw": lambda m: attacks.cw(m, X, steps=3),
    "evaluate": lambda m: evaluate(m, DATA, topk=(1, 2)),
    "explore.build_store": lambda m: _in_temp_dir(lambda d: build_store(m, DATA, d)),
    "metrics.faithfulness_correlation": lambda m: metrics.faithfulness_correlation(
        m, X, torch.rand(2, 8, 8), runs=3, subset_size=10
    ),
    "metrics.road": lambda m: metrics.road(m, X, torch.rand(2, 8, 8), percentages=(20, 60)),
    "metrics.max_sensitivity": lambda m: metrics.max_sensitivity(m, X, "saliency", samples=2),
    "metrics.model_parameter_randomisation": lambda m: metrics.model_parameter_randomisation(m, X, "saliency"),
    "metrics.sanity_check": lambda m: metrics.sanity_check(m, X, ["saliency", "gradcam"], layers=["fc", "features.4"]),
    "metrics.benchmark": lambda m: benchmark(
        m,
        X,
        boxes=torch.tensor([[0, 0, 4, 4], [2, 2, 8, 8]]),
        methods=["saliency", "gradcam"],
        metric_settings={
            "faithfulness_correlation": {"runs": 3},
            "road_morf": {"percentages": (50,)},
            "road_lerf": {"percentages": (50,)},
            "max_sensitivity": {"samples": 2},
        },
    ),
}


VARIANTS = ("plain", "inplace", "no_grad", "inference_mode", "bfloat16")


def _variant(variant: str, m: Net) -> Net:
    if variant == "inplace":  # every ReLU in place, as torchvision writes them
        for mod in m.modules():
            if isinstance(mod, nn.ReLU):
                mod.inplace = True
    if variant == "bfloat16":
        m.to(torch.bfloat16)
        m.fc.weight.grad = m.fc.weight.grad.to(torch.bfloat16)
    return m


def _call(variant: str, call, m):
    if variant == "no_grad":
        with torch.no_grad():
            return call(m)
    if variant == "inference_mode":
        with torch.inference_mode():
            return call(m)
    return call(m)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", sorted(CALLS))
def test_model_untouched_after_success_and_after_an_error_inside(name, variant):
    call = CALLS[name]
    m = _variant(variant, _model())
    before = snapshot(m)
    try:
        _call(variant, call, m)
    except ValueError as e:  # a method may refuse this architecture, but must say so and leave it alone
        pytest.fail(f"{name} refused the test net ({variant}): {e}")
    assert_unchanged(m, before, f"{name} ({variant})")

    m.arm()
    before = snapshot(m)
    if name == "inside.filters":  # reads the weights only, runs no forward
        _call(variant, call, m)
    else:
        with pytest.raises(RuntimeError, match="boom inside the model"):
            _call(variant, call, m)
    assert_unchanged(m, before, f"{name} ({variant}, after an error)")


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

    accs = [
        EvaluationAccumulator(3, topk=(1, 2)),
        SearchAccumulator(m, "features.5", k=2, input_size=8),
        StatsAccumulator("features.5", EDGES, num_classes=3),
    ]  # the search traces its receptive field here
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
