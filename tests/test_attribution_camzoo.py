"""XGrad-CAM, HiResCAM, LayerCAM and Eigen-CAM: identities on a GAP + linear net, agreement with
pytorch-grad-cam on a torchvision ResNet-50 (random weights)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import TinyGapNet

from cnnlens.attribution import METHODS, cam, eigencam, gradcam, hirescam, layercam, xgradcam

pytestmark = pytest.mark.usefixtures("one_thread")


def _corr(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    return float(np.corrcoef(a, b)[0, 1])


def test_registered_for_explain_all():
    for name in ("xgradcam", "hirescam", "layercam", "eigencam"):
        assert name in METHODS


def test_hirescam_adds_up_to_the_score_on_a_gap_head(tiny_gap_net):
    x = torch.rand(3, 3, 6, 7)
    y = tiny_gap_net(x).detach()
    bias = tiny_gap_net.fc.bias.detach()
    for target in ("predicted", "second", [2, 0, 1]):
        e = hirescam(tiny_gap_net, x, target=target, relu=False)
        c = e.classes
        # Σ_ij Σ_k G ⊙ A with G = w^c/(H·W): exactly y_c − b_c
        assert torch.allclose(e.raw.sum((1, 2)), y[torch.arange(3), c] - bias[c], atol=1e-5)
        # and the map is CAM/(H·W), position by position
        ref = cam(tiny_gap_net, x, target=target)
        assert torch.allclose(e.raw, ref.raw / 42, atol=1e-6)
        relu = hirescam(tiny_gap_net, x, target=target)
        assert torch.allclose(relu.raw, e.raw.clamp_min(0))


def test_xgradcam_weights_and_conservation_on_a_gap_head(tiny_gap_net):
    x = torch.rand(2, 3, 5, 6)
    y = tiny_gap_net(x).detach()
    f = tiny_gap_net.features(x).detach()
    for target in ("predicted", 1):
        e = xgradcam(tiny_gap_net, x, target=target, relu=False)
        c = e.classes
        w = tiny_gap_net.fc.weight.detach()[c]
        # α_k = Σ A·G / Σ A = w_k/(H·W) for every channel that is not all zero (ReLU features)
        alive = f.sum((2, 3)) > 0
        assert torch.allclose(e.extras["weights"][alive], (w / 30)[alive], atol=1e-6)
        assert (e.extras["weights"][~alive] == 0).all()
        # conservation: the map adds up to y_c − b_c
        assert torch.allclose(e.raw.sum((1, 2)), y[torch.arange(2), c] - tiny_gap_net.fc.bias.detach()[c], atol=1e-5)
        g = gradcam(tiny_gap_net, x, target=target, relu=False, layer="features")
        assert torch.allclose(e.raw, g.raw, atol=1e-6)


def test_layercam_on_a_gap_head_keeps_the_positive_weights(tiny_gap_net):
    x = torch.rand(2, 3, 5, 5)
    f = tiny_gap_net.features(x).detach()
    for target in ("predicted", [0, 2]):
        e = layercam(tiny_gap_net, x, target=target)
        w = tiny_gap_net.fc.weight.detach()[e.classes].clamp_min(0) / 25
        expected = torch.einsum("nk,nkhw->nhw", w, f).clamp_min(0)
        assert torch.allclose(e.raw, expected, atol=1e-6)
        # with all weights ≥ 0 nothing is clipped: Σ_ij L = Σ_k ReLU(w_k) mean_ij f_k
        assert torch.allclose(e.raw.sum((1, 2)), (w * 25 * f.mean((2, 3))).sum(1), atol=1e-5)


def test_layercam_fused_over_layers_by_hand(untouched):
    net = untouched(TinyGapNet(seed=3))
    x = torch.rand(2, 3, 6, 6)
    e = layercam(net, x, target="predicted", layer=["features.1", "features.3"], gamma=2.0)
    assert e.settings["layers"] == ["features.1", "features.3"]
    # each layer alone gives the same map as a one-layer call
    singles = [layercam(net, x, target="predicted", layer=n) for n in ("features.1", "features.3")]
    fused = None
    for s, per in zip(singles, e.extras["per_layer"], strict=True):
        assert torch.allclose(per, s.raw, atol=1e-6)
        top = s.raw.flatten(1).amax(1).view(-1, 1, 1)
        t = torch.tanh(2.0 * s.raw / top)
        fused = t if fused is None else torch.maximum(fused, t)
    assert torch.allclose(e.maps, fused, atol=1e-6)
    # the gradient at the earlier layer is the real one (the later layer did not cut the graph)
    assert not torch.allclose(e.extras["per_layer"][0], torch.zeros_like(e.extras["per_layer"][0]))


def test_eigencam_is_the_first_principal_component_with_a_positive_sign(tiny_gap_net):
    x = torch.rand(3, 3, 6, 6)
    e = eigencam(tiny_gap_net, x, relu=False)
    A = tiny_gap_net.features(x).detach().double()
    from sklearn.decomposition import PCA

    for i in range(3):
        M = A[i].reshape(A.shape[1], -1).T.numpy()
        pc = PCA(n_components=1).fit(M)
        ref = pc.transform(M)[:, 0]
        got = e.raw[i].flatten().double().numpy()
        assert abs(abs(_corr(got, ref)) - 1) < 1e-6
        assert np.allclose(np.abs(got), np.abs(ref), atol=1e-4)
        # sign: positively correlated with the channel mean of the activations
        assert _corr(got, M.mean(1)) > 0
        assert abs(float(e.extras["explained"][i]) - pc.explained_variance_ratio_[0]) < 1e-4
    # no class enters: the same map for every target
    other = eigencam(tiny_gap_net, x, target=[1, 2, 0], relu=False)
    assert torch.equal(other.raw, e.raw) and other.classes.tolist() == [1, 2, 0]
    assert torch.equal(eigencam(tiny_gap_net, x).raw, e.raw.clamp_min(0))


@pytest.fixture(scope="module")
def resnet50():
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet50(num_classes=10).eval()


def _pgc(cls, model, layer, x, classes):
    """pytorch-grad-cam on a copy (it sets .grad on the parameters and keeps its hooks for the object's life)."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    m = copy.deepcopy(model)
    with cls(model=m, target_layers=[getattr(m, layer)]) as c:
        return c(input_tensor=x, targets=[ClassifierOutputTarget(int(k)) for k in classes])


@pytest.mark.slow
@pytest.mark.parametrize("layer", ["layer4", "layer3"])
def test_agreement_with_pytorch_grad_cam_on_resnet50(resnet50, layer, untouched):
    from pytorch_grad_cam import EigenCAM, HiResCAM, LayerCAM, XGradCAM
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    model = untouched(resnet50)
    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    classes = [3, 7]
    for ours, theirs in ((xgradcam, XGradCAM), (hirescam, HiResCAM), (layercam, LayerCAM)):
        e = ours(model, x, target=classes, layer=layer)
        ref = _pgc(theirs, model, layer, x, classes)
        for i in range(2):
            assert _corr(e.maps[i], ref[i]) >= 0.999, (ours.__name__, layer, i)
    # Eigen-CAM: before the ReLU and up to the SVD's sign
    e = eigencam(model, x, layer=layer, relu=False)
    acts = {}
    m = copy.deepcopy(model)
    with EigenCAM(model=m, target_layers=[getattr(m, layer)]) as c:
        c.activations_and_grads(x)
        acts = c.activations_and_grads.activations[0].numpy()
    ref = get_2d_projection(acts)
    for i in range(2):
        assert abs(_corr(e.raw[i], ref[i])) >= 0.999, ("eigencam", layer, i)
