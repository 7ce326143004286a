"""What every attribution method promises: no side effects (also on error), batch = per-sample,
per-sample targets, low-precision inputs, targets checked before any forward."""

from __future__ import annotations

import inspect
import json

import pytest
import torch
from attribution_nets import BoomGapNet
from conftest import TinyGapNet
from torch import nn

from cnnlens.attribution import METHODS, REGISTRY

pytestmark = pytest.mark.usefixtures("one_thread")

#: small settings so every method runs in milliseconds on the tiny nets
FAST = {
    "smoothgrad": {"n": 3, "sigma": 0.2},
    "integrated_gradients": {"steps": 4},
    "occlusion": {"window": 3, "stride": 2},
    "augmented_gradcam": {"augmentations": 3, "steps": 5},
}
LAYERED = {name for name, m in REGISTRY.items() if m.layered}
ALL = sorted(METHODS)


def run(name, model, x, **kw):
    return METHODS[name](model, x, **{**FAST.get(name, {}), **kw})


def _user_state(model: nn.Module) -> nn.Module:
    """Put a model in a state a user might leave it in: training mode, a partial freeze, a stale .grad."""
    model.train()
    params = list(model.parameters())
    params[0].requires_grad_(False)
    params[-1].grad = torch.full_like(params[-1], 0.25)
    return model


@pytest.mark.parametrize("name", ALL)
def test_model_untouched_after_success(name, untouched):
    model = untouched(_user_state(TinyGapNet()))
    e = run(name, model, torch.rand(2, 3, 8, 8))
    assert model.training and torch.isfinite(e.maps).all()
    assert e.maps.dtype == torch.float32 and e.maps.device.type == "cpu" and e.maps.shape == (2, 8, 8)
    json.dumps(e.to_dict())  # the summary is plain JSON


@pytest.mark.parametrize("name", ALL)
def test_model_untouched_after_an_exception_inside_the_model(name, untouched):
    model = untouched(_user_state(BoomGapNet()))
    kw = {"layer": "features"} if name in LAYERED else {}
    if name == "cam":
        kw["classifier"] = "fc"
    with pytest.raises(RuntimeError, match="boom inside the model"):
        run(name, model, torch.rand(2, 3, 6, 6), **kw)


@pytest.mark.parametrize("name", ALL)
def test_a_batch_explains_each_sample_as_alone(name, tiny_gap_net):
    x = torch.rand(3, 3, 8, 8)
    for target in ("predicted", [2, 0, 1]):
        batch = run(name, tiny_gap_net, x, target=target)
        for i in range(3):
            t = target if isinstance(target, str) else target[i]
            one = run(name, tiny_gap_net, x[i : i + 1], target=t)
            assert one.classes.item() == batch.classes[i].item()
            scale = float(one.maps.abs().max()) + 1e-12
            assert torch.allclose(batch.maps[i], one.maps[0], atol=1e-5 * scale), name


BATCHED = [n for n in ALL if "batch_size" in inspect.signature(METHODS[n]).parameters]


def test_every_multi_forward_method_takes_a_batch_size():
    assert {
        "saliency",
        "gradient_x_input",
        "guided_backprop",
        "guided_gradcam",
        "smoothgrad",
        "integrated_gradients",
        "occlusion",
        "augmented_gradcam",
    } <= set(BATCHED)


@pytest.mark.parametrize("name", BATCHED)
def test_the_batch_size_does_not_change_the_maps(name, tiny_gap_net):
    """Chunks slice per-sample targets and labels with the images: 5 images in chunks of 2 = all at once."""
    x = torch.rand(5, 3, 8, 8)
    y = torch.tensor([2, 0, 2, 1, 1])
    for target in ([2, 0, 1, 0, 1], "second", "true"):
        whole = run(name, tiny_gap_net, x, target=target, y=y, batch_size=5)
        parts = run(name, tiny_gap_net, x, target=target, y=y, batch_size=2)
        assert torch.equal(whole.classes, parts.classes), (name, target)
        if target == "true":
            assert whole.classes.tolist() == y.tolist()
        # augmented Grad-CAM: the batched part is the CAMs of the warped copies; its solver then takes
        # 5 subgradient steps on TV_ℓ1 here, whose sign flips on float-rounding differences of flat regions
        a, b = (whole.extras["cams"], parts.extras["cams"]) if name == "augmented_gradcam" else (whole.maps, parts.maps)
        assert torch.allclose(a, b, atol=1e-5 * (float(a.abs().max()) + 1e-12)), (name, target)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_are_computed_in_float32(name, dtype, tiny_gap_net):
    x = torch.rand(2, 3, 16, 16)
    low = x.to(dtype)
    e = run(name, tiny_gap_net, low, target=[0, 1])
    # computed in float32: exactly the float32 result on the rounded pixels
    ref = run(name, tiny_gap_net, low.float(), target=[0, 1])
    assert e.maps.dtype == torch.float32 and torch.equal(e.maps, ref.maps)
    assert e.settings["input_dtype"] == str(dtype).replace("torch.", "")
    # and close to the unrounded image: what remains is the rounding of the pixels themselves (on a net this
    # small a rounded pixel can flip a ReLU, which moves a gradient map by a few per cent)
    full = run(name, tiny_gap_net, x, target=[0, 1])
    tol = 0.1 if dtype == torch.float16 else 0.15
    assert (e.maps - full.maps).norm() <= tol * full.maps.norm() + 1e-7, name


class CountingNet(TinyGapNet):
    def __init__(self, spec=None):
        super().__init__()
        self.calls = 0
        if spec is not None:
            self.spec = spec

    def forward(self, x):
        self.calls += 1
        return super().forward(x)


@pytest.mark.parametrize("name", ALL)
def test_targets_are_checked_before_any_forward(name, untouched):
    from cnnlens.models.spec import ModelSpec

    model = untouched(CountingNet(ModelSpec("tiny", (6, 6), class_names=("ant", "bee", "cat"))))
    x = torch.rand(3, 3, 6, 6)
    for target, msg in [
        ([0, 1], "one class per input"),
        ("true", "labels"),
        ("tabby", "unknown target"),
        (5, "out of range"),
    ]:
        with pytest.raises(ValueError, match=msg):
            run(name, model, x, target=target)
    assert model.calls == 0
    # without a spec the class count is known only from the logits: one forward at most
    # (plus one to find the last spatial layer when none is named)
    bare = untouched(CountingNet())
    with pytest.raises(ValueError, match="out of range"):
        run(name, bare, x, target=5)
    assert bare.calls <= (2 if name in LAYERED else 1)
    e = run(name, model, x, target="bee")
    assert e.classes.tolist() == [1, 1, 1] and "bee" in e.settings["target"]


@pytest.mark.parametrize("name", ALL)
def test_true_target_uses_the_labels(name, tiny_gap_net):
    x = torch.rand(2, 3, 8, 8)
    e = run(name, tiny_gap_net, x, target="true", y=torch.tensor([2, 1]))
    ref = run(name, tiny_gap_net, x, target=[2, 1])
    assert e.classes.tolist() == [2, 1] and torch.allclose(e.maps, ref.maps)


def test_bad_inputs_get_one_line_errors(tiny_gap_net):
    from cnnlens.attribution import occlusion, saliency

    with pytest.raises(TypeError, match="torch.Tensor"):
        saliency(tiny_gap_net, [[0.0]])
    with pytest.raises(TypeError, match="floating"):
        saliency(tiny_gap_net, torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="N×C×H×W"):
        saliency(tiny_gap_net, torch.rand(3, 4))
    with pytest.raises(ValueError, match="reduce"):
        saliency(tiny_gap_net, torch.rand(1, 3, 4, 4), reduce="mean")
    with pytest.raises(ValueError, match="batch_size"):
        occlusion(tiny_gap_net, torch.rand(1, 3, 4, 4), batch_size=0)

    class TupleNet(TinyGapNet):
        def forward(self, x):
            return super().forward(x), None

    with pytest.raises(TypeError, match="logits"):
        saliency(TupleNet(), torch.rand(1, 3, 4, 4))
