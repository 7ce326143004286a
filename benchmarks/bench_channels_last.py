"""What the channels-last layout buys Integrated Gradients and SmoothGrad, and what it costs in exactness.

For each model (random weights, batch-norm statistics measured on random images, as in the conformance zoo),
IG and SmoothGrad run with ``channels_last=True`` and ``False`` on one image and on a batch, interleaved; printed:
the time ratio contiguous / channels-last (> 1: channels-last is faster) and each layout's relative max error
(and plain contiguous float32 autograd's, its points batched as the method batches them) against plain autograd on
a float64 copy (IG: the same trapezoid points; SmoothGrad: the same seeded noise).
This is the measurement behind the default ``channels_last=False`` of integrated_gradients and smoothgrad
(docs/guide/architectures.md).

Run:  python benchmarks/bench_channels_last.py [--size 224] [--batch 4] [--models resnet18,...] [--repeat 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import zoo  # noqa: E402
from bench_attribution import interleaved  # noqa: E402

from cnnlens.attribution import integrated_gradients, smoothgrad  # noqa: E402

STEPS, NOISE = zoo.COST["integrated_gradients"]["steps"], zoo.COST["smoothgrad"]["n"]  # as the references


def run(models: list[str], size: int, batch: int, repeat: int) -> list[dict]:
    rows = []
    for name in models:
        arch = zoo.Arch(name, zoo.tv(name) if not name.startswith("timm.") else zoo.tm(name[5:]), size=size)
        zoo.BY_NAME[name] = arch
        p = zoo.prepared(name)
        for n in (1, batch):
            x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1))
            cls = p.model(x).argmax(1)
            for method, fn, kw in (
                ("integrated_gradients", integrated_gradients, {"steps": STEPS}),
                ("smoothgrad", smoothgrad, {"n": NOISE}),
            ):
                res = {}
                t = interleaved(
                    {
                        cl: (lambda cl=cl: res.__setitem__(cl, fn(p.model, x, cls, channels_last=cl, **kw)))
                        for cl in (True, False)
                    },
                    repeat,
                )
                ref = zoo.reference(method, p.twin64, x, cls)
                rows.append(
                    {
                        "model": name,
                        "method": method,
                        "n": n,
                        "contiguous/cl": t[False] / t[True],
                        "err_cl": zoo.rel(res[True].maps, ref),
                        "err_contiguous": zoo.rel(res[False].maps, ref),
                        "err_plain32": zoo.rel(zoo.reference(method, p.twin32, x, cls), ref),
                        "s_cl": t[True],
                        "s_contiguous": t[False],
                    }
                )
                r = rows[-1]
                print(
                    f"{name:22s} {method:21s} N={n}  contiguous/channels-last time {r['contiguous/cl']:.2f}  "
                    f"err channels-last {r['err_cl']:.1e}  contiguous {r['err_contiguous']:.1e}  "
                    f"plain float32 {r['err_plain32']:.1e}  ({r['s_cl']:.2f} s / {r['s_contiguous']:.2f} s)",
                    flush=True,
                )
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--models", default="resnet18,mobilenet_v3_small,vgg11_bn,timm.repvgg_a0,timm.hgnetv2_b0")
    a = ap.parse_args(argv)
    return run(a.models.split(","), a.size, a.batch, a.repeat)


if __name__ == "__main__":
    main()
