"""The microscope's two heavy parts, in one process; prints ratios.

1. Batched feature visualisation: channels of one EfficientNet-Lite0 layer (``blocks.4``,
   112 channels) at 128², Fourier parameterisation, Adam. ``maximize_channels`` renders
   many channels in one optimisation (a batch of images, one channel objective each);
   the baseline is one ``maximize`` call per channel. Reported: time per channel per
   step at batch 1, 8, 16 and 64 against separate calls (the time of a step does not change
   along the optimisation, so a step is timed as the shortest of a few, the fixed cost of a
   call — layer probe, start and final forwards — as the rest, and the totals for
   64 channels × 256 steps and for the whole layer are extrapolated from them — say so), and
   a check that batching gives the same per-channel objective as separate calls (within
   10 %, ``--check-steps`` steps). ``--profile`` prints where the time of one step goes.
2. One microscope scan collecting top-9 patches and statistics (histogram, class means,
   selectivity) of every channel of 3 digits-cnn layers over digits, against one plain
   evaluation pass over the same data.

Timings are minima over interleaved repeats (A, B, A, B, ...): this machine is shared
with other busy processes, so absolute times vary a lot; the ratios are what to read.

Run:  python benchmarks/bench_microscope.py [--quick] [--threads N] [--profile]

Scan part, measured 2026-12-01/02 on the shared 2-core machine (load average 4–6), minima of interleaved rounds:

    python benchmarks/bench_microscope.py --only scan --threads 1          (7 rounds)
      evaluation pass 116 ms, microscope scan 285 ms: 2.46× wall, 2.76× CPU time (goal ≤ 1.3×)
      top-9 patches alone 1.26 / 1.53×, statistics alone 2.42 / 2.40× (wall / CPU)
      later, load ≈ 4: evaluation pass 67 ms, microscope scan 180 ms: 2.70× wall and CPU time
    the code before the scan work and this code run alternately (``--only scan --quick``, 3 rounds each):
      1 thread:  before 3.97× / 4.11× CPU time (262 / 276 ms), now 2.73× / 2.79× (194 / 204 ms)
      2 threads: the statistics alone before 3.4–3.8×, now 2.2–2.7×; the top-9 patches alone before 1.75×, now
                 1.1–1.5×; whole ratios swing from 1.9× to 13× because two threads crawl while other jobs hold
                 the cores (an evaluation pass took 67 ms on one thread and 190–840 ms on two)

What is left is the statistics' few passes over each image's 28.7 k activations (max, min, sum,
shifted sum of squares, zero count, histogram slot, bincount: about 5 ns per activation with hot caches, 8–10 ns
in the scan, the bincount ~1.6 ns of it) against a forward of about 11 ns per activation on this tiny net; 1.3×
would need a fused kernel (one pass computing every statistic), which eager PyTorch does not offer.
"""

from __future__ import annotations

import argparse
import time

import torch


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def channel_mean(model, layer: str, channel: int, img: torch.Tensor) -> float:
    """Mean activation of ``channel`` of ``layer`` on img (C×H×W), by a plain forward hook of this script."""
    module = dict(model.named_modules())[layer]
    got = {}
    h = module.register_forward_hook(lambda m, i, o: got.setdefault("a", o.detach()))
    try:
        with torch.no_grad():
            model(img[None])
    finally:
        h.remove()
    return float(got["a"][0, channel].mean())


def _run_timed(fn, steps: int) -> tuple[float, float]:
    """(time of one step, fixed cost of the call): fn(progress) runs ``steps`` steps and calls progress after each;
    a step is the shortest interval between two calls, the fixed cost (layer probe, start and final forwards,
    reading the activation) the rest of the call's time."""
    ts = []
    t0 = time.perf_counter()
    fn(lambda *_: ts.append(time.perf_counter()))
    t1 = time.perf_counter()
    step = min(b - a for a, b in zip(ts, ts[1:], strict=False))  # neighbouring pairs
    return step, max(0.0, (t1 - t0) - steps * step)


def bench_render(args) -> dict:
    import math

    import cnnlens
    from cnnlens.inside import maximize, maximize_channels, objectives

    model = cnnlens.load_model("efficientnet-lite0")
    layer, size, C = "net.blocks.4", 128, 112
    T = args.timed_steps
    opts = dict(size=size, lr=0.05, param="fourier", seed=0)
    print(
        f"batched feature visualisation: efficientnet-lite0 {layer} ({C} channels), {size}², Fourier, Adam; "
        f"{torch.get_num_threads()} thread(s); each run times {T} steps (a step is the shortest interval between "
        f"two steps, the fixed cost of a call the rest) and 256-step totals are extrapolated from them; min of "
        f"{args.repeat} interleaved repeats; shared machine with other busy processes"
    )

    def separate(progress):  # one maximize call for one channel (the baseline), as a user would without batching
        maximize(
            model, objectives.channel(layer, 0), steps=T, noise="shared", redirect_relu=True, progress=progress, **opts
        )

    def batched(b):
        return lambda progress: maximize_channels(
            model, layer, list(range(b)), steps=T, batch_size=b, progress=progress, **opts
        )

    from cnnlens.tap import LayerTap

    def floor(b):  # the model alone: forward to the layer and backward to the input, T times (no parameterisation,
        x = torch.rand(b, 3, size, size)  # transforms, objective, optimiser or redirected ReLU)

        def run(progress):
            for _ in range(T):
                xi = x.clone().requires_grad_(True)
                with LayerTap(model, [layer], stop_after=layer) as tap:
                    tap.run(xi)
                    torch.autograd.grad(tap[layer][:, 0].mean(), xi)
                progress()

        return run

    runs = {
        "separate": (separate, 1),
        **{f"batch {b}": (batched(b), b) for b in args.batches},
        **{f"floor {b}": (floor(b), b) for b in args.batches},
    }
    step = {k: float("inf") for k in runs}
    fixed = {k: float("inf") for k in runs}
    for _ in range(args.repeat):
        for k, (fn, _b) in runs.items():
            st, fx = _run_timed(fn, T)
            step[k], fixed[k] = min(step[k], st), min(fixed[k], fx)

    def total(k, channels, steps=256):  # whole optimisations of b channels, steps each, plus their fixed costs
        b = runs[k][1]
        return math.ceil(channels / b) * (fixed[k] + steps * step[k])

    out = {"threads": torch.get_num_threads()}
    sep64 = total("separate", 64)
    print(
        f"  separate maximize calls: {step['separate'] * 1e3:.1f} ms per step (+ {fixed['separate']:.2f} s fixed per "
        f"call) → 64 channels × 256 steps {sep64 / 60:.1f} min"
    )
    for b in args.batches:
        k = f"batch {b}"
        t64 = total(k, 64)
        print(
            f"  maximize_channels, batch {b:>2}: {step[k] / b * 1e3:.1f} ms per channel per step (the model's own "
            f"forward + backward to the input: {step[f'floor {b}'] / b * 1e3:.1f} ms per image) (+ {fixed[k]:.2f} s "
            f"fixed per optimisation) → 64 channels × 256 steps {t64 / 60:.1f} min: {sep64 / t64:.2f}× faster per "
            f"channel than separate calls; the whole layer {total(k, C) / 60:.1f} min"
        )
        out[f"ratio_batch_{b}"] = sep64 / t64
        out[f"layer_min_batch_{b}"] = total(k, C) / 60
        out[f"floor_share_batch_{b}"] = step[f"floor {b}"] / step[k]
    best = min(args.batches, key=lambda b: total(f"batch {b}", C))
    out.update(best_batch=best, est_layer_min=total(f"batch {best}", C) / 60)
    print(
        f"  fastest: batch {best}, the whole layer ({C} channels × 256 steps) in {out['est_layer_min']:.1f} min "
        f"(extrapolated, on this loaded machine)"
    )

    # the same objective: batched vs separate, for a few channels (shared starting noise and transforms)
    S = args.check_steps
    chans = [0, 1, 2, 3]
    v = maximize_channels(model, layer, chans, steps=S, robust=True, **opts)
    worst = 0.0
    for r, c in enumerate(chans):
        one = maximize(
            model,
            objectives.channel(layer, c),
            steps=S,
            noise="shared",
            redirect_relu=True,
            jitter=8,
            scale=0.1,
            rotate=10,
            **opts,
        )
        a, s = channel_mean(model, layer, c, v.images[r, 0]), channel_mean(model, layer, c, one.images[0])
        worst = max(worst, abs(a - s) / max(abs(s), 1e-9))
        print(
            f"  channel {c}: mean activation batched {a:.3f}, separate {s:.3f} (grey image "
            f"{channel_mean(model, layer, c, torch.full((3, size, size), 0.5)):.3f})"
        )
    print(
        f"  largest relative difference of the per-channel objective, batched vs separate, {S} robust steps: "
        f"{worst:.2e} (goal ≤ 10 %)"
    )
    out["objective_rel_diff"] = worst

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for b in (1, best):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                maximize_channels(model, layer, list(range(b)), steps=2, batch_size=b, **opts)
            print(f"  profile, {b} channel(s), 2 steps (+ the fixed forwards):")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14))
    return out


def bench_scan(args) -> dict:
    import cnnlens
    from cnnlens.data import as_dataset
    from cnnlens.evaluation import EvaluationAccumulator
    from cnnlens.inside import MicroscopeAccumulator, layer_edges
    from cnnlens.scanning import scan

    if args.scan_model == "resnet18":  # a real-size network: random weights, 512 random 112² images, 10 labels
        import torchvision

        torch.manual_seed(0)
        model = torchvision.models.resnet18().eval()
        g = torch.Generator().manual_seed(0)
        data = torch.utils.data.TensorDataset(
            torch.rand(512, 3, 112, 112, generator=g), torch.randint(0, 10, (512,), generator=g)
        )
        layers, size = ["layer2", "layer3", "layer4"], (112, 112)
    else:
        model = cnnlens.load_model("digits-cnn")
        data = as_dataset("digits", model)
        layers, size = ["net.features.1", "net.features.4", "net.features.7"], (32, 32)
    edges = layer_edges(model, data, layers)  # chosen once, as the microscope does before its scan
    rfs = {a.layer: a.rf for a in MicroscopeAccumulator(model, layers, 9, edges=edges, input_size=size).search.values()}
    print(
        f"microscope scan: {args.scan_model}, top-9 + statistics of every channel of {', '.join(layers)} "
        f"({len(data)} images, batch 64, {torch.get_num_threads()} torch thread(s)) vs one evaluation pass; min of "
        f"{args.scan_repeat} interleaved repeats"
    )
    classes = 10 if args.scan_model != "resnet18" else 1000

    def plain():
        scan(model, data, [EvaluationAccumulator(num_classes=classes)])

    def micro():
        scan(
            model,
            data,
            [MicroscopeAccumulator(model, layers, 9, edges=edges, input_size=size, num_classes=classes, rfs=rfs)],
        )

    from cnnlens.inside import SearchAccumulator, StatsAccumulator

    def top_only():  # where the time goes: the top-k patches alone, the statistics alone
        scan(model, data, [SearchAccumulator(model, n, k=9, rf=rfs[n]) for n in layers])

    def stats_only():
        scan(model, data, [StatsAccumulator(n, edges[n], num_classes=classes) for n in layers])

    runs = {"plain": plain, "micro": micro, "top": top_only, "stats": stats_only}
    best = {k: float("inf") for k in runs}
    cpu = dict(best)
    for _ in range(args.scan_repeat):
        for k, fn in runs.items():
            w, c = time.perf_counter(), time.process_time()
            fn()
            best[k], cpu[k] = min(best[k], time.perf_counter() - w), min(cpu[k], time.process_time() - c)
    ratio = best["micro"] / best["plain"]
    print(
        f"  evaluation pass {best['plain'] * 1e3:.0f} ms, microscope scan {best['micro'] * 1e3:.0f} ms "
        f"(receptive fields computed before, as in the CLI; both through cnnlens.scan, same batches): {ratio:.2f}× "
        f"wall, {cpu['micro'] / cpu['plain']:.2f}× CPU time (goal ≤ 1.3×)"
    )
    print(
        f"  where the time goes (each alone, as × the evaluation pass, wall / CPU): top-9 patches "
        f"{best['top'] / best['plain']:.2f} / {cpu['top'] / cpu['plain']:.2f}×, statistics "
        f"{best['stats'] / best['plain']:.2f} / {cpu['stats'] / cpu['plain']:.2f}×"
        + (
            " — digits-cnn is three small convolutions: each image's 28.7 k activations of the three layers cost the "
            "forward about as much as the few passes over them (max, min, sum, shifted sum of squares, zero count, "
            "one histogram binning + bincount) that statistics need"
            if args.scan_model == "digits-cnn"
            else ""
        )
    )
    return {
        "scan_ratio": ratio,
        "scan_ratio_cpu": cpu["micro"] / cpu["plain"],
        "top_ratio": best["top"] / best["plain"],
        "stats_ratio": best["stats"] / best["plain"],
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--profile", action="store_true", help="print where the time of a step goes")
    ap.add_argument("--only", choices=["render", "scan"], default=None)
    ap.add_argument(
        "--scan-model",
        choices=["digits-cnn", "resnet18"],
        default="digits-cnn",
        help="the scan's network: digits-cnn over digits (the goal's case), or a random-weight ResNet-18 "
        "over 512 random 112² images (a real-size network)",
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.timed_steps = 3 if args.quick else 5
    args.check_steps = 8 if args.quick else 32
    args.repeat = 1 if args.quick else 2
    args.scan_repeat = 3 if args.quick else 7
    args.batches = [1, 8] if args.quick else [1, 8, 16, 64]
    out = {}
    if args.only in (None, "scan"):
        out.update(bench_scan(args))
    if args.only in (None, "render"):
        out.update(bench_render(args))
    return out


if __name__ == "__main__":
    main()
