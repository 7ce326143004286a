"""`cnnlens explain`: attribution maps for images, with faithfulness scores, files and a report."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ..registry import REGISTRY, title_of
from .common import (
    UserError,
    app,
    console,
    model_options,
    new_report,
    out_dir,
)
from .options import Device, Force, Model, Out, Pretrained, TrustPickle, Weights
from .session import Session, open_model

# Imported late, inside functions: torch and the cnnlens modules that import it (attribution, data, evaluation,
# targets, tap). `cnnlens --help` imports this module, and torch alone would add ≈2 s to it.

DEFAULT_METHODS = "saliency,occlusion,cam,gradcam,augmented-gradcam,guided-gradcam"
#: the registry's names (importing it does not import torch: the CLI's --help stays fast)
METHODS_HELP = (
    "Comma-separated: " + ", ".join(m.cli_name for m in REGISTRY.values()) + "; or all (the native "
    "ones); captum:<Class> runs a Captum attribution class, e.g. captum:DeepLift,captum:KernelShap "
    "(pip install 'cnnlens[captum]')."
)


def parse_methods(text: str) -> list[str]:
    """``"saliency,grad-cam"`` → canonical method names (``-`` and ``_`` alike; ``all`` = every method);
    a clear error for unknown ones."""
    from ..attribution import METHODS

    if str(text).strip().lower() == "all":
        return list(METHODS)

    aliases = {
        "grad_cam": "gradcam",
        "gradcampp": "gradcam_pp",
        "gradcam++": "gradcam_pp",
        "ig": "integrated_gradients",
        "guided": "guided_backprop",
        "augmented": "augmented_gradcam",
    }
    out = []
    for part in str(text).split(","):
        if part.strip().lower().startswith("captum:"):  # a Captum class, checked when it runs (Captum is optional)
            key = "captum:" + part.strip().split(":", 1)[1].strip()
            if key == "captum:":
                raise UserError("--methods: name the Captum class after captum:, e.g. captum:DeepLift")
            if key not in out:
                out.append(key)
            continue
        key = part.strip().lower().replace("-", "_")
        if not key:
            continue
        key = aliases.get(key, key)
        if key not in METHODS:
            # one spelling shown (hyphens, as typed on a command line); hyphens and underscores both accepted
            known = [k.replace("_", "-") for k in METHODS]
            close = difflib.get_close_matches(key.replace("_", "-"), known, n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            raise UserError(f"--methods: unknown method {part.strip()!r}; {hint}choose from {', '.join(known)}")
        if key not in out:
            out.append(key)
    if not out:
        raise UserError("--methods: give at least one method, e.g. --methods saliency,gradcam")
    return out


def _baseline(text: str):
    key = text.strip().lower()
    if key in ("blur", "grey", "gray", "black", "white"):
        return key
    try:
        v = float(key)
    except ValueError:
        raise UserError(f"--baseline {text!r}: use blur, grey, black, white or a number in [0, 1]") from None
    if not 0 <= v <= 1:
        raise UserError(f"--baseline {text!r}: a pixel value is in [0, 1]")
    return v


def _selection(model, ds, misclassified: bool, true_class, confused, n: int) -> list[int]:
    """The dataset indices to explain: the first n, or the first n that the selection options keep."""
    from ..evaluation import select_samples
    from ..targets import as_target, model_classes

    if not (misclassified or true_class is not None or confused is not None):
        return list(range(min(n, len(ds))))
    names, k = model_classes(model)

    def cls(text: str, option: str) -> int:
        t = as_target(text.strip(), names)
        if t.kind != "class" or isinstance(t.index, tuple):
            raise UserError(f"{option} {text!r}: give a class index or name")
        t.validate(1, k)
        return int(t.index)

    true = cls(true_class, "--class") if true_class is not None else None
    predicted = None
    if confused is not None:
        parts = confused.split(",")
        if len(parts) != 2:
            raise UserError(f"--confused {confused!r}: give the true and the predicted class as R,C (e.g. 8,5)")
        r, c = cls(parts[0], "--confused"), cls(parts[1], "--confused")
        if true is not None and true != r:
            raise UserError(f"--class {true_class} and --confused {confused} name different true classes")
        true, predicted = r, c
    picked = select_samples(model, ds, misclassified=misclassified, true=true, predicted=predicted, limit=n)
    if not picked:
        raise UserError(
            "no image of --data matches the selection (--misclassified/--class/--confused); "
            "`cnnlens evaluate` shows which cells of the confusion matrix hold images"
        )
    return picked


#: explain's own options, declared once here so that the command reads as what it does
ExplainImages = Annotated[
    list[str] | None, typer.Argument(help="Image files, folders (a flat folder or one with sub-folders) or globs.")
]
ExplainData = Annotated[
    str | None,
    typer.Option(
        "--data",
        "-d",
        help="Or take images from a dataset: digits, an ImageFolder, or a flat folder of images (no labels needed).",
    ),
]
ExplainN = Annotated[
    int, typer.Option("--n", min=1, help="With --data: how many of its first images (or of the selected ones).")
]
ExplainMisclassified = Annotated[
    bool, typer.Option("--misclassified", help="With --data: only the images the model gets wrong (needs labels).")
]
ExplainClass = Annotated[
    str | None,
    typer.Option("--class", help="With --data: only images of this true class (index or name; needs labels)."),
]
ExplainConfused = Annotated[
    str | None,
    typer.Option(
        "--confused",
        help="With --data: only images of true class R predicted as C, given as R,C (a cell of the confusion matrix).",
    ),
]
ExplainMethods = Annotated[str, typer.Option("--methods", help=METHODS_HELP)]
ExplainTarget = Annotated[str, typer.Option("--target", "-t", help="predicted, second, a class index or a class name.")]
ExplainLayer = Annotated[
    str | None,
    typer.Option(
        "--layer",
        "-l",
        help="Layer for the CAM family (default: the last spatial layer; see `cnnlens layers --model M`).",
    ),
]
ExplainShared = Annotated[
    bool,
    typer.Option(
        "--shared-scale",
        help="Draw every map on one scale (each divided by its largest |value|) instead of each in its own units.",
    ),
]
ExplainSteps = Annotated[
    int, typer.Option("--faithfulness-steps", min=0, help="Deletion/insertion steps (0: skip the faithfulness scores).")
]
ExplainBaseline = Annotated[
    str,
    typer.Option(
        "--baseline",
        help="What deleted pixels become in the faithfulness curves: blur, "
        "grey, black or a number in [0, 1] (black suits white-on-black digits).",
    ),
]
ExplainWindow = Annotated[
    int | None, typer.Option("--window", min=1, help="Occlusion patch size in pixels (default: 1/8 of the image).")
]
ExplainStride = Annotated[int | None, typer.Option("--stride", min=1, help="Occlusion stride (default: window/2).")]
ExplainAugmentations = Annotated[
    int, typer.Option("--augmentations", min=1, help="Augmented Grad-CAM: number of copies.")
]


@app.command()
@model_options
def explain(
    *,
    images: ExplainImages = None,
    data: ExplainData = None,
    n_images: ExplainN = 8,
    misclassified: ExplainMisclassified = False,
    true_class: ExplainClass = None,
    confused: ExplainConfused = None,
    model: Model,
    weights: Weights = None,
    pretrained: Pretrained = False,
    trust_pickle: TrustPickle = False,
    methods: ExplainMethods = DEFAULT_METHODS,
    target: ExplainTarget = "predicted",
    layer: ExplainLayer = None,
    shared_scale: ExplainShared = False,
    faithfulness_steps: ExplainSteps = 16,
    baseline: ExplainBaseline = "blur",
    window: ExplainWindow = None,
    stride: ExplainStride = None,
    augmentations: ExplainAugmentations = 100,
    device: Device = "cpu",
    out: Out = Path("cnnlens-out"),
    force: Force = False,
) -> None:
    """Explain the model's prediction on each image with the chosen attribution methods.

    For each image, --out gets <image>/original.png, <image>/<method>.png (the map over the image with a
    colour bar), <image>/top5.png, <image>/grid.png (all side by side with the deletion/insertion AUC)
    <image>/explanation.json (settings, classes, faithfulness) and <image>/maps.pt (the maps as tensors);
    plus index.html and results.json.
    """
    from ..attribution.report import add_explain_section

    chosen = parse_methods(methods)
    base = _baseline(baseline)  # check before loading anything
    _check_captum(chosen)
    report_dir = out_dir(out, force, images, weights)
    s = open_model(model, weights, pretrained, trust_pickle, device)
    layer = _layer(s.model, layer)
    x, names, sources = _inputs(s, images, data, n_images, misclassified, true_class, confused)
    settings = {
        "occlusion": {k: v for k, v in (("window", window), ("stride", stride)) if v is not None},
        "augmented_gradcam": {"augmentations": augmentations},
    }
    run = _explain(s, x, names, chosen, target, layer, settings, faithfulness_steps, base)
    subtitle = f"{len(names)} image(s), target {target}, {len(run.explanations)} method(s)."
    rep = new_report(f"cnnlens explain: {model}", subtitle, s.model)
    add_explain_section(rep, run, model=model, shared=shared_scale, sources=sources)
    _say(run, names)
    index = report_dir.write(rep)
    console.print(f"wrote {index.parent}: {EXPLAIN_FILES}", highlight=False)


EXPLAIN_FILES = "per image original.png, <method>.png, top5.png, grid.png, explanation.json, maps.pt; index.html"


def _explain(s: Session, x, names, chosen, target, layer, settings, faithfulness_steps: int, baseline):
    """:func:`cnnlens.attribution.explain_images` with a progress bar (image × method, × 2 with faithfulness)."""
    from ..attribution.explain import explain_images

    total = len(names) * len(chosen) * (2 if faithfulness_steps > 0 else 1)
    with s.progress(f"explaining {len(names)} image(s) × {len(chosen)} method(s)", total=total) as update:
        return explain_images(
            s.model,
            x,
            chosen,
            target,
            names=names,
            layer=layer,
            settings=settings,
            faithfulness_steps=faithfulness_steps,
            baseline=baseline,
            progress=lambda stage, done, t: update(done, t),
        )


def _layer(m, layer: str | None) -> str | None:
    """--layer resolved on the model: a named layer must exist (one clear error, before any work)."""
    if layer is None:
        return None
    from ..tap import resolve_layer

    return resolve_layer(m, layer)[0]


def _say(run, names: list[str]) -> None:
    """The skipped methods (stderr), then each image's class and faithfulness scores (stdout)."""
    for k, e in run.failures.items():
        console.print(f"[yellow]{k.replace('_', '-')} skipped:[/] {e}", highlight=False)
    stdout = Console()
    for i, name in enumerate(names):
        c = int(next(iter(run.explanations.values())).classes[i])
        cname = run.class_names[c] if run.class_names and c < len(run.class_names) else str(c)
        stdout.print(
            f"{name}: {cname}  "
            + "  ".join(
                f"{title_of(k)} del {float(f.deletion_auc[i]):.3f}/ins {float(f.insertion_auc[i]):.3f}"
                for k, f in run.faithfulness.items()
            ),
            highlight=False,
        )


def _check_captum(chosen: list[str]) -> None:
    """Each ``captum:<Class>`` names a Captum class (and Captum is installed): one line before any work."""
    if any(k.startswith("captum:") for k in chosen):
        from ..attribution.bridge import captum_class

        try:
            for k in chosen:
                if k.startswith("captum:"):
                    captum_class(k.split(":", 1)[1])
        except (ImportError, ValueError, TypeError) as e:
            raise UserError(f"--methods: {e}") from None


def _inputs(s: Session, images, data, n_images: int, misclassified: bool, true_class, confused):
    """The images to explain on the model's device, their names and sources: files/folders, or --data."""
    import torch

    from ..data import read_images

    m = s.model

    dev = next((p.device for p in m.parameters()), torch.device("cpu"))
    if images and (misclassified or true_class is not None or confused is not None):
        raise UserError("--misclassified, --class and --confused select from --data; give --data D instead of files")
    if bool(images) == bool(data):
        raise UserError("give image files or folders, or --data D (digits, an ImageFolder or a flat folder), not both")
    if images:
        loaded = read_images(list(images), m)
        return loaded.images.to(dev), list(loaded.names), list(loaded.sources)
    ds = s.dataset(data)
    picked = _selection(m, ds, misclassified, true_class, confused, n_images)
    items = [ds[i] for i in picked]
    x = torch.stack([torch.as_tensor(a) for a, _ in items]).to(dev)
    names = [f"{i}" if int(y) < 0 else f"{i}-label-{int(y)}" for i, (_, y) in zip(picked, items, strict=True)]
    return x, names, [f"{data}[{i}]" for i in picked]
