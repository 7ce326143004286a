"""Time the whole of EfficientNet-Lite0's ``blocks.4`` (112 channels, 128², 256 steps) rendered by
``maximize_channels`` for real (not extrapolated), at the default batch (16 channels per optimisation at 128² on
the CPU, ``FV_BATCH_VALUES``) and at any other batch sizes asked for.

Run:  python benchmarks/whole_layer.py [--threads 2] [--batches default,12]   (5–6 minutes per batch size on a quiet
      2-core machine)

Measured on a quiet machine (load < 1, 2 threads): 371 s at 12 channels per optimisation (the forward-only rule's
batch, the default before), 298 s at 16 (2026-12-01); on 2026-12-02 at the new default of 16, one optimisation
after another (``--one-at-a-time``) 340 and 350 s, and two optimisations side by side on one thread each (the
default now; 8 × 14 channels) 287 s.
"""

from __future__ import annotations

import argparse
import time

import torch


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="default", help="comma-separated batch sizes; 'default' for the default")
    ap.add_argument(
        "--one-at-a-time",
        action="store_true",
        help="run the optimisations one after another on all threads (the behaviour before 2026-12-02), "
        "not side by side on private copies with one thread each",
    )
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    import cnnlens
    from cnnlens.inside import maximize_channels

    model = cnnlens.load_model("efficientnet-lite0")
    if a.one_at_a_time:
        import cnnlens.inside.microscope as mm

        mm._fv_models = lambda model, parts: [model]
    for bs in [None if b == "default" else int(b) for b in a.batches.split(",")]:
        t = time.perf_counter()
        maximize_channels(model, "net.blocks.4", list(range(112)), steps=256, size=128, batch_size=bs)
        print(
            f"whole layer net.blocks.4 (112 channels), 128², 256 steps, batch_size={bs or 'default'}, "
            f"{a.threads} threads{', one optimisation at a time' if a.one_at_a_time else ''}: "
            f"{time.perf_counter() - t:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
