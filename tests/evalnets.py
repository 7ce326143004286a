"""Tiny models for the evaluation tests, loadable as ``evalnets:colour_net`` (tests/ on PYTHONPATH)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn

from cnnlens.models.spec import ModelSpec, PixelModel

#: class order of colour_net (deliberately not the sorted folder order)
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
CLASSES = ("red", "green", "blue")


def colour_net() -> PixelModel:
    """logits = per-channel image mean: (R, G, B) → classes (red, green, blue); input 3×8×8."""
    conv = nn.Conv2d(3, 3, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
    net = nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    spec = ModelSpec(
        name="colour-net", input_size=(8, 8), channels=3, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), class_names=CLASSES
    )
    return PixelModel(net, spec).eval()


#: (folder, colour of the image) for the ImageFolder the tests write: 13 images, 2 mistakes
FOLDER_CONTENT = (
    [("red", "red")] * 4 + [("green", "green")] * 3 + [("green", "red")] + [("blue", "blue")] * 4 + [("blue", "green")]
)
#: the confusion matrix colour_net gives on it (rows true, columns predicted, order CLASSES)
EXPECTED_CONFUSION = [[4, 0, 0], [1, 3, 0], [0, 1, 4]]
#: top-2: the red image in green/ has logits (1, 0, 0): green ties blue, green has the lower index → hit;
#: the green image in blue/ has (0, 1, 0): blue ties red, red has the lower index → miss
EXPECTED_TOPK = {1: 11 / 13, 2: 12 / 13}


def write_colour_folder(root) -> None:
    for i, (folder, colour) in enumerate(FOLDER_CONTENT):
        d = root / folder
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), COLOURS[colour], np.uint8)).save(d / f"{i:02d}.png")
