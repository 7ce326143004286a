"""Time the whole of EfficientNet-Lite0's ``blocks.4`` (112 channels, 128², 256 steps) rendered by
``maximize_channels`` for real (not extrapolated), at the default batch (16 channels per optimisation at 128² on
the CPU, ``FV_BATCH_VALUES``) and at any other batch sizes asked for.

Run:  python benchmarks/whole_layer.py [--threads 2] [--batches default,12]   (5–6 minutes per batch size on a quiet
      2-core machine)

Measured on a quiet machine (load < 1, 2 threads): 371 s at 12 channels per optimisation (the forward-only rule's
batch, the default before), 298 s at 16 (2026-12-01); the default, now 16, in README's speed table.
"""

from __future__ import annotations

import argparse
import time

import torch


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="default", help="comma-separated batch sizes; 'default' for the default")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    import cnnlens
    from cnnlens.inside import maximize_channels

    model = cnnlens.load_model("efficientnet-lite0")
    for bs in [None if b == "default" else int(b) for b in a.batches.split(",")]:
        t = time.perf_counter()
        maximize_channels(model, "net.blocks.4", list(range(112)), steps=256, size=128, batch_size=bs)
        print(f"whole layer net.blocks.4 (112 channels), 128², 256 steps, batch_size={bs or 'default'}, "
              f"{a.threads} threads: {time.perf_counter() - t:.0f} s", flush=True)


if __name__ == "__main__":
    main()
