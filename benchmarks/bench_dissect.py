"""What network dissection adds to the microscope's one scan: microscope_scan on the 718 held-out cluttered
digits (four layers of cluttered-digits-cnn) with and without concepts, interleaved, best of ``--repeat``.

    PYTHONPATH=src python benchmarks/bench_dissect.py [--repeat 2] [--threads 1]

Prints seconds for each and their ratio (the dissection's share is the log-bin sketch of every upsampled
map: channels × image pixels per image, for every layer).
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    import cnnlens
    from cnnlens.data import cluttered_digits
    from cnnlens.inside.microscope import layer_edges, microscope_scan

    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = cnnlens.load_model("cluttered-digits-cnn")
    ds = cluttered_digits("test")
    layers = ["net.features.1", "net.features.4", "net.features.7", "net.features.10"]
    edges = layer_edges(model, ds, layers)
    best = {"without": float("inf"), "with": float("inf")}
    for _ in range(a.repeat):
        for kind in ("without", "with"):
            t = time.perf_counter()
            m = microscope_scan(model, ds, layers, edges=edges, concepts=None if kind == "with" else False)
            best[kind] = min(best[kind], time.perf_counter() - t)
            if kind == "with":
                labelled = {n: ls.concepts.labelled for n, ls in m.layers.items()}
    print(
        f"microscope scan, {len(ds)} images, {len(layers)} layers, {a.threads} thread(s): "
        f"{best['without']:.1f} s without concepts, {best['with']:.1f} s with dissection "
        f"(× {best['with'] / best['without']:.2f}); labelled units {labelled}"
    )


if __name__ == "__main__":
    main()
