"""Which normalisation do the efficientnet-lite0 weights want: ImageNet mean/std or 0.5/0.5?

Two kinds of evidence, on the photos that ship with scikit-image, scikit-learn
and matplotlib (4 views each: full resize, 87.5 % centre crop, mirrored):

- label-free: how well the pre-BatchNorm activations match each BatchNorm's
  running statistics (what the network saw in training);
- labelled: log-probability and top-1 of a plausible ImageNet class set.

Run: python benchmarks/effnet_normalisation.py  (a few seconds on a CPU)

Result (the reasoning behind cnnlens.models.efficientnet's choice). Candidates:
ImageNet mean/std (0.485, 0.456, 0.406)/(0.229, 0.224, 0.225) and TF-Lite's
0.5/0.5 (TensorFlow's EfficientNet-Lite uses (x − 127)/128). Inputs: the 10 photos
that ship with scikit-image / scikit-learn / matplotlib (chelsea, coffee, rocket,
motorcycle_left, clock, astronaut, camera, grace_hopper, china, flower), 4 views
each (full resize, 87.5 % centre crop, and their mirror images), 224×224:

    measure                                            ImageNet   0.5/0.5
    stem BatchNorm: mean |log(batch var / running var)|   1.39      0.35
    stem BatchNorm: mean |batch mean − running mean|/σ    0.20      0.16
    all 49 BatchNorms: mean |log var ratio|               0.41      0.24
    all 49 BatchNorms: mean |Δ mean|/σ                    0.24      0.15
    6 labelled photos, mean log p(true class set)        −1.21     −0.86
    6 labelled photos × 4 views, top-1 in class set       19/24     17/24

The BatchNorm running statistics record what the network saw during training:
with ImageNet mean/std the first layer's pre-BatchNorm variance is e^1.39 ≈ 4×
the trained one (the input is scaled by 0.5/0.226 ≈ 2.2), with 0.5/0.5 it
matches within e^0.35. The label-free BatchNorm evidence is consistent through
the network; the few labelled photos are split (the likelihood favours 0.5/0.5,
top-1 counts ImageNet by two views out of 24, both keep chelsea a cat and
coffee an espresso). So these weights want **0.5/0.5**, which is also timm's
``pretrained_cfg`` for ``tf_efficientnet_lite0`` and TF-Lite's convention.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cnnlens.models import efficientnet


def photos() -> dict[str, np.ndarray]:
    import matplotlib.cbook as cbook
    import skimage.data
    from PIL import Image
    from sklearn.datasets import load_sample_images

    out = {n: getattr(skimage.data, n)() for n in ("chelsea", "coffee", "rocket", "clock", "astronaut", "camera")}
    out["motorcycle_left"] = skimage.data.stereo_motorcycle()[0]
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        out["grace_hopper"] = np.array(Image.open(f))
    out["china"], out["flower"] = load_sample_images().images
    return out


# ImageNet class sets that name what each photo shows (photos without a clear class carry no label)
LABELS = {
    "chelsea": [281, 282, 283, 284, 285],  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    "coffee": [967, 968, 504],  # espresso, cup, coffee mug
    "rocket": [657, 744, 812],  # missile, projectile, space shuttle
    "motorcycle_left": [665, 670],  # moped, motor scooter (ImageNet has no "motorcycle")
    "clock": [409, 892],  # analog clock, wall clock
    "grace_hopper": [652, 834, 906],  # military uniform, suit, Windsor tie
}


def views(a: np.ndarray) -> torch.Tensor:
    if a.ndim == 2:
        a = np.stack([a] * 3, -1)
    t = torch.from_numpy(np.array(a[..., :3])).permute(2, 0, 1)[None].float() / 255
    full = F.interpolate(t, size=(224, 224), mode="bilinear", antialias=True)
    h, w = t.shape[-2:]
    s = int(min(h, w) * 0.875)
    y, x = (h - s) // 2, (w - s) // 2
    crop = F.interpolate(t[..., y : y + s, x : x + s], size=(224, 224), mode="bilinear", antialias=True)
    return torch.cat([full, full.flip(-1), crop, crop.flip(-1)])


def main() -> None:
    torch.set_num_threads(2)
    net = efficientnet.build()
    imgs = photos()
    names = list(imgs)
    x = torch.cat([views(imgs[n]) for n in names])
    bns = [(n, m) for n, m in net.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for label, (mean, std) in {
        "ImageNet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        "0.5/0.5": ((0.5,) * 3, (0.5,) * 3),
    }.items():
        xn = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        pre = {}
        hooks = [m.register_forward_pre_hook((lambda n: lambda m, i: pre.__setitem__(n, i[0]))(n)) for n, m in bns]
        try:
            with torch.no_grad():
                logits = net(xn)
        finally:
            for h in hooks:
                h.remove()

        def mismatch(n, m):
            a = pre[n]
            ok = m.running_var > 1e-4  # dead channels carry no statistics
            sd = (m.running_var[ok] + m.eps).sqrt()
            dmu = ((a.mean((0, 2, 3))[ok] - m.running_mean[ok]) / sd).abs().mean()
            dvar = ((a.var((0, 2, 3))[ok] + m.eps) / (m.running_var[ok] + m.eps)).log().abs().mean()
            return float(dmu), float(dvar)

        d = np.array([mismatch(n, m) for n, m in bns])
        lp = logits.log_softmax(1).view(len(names), 4, -1)
        top = logits.view(len(names), 4, -1).argmax(2)
        ll = [float(lp[i][:, LABELS[n]].logsumexp(1).mean()) for i, n in enumerate(names) if n in LABELS]
        hits = sum(int(torch.isin(top[i], torch.tensor(LABELS[n])).sum()) for i, n in enumerate(names) if n in LABELS)
        print(
            f"{label:9s} stem BN |log var ratio| {d[0, 1]:.2f}  |Δμ|/σ {d[0, 0]:.2f} | "
            f"all {len(bns)} BN: {d[:, 1].mean():.2f}  {d[:, 0].mean():.2f} | "
            f"mean log p(true) {np.mean(ll):.2f}  top-1 {hits}/{4 * len(ll)}"
        )


if __name__ == "__main__":
    main()
