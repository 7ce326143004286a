"""Ablation-CAM and Score-CAM vs pytorch-grad-cam, in one process; prints ratios.

Goals (issue 14), batch 1, random weights:
  * Ablation-CAM vs pytorch-grad-cam's ``AblationCAM`` on ResNet-50: ≥ 300× at ``layer4``
    (closed form on the GAP + linear head), ≥ 3× at ``layer3`` (only layer4 and the head
    run on the ablations; pytorch-grad-cam re-runs everything before the layer per batch);
  * Score-CAM vs pytorch-grad-cam's ``ScoreCAM`` (its default batch of 16) ≥ 1.5×.

pytorch-grad-cam is given the last block of the layer (``layer4[-1]``), whose output is
the layer's; both sides ablate to zero there (the block ends in a ReLU). Every time is
the minimum over interleaved rounds (the machine may be shared); the maps' correlation
is printed next to each ratio.

Run:  python benchmarks/bench_cam.py [--quick] [--size 224] [--rounds 2] [--threads 2]
        [--score-model resnet18|resnet50] [--score-only] [--load]

cnnlens' Score-CAM measures its batch size and thread count as it runs (``cnnlens.batching.Tuner``, kept for the
process: the first round also pays the trials); its measurements are printed.
"""

from __future__ import annotations

import argparse
import functools
import time

import numpy as np
import torch


def _corr(a, b) -> float:
    return float(np.corrcoef(np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel())[0, 1])


def _timed(fns: dict, rounds: int) -> tuple[dict, dict]:
    best, out = {k: float("inf") for k in fns}, {}
    for _ in range(rounds):
        for k, f in fns.items():
            t = time.perf_counter()
            out[k] = f()
            best[k] = min(best[k], time.perf_counter() - t)
            print(f"    {k}: {time.perf_counter() - t:.2f} s", flush=True)
    return best, out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="112² input, one round")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--score-model", default="resnet18")
    ap.add_argument("--score-only", action="store_true", help="only Score-CAM")
    ap.add_argument("--load", action="store_true", help="run a competing matmul process (as bench_occlusion.py)")
    a = ap.parse_args(argv)
    if a.quick:
        a.size, a.rounds = 112, 1
    torch.set_num_threads(a.threads)
    import types

    import pytorch_grad_cam.score_cam as grad_cam_score
    import torchvision
    from pytorch_grad_cam import AblationCAM, ScoreCAM

    # its ScoreCAM draws a tqdm bar per image: off, in this process only (its own code is not changed)
    grad_cam_score.tqdm = types.SimpleNamespace(tqdm=functools.partial(grad_cam_score.tqdm.tqdm, disable=True))
    from bench_occlusion import competing_load
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from cnnlens.attribution import ablation_cam, score_cam
    from cnnlens.batching import chosen, workload

    with competing_load(a.load):
        _run(a, AblationCAM, ScoreCAM, ClassifierOutputTarget, ablation_cam, score_cam, chosen, workload, torchvision)


def _run(a, AblationCAM, ScoreCAM, ClassifierOutputTarget, ablation_cam, score_cam, chosen, workload, torchvision):
    print(
        f"threads {a.threads}, {a.size}² input, batch 1, random weights, competing load: "
        f"{'a matmul process' if a.load else 'none of our own'}; minima of interleaved rounds on a shared machine",
        flush=True,
    )
    x = torch.rand(1, 3, a.size, a.size, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    r50 = torchvision.models.resnet50().eval()
    with torch.no_grad():
        cls = int(r50(x).argmax(1))
    if not a.score_only:
        ablation_cam(r50, x, cls, layer="layer4")  # warm-up (imports, tracing)
    for layer in () if a.score_only else ("layer4", "layer3"):
        block = getattr(r50, layer)[-1]
        fns = {
            "cnnlens": lambda layer=layer: ablation_cam(r50, x, cls, layer=layer),
            "pytorch-grad-cam": lambda block=block: AblationCAM(r50, [block])(x, targets=[ClassifierOutputTarget(cls)]),
        }
        best, out = _timed(fns, a.rounds)
        e = out["cnnlens"]
        print(
            f"Ablation-CAM, ResNet-50 {layer} ({e.settings['path']}): cnnlens {best['cnnlens']:.3f} s, "
            f"pytorch-grad-cam {best['pytorch-grad-cam']:.2f} s, ratio "
            f"{best['pytorch-grad-cam'] / best['cnnlens']:.1f}×, "
            f"maps correlated {_corr(e.maps[0], out['pytorch-grad-cam'][0]):.4f}",
            flush=True,
        )
    torch.manual_seed(0)
    sm = getattr(torchvision.models, a.score_model)().eval()
    with torch.no_grad():
        cls = int(sm(x).argmax(1))
    fns = {
        "cnnlens": lambda: score_cam(sm, x, cls, layer="layer4"),
        "pytorch-grad-cam": lambda: ScoreCAM(sm, [sm.layer4[-1]])(x, targets=[ClassifierOutputTarget(cls)]),
    }
    best, out = _timed(fns, a.rounds)
    e = out["cnnlens"]
    print(
        f"Score-CAM, {a.score_model} layer4 ({e.extras['scores'].shape[1]} channels): cnnlens {best['cnnlens']:.2f} s "
        f"(batch {e.settings['batch_size']}), pytorch-grad-cam {best['pytorch-grad-cam']:.2f} s, ratio "
        f"{best['pytorch-grad-cam'] / best['cnnlens']:.2f}×, maps correlated "
        f"{_corr(e.maps[0], out['pytorch-grad-cam'][0]):.4f}; {int(e.extras['constant'][0].sum())}"
        " constant maps share one forward",
        flush=True,
    )
    arms = chosen(workload("score_cam", sm, x))
    print(
        "  tuner's measurements (ms per image): "
        + ", ".join(
            f"{arm.batch}{' CL' if arm.channels_last else ''} on {arm.threads or a.threads} thread(s) {v * 1e3:.1f}"
            for arm, v in sorted(arms.items(), key=lambda kv: kv[1])
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
