"""Peak memory of single-image calls on the bundled models; prints MB above the loaded model, goal ≤ 1 GB.

Each call runs in a fresh process (``ru_maxrss`` only grows, so one process per call measures that call): the
process loads the model, notes its resident-set peak, runs the call once on one 224×224 photo (a 32×32 digit for
digits-cnn) and reports the new peak. The difference is what the call itself needed.

Run:  python benchmarks/bench_memory.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

GOAL_MB = 1024

CALLS = {
    # name: (model, code run with `m`, `x`, `cnnlens` in scope)
    "saliency": ("efficientnet-lite0", "cnnlens.attribution.saliency(m, x)"),
    "gradcam": ("efficientnet-lite0", "cnnlens.attribution.gradcam(m, x)"),
    "integrated_gradients": ("efficientnet-lite0", "cnnlens.attribution.integrated_gradients(m, x)"),
    "occlusion": ("efficientnet-lite0", "cnnlens.attribution.occlusion(m, x, window=32, stride=16)"),
    "augmented_gradcam": ("efficientnet-lite0", "cnnlens.attribution.augmented_gradcam(m, x)"),
    "receptive_field conv_head": ("efficientnet-lite0", "cnnlens.inside.receptive_field(m, 'conv_head')"),
    "pgd 10 steps": ("efficientnet-lite0", "cnnlens.attacks.pgd(m, x, eps=2 / 255, steps=10)"),
    "minimal_eps": ("efficientnet-lite0", "cnnlens.attacks.minimal_eps(m, x, target='second', steps=4)"),
    "maximize 32 steps": (
        "efficientnet-lite0",
        "cnnlens.inside.maximize(m, cnnlens.inside.objectives.channel('blocks.4', [0]), 32)",
    ),
    "deep_dream": ("efficientnet-lite0", "cnnlens.inside.deep_dream(m, x, 'blocks.4', octaves=2, steps=4)"),
    "receptive_field (digits)": ("digits-cnn", "cnnlens.inside.receptive_field(m, 'features')"),
    "gradcam (digits)": ("digits-cnn", "cnnlens.attribution.gradcam(m, x)"),
}
QUICK = ("gradcam", "receptive_field conv_head", "pgd 10 steps")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _one(name: str) -> dict:
    import torch

    import cnnlens

    torch.set_num_threads(2)
    model, code = CALLS[name]
    m = cnnlens.load_model(model)
    c, (h, w) = m.spec.channels, m.spec.input_size
    x = torch.rand(1, c, h, w, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        m(x)  # a first forward: one-off allocations (thread pools, kernels) are not the call's
    loaded = _peak_mb()
    eval(code, {"cnnlens": cnnlens, "m": m, "x": x})  # noqa: S307 - our own fixed snippets
    return {"loaded_mb": loaded, "peak_mb": _peak_mb()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(_one(args.one)))
        return {}
    names = QUICK if args.quick else tuple(CALLS)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    print(f"peak memory of single-image calls (MB above the loaded model; goal ≤ {GOAL_MB}), one process per call")
    out = {}
    for name in names:
        r = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True, text=True, env=env)
        if r.returncode != 0:
            print(f"  {name:<28} failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
            continue
        d = json.loads(r.stdout.strip().splitlines()[-1])
        extra = d["peak_mb"] - d["loaded_mb"]
        out[f"memory {name} MB"] = extra
        print(
            f"  {name:<28} {extra:8.0f} MB   (process peak {d['peak_mb']:.0f} MB, model loaded "
            f"{d['loaded_mb']:.0f} MB){'' if extra <= GOAL_MB else '   ABOVE THE GOAL'}",
            flush=True,
        )
    return out


if __name__ == "__main__":
    main()
