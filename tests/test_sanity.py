"""Adebayo et al.'s sanity check reproduced on EfficientNet-Lite0 and scikit-image's photos."""

from __future__ import annotations

import pytest
import skimage.data
import torch

from cnnlens.data import load_images
from cnnlens.metrics import sanity_check


@pytest.mark.slow
def test_guided_backprop_survives_top_layer_randomisation_gradients_and_gradcam_do_not(effnet, one_thread):
    """Published ordering (Adebayo et al. 2018, Fig. 2): once the top blocks are re-initialised, guided
    backprop's map still rank-correlates with the trained model's far more than the gradient's and
    Grad-CAM's. 128² input, two photos, three cascade steps (head, conv_head, last block)."""
    x = load_images([skimage.data.chelsea(), skimage.data.coffee()], effnet, size=128)
    s = sanity_check(
        effnet, x, ["saliency", "gradcam", "guided_backprop"], layers=["classifier", "conv_head", "blocks.6"]
    )
    assert s.layers == ["net.classifier", "net.conv_head", "net.blocks.6.0.conv_pw"]
    gbp, sal, cam = (s.correlations(m) for m in ("guided_backprop", "saliency", "gradcam"))
    assert gbp.shape == (3, 2)
    # after the top blocks (the last step), per photo and on average
    assert (gbp[-1] > sal[-1] + 0.3).all() and (gbp[-1] > cam[-1] + 0.3).all()
    assert gbp[-1].min() > 0.8 and sal[-1].max() < 0.7 and cam[-1].max() < 0.5
    # the class explained stays the trained model's, and the trained model was not touched (fixture)
    with torch.no_grad():
        assert torch.equal(s.classes, effnet(x).argmax(1))
