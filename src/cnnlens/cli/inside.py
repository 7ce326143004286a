"""`cnnlens inside ...`: filters, receptive fields, dataset search, activation maximisation, deconvnet,
Deep Dream, neuron statistics and channel influence. Each command writes figures, JSON and a report."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .common import (
    DEVICE_OPT,
    FORCE_OPT,
    MODEL_OPT,
    OUT_OPT,
    PRETRAINED_OPT,
    TRUST_OPT,
    WEIGHTS_OPT,
    ReportDir,
    UserError,
    app,
    console,
    model_options,
    names_from_data,
    out_dir,
    print_table,
    progress_bar,
)
from .session import Session, open_model, session

inside_app = typer.Typer(
    name="inside",
    help="Look inside a CNN: filters, receptive fields, dataset search, activation maximisation, deconvnet, "
    "Deep Dream, neuron statistics, channel influence. Each command writes PNG figures, JSON and index.html.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(inside_app, name="inside")

LAYER_OPT = typer.Option(..., "--layer", "-l", help="Dotted layer name (see `cnnlens layers --model M`).")
CHANNELS_OPT = typer.Option(None, "--channels", "-c", help="Channels, e.g. 0,3,5 or 0-7 (default: all, or a few).")
DATA_OPT = typer.Option(
    None, "--data", "-d", help="digits, an ImageFolder directory, or a flat folder of images (no labels needed)."
)
IMAGE_OPT = typer.Option(None, "--image", "-i", help="Image file(s), folder or glob (repeat the option for several).")


def parse_channels(text: str | None) -> list[int] | None:
    """``"0,3,5"``, ``"0-7"``, ``"0-3,9"`` → a list of ints; None stays None."""
    if text is None or not str(text).strip():
        return None
    out: list[int] = []
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        try:
            if "-" in part[1:]:
                a, b = part.split("-", 1)
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise ValueError
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise UserError(f"--channels {text!r}: give channel numbers like 0,3,5 or ranges like 0-7") from None
    if any(c < 0 for c in out):
        raise UserError("--channels: channel numbers are ≥ 0")
    return out


def _images(model, image: list[str] | None, data: str | None, n: int):
    """(N×C×H×W, labels as text) from --image or the first n images of --data."""
    import torch

    if image:
        from ..data import read_images

        r = read_images(list(image), model, on_error="skip")
        if r.images.shape[0] == 0:
            raise UserError(f"--image {image[0]!r}: no readable image")
        return r.images[:n] if n else r.images, list(r.names)[: n or None]
    if data:
        from ..data import as_dataset

        ds = as_dataset(data, model)
        names_from_data(model, ds)
        k = min(n or 8, len(ds))
        items = [ds[i] for i in range(k)]
        xs = torch.stack([torch.as_tensor(x) for x, _ in items])
        return xs, [f"#{i}" if int(y) < 0 else f"#{i} (label {int(y)})" for i, (_, y) in enumerate(items)]
    raise UserError("give images with --image FILE (or --data D to take its first --n images)")


def _dataset(M: Session, data: str | None, n: int | None):
    """--data for the model (the first n items if n): the command's dataset to scan."""
    if not data:
        raise UserError(
            "this command scans a dataset: give --data digits, --data path/to/imagefolder or a flat "
            "folder of images (no labels needed)"
        )
    return M.dataset(data, n)


def _report(title: str, section: str, intro_key: str, settings: dict, model=None, ran: dict | None = None):
    from ..inside.report import intro_for
    from ..report import Report

    rep = Report(title)
    if model is not None:
        rep.describe_model(model)
    return rep, rep.section(
        section,
        intro_for(intro_key, **(ran or {})),
        {k: v if isinstance(v, (int, float, str)) else str(v) for k, v in settings.items()},
    )


def is_labelled(ds) -> bool:
    from ..data import is_labelled as labelled

    return labelled(ds)


def _regularisers(param, tv, l2, l2_decay, blur_every, blur_sigma, jitter, scale, rotate) -> list[str]:
    """The regularisers that ran, in words (for the report's introduction)."""
    out = []
    if str(param).lower().startswith("fourier"):
        out.append("a Fourier parameterisation with decorrelated colour")
    if tv:
        out.append(f"total variation (weight {tv:g})")
    if l2:
        out.append(f"an L2 penalty ‖x − ½‖² (weight {l2:g})")
    if l2_decay:
        out.append(f"L2 decay ({l2_decay:g} per step)")
    if blur_every:
        out.append(f"a Gaussian blur (σ = {blur_sigma:g}) every {blur_every} steps")
    if jitter:
        out.append(f"random jitter of ±{jitter} px")
    if scale:
        out.append(f"random scaling by ±{scale:g}")
    if rotate:
        out.append(f"random rotation by ±{rotate:g}°")
    return out


def _finish(rep, out: ReportDir, files: dict, what: str) -> None:
    for name, blob in files.items():
        rep.file(name, blob)
    index = out.write(rep)
    console.print(f"wrote {index.parent}: {', '.join(files)}, index.html ({what})", highlight=False)


def _say(*objs) -> None:
    """Results go to stdout (the status lines and errors to stderr)."""
    from rich.console import Console

    Console().print(*objs, highlight=False)


def _json(result) -> bytes:
    return json.dumps(result.to_dict() if hasattr(result, "to_dict") else result, indent=2).encode()


# ---------------------------------------------------------------------------
@inside_app.command("filters")
@model_options
def filters_cmd(
    model: str = MODEL_OPT,
    layer: str | None = typer.Option(None, "--layer", "-l", help="A conv layer (default: the first one)."),
    image: list[str] | None = IMAGE_OPT,
    weights: Path | None = WEIGHTS_OPT,
    pretrained: bool = PRETRAINED_OPT,
    trust_pickle: bool = TRUST_OPT,
    device: str = DEVICE_OPT,
    out: Path = OUT_OPT,
    force: bool = FORCE_OPT,
) -> None:
    """A conv layer's filters as images (RGB tiles for the first layer), and its feature maps for --image."""
    from ..inside import feature_maps, filters
    from ..inside.report import add_feature_maps, add_filters, tensors_file

    out = out_dir(out, force, image, weights)
    M = open_model(model, weights, pretrained, trust_pickle, device)
    f = filters(M.model, layer)
    rep, sec = _report(
        f"cnnlens inside filters: {model}",
        "Filters",
        "filters",
        {"model": model, "layer": f.layer},
        model=M.model,
        ran={"images": bool(image)},
    )
    files = {"filters.png": add_filters(sec, f), "filters.json": _json(f), "filters.pt": tensors_file(f)}
    if image:
        x, names = _images(M.model, image, None, 0)
        fm = feature_maps(M.model, x, f.layer)
        for i, nm in enumerate(names):
            files[f"feature_maps_{i}.png"] = add_feature_maps(
                sec, fm, image=x[i], sample=i, caption=f"feature maps of {f.layer} for {nm}"
            )
    _say(f"{f.layer}: {tuple(f.weights.shape)} weights, shown as {f.mode} tiles")
    _finish(rep, out, files, "filters")


@inside_app.command("rf")
@model_options
def rf_cmd(
    model: str = MODEL_OPT,
    layer: list[str] | None = typer.Option(
        None, "--layer", "-l", help="Layer(s); default: every conv and pooling layer."
    ),
    probe: bool = typer.Option(True, "--probe/--no-probe", help="Check each field with the gradient probe."),
    weights: Path | None = WEIGHTS_OPT,
    pretrained: bool = PRETRAINED_OPT,
    trust_pickle: bool = TRUST_OPT,
    device: str = DEVICE_OPT,
    out: Path = OUT_OPT,
    force: bool = FORCE_OPT,
) -> None:
    """Receptive field (size, stride, offset) of each layer, computed from the forward pass and checked by a gradient probe."""
    from rich.table import Table
    from torch import nn

    from ..inside import receptive_field
    from ..inside.report import RF_HEADER, add_receptive_fields, rf_rows

    out = out_dir(out, force, weights)
    M = open_model(model, weights, pretrained, trust_pickle, device)
    names = [s for l in (layer or []) for s in l.split(",") if s]
    if not names:
        kinds = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
        names = [n for n, m in M.model.named_modules() if isinstance(m, kinds)]
    rfs = []
    with progress_bar("receptive fields", len(names)) as update:
        for i, n in enumerate(names):
            rfs.append(receptive_field(M.model, n, probe=probe))
            update(i + 1, len(names))
    t = Table(title=f"receptive fields of {model}", title_justify="left")
    for h in RF_HEADER:
        t.add_column(h)
    for row in rf_rows(rfs):
        t.add_row(*[str(c) for c in row])
    print_table(t)
    rep, sec = _report(
        f"cnnlens inside rf: {model}",
        "Receptive fields",
        "receptive",
        {"model": model, "probe": probe, "input size": rfs[0].input_size if rfs else "-"},
        model=M.model,
    )
    add_receptive_fields(sec, rfs)
    _finish(rep, out, {"receptive_fields.json": _json([r.to_dict() for r in rfs])}, "receptive fields")


@inside_app.command("search")
@model_options
def search_cmd(
    model: str = MODEL_OPT,
    layer: str = LAYER_OPT,
    channels: str | None = CHANNELS_OPT,
    data: str | None = DATA_OPT,
    k: int = typer.Option(9, "--k", "-k", min=1, help="Images kept per channel."),
    n: int | None = typer.Option(None, "--n", min=1, help="Scan only the first n images."),
    max_crop: int | None = typer.Option(None, "--max-crop", min=4, help="Shrink patches larger than this (memory)."),
    batch_size: int = typer.Option(64, "--batch-size", "-b", min=1),
    weights: Path | None = WEIGHTS_OPT,
    pretrained: bool = PRETRAINED_OPT,
    trust_pickle: bool = TRUST_OPT,
    device: str = DEVICE_OPT,
    out: Path = OUT_OPT,
    force: bool = FORCE_OPT,
) -> None:
    """Dataset search: each channel's top-k images and the receptive-field patch of its strongest unit (one scan).

    Runs under `torchrun --nproc_per_node N -m cnnlens inside search ...` (rank 0 writes).
    """
    from ..inside import dataset_search
    from ..inside.report import add_search, tensors_file

    out = out_dir(out, force, data, weights)
    chans = parse_channels(channels)
    with session(model, weights, pretrained, trust_pickle, device) as M:
        ds = _dataset(M, data, n)
        with M.progress(f"searching {layer}") as update:
            r = dataset_search(
                M.model, ds, layer, chans, k, batch_size=batch_size, device=M.device, progress=update, max_crop=max_crop
            )
        if not M.writes:
            return
        rep, sec = _report(
            f"cnnlens inside search: {model}",
            "Dataset search",
            "search",
            {
                "model": model,
                "data": data,
                "labels": getattr(ds, "cnnlens_labels", "given by the data"),
                "layer": r.layer,
                "k": r.k,
                "images": len(ds),
                "processes": M.world,
            },
            model=M.model,
            ran={"labels": is_labelled(ds)},
        )
        files = {}
        cs = list(r.channels)
        for part in range(0, len(cs), 16):
            img = add_search(sec, r, M.class_names, channels=cs[part : part + 16])
            if img is not None:
                files[f"search_{part // 16}.png"] = img
        files.update({"search.json": _json(r), "search.pt": tensors_file(r)})
        silent = set(r.never_fired())
        for c in cs[:8]:
            h = r.class_histogram[r.row(c)]
            top = int(h.argmax())
            if c in silent:
                _say(f"channel {c}: never fired (activation ≤ 0 everywhere)")
            elif int(h.sum()) == 0:
                _say(f"channel {c}: top activation {float(r.activations[r.row(c), 0]):.3g} (no labels)")
            else:
                _say(
                    f"channel {c}: top activation {float(r.activations[r.row(c), 0]):.3g}, most frequent class "
                    f"{M.class_names[top] if M.class_names else top} ({int(h[top])}/{r.k})"
                )
        _finish(rep, out, files, f"{len(cs)} channels")


@inside_app.command("maximize")
@model_options
def maximize_cmd(
    model: str = MODEL_OPT,
    layer: str | None = typer.Option(None, "--layer", "-l", help="Maximise channels of this layer (with --channels)."),
    channels: str | None = CHANNELS_OPT,
    classes: str | None = typer.Option(
        None, "--classes", help="Class indices or names, comma-separated (class model visualisation)."
    ),
    neuron: bool = typer.Option(False, "--neuron", help="The centre unit of each channel instead of the channel mean."),
    steps: int = typer.Option(256, "--steps", min=0),
    lr: float = typer.Option(0.05, "--lr"),
    param: str = typer.Option("fourier", "--param", help="fourier (decorrelated colour) or pixel."),
    tv: float = typer.Option(0.0, "--tv", help="Weight of the total-variation penalty."),
    l2: float = typer.Option(0.0, "--l2", help="Weight of the ‖x − ½‖² penalty."),
    l2_decay: float = typer.Option(0.0, "--l2-decay", help="Shrink the image parameter by this fraction each step."),
    blur_every: int = typer.Option(0, "--blur-every", help="Gaussian blur every n steps (0: never)."),
    blur_sigma: float = typer.Option(0.5, "--blur-sigma"),
    jitter: int = typer.Option(0, "--jitter", help="Random shift of up to ±n pixels each step."),
    scale: float = typer.Option(0.0, "--scale", help="Random zoom by up to ±this fraction each step."),
    rotate: float = typer.Option(0.0, "--rotate", help="Random rotation by up to ±this many degrees each step."),
    size: int | None = typer.Option(None, "--size", help="Image side in pixels (default: model.spec)."),
    seed: int = typer.Option(0, "--seed"),
    weights: Path | None = WEIGHTS_OPT,
    pretrained: bool = PRETRAINED_OPT,
    trust_pickle: bool = TRUST_OPT,
    device: str = DEVICE_OPT,
    out: Path = OUT_OPT,
    force: bool = FORCE_OPT,
) -> None:
    """Activation maximisation: images that maximise channels of --layer, or class scores (--classes)."""
    from ..inside import maximize, objectives
    from ..inside.report import add_visualizations, tensors_file
    from ..targets import as_target

    out = out_dir(out, force, weights)
    M = open_model(model, weights, pretrained, trust_pickle, device)
    if (layer is None) == (classes is None):
        raise UserError("give --layer L (with --channels) to maximise channels, or --classes to maximise class scores")
    if classes is not None:
        idx = [as_target(c.strip(), M.class_names).index for c in classes.split(",") if c.strip()]
        J = objectives.class_score(idx)
        titles = [M.class_names[i] if M.class_names else str(i) for i in idx]
    else:
        chans = parse_channels(channels) or [0, 1, 2, 3]
        J = objectives.neuron(layer, chans) if neuron else objectives.channel(layer, chans)
        titles = [f"{layer} {'unit' if neuron else 'ch'} {c}" for c in chans]
    with progress_bar("maximising", steps) as update:
        v = maximize(
            M.model,
            J,
            steps,
            lr=lr,
            param=param,
            tv=tv,
            l2=l2,
            l2_decay=l2_decay,
            blur_every=blur_every,
            blur_sigma=blur_sigma,
            jitter=jitter,
            scale=scale or None,
            rotate=rotate or None,
            size=size,
            seed=seed,
            progress=update,
        )
    rep, sec = _report(
        f"cnnlens inside maximize: {model}",
        "Activation maximisation",
        "maximize",
        {"model": model, "objective": v.objective, **v.settings},
        model=M.model,
        ran={
            "objective": "class" if classes is not None else "neuron" if neuron else "channel",
            "regularisers": _regularisers(param, tv, l2, l2_decay, blur_every, blur_sigma, jitter, scale, rotate),
        },
    )
    img = add_visualizations(
        sec,
        v,
        [f"{t}: {float(s):.3g}→{float(f):.3g}" for t, s, f in zip(titles, v.start, v.final)],
        f"{v.objective}: {steps} steps",
    )
    for t, s, f in zip(titles, v.start, v.final):
        _say(f"{t}: {float(s):.4g} → {float(f):.4g}")
    _finish(rep, out, {"maximize.png": img, "maximize.json": _json(v), "maximize.pt": tensors_file(v)}, v.objective)


@inside_app.command("deconv")
@model_options
def deconv_cmd(
    model: str = MODEL_OPT,
    layer: str = LAYER_OPT,
    channels: str | None = CHANNELS_OPT,
    image: list[str] | None = IMAGE_OPT,
    data: str | None = DATA_OPT,
    n: int = typer.Option(4, "--n", min=1, help="Images taken from --data."),
    position: str = typer.Option("max", "--position", help="max (the strongest unit) or all (the whole map)."),
    guided: bool = typer.Option(True, "--guided/--no-guided", help="Show guided backprop of the same unit alongside."),
    weights: Path | None = WEIGHTS_OPT,
    pretrained: bool = PRETRAINED_OPT,
    trust_pickle: bool = TRUST_OPT,
    device: str = DEVICE_OPT,
    out: Path = OUT_OPT,
    force: bool = FORCE_OPT,
) -> None:
    """Deconvnet (Zeiler & Fergus): project a channel's strongest unit back to pixels through switches."""
    from ..inside import deconvnet
    from ..inside.report import add_deconv, tensors_file

    out = out_dir(out, force, image, data, weights)
    M = open_model(model, weights, pretrained, trust_pickle, device)
    x, names = _images(M.model, image, data, n)
    x = x.to(next(M.model.parameters()).device)
    chans = parse_channels(channels) or [0, 1, 2]
    projs = [deconvnet(M.model, x, layer, c, position=position) for c in chans]
    rep, sec = _report(
        f"cnnlens inside deconv: {model}",
        "Deconvnet",
        "deconv",
        {
            "model": model,
            "layer": projs[0].layer,
            "channels": chans,
            "position": position,
            "guided backprop alongside": guided,
        },
        model=M.model,
        ran={"guided": guided},
    )
    img = add_deconv(sec, M.model, x, projs, labels=names, with_guided=guided)
    files = {"deconv.png": img}
    for p in projs:
        files[f"deconv_ch{p.channel}.json"] = _json(p)
        files[f"deconv_ch{p.channel}.pt"] = tensors_file(p)
    _finish(rep, out, files, f"{len(chans)} channels × {len(names)} images")


@inside_app.command("dream")
@model_options
def dream_cmd(
    model: str = MODEL_OPT,
    image: list[str] | None = IMAGE_OPT,
    data: str | None = DATA_OPT,
    layer: str | None = typer.Option(None, "--layer", "-l", help="Amplify this layer's activations."),
    target: str | None = typer.Option(None, "--class", help="Or amplify a class score (index or name)."),
    octaves: int = typer.Option(4, "--octaves", min=1),
    octave_scale: float = typer.Option(1.4, "--octave-scale"),
    steps: int = typer.Option(10, "--steps", min=0),
    step_size: float = typer.Option(0.01, "--step-size"),
    jitter: int = typer.Option(16, "--jitter", min=0),
    seed: int = typer.Option(0, "--seed"),
    weights: Path | None = WEIGHTS_OPT,
    pretrained: bool = PRETRAINED_OPT,
    trust_pickle: bool = TRUST_OPT,
    device: str = DEVICE_OPT,
    out: Path = OUT_OPT,
    force: bool = FORCE_OPT,
) -> None:
    """Deep Dream: multi-octave gradient ascent from a photo on a layer's activations (or a class score)."""
    from ..inside import deep_dream
    from ..inside.report import add_dream, tensors_file
    from ..viz import to_pil

    out = out_dir(out, force, image, data, weights)
    M = open_model(model, weights, pretrained, trust_pickle, device)
    x, names = _images(M.model, image, data, 1 if not image else 0)
    x = x.to(next(M.model.parameters()).device)
    with progress_bar("dreaming") as update:
        d = deep_dream(
            M.model,
            x,
            layer,
            target,
            octaves=octaves,
            octave_scale=octave_scale,
            steps=steps,
            step_size=step_size,
            jitter=jitter,
            seed=seed,
            progress=update,
        )
    rep, sec = _report(
        f"cnnlens inside dream: {model}",
        "Deep Dream",
        "dream",
        {"model": model, **d.settings},
        model=M.model,
        ran={"objective": "class" if target is not None else "layer"},
    )
    files = {"dream.png": add_dream(sec, x, d, f"{d.objective}: {float(d.start[0]):.3g} → {float(d.final[0]):.3g}")}
    for i in range(d.images.shape[0]):
        import io

        buf = io.BytesIO()
        to_pil(d.images[i]).save(buf, format="PNG")
        files[f"dream_{i}.png"] = buf.getvalue()
    files.update({"dream.json": _json(d), "dream.pt": tensors_file(d)})
    _finish(rep, out, files, d.objective)


@inside_app.command("stats")
@model_options
def stats_cmd(
    model: str = MODEL_OPT,
    layer: str = LAYER_OPT,
    data: str | None = DATA_OPT,
    bins: int = typer.Option(40, "--bins", min=2),
    n: int | None = typer.Option(None, "--n", min=1),
    channels: str | None = typer.Option(None, "--channels", "-c", help="Channels to plot (statistics cover all)."),
    batch_size: int = typer.Option(64, "--batch-size", "-b", min=1),
    weights: Path | None = WEIGHTS_OPT,
    pretrained: bool = PRETRAINED_OPT,
    trust_pickle: bool = TRUST_OPT,
    device: str = DEVICE_OPT,
    out: Path = OUT_OPT,
    force: bool = FORCE_OPT,
) -> None:
    """Neuron statistics over a dataset: mean, variance, sparsity, histograms, dead channels, per-class means, selectivity.

    Runs under `torchrun --nproc_per_node N -m cnnlens inside stats ...` (rank 0 writes).
    """
    from ..inside import neuron_stats
    from ..inside.report import add_stats, tensors_file

    out = out_dir(out, force, data, weights)
    with session(model, weights, pretrained, trust_pickle, device) as M:
        ds = _dataset(M, data, n)
        with M.progress(f"statistics of {layer}") as update:
            st = neuron_stats(M.model, ds, layer, bins=bins, batch_size=batch_size, device=M.device, progress=update)
        if not M.writes:
            return
        rep, sec = _report(
            f"cnnlens inside stats: {model}",
            "Neuron statistics",
            "stats",
            {
                "model": model,
                "data": data,
                "labels": getattr(ds, "cnnlens_labels", "given by the data"),
                "layer": st.layer,
                "images": len(ds),
                "bins": bins,
                "processes": M.world,
            },
            model=M.model,
            ran={"labels": is_labelled(ds)},
        )
        a, b = add_stats(sec, st, M.class_names, channels=parse_channels(channels))
        _say(
            f"{st.layer}: {len(st.mean)} channels, mean sparsity {float(st.sparsity.mean()):.3f}, dead "
            f"channels: {st.dead_channels or 'none'}"
        )
        files = {
            "stats.png": a,
            **({"class_mean.png": b} if b is not None else {}),
            "stats.json": _json(st),
            "stats.pt": tensors_file(st),
        }
        _finish(rep, out, files, "neuron statistics")


@inside_app.command("influence")
@model_options
def influence_cmd(
    model: str = MODEL_OPT,
    layer: str = LAYER_OPT,
    data: str | None = DATA_OPT,
    image: list[str] | None = IMAGE_OPT,
    target: str = typer.Option("predicted", "--target", "-t", help="Class index or name, predicted, second or true."),
    channels: str | None = CHANNELS_OPT,
    ablation: bool = typer.Option(
        True,
        "--ablation/--no-ablation",
        help="Also zero channels (one forward per channel and image) to measure the exact drop.",
    ),
    ablate_top: int = typer.Option(
        16, "--ablate-top", min=1, help="Zero only the channels ranked highest by a·∂y/∂a (every channel is ranked)."
    ),
    all_channels: bool = typer.Option(
        False, "--all-channels", help="Zero every channel (slow on wide layers: one forward per channel and image)."
    ),
    n: int | None = typer.Option(None, "--n", min=1, help="Use only the first n images of --data."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", min=1),
    weights: Path | None = WEIGHTS_OPT,
    pretrained: bool = PRETRAINED_OPT,
    trust_pickle: bool = TRUST_OPT,
    device: str = DEVICE_OPT,
    out: Path = OUT_OPT,
    force: bool = FORCE_OPT,
) -> None:
    """Rank a layer's channels by mean ∂y/∂a, a·∂y/∂a and the exact drop in y when the channel is zeroed."""
    from rich.table import Table

    from ..inside import influence
    from ..inside.report import add_influence, tensors_file

    out = out_dir(out, force, data, image, weights)
    with session(model, weights, pretrained, trust_pickle, device) as M:
        if image:
            src, _ = _images(M.model, image, None, 0)
            src = src.to(M.device)
        else:
            src = _dataset(M, data, n)
        if target.strip().lower() == "true" and not image:
            from ..data import require_labels

            require_labels(src, "--target true")
        top = None if all_channels or not ablation else ablate_top
        what = "gradients" + (
            ""
            if not ablation
            else ", then zeroing every channel"
            if top is None
            else f", then zeroing the top {top} channels"
        )
        with M.progress(f"influence of {layer} ({what})") as update:
            inf = influence(
                M.model,
                src,
                layer,
                target,
                ablation=ablation,
                channels=parse_channels(channels),
                ablate_top=top,
                batch_size=batch_size,
                device=M.device,
                progress=update,
            )
        if not M.writes:
            return
        ablated = inf.settings.get("ablated")
        t = Table(title=f"channels of {inf.layer} by influence on the {inf.target}", title_justify="left")
        for h in ("rank", "channel", "a·∂y/∂a", "mean ∂y/∂a", "drop when zeroed"):
            t.add_column(h, justify="right")
        for r, c in enumerate(inf.ranking[:10]):
            i = inf.channels.index(c)
            v = None if inf.ablation is None else float(inf.ablation[i])
            t.add_row(
                str(r + 1),
                str(c),
                f"{float(inf.taylor[i]):.4g}",
                f"{float(inf.gradient[i]):.4g}",
                "—" if v is None or v != v else f"{v:.4g}",
            )
        print_table(t)
        zeroed = (
            "no"
            if not ablation
            else f"every channel ({len(inf.channels)})"
            if ablated is None
            else f"the top {len(ablated)} of {len(inf.channels)} channels by a·∂y/∂a"
        )
        rep, sec = _report(
            f"cnnlens inside influence: {model}",
            "Channel influence",
            "influence",
            {
                "model": model,
                "layer": inf.layer,
                "target": inf.target,
                "images": inf.count,
                "channels ranked": len(inf.channels),
                "zeroed (ablation)": zeroed,
                "processes": M.world,
            },
            model=M.model,
            ran={"ablation": None if not ablation else "all" if ablated is None else len(ablated)},
        )
        img = add_influence(sec, inf)
        _finish(
            rep,
            out,
            {"influence.png": img, "influence.json": _json(inf), "influence.pt": tensors_file(inf)},
            f"{len(inf.channels)} channels",
        )


# ---------------------------------------------------------------------------
def _folder_images(model, spec: str, what: str):
    """The images of a folder (flat, or an ImageFolder) as one N×C×H×W tensor."""
    import torch

    from ..data import image_folder

    p = Path(spec).expanduser()
    if not p.is_dir():
        raise UserError(f"{what} {spec}: no such folder; give a folder of images")
    try:
        ds = image_folder(p, model)
    except ValueError as e:
        raise UserError(f"{what} {spec}: {e}") from None
    return torch.stack([torch.as_tensor(ds[i][0]) for i in range(len(ds))])


@inside_app.command("tcav")
@model_options
def tcav_cmd(
    model: str = MODEL_OPT,
    layer: str = LAYER_OPT,
    concept: list[str] = typer.Option(
        ..., "--concept", help="NAME=folder of the concept's example images (repeat the option for several concepts)."
    ),
    random: str = typer.Option(
        ...,
        "--random",
        help="Folder of random images: each run draws two disjoint sets "
        "of the concept's size from it (counter-examples, and a random concept).",
    ),
    target: str = typer.Option(..., "--target", "-t", help="The class tested: index or name."),
    data: str | None = typer.Option(
        None,
        "--data",
        "-d",
        help="The class's images: those labelled --target in "
        "a dataset (digits, cluttered-digits, an ImageFolder); default "
        "cluttered-digits for cluttered-digits-cnn.",
    ),
    image: list[str] | None = typer.Option(
        None, "--image", "-i", help="The class's images as files, a folder or a glob (instead of --data)."
    ),
    n: int = typer.Option(100, "--n", min=2, help="At most this many images of the class."),
    runs: int = typer.Option(
        10, "--runs", min=2, help="Random counter-example sets (Kim et al.: the t-test's sample size)."
    ),
    classifier: str = typer.Option("sgd", "--classifier", help="sgd (Captum's default SGDClassifier) or logistic."),
    bonferroni: bool = typer.Option(False, "--bonferroni", help="Divide the 0.05 level by the number of concepts."),
    weights: Path | None = WEIGHTS_OPT,
    pretrained: bool = PRETRAINED_OPT,
    trust_pickle: bool = TRUST_OPT,
    device: str = DEVICE_OPT,
    out: Path = OUT_OPT,
    force: bool = FORCE_OPT,
) -> None:
    """TCAV (Kim et al. 2018): does a concept, given as example images, raise a class's score at a layer? Scores
    over several random counter-example sets, a t-test against random CAVs, a bar chart and a report."""
    import torch

    from ..inside import tcav
    from ..inside.report import add_tcav, tensors_file

    concepts = {}
    for c in concept:
        name, sep, folder = c.partition("=")
        if not sep or not name.strip() or not folder.strip():
            raise UserError(f"--concept {c!r}: give NAME=folder, e.g. --concept stripes=images/stripes")
        concepts[name.strip()] = folder.strip()
    out = out_dir(out, force, data, image, random, *concepts.values(), weights)
    M = open_model(model, weights, pretrained, trust_pickle, device)
    if classifier not in ("sgd", "logistic"):
        raise UserError(f"--classifier {classifier!r}: choose sgd or logistic")
    imgs = {k: _folder_images(M.model, v, f"--concept {k}=") for k, v in concepts.items()}
    pool = _folder_images(M.model, random, "--random")
    from ..inside.tcav import _class_index

    try:
        k, _ = _class_index(M.model, target)
    except (TypeError, ValueError) as e:
        raise UserError(f"--target: {e}") from None
    if image:
        x, _ = _images(M.model, image, None, n)
    else:
        if data is None and model == "cluttered-digits-cnn":
            data = "cluttered-digits"
        ds = _dataset(M, data, None)
        if not is_labelled(ds):
            raise UserError(f"--data {data}: has no labels, so no images of class {target}; give --image")
        xs = [torch.as_tensor(xi) for xi, yi in (ds[i] for i in range(len(ds))) if int(yi) == k][:n]
        if len(xs) < 2:
            raise UserError(f"--data {data}: {len(xs)} image(s) of class {target}; need at least 2")
        x = torch.stack(xs)
    dev = next(iter(M.model.parameters())).device
    with progress_bar(f"TCAV of {len(imgs)} concept(s) at {layer}, {runs} runs") as update:
        r = tcav(
            M.model,
            layer,
            concepts={c: v.to(dev) for c, v in imgs.items()},
            random=pool.to(dev),
            inputs=x.to(dev),
            target=k,
            runs=runs,
            classifier=classifier,
            bonferroni=bonferroni,
            progress=update,
        )
    from rich.table import Table

    t = Table(title=f"TCAV for class {r.target_name or r.target} at {r.layer} ({runs} runs)", title_justify="left")
    for h in ("concept", "score", "random", "p", "significant"):
        t.add_column(h, justify="right")
    for row in r.rows():
        t.add_row(
            row["concept"],
            f"{row['score']:.2f}±{row['score_std']:.2f}",
            f"{row['random']:.2f}",
            f"{row['p_value']:.2g}",
            "yes" if row["significant"] else "n.s.",
        )
    print_table(t)
    rep, sec = _report(
        f"cnnlens inside tcav: {model}",
        "Concepts: TCAV",
        "tcav",
        {
            "model": model,
            "layer": r.layer,
            "target": r.target_name or r.target,
            "class images": r.n_inputs,
            "concepts": ", ".join(f"{c} ({len(v)})" for c, v in imgs.items()),
            "random pool": len(pool),
            "runs": runs,
            "classifier": classifier,
            "Bonferroni": bonferroni,
        },
        model=M.model,
    )
    img = add_tcav(sec, r)
    _finish(rep, out, {"tcav.png": img, "tcav.json": _json(r), "tcav.pt": tensors_file(r)}, f"{len(imgs)} concept(s)")
