"""Bridged Captum methods × torchvision architectures: does it run, and does it add up?

For each architecture (random weights; batch-norm statistics measured on random
images, so the logits move with the input) and each Captum method, one call of
``cnnlens.attribution.captum`` on two random images; the cell is the largest
completeness gap (relative, see ``cnnlens.attribution.completeness``), ``✓``
where the method has no conservation property, or the one-line error. The
``Captum alone`` cells say what Captum does on the model itself (no per-call-site
copy, no extra rules) for the rule-based methods.

    PYTHONPATH=src python benchmarks/bridges_table.py [--size 32] [--out table.md]
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import torch
import torchvision
from torch import nn

from cnnlens.attribution import captum
from cnnlens.tap import guarded

ARCHS = ("vgg11", "resnet18", "mobilenet_v2", "densenet121")
METHODS = ("DeepLift", "DeepLiftShap", "LRP", "IntegratedGradients", "GradientShap", "GuidedBackprop", "Deconvolution")
RULE_BASED = ("DeepLift", "DeepLiftShap", "LRP", "GuidedBackprop")


def calibrated(name: str, size: int) -> nn.Module:
    torch.manual_seed(0)
    m = getattr(torchvision.models, name)(weights=None)
    for bn in m.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.reset_running_stats()
            bn.momentum = None
    m.train()
    with torch.no_grad():
        m(torch.rand(16, 3, size, size))
    return m.eval()


def cell(model: nn.Module, x: torch.Tensor, method: str) -> str:
    try:
        e = captum(model, x, method, target=3)
    except Exception as err:  # noqa: BLE001 - the table shows the one-line error
        return f"error: {str(err)[:90]}…"
    gap = e.extras.get("completeness_gap")
    if gap is None:
        return "runs (no conservation property)"
    worst = float(gap.max())
    flag = "" if e.extras.get("complete") else " ⚠ flagged"
    return f"gap {worst:.1e}{flag}"


def alone(model: nn.Module, x: torch.Tensor, method: str) -> str:
    import captum.attr as ca

    kw = (
        {"baselines": torch.cat([torch.zeros_like(x[:1]), torch.full_like(x[:1], 0.5)])}
        if method == "DeepLiftShap"
        else {}
    )
    try:
        with guarded(model), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a = getattr(ca, method)(model).attribute(x.clone().requires_grad_(), target=3, **kw)
    except Exception as err:  # noqa: BLE001
        return f"{type(err).__name__}"
    s = a.detach().flatten(1).sum(1)
    return f"runs (Σ = {float(s.abs().max()):.2g})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    x = torch.rand(2, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    rows = []
    t0 = time.perf_counter()
    for arch in ARCHS:
        m = calibrated(arch, args.size)
        rows.append([arch] + [cell(m, x, k) for k in METHODS])
        rows.append([f"{arch}, Captum alone"] + [alone(m, x, k) if k in RULE_BASED else "" for k in METHODS])
    lines = ["| architecture | " + " | ".join(METHODS) + " |", "|---" * (len(METHODS) + 1) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    text = (
        "\n".join(lines) + f"\n\n{args.size}×{args.size} images, 2 per call, target class 3; "
        f"{time.perf_counter() - t0:.0f} s in all.\n"
    )
    print(text)  # noqa: T201 - a script
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
