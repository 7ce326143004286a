"""Models whose features are tokens (timm ViT, DeiT, Swin) or channels-last (ConvNeXt's blocks): the CAM family,
saliency and occlusion read them as grids; checked against pytorch-grad-cam's reshape_transform recipes."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from cnnlens.attribution import eigencam, gradcam, hirescam, layercam, occlusion, saliency
from cnnlens.grid import prefix_tokens, to_grid
from cnnlens.tap import LayerTap, find_last_spatial_layer

pytestmark = pytest.mark.usefixtures("one_thread")


def _corr(a, b) -> float:
    return float(np.corrcoef(np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel())[0, 1])


@pytest.fixture(scope="module")
def vit():
    import timm

    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=5
    ).eval()


@pytest.fixture(scope="module")
def deit():
    import timm

    torch.manual_seed(1)
    return timm.create_model(
        "deit_tiny_distilled_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=5
    ).eval()


@pytest.fixture(scope="module")
def swin():
    from timm.models.swin_transformer import SwinTransformer

    torch.manual_seed(2)
    return SwinTransformer(
        img_size=32, patch_size=2, window_size=4, embed_dim=24, depths=(1, 1), num_heads=(1, 2), num_classes=5
    ).eval()


X = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def test_the_default_layer_of_token_models(vit, deit, swin, untouched):
    assert prefix_tokens(vit) == 1 and prefix_tokens(deit) == 2 and prefix_tokens(swin) == 0
    # after the last block only the prefix tokens reach the head: the last block's first layer is taken
    assert find_last_spatial_layer(untouched(vit), X) == "blocks.1.norm1"
    assert find_last_spatial_layer(untouched(deit), X) == "blocks.1.norm1"
    assert find_last_spatial_layer(untouched(swin), X) == "norm"  # N×h×w×C before the average pool


def _vit_reshape(prefix):
    def fn(t):  # pytorch-grad-cam's documented ViT recipe: drop the prefix tokens, tokens → grid
        r = t[:, prefix:, :].reshape(t.size(0), 4, 4, t.size(2))
        return r.transpose(2, 3).transpose(1, 2)

    return fn


def _swin_reshape(t):  # pytorch-grad-cam's Swin recipe: N×h×w×C → N×C×h×w
    return t.permute(0, 3, 1, 2)


@pytest.mark.parametrize("which", ["vit", "deit", "swin"])
def test_gradcam_and_layercam_agree_with_pytorch_grad_cam(which, vit, deit, swin, untouched):
    from pytorch_grad_cam import GradCAM, LayerCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = untouched({"vit": vit, "deit": deit, "swin": swin}[which])
    layer, reshape = {
        "vit": ("blocks.1.norm1", _vit_reshape(1)),
        "deit": ("blocks.1.norm1", _vit_reshape(2)),
        "swin": ("layers.1", _swin_reshape),
    }[which]
    classes = [1, 3]
    compared = 0
    for ours, theirs in ((gradcam, GradCAM), (layercam, LayerCAM)):
        e = ours(model, X, target=classes, layer=layer)
        m = copy.deepcopy(model)
        with theirs(model=m, target_layers=[m.get_submodule(layer)], reshape_transform=reshape) as c:
            ref = c(input_tensor=X, targets=[ClassifierOutputTarget(k) for k in classes])
        for i in range(2):
            if float(e.maps[i].std()) == 0:  # random weights: a class no position supports gives an empty map
                assert float(np.std(ref[i])) == 0 and e.extras["empty"][i], (which, ours.__name__, i)
                continue
            compared += 1
            assert _corr(e.maps[i], ref[i]) >= 0.999, (which, ours.__name__, i)
    assert compared >= 2


def test_hirescam_adds_up_to_the_score_on_swins_pooled_head(swin, untouched):
    model = untouched(swin)
    e = hirescam(model, X, target=[0, 4], layer="norm", relu=False)
    y = model(X).detach()
    b = model.head.fc.bias.detach()
    assert torch.allclose(e.raw.sum((1, 2)), y[[0, 1], [0, 4]] - b[[0, 4]], atol=1e-4)


def test_tokens_map_to_the_patches_they_came_from(vit, untouched):
    model = untouched(vit)
    with LayerTap(model, ["patch_embed"], detach=True) as tap, torch.no_grad():
        tap.run(X)
        tok = tap["patch_embed"]  # N×16×C, no class token yet (it is added after the patch embedding)
    # the patch embedding is a stride-8 conv: token (i, j) is the conv output at grid position (i, j)
    conv = model.patch_embed.proj(X).detach()
    grid = to_grid(torch.cat([torch.zeros_like(tok[:, :1]), tok], 1), "tokens", 1, (32, 32))
    assert torch.allclose(grid, conv, atol=1e-5)
    # Eigen-CAM reads the same grid
    e = eigencam(model, X, layer="blocks.1.norm1")
    assert e.raw.shape == (2, 4, 4)


def test_channels_last_inside_convnext_blocks(untouched):
    import timm

    torch.manual_seed(4)
    model = untouched(timm.create_model("convnext_atto", pretrained=False, num_classes=5, conv_mlp=False).eval())
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    layer = "stages.2.blocks.0.mlp"  # N×h×w×C inside the block (conv_mlp=False, the default of convnext_tiny)
    with LayerTap(model, [layer], detach=True) as tap, torch.no_grad():
        tap.run(x)
        a = tap[layer]
    assert a.shape[-1] == 160 and a.shape[1] == a.shape[2] == 4
    e = eigencam(model, x, layer=layer, relu=False)
    M = a[0].reshape(16, 160).double()
    Mc = M - M.mean(0)
    v = torch.linalg.svd(Mc, full_matrices=False).Vh[0]
    proj = (Mc @ v).view(4, 4)
    assert abs(_corr(e.raw[0], proj)) > 0.9999
    g = gradcam(model, x, layer=layer)
    assert g.raw.shape == (1, 4, 4) and torch.isfinite(g.maps).all()


def test_saliency_and_occlusion_on_token_models(vit, swin, untouched):
    for model in (untouched(vit), untouched(swin)):
        s = saliency(model, X, target=[0, 1])
        assert torch.isfinite(s.maps).all() and s.maps.abs().max() > 0
        o = occlusion(model, X, target=[0, 1], window=8, stride=8)
        # one position by hand: the logit drop when the top-left 8×8 patch is grey
        xb = X.clone()
        xb[:, :, :8, :8] = 0.5
        with torch.no_grad():
            drop = model(X)[[0, 1], [0, 1]] - model(xb)[[0, 1], [0, 1]]
        assert torch.allclose(o.raw[:, 0, 0], drop, atol=1e-4)


class _Tokens7(nn.Module):
    """Seven tokens for a 32×32 image: no grid."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(3, 4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        t = self.embed(x.mean((2, 3)).unsqueeze(1).expand(-1, 7, -1))  # N×7×4
        return self.fc(t.mean(1))


def test_a_layer_without_a_grid_is_a_clear_error(vit, untouched):
    with pytest.raises(ValueError, match="7 do not form a grid"):
        eigencam(untouched(_Tokens7()), X, layer="embed")
    with pytest.raises(ValueError, match="not a feature map"):
        gradcam(untouched(vit), X, layer="head")
    with pytest.raises(ValueError, match="no spatial grid"):
        eigencam(untouched(vit), X, layer="fc_norm")


@pytest.mark.parametrize("which", ["vit", "deit"])
def test_dataset_search_and_neuron_stats_read_token_layers_as_grids(request, untouched, which):
    """A block's tokens (prefix tokens dropped) are the grid the scan hands to search and statistics; attention
    mixes every position, so a unit's field is the whole image (the receptive field says "global")."""
    from cnnlens import inside

    model = untouched(request.getfixturevalue(which))
    prefix = 2 if which == "deit" else 1
    g = torch.Generator().manual_seed(3)
    x = torch.rand(6, 3, 32, 32, generator=g)
    ds = torch.utils.data.TensorDataset(x, torch.tensor([0, 1, 2, 3, 4, 0]))
    seen = []
    h = model.blocks[1].register_forward_hook(lambda m, i, o: seen.append(o.detach()))  # the test's own reference
    try:
        with torch.no_grad():
            model(x)
    finally:
        h.remove()
    tokens = seen[0][:, prefix:]  # N×16×C: the 4×4 patch grid
    se = inside.dataset_search(model, ds, "blocks.1", k=2)
    per_image = tokens.max(1).values  # each image's strongest unit per channel
    want = per_image.topk(2, dim=0)
    assert torch.allclose(se.activations, want.values.T, atol=1e-5)
    assert torch.equal(se.indices, want.indices.T)
    assert torch.equal(se.crops[0, 0], x[int(se.indices[0, 0])])  # a global field: the whole image
    st = inside.neuron_stats(model, ds, "blocks.1")
    assert torch.allclose(st.mean, tokens.mean((0, 1)), atol=1e-5)
    assert inside.receptive_field(model, "blocks.1", input_size=32, channels=3).is_global


def test_dataset_search_and_neuron_stats_read_swin_channels_last_as_grids(swin, untouched):
    from cnnlens import inside

    model = untouched(swin)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    ds = torch.utils.data.TensorDataset(x, torch.tensor([0, 1, 2, 3]))
    seen = []
    h = model.norm.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        h.remove()
    nhwc = seen[0]
    assert nhwc.dim() == 4 and nhwc.shape[-1] == 48  # N×h×w×C
    st = inside.neuron_stats(model, ds, "norm")
    assert st.mean.shape == (48,) and torch.allclose(st.mean, nhwc.mean((0, 1, 2)), atol=1e-5)
    se = inside.dataset_search(model, ds, "norm", k=1)
    assert torch.allclose(se.activations[:, 0], nhwc.flatten(1, 2).max(1).values.max(0).values, atol=1e-5)
