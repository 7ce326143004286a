"""Activation maximisation, side by side with Lucent's ``render_vis``, in one process; prints ratios.

Same model (EfficientNet-Lite0, pixel input), same objective (the mean activation of
one channel of ``blocks.4``), same image size (224², Fourier parameterisation with
decorrelated colour, Adam at lr 0.05), comparable random transforms (Lucent's
``standard_transforms``: pad, jitter 8, scale ±5 %, rotate ±10°, jitter 4; cnnlens:
jitter 8, scale ±10 %, rotate ±10°). Reports the time per run as a ratio, and how well
each did: the channel's mean activation on the final image, measured by one plain
forward with a hook of this script's own.

Lucent runs the whole network at every step with a hook on every module, computes the
parameter gradients too, and leaves its hooks and the ``.grad`` on the model, so it
gets a deep copy. cnnlens stops the forward after ``blocks.4``.

Run:  python benchmarks/bench_maximize.py [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch


def channel_mean(model, layer: str, channel: int, img: torch.Tensor) -> float:
    """Mean activation of ``channel`` of ``layer`` for img (1×3×H×W in [0, 1]), by a plain forward hook."""
    module = dict(model.named_modules())[layer]
    got = {}
    h = module.register_forward_hook(lambda m, i, o: got.setdefault("a", o.detach()))
    try:
        with torch.no_grad():
            model(img)
    finally:
        h.remove()
    return float(got["a"][:, channel].mean())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="32 steps, one repeat")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import cnnlens
    from cnnlens.inside import maximize, objectives

    model = cnnlens.load_model("efficientnet-lite0")
    layer, channel, size = "net.blocks.4", 5, 224
    steps = 32 if args.quick else 128
    repeat = 1 if args.quick else 3
    print(
        f"activation maximisation: efficientnet-lite0, {layer} channel {channel}, {size}², {steps} Adam steps, "
        f"{torch.get_num_threads()} threads, min of {repeat}"
    )

    def ours():
        v = maximize(
            model,
            objectives.channel(layer, channel),
            steps=steps,
            size=size,
            param="fourier",
            decorrelate=True,
            lr=0.05,
            jitter=8,
            scale=0.1,
            rotate=10,
            seed=0,
        )
        return v.images[:1]

    try:
        from lucent.optvis import param, render
    except ImportError:
        print("  Lucent is not installed (pip install torch-lucent)")
        return {}

    theirs_model = copy.deepcopy(model)  # Lucent leaves hooks and parameter gradients on the model

    def theirs():
        torch.manual_seed(0)
        np.random.seed(0)
        imgs = render.render_vis(
            theirs_model,
            f"{layer.replace('.', '_')}:{channel}",
            param_f=lambda: param.image(size, decorrelate=True, fft=True),
            thresholds=(steps,),
            preprocess=False,
            progress=False,
            show_image=False,
        )
        return torch.from_numpy(np.ascontiguousarray(imgs[-1])).permute(0, 3, 1, 2).float()

    best = {"cnnlens": float("inf"), "lucent": float("inf")}
    out = {}
    for _ in range(repeat):
        for name, fn in (("cnnlens", ours), ("lucent", theirs)):
            t = time.perf_counter()
            out[name] = fn()
            best[name] = min(best[name], time.perf_counter() - t)
    grey = channel_mean(model, layer, channel, torch.full((1, 3, size, size), 0.5))
    value = {k: channel_mean(model, layer, channel, v) for k, v in out.items()}
    ratio = best["lucent"] / best["cnnlens"]
    print(f"  cnnlens maximize   {best['cnnlens']:7.2f} s   channel mean on the result {value['cnnlens']:8.3f}")
    print(f"  lucent render_vis  {best['lucent']:7.2f} s   channel mean on the result {value['lucent']:8.3f}")
    print(f"  (a grey image: {grey:.3f})   lucent/cnnlens time = {ratio:.2f}")
    return {
        "maximize lucent/cnnlens": ratio,
        "maximize value cnnlens": value["cnnlens"],
        "maximize value lucent": value["lucent"],
    }


if __name__ == "__main__":
    main()
