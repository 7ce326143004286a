"""`cnnlens explain`: attribution maps for images, with faithfulness scores, files and a report."""

from __future__ import annotations

import html
import io
import json
from pathlib import Path
from typing import List, Optional

import typer

from ..registry import REGISTRY
from .common import (DEVICE_OPT, FORCE_OPT, MODEL_OPT, OUT_OPT, PRETRAINED_OPT, TRUST_OPT, WEIGHTS_OPT, app, console,
                     load_model_from_options, model_options, new_report, out_dir, progress_bar, UserError)

DEFAULT_METHODS = "saliency,occlusion,cam,gradcam,augmented-gradcam,guided-gradcam"
#: the registry's names (importing it does not import torch: the CLI's --help stays fast)
METHODS_HELP = ("Comma-separated: " + ", ".join(m.cli_name for m in REGISTRY.values()) + "; or all (the native "
                "ones); captum:<Class> runs a Captum attribution class, e.g. captum:DeepLift,captum:KernelShap "
                "(pip install 'cnnlens[captum]').")


def parse_methods(text: str) -> list[str]:
    """``"saliency,grad-cam"`` → canonical method names (``-`` and ``_`` alike; ``all`` = every method);
    a clear error for unknown ones."""
    from ..attribution import METHODS

    if str(text).strip().lower() == "all":
        return list(METHODS)

    aliases = {"grad_cam": "gradcam", "gradcampp": "gradcam_pp", "gradcam++": "gradcam_pp", "ig": "integrated_gradients",
               "guided": "guided_backprop", "augmented": "augmented_gradcam"}
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
            import difflib

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


def _png(fig) -> bytes:
    from ..report import _png_bytes

    return _png_bytes(fig)


def explain_intro(ok: dict, faithfulness: bool, n: int, baseline: str = "blur") -> str:
    """What the page shows, then one paragraph per method that ran (never a method that did not)."""
    from ..attribution.report import FAITH_INTRO, method_note
    from ..registry import intro_of

    head = (f"<p>Why did the model predict what it did? Each method below turns the prediction for each of the {n} "
            "image(s) into a map over the pixels; they answer different questions, so they are shown side by side.</p>")
    body = "".join(f"<p>{intro_of(k)}</p>" + method_note(k, e) for k, e in ok.items())
    what = {"blur": "a blurred copy", "grey": "grey", "gray": "grey", "black": "black", "white": "white"}.get(
        str(baseline).strip().lower(), f"the value {baseline}")
    text = FAITH_INTRO.split(" <i>Model randomisation</i>")[0].replace("by a blurred copy", f"by {what}").replace(
        "start from the blurred image", "start from the image with every pixel removed")
    faith = f"<p>{text}</p>" if faithfulness else ""
    return head + body + faith


def explain_settings(model: str, target: str, chosen: list, ok: dict, layer, shared: bool, steps: int,
                     baseline: str, n: int) -> dict:
    """The settings that ran: the layer each CAM-family method read (named, also when chosen automatically),
    each method's own settings as it ran, the faithfulness curves."""
    from ..registry import lookup
    from ..registry import title_of
    from ..report import show_setting

    out = {"model": model, "images": n, "target": target, "methods": ", ".join(title_of(k) for k in chosen)}
    layers = {k: e.layer for k, e in ok.items() if (lookup(k) and lookup(k).layered) and e.layer}
    if layers:
        used = sorted(set(layers.values()))
        how = "given with --layer" if layer else "chosen automatically: the last spatial layer"
        out["layer"] = (used[0] if len(used) == 1 else
                        ", ".join(f"{title_of(k)}: {v}" for k, v in layers.items())) + f" ({how})"
    for k, e in ok.items():
        shown = {a: b for a, b in e.settings.items() if a not in ("layer",)}
        if shown:
            out[title_of(k)] = ", ".join(f"{a}={show_setting(b)}" for a, b in shown.items())
    out["scale"] = "shared (each map divided by its largest |value|)" if shared else "each map in its own units"
    out["faithfulness"] = f"deletion/insertion, {steps} steps, baseline {baseline}" if steps > 0 else "not computed"
    return out


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
        raise UserError("no image of --data matches the selection (--misclassified/--class/--confused); "
                        "`cnnlens evaluate` shows which cells of the confusion matrix hold images")
    return picked


@app.command()
@model_options
def explain(
    images: Optional[List[str]] = typer.Argument(None, help="Image files, folders (a flat folder or one with "
                                                 "sub-folders) or globs."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Or take images from a dataset: digits, an "
                                       "ImageFolder, or a flat folder of images (no labels needed)."),
    n_images: int = typer.Option(8, "--n", min=1, help="With --data: how many of its first images (or of the "
                                 "selected ones)."),
    misclassified: bool = typer.Option(False, "--misclassified", help="With --data: only the images the model gets "
                                       "wrong (needs labels)."),
    true_class: Optional[str] = typer.Option(None, "--class", help="With --data: only images of this true class "
                                             "(index or name; needs labels)."),
    confused: Optional[str] = typer.Option(None, "--confused", help="With --data: only images of true class R "
                                           "predicted as C, given as R,C (a cell of the confusion matrix)."),
    model: str = MODEL_OPT,
    weights: Optional[Path] = WEIGHTS_OPT,
    pretrained: bool = PRETRAINED_OPT,
    trust_pickle: bool = TRUST_OPT,
    methods: str = typer.Option(DEFAULT_METHODS, "--methods", help=METHODS_HELP),
    target: str = typer.Option("predicted", "--target", "-t", help="predicted, second, a class index or a class name."),
    layer: Optional[str] = typer.Option(None, "--layer", "-l", help="Layer for the CAM family (default: the last "
                                        "spatial layer; see `cnnlens layers --model M`)."),
    shared_scale: bool = typer.Option(False, "--shared-scale", help="Draw every map on one scale (each divided by "
                                      "its largest |value|) instead of each in its own units."),
    faithfulness_steps: int = typer.Option(16, "--faithfulness-steps", min=0, help="Deletion/insertion steps "
                                           "(0: skip the faithfulness scores)."),
    baseline: str = typer.Option("blur", "--baseline", help="What deleted pixels become in the faithfulness "
                                 "curves: blur, grey, black or a number in [0, 1] (black suits white-on-black digits)."),
    window: Optional[int] = typer.Option(None, "--window", min=1, help="Occlusion patch size in pixels "
                                         "(default: 1/8 of the image)."),
    stride: Optional[int] = typer.Option(None, "--stride", min=1, help="Occlusion stride (default: window/2)."),
    augmentations: int = typer.Option(100, "--augmentations", min=1, help="Augmented Grad-CAM: number of copies."),
    device: str = DEVICE_OPT,
    out: Path = OUT_OPT,
    force: bool = FORCE_OPT,
) -> None:
    """Explain the model's prediction on each image with the chosen attribution methods.

    For each image, --out gets <image>/original.png, <image>/<method>.png (the map over the image with a
    colour bar), <image>/top5.png, <image>/grid.png (all side by side with the deletion/insertion AUC)
    <image>/explanation.json (settings, classes, faithfulness) and <image>/maps.pt (the maps as tensors);
    plus index.html and results.json.
    """
    import torch
    from rich.console import Console

    from ..results import Explanation
    from ..attribution.report import GUIDED_NOTE, run_methods, score_all, summary
    from ..figures.attribution import (GUIDED, class_means_figure, grid_figure, images_by_methods_figure,
                                       overlay_figure)
    from ..registry import title_of
    from ..data import read_images
    from ..evaluation import predict_topk
    from ..figures.evaluation import topk_figure
    from ..tap import LayerTap
    from ..viz import show_image, subplots

    chosen = parse_methods(methods)
    _baseline(baseline)  # check before loading anything
    if any(k.startswith("captum:") for k in chosen):
        from ..attribution.bridge import captum_class

        try:
            for k in chosen:
                if k.startswith("captum:"):
                    captum_class(k.split(":", 1)[1])
        except (ImportError, ValueError, TypeError) as e:
            raise UserError(f"--methods: {e}") from None
    out = out_dir(out, force, images, weights)
    m = load_model_from_options(model, weights, pretrained, trust_pickle, device)
    if layer is not None:
        from ..tap import resolve_layer

        layer = resolve_layer(m, layer)[0]  # a named layer must exist: one clear error, before any work
    dev = next((p.device for p in m.parameters()), torch.device("cpu"))
    if images and (misclassified or true_class is not None or confused is not None):
        raise UserError("--misclassified, --class and --confused select from --data; give --data D instead of files")
    if bool(images) == bool(data):
        raise UserError("give image files or folders, or --data D (digits, an ImageFolder or a flat folder), "
                        "not both")
    if images:
        loaded = read_images(list(images), m)
        x, names, sources = loaded.images.to(dev), list(loaded.names), list(loaded.sources)
    else:
        from ..data import as_dataset
        from .common import names_from_data

        ds = as_dataset(data, m)
        names_from_data(m, ds)
        picked = _selection(m, ds, misclassified, true_class, confused, n_images)
        items = [ds[i] for i in picked]
        x = torch.stack([torch.as_tensor(a) for a, _ in items]).to(dev)
        names = [f"{i}" if int(y) < 0 else f"{i}-label-{int(y)}" for i, (_, y) in zip(picked, items)]
        sources = [f"{data}[{i}]" for i in picked]
    class_names = list(getattr(getattr(m, "spec", None), "class_names", ()) or ()) or None
    settings = {"occlusion": {k: v for k, v in (("window", window), ("stride", stride)) if v is not None},
                "augmented_gradcam": {"augmentations": augmentations}}
    n = len(names)
    steps = 2 if faithfulness_steps > 0 else 1  # each method, then its deletion/insertion curves
    total = n * len(chosen) * steps  # units: one image × one method (× map, then faithfulness)
    with progress_bar(f"explaining {n} image(s) × {len(chosen)} method(s)", total=total) as update:
        expls = run_methods(m, x, chosen, target=target, layer=layer, settings=settings,
                            progress=lambda name, d, t: update(d * n, total))
        update(len(chosen) * n, total)
        failed = {k: e for k, e in expls.items() if not isinstance(e, Explanation)}
        if len(failed) == len(chosen):
            raise UserError(f"no method applies: {next(iter(failed.values()))}")
        for k, e in failed.items():
            console.print(f"[yellow]{k.replace('_', '-')} skipped:[/] {e}", highlight=False)
        faith = score_all(m, x, expls, steps=faithfulness_steps, baseline=_baseline(baseline),
                          progress=lambda name, d, t: update((len(chosen) + d) * n, total)) \
            if faithfulness_steps > 0 else {}
        update(total, total)
    with LayerTap(m) as tap, torch.no_grad():
        num_classes = tap.run(x[:1]).shape[1]
    top = predict_topk(m, x, k=min(5, num_classes))
    ok = {k: e for k, e in expls.items() if isinstance(e, Explanation)}
    rep = new_report(f"cnnlens explain: {model}", f"{n} image(s), target {target}, {len(ok)} method(s).", m)
    sec = rep.section("Explanations", intro=explain_intro(ok, faithfulness_steps > 0, n, baseline),
                      settings=explain_settings(model, target, chosen, ok, layer, shared_scale, faithfulness_steps,
                                                baseline, n))
    for k, e in failed.items():
        sec.text(f"<p><i>{title_of(k)} skipped: {html.escape(str(e))}</i></p>")
    per_fig = 4
    for part in range(0, n, per_fig):
        rows = list(range(part, min(n, part + per_fig)))
        fig = images_by_methods_figure(x.cpu(), names, ok, faith, rows=rows, shared=shared_scale,
                                       class_names=class_names)
        label = f"images {rows[0] + 1}–{rows[-1] + 1} of {n}" if n > per_fig else f"{n} image(s)"
        sec.figure(_png(fig), f"One row per image ({label}), one column per method: each map over its image with "
                   "its colour bar (signed maps: blue–white–red centred on 0; non-negative maps: one dark-to-bright "
                   "scale)" + ("; under each title the deletion AUC (↓) and insertion AUC (↑)" if faith else "")
                   + (". The last column is occlusion's probability map." if "occlusion" in ok else "."),
                   name=f"explain-grid-{part // per_fig}")
    if any(k in GUIDED for k in ok):
        sec.text(GUIDED_NOTE)
    if n > 1:
        fig, counts = class_means_figure(ok, class_names)
        sec.figure(_png(fig), "Mean map per explained class (rows; the number of images in brackets) and method "
                   "(columns): where the model looks on average for each class among these images.",
                   name="explain-class-means")
        sec.data("class_means", counts)
    if faith:
        header = ["image", "explained class"] + [f"{title_of(k)} del / ins" for k in faith]
        table = []
        for i, name in enumerate(names):
            cls = int(next(iter(ok.values())).classes[i])
            table.append([name, class_names[cls] if class_names and cls < len(class_names) else str(cls)] +
                         [f"{float(f.deletion_auc[i]):.3f} / {float(f.insertion_auc[i]):.3f}" for f in faith.values()])
        table.append([f"mean over {n} image(s)", ""] + [
            f"{float(f.deletion_auc.mean()):.3f} / {float(f.insertion_auc.mean()):.3f}" for f in faith.values()])
        sec.table(table, header=header, caption="Deletion AUC (lower is better) / insertion AUC (higher is better) "
                                                "per image and method; the last row is the mean over the images.")
    sec.gallery([(topk_figure(x[i], top.labels(i), name), name) for i, name in enumerate(names)],
                caption="Top-5 predictions of each image.", width=420)
    stdout = Console()
    for i, name in enumerate(names):
        cls0 = int(next(iter(ok.values())).classes[i])
        cname = class_names[cls0] if class_names and cls0 < len(class_names) else str(cls0)
        grid = grid_figure(x[i], name, ok, i, faith, shared=shared_scale, caption_top=f"explained: {cname}")
        rep.file(f"{name}/grid.png", _png(grid))
        fig, ax = subplots(figsize=(3, 3))
        show_image(ax, x[i], name)
        rep.file(f"{name}/original.png", _png(fig))
        for k, e in ok.items():
            rep.file(f"{name}/{k.replace('_', '-')}.png", _png(overlay_figure(x[i], e, i, shared=shared_scale)))
        rep.file(f"{name}/top5.png", _png(topk_figure(x[i], top.labels(i), name)))
        buf = io.BytesIO()
        torch.save({k: e.maps[i].clone() for k, e in ok.items()}, buf)
        rep.file(f"{name}/maps.pt", buf.getvalue())
        info = {"image": name, "source": sources[i],
                "top5": [{"class": c, "probability": p} for c, p in top.labels(i)],
                "methods": {k: summary(e, faith.get(k), i) for k, e in ok.items()},
                "skipped": {k: str(e) for k, e in failed.items()}}
        rep.file(f"{name}/explanation.json", json.dumps(info, indent=2, default=str))
        sec.data(name, info)
        stdout.print(f"{name}: {cname}  " + "  ".join(
            f"{title_of(k)} del {float(f.deletion_auc[i]):.3f}/ins {float(f.insertion_auc[i]):.3f}" for k, f in faith.items()),
            highlight=False)
    index = out.write(rep)
    console.print(f"wrote {index.parent}: per image original.png, <method>.png, top5.png, grid.png, "
                  "explanation.json, maps.pt; index.html", highlight=False)
