"""Attribution speed, side by side with the peer libraries, in one process; prints ratios.

Goals (issue 3):
  * Grad-CAM time / one forward of the same batch        ≤ 1.1
  * saliency time / one forward of the same batch        ≤ 2.1
  * occlusion: cnnlens vs Captum's ``Occlusion`` at its best ``perturbations_per_eval``,
    same model, windows and fill, same output to 1e-5    ≥ 1 (at least as fast)
  * pytorch-grad-cam's GradCAM vs ours (ratio only)

Every time is the minimum over interleaved repeats (the machine is shared, so the
minimum is the least disturbed run). Tests never time anything; this script does.

Run:  python benchmarks/bench_attribution.py [--quick] [--model efficientnet-lite0|resnet18] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch


def load(name: str):
    if name == "resnet18":
        import torchvision

        torch.manual_seed(0)
        return torchvision.models.resnet18(num_classes=1000).eval(), "layer4", "torchvision resnet18 (random weights)"
    import cnnlens

    m = cnnlens.load_model(name)
    return m, m.spec.last_spatial_layer, f"{name} (cnnlens, ImageNet weights)"


def photos(n: int, size: int = 224) -> torch.Tensor:
    """The scikit-image photos, resized to size×size, in [0, 1]."""
    import skimage.data
    import torch.nn.functional as F

    names = ["chelsea", "coffee", "astronaut", "rocket", "cat", "camera", "hubble_deep_field", "immunohistochemistry"]
    out = []
    for name in names[:n]:
        a = torch.from_numpy(getattr(skimage.data, name)().copy()).float() / 255
        a = a.unsqueeze(-1).expand(*a.shape, 3) if a.dim() == 2 else a[..., :3]
        out.append(F.interpolate(a.permute(2, 0, 1)[None], size=(size, size), mode="bilinear", antialias=True)[0])
    while len(out) < n:
        out.append(torch.rand(3, size, size, generator=torch.Generator().manual_seed(len(out))))
    return torch.stack(out).clamp(0, 1)


def interleaved(fns: dict, repeat: int) -> dict:
    """min wall time of each fn over `repeat` rounds, the fns alternating within a round."""
    best = {k: float("inf") for k in fns}
    for f in fns.values():  # warm-up
        f()
    for _ in range(repeat):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            best[k] = min(best[k], time.perf_counter() - t)
    return best


def bench_gradients(model, layer, x, repeat):
    from cnnlens.attribution import gradcam, saliency

    def forward():
        with torch.no_grad():
            model(x)

    def plain_autograd(fmt):
        """What a user gets without cnnlens: one forward + torch.autograd.grad to the input, frozen parameters."""
        flags = [p.requires_grad for p in model.parameters()]
        for p in model.parameters():
            p.requires_grad_(False)
        try:
            xr = x.contiguous(memory_format=fmt).requires_grad_(True)
            y = model(xr)
            torch.autograd.grad(y.max(1).values.sum(), xr)
        finally:
            for p, f in zip(model.parameters(), flags, strict=True):
                p.requires_grad_(f)

    t = interleaved(
        {
            "forward": forward,
            "gradcam": lambda: gradcam(model, x, layer=layer),
            "saliency": lambda: saliency(model, x),
            "saliency (one batch)": lambda: saliency(model, x, batch_size=len(x)),
            "autograd": lambda: plain_autograd(torch.contiguous_format),
            "autograd (channels-last)": lambda: plain_autograd(torch.channels_last),
        },
        repeat,
    )
    return t


def bench_occlusion(model, x, window, stride, repeat, sizes):
    from captum.attr import Occlusion

    from cnnlens.attribution import occlusion

    with torch.no_grad():
        cls = model(x).argmax(1)
    C = x.shape[1]
    occ = Occlusion(model)
    fns = {}
    for p in sizes:
        fns[f"captum ppe={p}"] = lambda p=p: occ.attribute(
            x,
            sliding_window_shapes=(C, window, window),
            strides=(C, stride, stride),
            baselines=0.5,
            target=cls.tolist(),
            perturbations_per_eval=p,
        )
        fns[f"cnnlens bs={p}"] = lambda p=p: occlusion(
            model, x, target=cls, window=window, stride=stride, fill=0.5, batch_size=p
        )
    fns["cnnlens (auto batch)"] = lambda: occlusion(model, x, target=cls, window=window, stride=stride, fill=0.5)
    t = interleaved(fns, repeat)
    ours = occlusion(model, x, target=cls, window=window, stride=stride, fill=0.5, batch_size=sizes[-1]).maps
    with torch.no_grad():
        theirs = occ.attribute(
            x,
            sliding_window_shapes=(C, window, window),
            strides=(C, stride, stride),
            baselines=0.5,
            target=cls.tolist(),
            perturbations_per_eval=sizes[-1],
        )[:, 0]
    return t, float((ours - theirs).abs().max())


def bench_pytorch_grad_cam(model, layer, x, repeat):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from cnnlens import resolve_layer
    from cnnlens.attribution import gradcam

    with torch.no_grad():
        cls = model(x).argmax(1).tolist()
    module = resolve_layer(model, layer)[1]
    targets = [ClassifierOutputTarget(c) for c in cls]
    requires = [p.requires_grad for p in model.parameters()]
    with GradCAM(model=model, target_layers=[module]) as cam:
        t = interleaved(
            {
                "pytorch-grad-cam": lambda: cam(input_tensor=x, targets=targets),
                "cnnlens gradcam": lambda: gradcam(model, x, target=cls, layer=layer),
            },
            repeat,
        )
        theirs = torch.from_numpy(cam(input_tensor=x, targets=targets))
    for p, r in zip(
        model.parameters(), requires, strict=True
    ):  # pytorch-grad-cam leaves .grad behind; clean up after it
        p.grad = None
        p.requires_grad_(r)
    ours = gradcam(model, x, target=cls, layer=layer).normalized()
    corr = torch.corrcoef(torch.stack([ours.flatten(), theirs.flatten()]))[0, 1]
    return t, float(corr)


def bench_torchcam(model, layer, x, repeat):
    """TorchCAM's GradCAM (the user runs the forward while its hooks are on) vs ours; maps correlated."""
    from torchcam.methods import GradCAM as TorchCAMGradCAM

    from cnnlens import resolve_layer
    from cnnlens.attribution import gradcam

    with torch.no_grad():
        cls = model(x).argmax(1).tolist()
    theirs_model = copy.deepcopy(model)  # a copy of its own, so nothing TorchCAM sets can touch the model timed here
    name = resolve_layer(model, layer)[0]

    def theirs():
        with TorchCAMGradCAM(theirs_model, name, input_shape=tuple(x.shape[1:])) as extractor:
            scores = theirs_model(x)
            return extractor(class_idx=cls, scores=scores, normalized=False)[0]

    t = interleaved({"torchcam": theirs, "cnnlens gradcam": lambda: gradcam(model, x, target=cls, layer=layer)}, repeat)
    ours = gradcam(model, x, target=cls, layer=layer).raw
    other = theirs().detach()
    corr = torch.corrcoef(torch.stack([ours.flatten(), other.flatten()]))[0, 1]
    return t, float(corr)


def main(argv: list[str] | None = None) -> dict:
    from cnnlens.batching import check_batch_size

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="fewer repeats, one occlusion image")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model, layer, desc = load(args.model)
    except Exception as e:  # noqa: BLE001 - fall back so the bench still runs
        print(f"({args.model} unavailable: {e}; using torchvision resnet18 with random weights)")
        model, layer, desc = load("resnet18")
    repeat = 3 if args.quick else 7
    x = photos(args.batch)
    print(
        f"attribution benchmark: {desc}, batch {tuple(x.shape)}, {torch.get_num_threads()} threads, "
        f"min of {repeat} interleaved runs"
    )
    out = {}

    t = bench_gradients(model, layer, x, repeat)
    out["gradcam/forward"] = t["gradcam"] / t["forward"]
    out["saliency/forward"] = t["saliency"] / t["forward"]
    print(f"  forward            {t['forward'] * 1e3:8.1f} ms")
    print(f"  gradcam            {t['gradcam'] * 1e3:8.1f} ms   ratio {out['gradcam/forward']:.2f}  (goal ≤ 1.1)")
    print(f"  saliency           {t['saliency'] * 1e3:8.1f} ms   ratio {out['saliency/forward']:.2f}  (goal ≤ 2.1)")
    print(
        f"    saliency, all {len(x)} in one forward+backward {t['saliency (one batch)'] * 1e3:8.1f} ms   ratio "
        f"{t['saliency (one batch)'] / t['forward']:.2f}  (the default splits into batches of "
        f"{check_batch_size(None, x)})"
    )
    for k in ("autograd", "autograd (channels-last)"):
        print(
            f"    plain torch {k:<25} {t[k] * 1e3:8.1f} ms   ratio {t[k] / t['forward']:.2f}"
            "  (forward + backward to the input, plain autograd, no cnnlens)"
        )

    try:
        xo = x[:1] if args.quick else x[:2]
        sizes = [4, 16] if args.quick else [4, 8, 16, 32, 64]
        t, diff = bench_occlusion(model, xo, 32, 16, max(2, repeat // 2), sizes)
        cap = min((v, k) for k, v in t.items() if k.startswith("captum"))
        ours = min((v, k) for k, v in t.items() if k.startswith("cnnlens"))
        out["occlusion captum/cnnlens"] = cap[0] / ours[0]
        out["occlusion max |diff|"] = diff
        print(f"  occlusion ({len(xo)} image(s), window 32, stride 16, 169 positions each)")
        for k, v in t.items():
            print(f"    {k:<18} {v * 1e3:8.1f} ms")
        print(
            f"    best captum ({cap[1]}) / best cnnlens ({ours[1]}) = {out['occlusion captum/cnnlens']:.2f}  "
            f"(goal ≥ 1); max |difference| {diff:.2e} (goal ≤ 1e-5)"
        )
    except ImportError:
        print("  occlusion vs Captum: captum is not installed (pip install captum)")

    peers = [
        ("pytorch-grad-cam", "pytorch-grad-cam", bench_pytorch_grad_cam, "grad-cam"),
        ("torchcam", "TorchCAM GradCAM", bench_torchcam, "torchcam"),
    ]
    for key, label, bench, package in peers:
        try:
            t, corr = bench(model, layer, x, repeat)
        except ImportError:
            print(f"  {label} is not installed (pip install {package})")
            continue
        out[f"gradcam {key}/cnnlens"] = t[key] / t["cnnlens gradcam"]
        print(
            f"  {label:<18} {t[key] * 1e3:8.1f} ms vs cnnlens {t['cnnlens gradcam'] * 1e3:.1f} ms"
            f" → ratio {out[f'gradcam {key}/cnnlens']:.2f}; correlation of the maps {corr:.4f}"
        )
    return out


if __name__ == "__main__":
    main()
