"""Attack speed and agreement, side by side with Captum's ``captum.robust``, in one process; prints ratios.

* FGSM: cnnlens ``attacks.fgsm`` vs Captum ``FGSM`` (same ε, untargeted on the predicted class).
* PGD: cnnlens ``attacks.pgd`` (early stop off, so both run every step) vs Captum ``PGD``,
  targeted at the second most likely class, same ε, step size and steps.

FGSM computes the same image in both: the script reports the share of pixels that
differ (only where |∂L/∂x| is ~1e-6, so float rounding flips its sign). In PGD such
flips compound step after step (sign steps amplify them), so for PGD the script
compares what matters: how many images reach the target class. cnnlens also
scores the clean and adversarial images (success, predictions before and after);
Captum returns the image only.
Times are the minimum over interleaved repeats. Tests never time anything; this script does.

Run:  python benchmarks/bench_attacks.py [--quick] [--model efficientnet-lite0|digits-cnn]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from bench_attribution import interleaved, photos  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        from captum.robust import FGSM, PGD
    except ImportError:
        print("captum is not installed: pip install -e '.[bench]'")
        return {}
    import cnnlens
    from cnnlens import attacks

    model = cnnlens.load_model(args.model)
    if args.model == "digits-cnn":
        x = torch.stack([cnnlens.as_dataset("digits", model)[i][0] for i in range(32)])
    else:
        x = photos(2 if args.quick else 4)
    repeat = 2 if args.quick else 5
    eps, steps = 2 / 255, 3 if args.quick else 10
    alpha = eps / 4
    with torch.no_grad():
        logits = model(x)
    pred = logits.argmax(1)
    second = logits.topk(2, dim=1).indices[:, 1]
    loss = lambda out, y: F.cross_entropy(out, y, reduction="none")  # noqa: E731

    out: dict = {}
    fg = {}
    fns = {
        "cnnlens fgsm": lambda: fg.__setitem__("ours", attacks.fgsm(model, x, eps=eps).x_adv),
        "captum FGSM": lambda: fg.__setitem__("captum", FGSM(model, loss, 0.0, 1.0).perturb(x, eps, pred)),
    }
    t = interleaved(fns, repeat)
    out["fgsm"] = {
        "cnnlens_s": t["cnnlens fgsm"],
        "captum_s": t["captum FGSM"],
        "captum/cnnlens": t["captum FGSM"] / t["cnnlens fgsm"],
        "differing_pixels": float(((fg["ours"] - fg["captum"]).abs() > 1e-6).float().mean()),
    }
    pg = {}
    fns = {
        "cnnlens pgd": lambda: pg.__setitem__(
            "ours",
            attacks.pgd(model, x, eps=eps, steps=steps, step_size=alpha, target="second", early_stop=False).x_adv,
        ),
        "captum PGD": lambda: pg.__setitem__(
            "captum", PGD(model, loss, 0.0, 1.0).perturb(x, eps, alpha, steps, second, targeted=True)
        ),
    }
    t = interleaved(fns, repeat)
    out["pgd"] = {
        "cnnlens_s": t["cnnlens pgd"],
        "captum_s": t["captum PGD"],
        "captum/cnnlens": t["captum PGD"] / t["cnnlens pgd"],
        "differing_pixels": float(((pg["ours"] - pg["captum"]).abs() > 1e-6).float().mean()),
    }
    with torch.no_grad():
        out["pgd"]["reached_cnnlens"] = float((model(pg["ours"]).argmax(1) == second).float().mean())
        out["pgd"]["reached_captum"] = float((model(pg["captum"]).argmax(1) == second).float().mean())
    print(f"attacks on {args.model}, batch {len(x)}, eps {eps:.4f}, PGD {steps} steps of {alpha:.4f}")
    for k, v in out.items():
        print(
            f"  {k:5s} cnnlens {v['cnnlens_s'] * 1e3:8.1f} ms   captum {v['captum_s'] * 1e3:8.1f} ms   "
            f"captum/cnnlens = {v['captum/cnnlens']:.2f}×   pixels that differ: {v['differing_pixels']:.2%}"
        )
    print(
        f"  PGD reached the second class: cnnlens {out['pgd']['reached_cnnlens']:.0%}, "
        f"captum {out['pgd']['reached_captum']:.0%}"
    )
    return out


if __name__ == "__main__":
    main()
