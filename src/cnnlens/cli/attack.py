"""`cnnlens attack` (adversarial images) and `cnnlens robustness` (accuracy against ε over a dataset)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Annotated

import typer

from .common import (
    UserError,
    app,
    console,
    model_options,
    new_report,
    out_dir,
    print_table,
)
from .options import BatchSize, Device, Force, LabelledData, Model, Out, Pretrained, TrustPickle, Weights
from .session import session

# Imported late, inside functions: torch and the cnnlens modules that import it (attacks, data, batching),
# rich.table (≈7 ms). `cnnlens --help` imports this module, and torch alone would add ≈2 s to it.


def parse_norm(text: str) -> str:
    """``inf``/``linf``/``L∞`` → "inf"; ``2``/``l2`` → "2"."""
    key = str(text).strip().lower().replace("∞", "inf")
    if key in ("inf", "linf", "l-inf", "max"):
        return "inf"
    if key in ("2", "l2"):
        return "2"
    raise UserError(f"--norm {text!r}: norm {str(text).strip()!r} is not supported; use inf (L∞) or 2 (L2)")


def norm_name(norm: str) -> str:
    return "L∞" if norm == "inf" else "L2"


def parse_eps(text: str, option: str = "--eps", norm: str = "inf") -> float:
    """A budget in pixel units: ``2/255``, ``0.01`` or ``0``. Under L∞ a budget above 1 (more than the whole
    [0, 1] range) is surely grey levels meant as n/255: refused with that hint.

    >>> round(parse_eps("2/255"), 6)
    0.007843
    """
    s = str(text).strip()
    try:
        v = float(Fraction(s))
    except (ValueError, ZeroDivisionError):
        raise UserError(f"{option} {s!r} is not a number; give pixel units like 2/255 or 0.01") from None
    if v < 0:
        raise UserError(f"{option} {s!r} is negative; a budget is ≥ 0 (pixel units, e.g. 2/255)")
    if norm == "inf" and v > 1:
        raise UserError(
            f"{option} {s}: ε = {s} in pixel units [0, 1]; did you mean {s}/255? (under the L∞ norm a "
            "budget above 1 exceeds the whole pixel range)"
        )
    return v


def parse_eps_list(text: str, option: str = "--eps", norm: str = "inf") -> list[float]:
    """``0,1/255,2/255`` → [0.0, 0.0039…, 0.0078…]."""
    parts = [p for p in str(text).replace(" ", "").split(",") if p]
    if not parts:
        raise UserError(f"{option} is empty; give budgets like 0,1/255,2/255")
    return [parse_eps(p, option, norm) for p in parts]


def _target(text: str):
    t = str(text).strip()
    if t.lower() in ("untargeted", "none", ""):
        return None
    return int(t) if t.lstrip("-").isdigit() else t


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in n) or "image"
        k = seen.get(stem, 0)
        seen[stem] = k + 1
        out.append(stem if k == 0 else f"{stem}-{k + 1}")
    return out


#: attack's own options (--step-size and --norm robustness's too)
AttackImages = Annotated[list[str], typer.Argument(help="Image files, folders or globs.")]
AttackMethod = Annotated[
    str,
    typer.Option(
        "--method",
        help="fgsm, pgd, deepfool or cw (Carlini–Wagner L2); the last two "
        "find the smallest L2 perturbation and ignore --eps.",
    ),
]
AttackEps = Annotated[str, typer.Option("--eps", help="Budget per pixel in pixel units ([0, 1]): 2/255, 0.01, ...")]
AttackTarget = Annotated[
    str, typer.Option("--target", "-t", help="second (the runner-up class), untargeted, a class index or a class name.")
]
AttackSteps = Annotated[
    int | None,
    typer.Option("--steps", min=1, help="PGD steps (default 10), DeepFool iterations (50) or C&W Adam steps (100)."),
]
StepSize = Annotated[str | None, typer.Option("--step-size", help="PGD step in pixel units (default 2.5·ε/steps).")]
Norm = Annotated[str, typer.Option("--norm", help="inf (L∞: ε ≤ 1, e.g. 8/255) or 2 (L2: ε may exceed 1).")]
AttackC = Annotated[float, typer.Option("--c", min=0.0, help="C&W: weight c of the misclassification term.")]
AttackOvershoot = Annotated[
    float, typer.Option("--overshoot", min=0.0, help="DeepFool: how far past the boundary (× the step).")
]
AttackRandomStart = Annotated[bool, typer.Option("--random-start", help="PGD from a random point of the ε-ball.")]
AttackMinimal = Annotated[
    bool, typer.Option("--minimal", help="Find each image's smallest ε (bisection over PGD) instead of using --eps.")
]
AttackSeed = Annotated[int, typer.Option("--seed", help="Seed of the random start.")]
AttackBatchSize = Annotated[
    int | None,
    typer.Option(
        "--batch-size", "-b", min=1, help="Images attacked together (default: automatic, 4 of 224² on a CPU)."
    ),
]


@app.command()
@model_options
def attack(
    *,
    images: AttackImages,
    model: Model,
    method: AttackMethod = "pgd",
    eps: AttackEps = "2/255",
    target: AttackTarget = "second",
    steps: AttackSteps = None,
    step_size: StepSize = None,
    norm: Norm = "inf",
    c: AttackC = 1.0,
    overshoot: AttackOvershoot = 0.02,
    random_start: AttackRandomStart = False,
    minimal: AttackMinimal = False,
    seed: AttackSeed = 0,
    weights: Weights = None,
    pretrained: Pretrained = False,
    trust_pickle: TrustPickle = False,
    batch_size: AttackBatchSize = None,
    device: Device = "cpu",
    out: Out = Path("cnnlens-out"),
    force: Force = False,
) -> None:
    """Attack images: writes, per image, the original, the adversarial image, the amplified perturbation and the
    top-5 before and after.

    Files in --out: <name>/original.png, adversarial.png, perturbation.png, top5.json;
    attack.json (all numbers), x_adv.pt (the exact adversarial images: a PNG rounds to
    8 bits, which can undo a perturbation below half a grey level) and index.html.
    """
    from ..attacks.images import attack_images
    from ..attacks.report import ATTACK_TITLES, add_attack_run_section
    from ..data import read_images

    kw = _attack_options(method, eps, target, steps, step_size, norm, c, overshoot, random_start, minimal, seed)
    report_dir = out_dir(out, force, images, weights)
    with session(model, weights, pretrained, trust_pickle, device, one_process=ONE_PROCESS) as S:
        loaded = read_images(list(images), S.model)
        x, names = loaded.images.to(S.device), _unique(list(loaded.names))
        batches = -(-len(names) // _check_batch_size(batch_size, x))
        with S.progress(f"attacking {len(names)} image(s)", total=batches) as update:
            run = attack_images(S.model, x, **kw, batch_size=batch_size, names=names, progress=update)
        title = ATTACK_TITLES[run.method]
        rep = new_report(f"cnnlens attack: {model}", f"{title} on {len(names)} image(s).", S.model)
        settings = {
            "model": model,
            "images": ", ".join(names[:10]) + (" ..." if len(names) > 10 else ""),
            "device": S.device,
        }
        add_attack_run_section(rep, S.model, run, settings=settings)
        index = report_dir.write(rep)
        _print_attack(names, run.result, run.class_names)
        console.print(f"wrote {index.parent}: {ATTACK_FILES}", highlight=False)


ONE_PROCESS = "cnnlens attack runs in one process; use torchrun with `cnnlens robustness`"
ATTACK_FILES = "<image>/original.png, adversarial.png, perturbation.png, top5.json; attack.json, x_adv.pt, index.html"


def _attack_options(method, eps, target, steps, step_size, norm, c, overshoot, random_start, minimal, seed) -> dict:
    """attack_images's keyword arguments from the command's options, checked (one line each, before any work)."""
    method, norm = method.strip().lower(), parse_norm(norm)
    _check_attack(method, minimal, c)
    e = parse_eps(eps, norm=norm)
    alpha = parse_eps(step_size, "--step-size", norm) if step_size is not None else None
    if alpha is not None and alpha <= 0:
        raise UserError("--step-size must be > 0")
    return dict(
        method=method,
        eps=e,
        target=_target(target),
        norm=norm,
        steps=steps,
        step_size=alpha,
        c=c,
        overshoot=overshoot,
        random_start=random_start,
        minimal=minimal,
        seed=seed,
    )


def _check_attack(method: str, minimal: bool, c: float) -> None:
    """--method, --minimal and --c agree: one line before any work."""
    if method not in ("fgsm", "pgd", "deepfool", "cw"):
        raise UserError(f"--method {method!r} is not known; use fgsm, pgd, deepfool or cw")
    if minimal and method != "pgd":
        raise UserError("--minimal searches over PGD; use it with --method pgd (deepfool and cw are minimal already)")
    if method == "cw" and c <= 0:
        raise UserError("--c must be > 0")


def _check_batch_size(batch_size, x) -> int:
    from ..batching import check_batch_size

    return check_batch_size(batch_size, x)


def _print_attack(names, r, class_names) -> None:
    from rich.table import Table

    def nm(c):
        return f"{c} {class_names[c]}" if class_names and 0 <= c < len(class_names) else str(c)

    p0 = r.logits_before.float().softmax(1)
    p1 = r.logits_after.float().softmax(1)
    from ..attacks.report import eps_text

    norm = r.settings.get("norm", "inf")
    t = Table(
        title=f"{r.settings.get('method', '').upper()} — goal: {r.settings.get('target')}, norm {norm_name(norm)}",
        title_justify="left",
    )
    for h in (
        "image",
        "before (p)",
        "after (p)",
        "reached",
        f"ε ({norm_name(norm)}; pixel units = grey levels/255)",
        "‖δ‖∞ (grey levels)",
        "steps",
    ):
        t.add_column(h)
    for i, n in enumerate(names):
        c0, c1 = int(r.pred_before[i]), int(r.pred_after[i])
        t.add_row(
            n,
            f"{nm(c0)} ({float(p0[i, c0]):.3f})",
            f"{nm(c1)} ({float(p1[i, c1]):.3f})",
            "yes" if bool(r.success[i]) else "no",
            eps_text(float(r.eps[i]), norm),
            f"{float(r.linf()[i]) * 255:.3g}",
            str(int(r.steps[i])),
        )
    print_table(t)


#: robustness's own options
RobustEps = Annotated[str, typer.Option("--eps", help="Comma-separated budgets in pixel units.")]
RobustAttacks = Annotated[
    str,
    typer.Option(
        "--attacks",
        help="Comma-separated: fgsm, pgd, deepfool, cw (the last "
        "two are minimum-norm L2 attacks: one run gives every ε).",
    ),
]
RobustSteps = Annotated[int, typer.Option("--steps", min=1, help="PGD steps.")]
RobustTarget = Annotated[
    str, typer.Option("--target", "-t", help="untargeted (away from the true label), second, or a class.")
]
RobustGallery = Annotated[
    int, typer.Option("--gallery", min=0, help="Attacked images to show with their saliency maps.")
]


@app.command()
@model_options
def robustness(
    *,
    model: Model,
    data: LabelledData,
    eps: RobustEps = "0,1/255,2/255,4/255,8/255",
    attacks: RobustAttacks = "fgsm,pgd",
    steps: RobustSteps = 10,
    step_size: StepSize = None,
    norm: Norm = "inf",
    target: RobustTarget = "untargeted",
    gallery: RobustGallery = 6,
    weights: Weights = None,
    pretrained: Pretrained = False,
    trust_pickle: TrustPickle = False,
    batch_size: BatchSize = 64,
    device: Device = "cpu",
    out: Out = Path("cnnlens-out"),
    force: Force = False,
) -> None:
    """Accuracy against ε for FGSM and PGD over a dataset: writes curves.png, robustness.json/.csv and index.html.

    Under `torchrun --nproc_per_node N -m cnnlens robustness ...` each process attacks a
    shard; the counts are merged and rank 0 writes.
    """
    from ..attacks.curves import robustness as run_robustness
    from ..attacks.report import add_robustness_run

    norm = parse_norm(norm)
    budgets = parse_eps_list(eps, norm=norm)
    alpha = parse_eps(step_size, "--step-size", norm) if step_size is not None else None
    atk = [a.strip().lower() for a in attacks.split(",") if a.strip()]
    report_dir = out_dir(out, force, data, weights)
    with session(model, weights, pretrained, trust_pickle, device) as S:
        ds = S.dataset(data, labels_for="cnnlens robustness")
        with S.progress(f"attacking {data}") as update:
            r = run_robustness(
                S.model,
                ds,
                eps=budgets,
                attacks=atk,
                steps=steps,
                step_size=alpha,
                norm=norm,
                target=_target(target),
                gallery=gallery,
                batch_size=batch_size,
                device=S.device,
                progress=update,
            )
        if not S.writes:
            return
        rep = new_report(f"cnnlens robustness: {model}", f"{model} on {data}.", S.model)
        settings = {"model": model, "data": data, "n": r.n, "batch size": batch_size, "device": S.device}
        add_robustness_run(
            rep, model, r, settings={**settings, "processes": S.world}, figure_title=f"{model} on {data}"
        )
        index = report_dir.write(rep)
        _print_robustness(r)
        console.print(f"wrote {index.parent}: curves.png, robustness.json, robustness.csv, index.html", highlight=False)


def _print_robustness(r) -> None:
    """Accuracy per attack and budget, in a table on stdout."""
    from rich.table import Table

    header, rows = r.table()
    t = Table(title=f"{r.n} samples, clean accuracy {r.clean_accuracy:.2%}", title_justify="left")
    for h in header:
        t.add_column(h, justify="right")
    for row in rows:
        t.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row])
    print_table(t)
