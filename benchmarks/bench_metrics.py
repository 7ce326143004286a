"""Metric speed and agreement, side by side with Quantus 0.6 in one process; prints ratios.

On ``cluttered-digits-cnn`` and 16 held-out cluttered digits, Grad-CAM maps: each
cnnlens metric and its Quantus counterpart on the same maps, model, settings and
random draws (``np.random.seed`` before Quantus, ``seed=`` for cnnlens). Prints the
largest difference of the per-map scores and the time ratio Quantus / cnnlens
(minimum over interleaved repeats; the machine may be shared, so ratios, not seconds).
Tests never time anything; this script does. Expected differences: ROAD where a map has ties at the
removal boundary (Grad-CAM's zeros: cnnlens breaks ties by pixel index, Quantus by numpy's unstable
sort, so a different pixel can go), and MPRT by ~1e-3 on maps with near-ties (Quantus' float32
normalisation before ranking merges values a few ulps apart); on tie-free maps the tests check 1e-4.

Run:  python benchmarks/bench_metrics.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_attribution import interleaved  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    try:
        import quantus
    except ImportError:
        print("quantus is not installed: pip install -e '.[test]'")
        return {}
    import cnnlens
    from cnnlens import attribution, metrics

    warnings.simplefilter("ignore")
    model = cnnlens.load_model("cluttered-digits-cnn")
    from cnnlens.data import cluttered_digits

    ds = cluttered_digits("test")
    n = 8 if args.quick else 16
    x, y, boxes = ds.x[:n], ds.y[:n], ds.boxes[:n]
    e = attribution.gradcam(model, x, target=y)
    a, xn, yn, sn = e.maps.unsqueeze(1).numpy(), x.numpy(), y.numpy(), ds.masks[:n].unsqueeze(1).numpy().astype(float)
    repeat = 2 if args.quick else 4

    def explain(model, inputs, targets, **kw):
        return attribution.gradcam(model, torch.as_tensor(inputs), target=torch.as_tensor(targets)).maps.numpy()

    pcts = [10, 30, 50, 70, 90]
    cases = {
        "relevance rank accuracy": (
            lambda: metrics.relevance_rank_accuracy(e, boxes).scores.numpy(),
            lambda: np.asarray(
                quantus.RelevanceRankAccuracy(disable_warnings=True)(
                    model=None, x_batch=xn, y_batch=yn, a_batch=a, s_batch=sn
                )
            ),
        ),
        "faithfulness correlation (30 runs)": (
            lambda: metrics.faithfulness_correlation(model, x, e, y, runs=30, subset_size=200, seed=0).scores.numpy(),
            lambda: (
                np.random.seed(0),
                np.asarray(
                    quantus.FaithfulnessCorrelation(
                        nr_runs=30, subset_size=200, disable_warnings=True, return_aggregate=False
                    )(model=model, x_batch=xn, y_batch=yn, a_batch=a)
                ),
            )[1],
        ),
        "ROAD MoRF (5 levels)": (
            lambda: metrics.road(model, x, e, y, percentages=pcts, seed=0).extras["curve"].numpy(),
            lambda: (
                np.random.seed(0),
                np.array(
                    list(
                        quantus.ROAD(percentages=pcts, disable_warnings=True)(
                            model=model, x_batch=xn, y_batch=yn, a_batch=a, batch_size=n
                        ).values()
                    )
                ),
            )[1],
        ),
        "max-sensitivity (5 samples)": (
            lambda: metrics.max_sensitivity(model, x, "gradcam", y, explanation=e, samples=5, seed=0).scores.numpy(),
            lambda: (
                np.random.seed(0),
                np.asarray(
                    quantus.MaxSensitivity(nr_samples=5, disable_warnings=True)(
                        model=model, x_batch=xn, y_batch=yn, a_batch=a, explain_func=explain
                    )
                ),
            )[1],
        ),
        "MPRT": (
            lambda: (
                metrics.model_parameter_randomisation(model, x, "gradcam", y, explanation=e)
                .extras["correlations"]
                .numpy()
            ),
            lambda: np.array(
                [
                    v
                    for k, v in quantus.MPRT(disable_warnings=True)(
                        model=model, x_batch=xn, y_batch=yn, a_batch=a, explain_func=explain
                    ).items()
                    if k != "original"
                ]
            ),
        ),
    }
    out = {}
    for name, (ours, theirs) in cases.items():
        diff = float(np.nanmax(np.abs(np.asarray(ours(), dtype=float) - np.asarray(theirs(), dtype=float))))
        t = interleaved({"cnnlens": ours, "quantus": theirs}, repeat)
        out[name] = {"max |difference|": diff, "quantus / cnnlens": t["quantus"] / t["cnnlens"]}
        print(f"{name:38s} max |Δ| {diff:.2e}   Quantus / cnnlens time {t['quantus'] / t['cnnlens']:.2f}", flush=True)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
