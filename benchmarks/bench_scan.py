"""Dataset scan: images per second of cnnlens' one scan against torchmetrics plus a separate hooked pass; memory.

Model and data (honest for 2 CPU cores): ``cluttered-digits-cnn`` (bundled, trained; four conv-ReLU stages,
64×64 grey input) on the cluttered-digits training split (4,314 generated images, the first 2,000 or 500),
batch 64, the same ``Dataset`` and batch size for every side. ``--model resnet18``: torchvision's ResNet-18
(random weights, 10 classes) on the same images as 3 grey channels at 64².

Compared, minima of interleaved repeats (A, B, A, B, ...; the machine is shared with other busy processes,
so wall-clock minima and CPU-time minima are both printed):

1. ``cnnlens.evaluate`` (confusion matrix, top-1 and top-5) against a loop over a ``DataLoader`` feeding
   torchmetrics' ``MulticlassConfusionMatrix`` and ``MulticlassAccuracy(top_k=1)``, ``(top_k=5)``.
2. ONE ``cnnlens.scan`` with evaluation + dataset search (top-9 images, positions and receptive-field patches
   of every channel) + neuron statistics (mean, variance, min/max, sparsity, 40-bin histogram, class means,
   selectivity) of the searched layers, against the torchmetrics pass plus a separate pass with a plain
   forward hook keeping each channel's top-9 (value, image, position; patches cropped once at the end),
   written here — straightforward, not deliberately slow. The peer computes no statistics at all.
   The two searches are checked to agree (activations of every channel's top-9) and the confusion matrices to
   be equal.
3. Memory of the one scan at 500 and at 2,000 images, each in a fresh process: the peak resident set
   (psutil RSS sampled every 2 ms by a thread) above the RSS just before the scan (model, data and a warm-up
   forward loaded), and tracemalloc's peak of Python allocations during the scan (torch tensors' storage is
   not traced by tracemalloc; the RSS covers it). Goal: at 2,000 within 10 % of 500.

Run:  python benchmarks/bench_scan.py [--quick] [--threads N] [--model cluttered|resnet18] [--n 2000]
        [--only speed|memory]

Measured 2026-12-01 on the 2-core machine shared with three other engineers' jobs (load average 4.5–8), 1 torch
thread, 2,000 images, minima of 3 interleaved rounds:

    python benchmarks/bench_scan.py --threads 1 --model resnet18
      evaluate: cnnlens 156 images/s, torchmetrics loop 144 images/s → 1.09× (CPU time 1.09×)
      one scan: cnnlens 131 images/s; torchmetrics pass + hooked search pass 68 images/s → 1.92× (CPU 1.91×)
      the one scan costs 1.19× cnnlens' evaluation alone
    python benchmarks/bench_scan.py --threads 1
      evaluate: cnnlens 1089 images/s, torchmetrics loop 1035 images/s → 1.05× (CPU time 1.07×)
      one scan: cnnlens 714 images/s; torchmetrics pass + hooked search pass 485 images/s → 1.47× (CPU 1.47×)
      the one scan costs 1.53× cnnlens' evaluation alone; a later run (load ≈ 4, --only speed): evaluate
      1.08×, one scan 1354 vs 982 images/s → 1.38× (a net this small spends as long reading its
      activations for the statistics as computing them: the ≥ 1.8× goal holds on ResNet-18, not here)
    python benchmarks/bench_scan.py --only memory --threads 1 [--model resnet18]
      ResNet-18: 500 images +773.6/785.0/743.4 MB RSS, 2,000 images +834.8/815.4/825.7 MB → medians +7 %;
                 within each 2,000-image scan, last 500 vs first 500 images: +3 %, +3 %, +1 %
      cluttered: 500 images +71.7/76.4/72.6 MB, 2,000 images +78.1/81.8/77.3 MB → medians +8 %;
                 within each scan: +9 %, +10 %, +3 %; Python objects 2.73 MB at both sizes
    since 2026-12-02 a search keeps no more images than the scan has samples (before: channels × k at once):
      cluttered: 500 images +70.3/66.7/72.1 MB, 2,000 images +81.3/77.2/82.0 MB → +16 %; within: +5, +6, +0 %
      ResNet-18: 500 images +469.4/495.7/474.6 MB, 2,000 images +699.3/699.5/719.7 MB → +47 %; within: +2, +1, +9 %
      (the smaller scan got cheaper; where both reach the bound, --base 2000 --n 4000 on cluttered: +79.0 → +84.5 MB,
      +7 %)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import torch

K = 9


# --------------------------------------------------------------------------- set-up
def build(model_name: str, n: int):
    import cnnlens
    from cnnlens.models.cluttered import cluttered_digits

    full = cluttered_digits("train")
    if model_name == "resnet18":
        import logging

        logging.getLogger("cnnlens").setLevel(logging.ERROR)
        model = cnnlens.load_model("torchvision:resnet18", num_classes=10)
        layers = ["net.layer3", "net.layer4"]

        class Grey3(torch.utils.data.Dataset):
            def __init__(self, ds):
                self.ds = ds

            def __len__(self):
                return len(self.ds)

            def __getitem__(self, i):
                x, y = self.ds[i]
                return x.expand(3, -1, -1), y

        full = Grey3(full)
    else:
        model = cnnlens.load_model("cluttered-digits-cnn")
        layers = ["net.features.7", "net.features.10"]  # the last two conv stages' ReLUs: 32×16×16, 64×8×8
    ds = torch.utils.data.Subset(full, range(n))
    return model, ds, layers


def prepare(model, ds, layers):
    """What both sides get before timing: receptive fields and (cnnlens) the histogram edges."""
    from cnnlens.inside import layer_edges, receptive_field

    rfs = {n: receptive_field(model, n, input_size=tuple(ds[0][0].shape[-2:]), probe=False) for n in layers}
    edges = layer_edges(model, ds, layers)
    return rfs, edges


# --------------------------------------------------------------------------- cnnlens
def cnnlens_evaluate(model, ds, bs):
    import cnnlens

    return cnnlens.evaluate(model, ds, topk=(1, 5), batch_size=bs)


def cnnlens_scan(model, ds, layers, rfs, edges, bs):
    from cnnlens.scanning import scan

    return accs_scan(model, ds, layers, rfs, edges, bs, scan)


# --------------------------------------------------------------------------- peers
def torchmetrics_evaluate(model, ds, bs):
    from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

    cm = MulticlassConfusionMatrix(num_classes=10)
    top1 = MulticlassAccuracy(num_classes=10, top_k=1, average="micro")
    top5 = MulticlassAccuracy(num_classes=10, top_k=5, average="micro")
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(ds, batch_size=bs):
            logits = model(x)
            cm.update(logits, y)
            top1.update(logits, y)
            top5.update(logits, y)
    return cm.compute(), top1.compute(), top5.compute()


class HookedTopK:
    """A plain forward hook keeping each channel's top-k images: value, dataset index, position (row-major)."""

    def __init__(self, k: int):
        self.k, self.seen = k, 0
        self.values = self.index = self.flat = None
        self.width = None

    def __call__(self, module, inputs, out):
        a = out.detach()
        n, C, H, W = a.shape
        self.width = W
        v, arg = a.reshape(n, C, H * W).max(2)  # each image's strongest unit per channel
        v, arg = v.t(), arg.t()
        idx = torch.arange(self.seen, self.seen + n).expand(C, n)
        self.seen += n
        if self.values is not None:
            v, arg, idx = (torch.cat([a0, b0], 1) for a0, b0 in ((self.values, v), (self.flat, arg), (self.index, idx)))
        top = v.topk(min(self.k, v.shape[1]), dim=1)
        self.values, self.flat, self.index = top.values, arg.gather(1, top.indices), idx.gather(1, top.indices)

    def crops(self, ds, rf):
        """Each winner's receptive-field patch, cut from its image once at the end (zero outside the image), as
        cnnlens cuts it."""
        out = []
        for c in range(self.values.shape[0]):
            row = []
            for j in range(self.values.shape[1]):
                x = ds[int(self.index[c, j])][0]
                i0, j0 = divmod(int(self.flat[c, j]), self.width)
                t, l, b, r = rf.box(i0, j0)
                H, W = x.shape[-2:]
                if b - t > H:  # a field larger than the image: the whole image along that axis
                    t, b = 0, H
                if r - l > W:
                    l, r = 0, W
                patch = torch.zeros(x.shape[0], b - t, r - l)
                tt, ll, bb, rr = max(t, 0), max(l, 0), min(b, H), min(r, W)
                patch[:, tt - t : bb - t, ll - l : rr - l] = x[:, tt:bb, ll:rr]
                row.append(patch)
            out.append(torch.stack(row))
        return torch.stack(out)


def hooked_search(model, ds, layers, rfs, bs):
    modules = dict(model.named_modules())
    keep = {n: HookedTopK(K) for n in layers}
    handles = [modules[n].register_forward_hook(keep[n]) for n in layers]
    try:
        with torch.no_grad():
            for x, _ in torch.utils.data.DataLoader(ds, batch_size=bs):
                model(x)
    finally:
        for h in handles:
            h.remove()
    return {n: (keep[n], keep[n].crops(ds, rfs[n])) for n in layers}


def peer(model, ds, layers, rfs, bs):
    return torchmetrics_evaluate(model, ds, bs), hooked_search(model, ds, layers, rfs, bs)


# --------------------------------------------------------------------------- timing
def _timed(fn):
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def check_agreement(model, ds, layers, rfs, edges, bs):
    ev, *rest = cnnlens_scan(model, ds, layers, rfs, edges, bs)
    (cm, t1, t5), hooked = peer(model, ds, layers, rfs, bs)
    assert torch.equal(ev.confusion, cm.long()), "confusion matrices differ"
    assert abs(ev.topk_accuracy[1] - float(t1)) < 1e-6 and abs(ev.topk_accuracy[5] - float(t5)) < 1e-6
    worst = 0.0
    for n, search in zip(layers, rest[: len(layers)], strict=True):
        mine, theirs = search.activations, hooked[n][0].values
        worst = max(worst, float((mine - theirs).abs().max()))
        assert torch.allclose(mine, theirs, rtol=1e-5, atol=1e-6), n
        if torch.equal(search.indices, hooked[n][0].index):  # no ties: the same images, so the same patches
            assert torch.equal(search.crops, hooked[n][1]), n
    return worst


def bench_speed(args) -> dict:
    model, ds, layers = build(args.model, args.n)
    rfs, edges = prepare(model, ds, layers)
    bs = args.batch_size
    worst = check_agreement(model, ds, layers, rfs, edges, bs)
    shapes = {}
    with torch.no_grad():
        from cnnlens import LayerTap

        with LayerTap(model, layers, detach=True) as tap:
            tap.run(ds[0][0][None])
            shapes = {n: tuple(tap[n].shape[1:]) for n in layers}
    print(
        f"scan speed: {args.model} ({'bundled, trained' if args.model == 'cluttered' else 'random weights'}), "
        f"{len(ds)} cluttered digits {tuple(ds[0][0].shape)}, batch {bs}, {torch.get_num_threads()} torch "
        f"thread(s), min of {args.repeat} interleaved repeats; searched + statistics: "
        + ", ".join(f"{n} {'×'.join(map(str, s))}" for n, s in shapes.items())
    )
    print(
        f"  agreement: confusion matrices equal, top-1/top-5 equal, every channel's top-{K} activations within "
        f"{worst:.1e} of the hooked pass's"
    )
    runs = {
        "evaluate": lambda: cnnlens_evaluate(model, ds, bs),
        "torchmetrics": lambda: torchmetrics_evaluate(model, ds, bs),
        "scan": lambda: cnnlens_scan(model, ds, layers, rfs, edges, bs),
        "peer": lambda: peer(model, ds, layers, rfs, bs),
    }
    wall = {k: float("inf") for k in runs}
    cpu = dict(wall)
    for _ in range(args.repeat):
        for k, fn in runs.items():
            w, c = _timed(fn)
            wall[k], cpu[k] = min(wall[k], w), min(cpu[k], c)
    n = len(ds)
    ips = {k: n / v for k, v in wall.items()}
    print(
        f"  evaluate: cnnlens {ips['evaluate']:.0f} images/s, torchmetrics loop {ips['torchmetrics']:.0f} "
        f"images/s → {wall['torchmetrics'] / wall['evaluate']:.2f}× (CPU time "
        f"{cpu['torchmetrics'] / cpu['evaluate']:.2f}×)"
    )
    ratio = wall["peer"] / wall["scan"]
    print(
        f"  evaluate + search + statistics in one scan: cnnlens {ips['scan']:.0f} images/s; torchmetrics pass + "
        f"hooked search pass {ips['peer']:.0f} images/s → {ratio:.2f}× (CPU time {cpu['peer'] / cpu['scan']:.2f}×; "
        f"goal ≥ 1.8×)"
    )
    print(f"  the one scan costs {wall['scan'] / wall['evaluate']:.2f}× cnnlens' evaluation alone")
    return {
        "evaluate_ratio": wall["torchmetrics"] / wall["evaluate"],
        "scan_ratio": ratio,
        "scan_ratio_cpu": cpu["peer"] / cpu["scan"],
        "images_per_s": ips,
    }


# --------------------------------------------------------------------------- memory
def memory_child(model_name: str, n: int, bs: int, threads: int | None) -> dict:
    import tracemalloc

    import psutil

    if threads:
        torch.set_num_threads(threads)
    model, ds, layers = build(model_name, n)
    rfs, edges = prepare(model, ds, layers)
    with torch.no_grad():
        model(torch.stack([ds[i][0] for i in range(bs)]))  # one-off allocations (thread pools, kernels)
    import ctypes
    import gc

    gc.collect()
    try:  # hand freed heap back to the system, so "before" is what is live (glibc)
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    proc = psutil.Process()
    before = proc.memory_info().rss
    peak = [before, before]  # over the whole scan; over the current window of 500 images
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            rss = proc.memory_info().rss
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], rss)
            time.sleep(0.002)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    at500 = {}

    def progress(done, total):  # the peaks over the batches of the first and of the last 500 images (equal windows)
        now = max(peak[1], proc.memory_info().rss)
        if "peak" not in at500 and done * bs >= 500:
            at500["peak"] = now
        if "last" not in at500 and done * bs >= n - 500:
            at500["last"] = True
            peak[1] = proc.memory_info().rss  # the window of the last 500 images starts after this batch
        if done == total:
            at500["batches"] = now

    tracemalloc.start()
    try:
        from cnnlens.scanning import scan

        accs_scan(model, ds, layers, rfs, edges, bs, scan, progress)
    finally:
        _, py_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        stop.set()
        th.join()
    peak[0] = max(peak[0], proc.memory_info().rss)
    return {
        "n": n,
        "rss_before_mb": before / 2**20,
        "rss_peak_delta_mb": (peak[0] - before) / 2**20,
        "rss_peak_first_500_mb": (at500.get("peak", peak[0]) - before) / 2**20,
        "rss_peak_last_500_mb": (at500.get("batches", peak[0]) - before) / 2**20,
        "python_peak_mb": py_peak / 2**20,
    }


def accs_scan(model, ds, layers, rfs, edges, bs, scan, progress=None):
    from cnnlens.evaluation import EvaluationAccumulator
    from cnnlens.inside import SearchAccumulator, StatsAccumulator

    accs = [EvaluationAccumulator(10, (1, 5))]
    accs += [SearchAccumulator(model, n, k=K, rf=rfs[n]) for n in layers]
    accs += [StatsAccumulator(n, edges[n], num_classes=10) for n in layers]
    return scan(model, ds, accs, batch_size=bs, progress=progress)


def bench_memory(args) -> dict:
    out = {}
    base = args.base
    for n in (base, args.n):
        runs = []
        for _ in range(args.memory_runs):  # the allocator's peak varies by a few MB from run to run
            cmd = [
                sys.executable,
                __file__,
                "--memory-child",
                str(n),
                "--model",
                args.model,
                "--batch-size",
                str(args.batch_size),
            ] + (["--threads", str(args.threads)] if args.threads else [])
            res = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ), check=True)
            runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
        out[n] = runs
    med = {n: sorted(r["rss_peak_delta_mb"] for r in runs)[len(runs) // 2] for n, runs in out.items()}
    py = {n: max(r["python_peak_mb"] for r in runs) for n, runs in out.items()}
    grow = (med[args.n] - med[base]) / max(med[base], 1e-9)
    fmt = lambda n: "/".join(f"{r['rss_peak_delta_mb']:.1f}" for r in out[n])  # noqa: E731
    within = [r["rss_peak_last_500_mb"] / max(r["rss_peak_first_500_mb"], 1e-9) - 1 for r in out[args.n]]
    print(
        f"  memory of the one scan (peak RSS above the RSS just before it, psutil sampled every 2 ms; tracemalloc "
        f"for Python objects). Separate processes, scan and results: {base} images +{fmt(base)} MB (median "
        f"{med[base]:.1f}), {args.n} images +{fmt(args.n)} MB (median {med[args.n]:.1f}) → {100 * grow:+.0f} % "
        f"(goal within 10 %; the allocator's peak varies by a few MB from process to process). Within each "
        f"{args.n}-image scan, the peak over the batches of its last 500 images vs of its first 500 (equal windows; "
        f"compute() builds the results after): {', '.join(f'{100 * w:+.0f} %' for w in within)}. Python objects "
        f"{py[base]:.2f} MB and "
        f"{py[args.n]:.2f} MB at the peak"
    )
    return {"memory": out, "memory_growth": grow, "memory_growth_within": within}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="500 images, 2 repeats, no memory runs")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--model", choices=["cluttered", "resnet18"], default="cluttered")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument(
        "--base",
        type=int,
        default=500,
        help="with the memory runs: the smaller scan compared with --n images (the goal: 500 and 2,000; "
        "2,000 and 4,000 compare two scans that both keep channels × k images)",
    )
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=None)
    ap.add_argument("--memory-runs", type=int, default=3)
    ap.add_argument("--only", choices=["speed", "memory"], default=None)
    ap.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child is not None:
        print(json.dumps(memory_child(args.model, args.memory_child, args.batch_size, args.threads)))
        return {}
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.n = min(args.n, 500)
    args.repeat = args.repeat or (2 if args.quick else 3)
    out = bench_speed(args) if args.only != "memory" else {}
    if not args.quick and args.only != "speed":
        out.update(bench_memory(args))
    return out


if __name__ == "__main__":
    main()
