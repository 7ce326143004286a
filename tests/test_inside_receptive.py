"""Receptive fields: known values, hand computations, and the gradient probe agreeing with the analytic walk."""

from __future__ import annotations

import pytest
import torch
import torchvision
from inside_nets import ChainNet, OddNet, Upsampler, pixel_chain_net
from torch import nn

from cnnlens.inside import receptive_field
from cnnlens.inside.receptive import _measured

pytestmark = pytest.mark.usefixtures("one_thread")


def test_resnet18_known_values(untouched):
    model = untouched(torchvision.models.resnet18(weights=None).eval())
    known = {"layer1": (43, 4), "layer2": (99, 8), "layer3": (211, 16), "layer4": (435, 32)}
    for layer, (size, stride) in known.items():
        rf = receptive_field(model, layer, input_size=64, channels=3, probe=False)  # fields do not depend on it
        assert rf.size == (size, size) and rf.stride == (stride, stride), layer
        # symmetric padding all the way: unit (i, j) is centred on pixel (stride·i, stride·j)
        assert rf.offset == (-(size - 1) // 2, -(size - 1) // 2)
        assert rf.center(0, 0) == (0.0, 0.0) and rf.center(2, 1) == (2.0 * stride, 1.0 * stride)


def test_resnet18_probe_agrees_on_the_deepest_layer(untouched):
    model = untouched(torchvision.models.resnet18(weights=None).eval())
    rf = receptive_field(model, "layer4", input_size=224, channels=3, probe_samples=1)
    p = rf.probe
    # the probe input holds the whole 435-pixel field of the centre unit: the gradient support is exactly it
    assert p.input_size == (499, 499)
    assert p.found == p.expected and p.agrees
    assert p.found[2] - p.found[0] == 435 and p.found[3] - p.found[1] == 435


def test_hand_computed_fields_with_residual_padding_dilation_concat_slice(untouched):
    model = untouched(OddNet().eval())
    # worked out by hand in inside_nets.OddNet's comments: (size, stride, offset) per axis
    expected = {
        "stem": ((3, 3), (2, 2), (0, 0)),  # F.pad(0, 1, 0, 1) then 3×3 stride 2
        "block1": ((15, 15), (4, 4), (-6, -6)),  # branch 3×3 s2 p1 → 3×3 p1 (15) ∪ shortcut 1×1 s2 (3)
        "dil": ((31, 31), (4, 4), (-14, -14)),  # 3×3 dilation 2, padding 2
        "wide": ((31, 47), (4, 4), (-14, -22)),  # 1×5 kernel
        "narrow": ((39, 39), (4, 4), (-18, -18)),
        "pool": ((47, 55), (4, 4), (-22, -26)),  # cat(wide, narrow) = union, then 3×3 average pool
        "crop": ((47, 55), (4, 4), (-18, -22)),  # x[:, :, 1:, 1:] shifts by one stride
    }
    for layer, (size, stride, offset) in expected.items():
        rf = receptive_field(model, layer, input_size=64, channels=3)
        assert (rf.size, rf.stride, rf.offset) == (size, stride, offset), layer
        assert rf.probe.agrees and rf.probe.found == rf.probe.expected, (layer, rf.probe)
    head = receptive_field(model, "head", input_size=64, channels=3)
    assert head.is_global and head.size == (64, 64) and head.box(0, 0) == (0, 0, 64, 64)


def test_chain_and_digits_models_probe_agrees(untouched, digits_model):
    nets = [
        (untouched(pixel_chain_net()), ["features.0", "features.2", "features.4", "features.5", "features"]),
        (untouched(ChainNet(cin=3).eval()), ["features.3", "features.7"]),
        (digits_model, ["features.0", "features.2", "features.5", "features.7"]),
    ]
    for model, layers in nets:
        for layer in layers:
            rf = receptive_field(
                model,
                layer,
                input_size=16 if not hasattr(model, "spec") else None,
                channels=3 if not hasattr(model, "spec") else None,
            )
            assert rf.probe is not None and rf.probe.agrees, (layer, rf)
    # digits-cnn: conv3 (3) → pool (4, ×2) → conv3 (4 + 2·2 = 8) → relu → pool (10, ×4) → conv3 (18)
    sizes = [
        receptive_field(digits_model, l, probe=False).size[0]
        for l in ("features.0", "features.2", "features.3", "features.5", "features.6")
    ]
    assert sizes == [3, 4, 8, 10, 18]


def test_clipped_box_and_centre(untouched):
    model = untouched(pixel_chain_net())
    rf = receptive_field(model, "features.6", probe=False)  # 18 px, stride 4, offset −7
    assert (rf.size, rf.stride, rf.offset, rf.grid) == ((18, 18), (4, 4), (-7, -7), (4, 4))
    assert rf.box(0, 3) == (-7, 5, 11, 23)
    assert rf.clipped_box(0, 3) == ((0, 5, 11, 16), True)
    assert rf.clipped_box(1, 1) == ((0, 0, 15, 15), True)
    assert rf.clipped_box(1, 1, (32, 32)) == ((0, 0, 15, 15), True)
    assert rf.clipped_box(2, 2, (32, 32)) == ((1, 1, 19, 19), False)
    assert rf.center(1, 2) == (5.5, 9.5)


def test_untraceable_path_is_a_clear_error(untouched):
    model = untouched(Upsampler())
    assert receptive_field(model, "c1", input_size=12).size == (3, 3)
    with pytest.raises(ValueError, match="interpolate"):
        receptive_field(model, "c2", input_size=12)
    with pytest.raises(ValueError, match="not in the model"):
        receptive_field(model, "c3", input_size=12)


class _PermutedNorm(nn.Module):
    """ConvNeXt's LayerNorm over channels: permute to N×H×W×C, normalise, permute back."""

    def __init__(self, c):
        super().__init__()
        self.ln = nn.LayerNorm(c)

    def forward(self, x):
        return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _convnext_like(norm: bool) -> nn.Sequential:
    torch.manual_seed(0)
    layers = [
        nn.Conv2d(3, 4, 3, stride=2),
        _PermutedNorm(4) if norm else nn.Identity(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 5, padding=2, dilation=1, stride=2),
    ]
    return nn.Sequential(*layers).eval()


def test_an_untraceable_path_is_measured_from_the_gradient_support(untouched):
    """A permute around a LayerNorm stops the tracer; the measured field equals the traced one of the same
    net without the norm (a per-position norm does not widen the field): 3 → 3 + 2·2 = 7 → 7 + 4·2 = 15."""
    plain = untouched(_convnext_like(norm=False))
    normed = untouched(_convnext_like(norm=True))
    for layer, size, stride in (("2", 7, 2), ("4", 15, 4)):
        traced = receptive_field(plain, layer, input_size=48)
        measured = receptive_field(normed, layer, input_size=48)
        assert traced.method == "traced" and measured.method == "measured"
        assert (measured.size, measured.stride, measured.offset) == (traced.size, traced.stride, traced.offset)
        assert measured.size == (size, size) and measured.stride == (stride, stride)
    # the same measurement on traceable nets agrees with the tracer, layer by layer
    model = untouched(OddNet().eval())
    for layer in ("stem", "block1", "dil", "wide", "pool", "crop"):
        traced = receptive_field(model, layer, input_size=64, channels=3, probe=False)
        measured = _measured(model, traced.layer, 3, (64, 64), 2, 0, torch.device("cpu"), 1024)
        assert (measured.size, measured.stride, measured.offset) == (traced.size, traced.stride, traced.offset), layer


def test_a_model_without_an_input_size_gets_timms_or_224(untouched):
    net = untouched(_convnext_like(norm=False))
    assert receptive_field(net, "4", probe=False).input_size == (224, 224)
    net.pretrained_cfg = {"input_size": (3, 96, 80)}
    assert receptive_field(net, "4", probe=False).input_size == (96, 80)


def test_efficientnet_same_padding_is_followed(effnet):
    """TF-style 'same' padding pads (0, 1) before a stride-2 conv on an even input: the field starts at pixel 0."""
    stem = receptive_field(effnet, "conv_stem", probe=False)
    assert (stem.size, stem.stride, stem.offset) == ((3, 3), (2, 2), (0, 0))
    for layer in ("blocks.1", "blocks.3"):
        rf = receptive_field(effnet, layer, probe_samples=1)
        assert rf.probe.agrees, (layer, rf.probe)
    assert receptive_field(effnet, "blocks.3", probe=False).size == (147, 147)


def test_a_field_much_larger_than_the_image_is_probed_at_two_corners(untouched):
    """ResNet-18's layer4 sees 435 px; for a 64 px model the centre probe would need a 499² input: the corner probe
    uses an input just past unit (0, 0)'s far edge and checks both edges, one sample."""
    model = untouched(torchvision.models.resnet18(weights=None).eval())
    rf = receptive_field(model, "layer4", input_size=64, channels=3)
    p = rf.probe
    far = rf.offset[0] + rf.size[0]
    assert p.input_size == (far + 2 * 32, far + 2 * 32) and p.input_size[0] < rf.size[0] + 2 * 32
    assert p.position == (0, 0) and len(p.more) == 1 and p.agrees
    # unit (0, 0): the field clipped at the top-left ends at offset + size; the last unit's starts inside the image
    assert p.found == p.expected == (0, 0, far, far)
    ((last, expected, found),) = p.more
    assert found == expected and 0 < expected[0] == rf.offset[0] + last[0] * 32
    assert expected[2:] == p.input_size
