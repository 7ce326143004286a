"""ImageNet-1k class names and normalisation constants (no download: torchvision ships the names)."""

from __future__ import annotations

from functools import lru_cache

# Late, for start-up (CONTRIBUTING.md, Imports): torchvision, in imagenet_class_names.

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """The 1,000 ImageNet class names in index order (``names[285] == "Egyptian cat"``).

    Read from torchvision's weight metadata, which is part of the install.
    """
    from torchvision.models import ResNet18_Weights

    names = tuple(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
    if len(names) != 1000:  # pragma: no cover - a torchvision change
        raise ValueError(f"torchvision's ImageNet category list has {len(names)} names, expected 1000")
    return names
