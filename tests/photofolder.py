"""A labelled photo folder for ImageNet models, made from scikit-image's bundled photos (nothing downloaded).

``make_photo_folder(root, n)`` writes ``n`` JPEGs into up to 20 ImageNet WordNet-ID folders: random crops, flips and
colour jitter of a few photos, each photo filed under a class it shows (or a near one: a tabby under "tiger cat" too),
so an ImageNet model gets some right and confuses some — few of the 1,000 classes present, as in a user's folder.
Used by the EfficientNet-Lite0 browser test and ``benchmarks/bench_explore.py --model efficientnet-lite0``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: photo -> the ImageNet classes (by name) its crops are filed under, round robin
PHOTO_CLASSES = {
    "chelsea": ("tabby", "tiger cat", "Egyptian cat"),
    "coffee": ("espresso", "cup", "coffee mug"),
    "rocket": ("missile", "space shuttle", "projectile"),
    "stereo_motorcycle": ("moped", "motor scooter", "crash helmet"),
    "astronaut": ("suit", "lab coat"),
    "clock": ("wall clock", "analog clock"),
    "camera": ("tripod", "reflex camera"),
    "coins": ("chain mail", "buckle"),
}


def _photos() -> dict:
    import skimage.data

    out = {}
    for name in PHOTO_CLASSES:
        a = getattr(skimage.data, name)()
        a = np.asarray(a[0] if isinstance(a, tuple) else a)  # stereo_motorcycle: (left, right, disparity)
        if a.ndim == 2:
            a = np.stack([a] * 3, -1)
        out[name] = a[..., :3].astype(np.uint8)
    return out


def make_photo_folder(root, n: int = 2000, side: int = 256, seed: int = 0, classes: int = 20) -> list[str]:
    """Write ``n`` augmented photos as JPEGs under ``root/<wnid>/`` (at most ``classes`` folders); returns the
    WordNet IDs used. Deterministic for a seed."""
    from PIL import Image, ImageEnhance

    from cnnlens.data import imagenet_wnids
    from cnnlens.models.imagenet import imagenet_class_names

    names, wnids = list(imagenet_class_names()), imagenet_wnids()
    pairs = [(p, c) for p, cs in PHOTO_CLASSES.items() for c in cs][:classes]
    missing = [c for _, c in pairs if c not in names]
    if missing:  # pragma: no cover - a class-name list change
        raise ValueError(f"not ImageNet class names: {missing}")
    photos = {p: Image.fromarray(a) for p, a in _photos().items()}
    rng = np.random.default_rng(seed)
    root = Path(root)
    for _, c in pairs:
        (root / wnids[names.index(c)]).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        p, c = pairs[i % len(pairs)]
        im = photos[p]
        W, H = im.size
        s = rng.uniform(0.45, 1.0)
        ar = rng.uniform(0.8, 1.25)
        w = int(min(W, max(32, s * min(W, H) * ar**0.5)))
        h = int(min(H, max(32, s * min(W, H) / ar**0.5)))
        x0, y0 = int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1))
        out = im.crop((x0, y0, x0 + w, y0 + h)).resize((side, side), Image.BILINEAR)
        if rng.random() < 0.5:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
        out = ImageEnhance.Brightness(out).enhance(rng.uniform(0.7, 1.3))
        out = ImageEnhance.Contrast(out).enhance(rng.uniform(0.7, 1.3))
        out = ImageEnhance.Color(out).enhance(rng.uniform(0.6, 1.4))
        out.save(root / wnids[names.index(c)] / f"{p}-{i:05d}.jpg", quality=88)
    return sorted({wnids[names.index(c)] for _, c in pairs})
