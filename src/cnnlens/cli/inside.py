"""`cnnlens inside ...`: filters, receptive fields, dataset search, activation maximisation, deconvnet,
Deep Dream, neuron statistics, channel influence and TCAV. Each command writes figures, JSON and a report."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from .common import (
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
from .options import (
    BatchSize,
    Channels,
    Device,
    FirstN,
    Force,
    Image,
    ImagesData,
    Layer,
    Model,
    Out,
    Pretrained,
    Seed,
    TrustPickle,
    Weights,
)
from .session import Session, open_model, session

# Imported late, inside functions: torch and the cnnlens modules that import it (inside, data), rich.table (≈7 ms).
# `cnnlens --help` imports this module, and torch alone would add ≈2 s to it.

if TYPE_CHECKING:
    from rich.console import JustifyMethod

inside_app = typer.Typer(
    name="inside",
    help="Look inside a CNN: filters, receptive fields, dataset search, activation maximisation, deconvnet, "
    "Deep Dream, neuron statistics, channel influence. Each command writes PNG figures, JSON and index.html.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(inside_app, name="inside")


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


def is_labelled(ds) -> bool:
    from ..data import is_labelled as labelled

    return labelled(ds)


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


def _write(page, out: ReportDir, what: str) -> None:
    """Write a page (the report and its files, from :mod:`cnnlens.inside.pages`) and say where."""
    rep, files = page
    for name, blob in files.items():
        rep.file(name, blob)
    index = out.write(rep)
    console.print(f"wrote {index.parent}: {', '.join(files)}, index.html ({what})", highlight=False)


def _say(*objs) -> None:
    """Results go to stdout (the status lines and errors to stderr)."""
    Console().print(*objs, highlight=False)


def _table(title: str, header, rows, justify: JustifyMethod = "left") -> None:
    """A table of results on stdout."""
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for h in header:
        t.add_column(h, justify=justify)
    for row in rows:
        t.add_row(*[str(c) for c in row])
    print_table(t)


# ---------------------------------------------------------------------------
@inside_app.command("filters")
@model_options
def filters_cmd(
    *,
    model: Model,
    layer: Annotated[str | None, typer.Option("--layer", "-l", help="A conv layer (default: the first one).")] = None,
    image: Image = None,
    weights: Weights = None,
    pretrained: Pretrained = False,
    trust_pickle: TrustPickle = False,
    device: Device = "cpu",
    out: Out = Path("cnnlens-out"),
    force: Force = False,
) -> None:
    """A conv layer's filters as images (RGB tiles for the first layer), and its feature maps for --image."""
    from ..inside import feature_maps, filters
    from ..inside.pages import filters_page

    report_dir = out_dir(out, force, image, weights)
    M = open_model(model, weights, pretrained, trust_pickle, device)
    f = filters(M.model, layer)
    x, names, fm = None, [], None
    if image:
        x, names = _images(M.model, image, None, 0)
        fm = feature_maps(M.model, x, f.layer)
    _say(f"{f.layer}: {tuple(f.weights.shape)} weights, shown as {f.mode} tiles")
    _write(filters_page(model, M.model, f, x, fm, names), report_dir, "filters")


@inside_app.command("rf")
@model_options
def rf_cmd(
    *,
    model: Model,
    layer: Annotated[
        list[str] | None, typer.Option("--layer", "-l", help="Layer(s); default: every conv and pooling layer.")
    ] = None,
    probe: Annotated[bool, typer.Option("--probe/--no-probe", help="Check each field with the gradient probe.")] = True,
    weights: Weights = None,
    pretrained: Pretrained = False,
    trust_pickle: TrustPickle = False,
    device: Device = "cpu",
    out: Out = Path("cnnlens-out"),
    force: Force = False,
) -> None:
    """Receptive field (size, stride, offset) of each layer, computed from the forward pass and checked by a
    gradient probe."""
    from ..inside import receptive_field
    from ..inside.pages import receptive_page
    from ..inside.receptive import field_layers
    from ..inside.report import RF_HEADER, rf_rows

    report_dir = out_dir(out, force, weights)
    M = open_model(model, weights, pretrained, trust_pickle, device)
    names = [s for l in (layer or []) for s in l.split(",") if s] or field_layers(M.model)
    rfs = []
    with progress_bar("receptive fields", len(names)) as update:
        for i, n in enumerate(names):
            rfs.append(receptive_field(M.model, n, probe=probe))
            update(i + 1, len(names))
    _table(f"receptive fields of {model}", RF_HEADER, rf_rows(rfs))
    _write(receptive_page(model, M.model, rfs, probe), report_dir, "receptive fields")


@inside_app.command("search")
@model_options
def search_cmd(
    *,
    model: Model,
    layer: Layer,
    channels: Channels = None,
    data: ImagesData = None,
    k: Annotated[int, typer.Option("--k", "-k", min=1, help="Images kept per channel.")] = 9,
    n: FirstN = None,
    max_crop: Annotated[
        int | None, typer.Option("--max-crop", min=4, help="Shrink patches larger than this (memory).")
    ] = None,
    batch_size: BatchSize = 64,
    weights: Weights = None,
    pretrained: Pretrained = False,
    trust_pickle: TrustPickle = False,
    device: Device = "cpu",
    out: Out = Path("cnnlens-out"),
    force: Force = False,
) -> None:
    """Dataset search: each channel's top-k images and the receptive-field patch of its strongest unit (one scan).

    Runs under `torchrun --nproc_per_node N -m cnnlens inside search ...` (rank 0 writes).
    """
    from ..inside import dataset_search
    from ..inside.pages import search_page

    report_dir = out_dir(out, force, data, weights)
    chans = parse_channels(channels)
    with session(model, weights, pretrained, trust_pickle, device) as M:
        ds = _dataset(M, data, n)
        with M.progress(f"searching {layer}") as update:
            r = dataset_search(
                M.model, ds, layer, chans, k, batch_size=batch_size, device=M.device, progress=update, max_crop=max_crop
            )
        if not M.writes:
            return
        labels, labelled = getattr(ds, "cnnlens_labels", "given by the data"), is_labelled(ds)
        pg = search_page(
            model,
            M.model,
            r,
            data=data,
            labels=labels,
            images=len(ds),
            processes=M.world,
            labelled=labelled,
            class_names=M.class_names,
        )
        _say_search(r, M.class_names)
        _write(pg, report_dir, f"{len(r.channels)} channels")


def _say_search(r, class_names) -> None:
    """Each of the first 8 channels: its top activation and most frequent class (or that it never fired)."""
    silent = set(r.never_fired())
    for c in list(r.channels)[:8]:
        h = r.class_histogram[r.row(c)]
        top = int(h.argmax())
        if c in silent:
            _say(f"channel {c}: never fired (activation ≤ 0 everywhere)")
        elif int(h.sum()) == 0:
            _say(f"channel {c}: top activation {float(r.activations[r.row(c), 0]):.3g} (no labels)")
        else:
            _say(
                f"channel {c}: top activation {float(r.activations[r.row(c), 0]):.3g}, most frequent class "
                f"{class_names[top] if class_names else top} ({int(h[top])}/{r.k})"
            )


#: maximize's own options
MaxLayer = Annotated[
    str | None, typer.Option("--layer", "-l", help="Maximise channels of this layer (with --channels).")
]
MaxClasses = Annotated[
    str | None,
    typer.Option("--classes", help="Class indices or names, comma-separated (class model visualisation)."),
]
MaxNeuron = Annotated[
    bool, typer.Option("--neuron", help="The centre unit of each channel instead of the channel mean.")
]
MaxSteps = Annotated[int, typer.Option("--steps", min=0)]
MaxLr = Annotated[float, typer.Option("--lr")]
MaxParam = Annotated[str, typer.Option("--param", help="fourier (decorrelated colour) or pixel.")]
MaxTv = Annotated[float, typer.Option("--tv", help="Weight of the total-variation penalty.")]
MaxL2 = Annotated[float, typer.Option("--l2", help="Weight of the ‖x − ½‖² penalty.")]
MaxL2Decay = Annotated[float, typer.Option("--l2-decay", help="Shrink the image parameter by this fraction each step.")]
MaxBlurEvery = Annotated[int, typer.Option("--blur-every", help="Gaussian blur every n steps (0: never).")]
MaxBlurSigma = Annotated[float, typer.Option("--blur-sigma")]
MaxJitter = Annotated[int, typer.Option("--jitter", help="Random shift of up to ±n pixels each step.")]
MaxScale = Annotated[float, typer.Option("--scale", help="Random zoom by up to ±this fraction each step.")]
MaxRotate = Annotated[float, typer.Option("--rotate", help="Random rotation by up to ±this many degrees each step.")]
MaxSize = Annotated[int | None, typer.Option("--size", help="Image side in pixels (default: model.spec).")]


@inside_app.command("maximize")
@model_options
def maximize_cmd(
    *,
    model: Model,
    layer: MaxLayer = None,
    channels: Channels = None,
    classes: MaxClasses = None,
    neuron: MaxNeuron = False,
    steps: MaxSteps = 256,
    lr: MaxLr = 0.05,
    param: MaxParam = "fourier",
    tv: MaxTv = 0.0,
    l2: MaxL2 = 0.0,
    l2_decay: MaxL2Decay = 0.0,
    blur_every: MaxBlurEvery = 0,
    blur_sigma: MaxBlurSigma = 0.5,
    jitter: MaxJitter = 0,
    scale: MaxScale = 0.0,
    rotate: MaxRotate = 0.0,
    size: MaxSize = None,
    seed: Seed = 0,
    weights: Weights = None,
    pretrained: Pretrained = False,
    trust_pickle: TrustPickle = False,
    device: Device = "cpu",
    out: Out = Path("cnnlens-out"),
    force: Force = False,
) -> None:
    """Activation maximisation: images that maximise channels of --layer, or class scores (--classes)."""
    from ..inside import maximize
    from ..inside.maximize import objective_for
    from ..inside.pages import maximize_page, regularisers

    report_dir = out_dir(out, force, weights)
    M = open_model(model, weights, pretrained, trust_pickle, device)
    if (layer is None) == (classes is None):
        raise UserError("give --layer L (with --channels) to maximise channels, or --classes to maximise class scores")
    wanted = [c for c in classes.split(",") if c.strip()] if classes is not None else None
    J, titles = objective_for(layer, parse_channels(channels), wanted, neuron=neuron, class_names=M.class_names)
    regs: dict[str, Any] = dict(
        tv=tv, l2=l2, l2_decay=l2_decay, blur_every=blur_every, blur_sigma=blur_sigma, jitter=jitter
    )
    regs.update(scale=scale or None, rotate=rotate or None)
    with progress_bar("maximising", steps) as update:
        v = maximize(M.model, J, steps, lr=lr, param=param, size=size, seed=seed, progress=update, **regs)
    kind = "class" if classes is not None else "neuron" if neuron else "channel"
    pg = maximize_page(model, M.model, v, titles, kind=kind, regularisers=regularisers(param, **regs), steps=steps)
    for t, s, f in zip(titles, v.start, v.final, strict=True):  # one image per title
        _say(f"{t}: {float(s):.4g} → {float(f):.4g}")
    _write(pg, report_dir, v.objective)


@inside_app.command("deconv")
@model_options
def deconv_cmd(
    *,
    model: Model,
    layer: Layer,
    channels: Channels = None,
    image: Image = None,
    data: ImagesData = None,
    n: Annotated[int, typer.Option("--n", help="Images taken from --data.", min=1)] = 4,
    position: Annotated[
        str, typer.Option("--position", help="max (the strongest unit) or all (the whole map).")
    ] = "max",
    guided: Annotated[
        bool, typer.Option("--guided/--no-guided", help="Show guided backprop of the same unit alongside.")
    ] = True,
    weights: Weights = None,
    pretrained: Pretrained = False,
    trust_pickle: TrustPickle = False,
    device: Device = "cpu",
    out: Out = Path("cnnlens-out"),
    force: Force = False,
) -> None:
    """Deconvnet (Zeiler & Fergus): project a channel's strongest unit back to pixels through switches."""
    from ..inside import deconvnet
    from ..inside.pages import deconv_page

    report_dir = out_dir(out, force, image, data, weights)
    M = open_model(model, weights, pretrained, trust_pickle, device)
    x, names = _images(M.model, image, data, n)
    x = x.to(next(M.model.parameters()).device)
    chans = parse_channels(channels) or [0, 1, 2]
    projs = [deconvnet(M.model, x, layer, c, position=position) for c in chans]
    pg = deconv_page(model, M.model, x, projs, names, channels=chans, position=position, guided=guided)
    _write(pg, report_dir, f"{len(chans)} channels × {len(names)} images")


@inside_app.command("dream")
@model_options
def dream_cmd(
    *,
    model: Model,
    image: Image = None,
    data: ImagesData = None,
    layer: Annotated[str | None, typer.Option("--layer", "-l", help="Amplify this layer's activations.")] = None,
    target: Annotated[str | None, typer.Option("--class", help="Or amplify a class score (index or name).")] = None,
    octaves: Annotated[int, typer.Option("--octaves", min=1)] = 4,
    octave_scale: Annotated[float, typer.Option("--octave-scale")] = 1.4,
    steps: Annotated[int, typer.Option("--steps", min=0)] = 10,
    step_size: Annotated[float, typer.Option("--step-size")] = 0.01,
    jitter: Annotated[int, typer.Option("--jitter", min=0)] = 16,
    seed: Seed = 0,
    weights: Weights = None,
    pretrained: Pretrained = False,
    trust_pickle: TrustPickle = False,
    device: Device = "cpu",
    out: Out = Path("cnnlens-out"),
    force: Force = False,
) -> None:
    """Deep Dream: multi-octave gradient ascent from a photo on a layer's activations (or a class score)."""
    from ..inside import deep_dream
    from ..inside.pages import dream_page

    report_dir = out_dir(out, force, image, data, weights)
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
    pg = dream_page(model, M.model, x, d, kind="class" if target is not None else "layer")
    _write(pg, report_dir, d.objective)


@inside_app.command("stats")
@model_options
def stats_cmd(
    *,
    model: Model,
    layer: Layer,
    data: ImagesData = None,
    bins: Annotated[int, typer.Option("--bins", min=2)] = 40,
    n: FirstN = None,
    channels: Annotated[
        str | None, typer.Option("--channels", "-c", help="Channels to plot (statistics cover all).")
    ] = None,
    batch_size: BatchSize = 64,
    weights: Weights = None,
    pretrained: Pretrained = False,
    trust_pickle: TrustPickle = False,
    device: Device = "cpu",
    out: Out = Path("cnnlens-out"),
    force: Force = False,
) -> None:
    """Neuron statistics over a dataset: mean, variance, sparsity, histograms, dead channels, per-class means,
    selectivity.

    Runs under `torchrun --nproc_per_node N -m cnnlens inside stats ...` (rank 0 writes).
    """
    from ..inside import neuron_stats
    from ..inside.pages import stats_page

    report_dir = out_dir(out, force, data, weights)
    with session(model, weights, pretrained, trust_pickle, device) as M:
        ds = _dataset(M, data, n)
        with M.progress(f"statistics of {layer}") as update:
            st = neuron_stats(M.model, ds, layer, bins=bins, batch_size=batch_size, device=M.device, progress=update)
        if not M.writes:
            return
        pg = stats_page(
            model,
            M.model,
            st,
            data=data,
            labels=getattr(ds, "cnnlens_labels", "given by the data"),
            images=len(ds),
            bins=bins,
            processes=M.world,
            labelled=is_labelled(ds),
            class_names=M.class_names,
            channels=parse_channels(channels),
        )
        _say(
            f"{st.layer}: {len(st.mean)} channels, mean sparsity {float(st.sparsity.mean()):.3f}, dead "
            f"channels: {st.dead_channels or 'none'}"
        )
        _write(pg, report_dir, "neuron statistics")


#: influence's own options
InfluenceTarget = Annotated[str, typer.Option("--target", "-t", help="Class index or name, predicted, second or true.")]
InfluenceAblation = Annotated[
    bool,
    typer.Option(
        "--ablation/--no-ablation",
        help="Also zero channels (one forward per channel and image) to measure the exact drop.",
    ),
]
InfluenceAblateTop = Annotated[
    int,
    typer.Option(
        "--ablate-top", min=1, help="Zero only the channels ranked highest by a·∂y/∂a (every channel is ranked)."
    ),
]
InfluenceAllChannels = Annotated[
    bool,
    typer.Option("--all-channels", help="Zero every channel (slow on wide layers: one forward per channel and image)."),
]
InfluenceN = Annotated[int | None, typer.Option("--n", min=1, help="Use only the first n images of --data.")]


@inside_app.command("influence")
@model_options
def influence_cmd(
    *,
    model: Model,
    layer: Layer,
    data: ImagesData = None,
    image: Image = None,
    target: InfluenceTarget = "predicted",
    channels: Channels = None,
    ablation: InfluenceAblation = True,
    ablate_top: InfluenceAblateTop = 16,
    all_channels: InfluenceAllChannels = False,
    n: InfluenceN = None,
    batch_size: BatchSize = 32,
    weights: Weights = None,
    pretrained: Pretrained = False,
    trust_pickle: TrustPickle = False,
    device: Device = "cpu",
    out: Out = Path("cnnlens-out"),
    force: Force = False,
) -> None:
    """Rank a layer's channels by mean ∂y/∂a, a·∂y/∂a and the exact drop in y when the channel is zeroed."""
    from ..inside import influence
    from ..inside.pages import influence_page

    report_dir = out_dir(out, force, data, image, weights)
    with session(model, weights, pretrained, trust_pickle, device) as M:
        src = _images(M.model, image, None, 0)[0].to(M.device) if image else _dataset(M, data, n)
        if target.strip().lower() == "true" and not image:
            from ..data import require_labels

            require_labels(src, "--target true")
        top = None if all_channels or not ablation else ablate_top
        zeroing = (
            ""
            if not ablation
            else ", then zeroing every channel"
            if top is None
            else f", then zeroing the top {top} channels"
        )
        with M.progress(f"influence of {layer} (gradients{zeroing})") as update:
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
        _say_influence(inf)
        _write(
            influence_page(model, M.model, inf, ablation=ablation, processes=M.world),
            report_dir,
            f"{len(inf.channels)} channels",
        )


def _say_influence(inf) -> None:
    """The ten most influential channels, in a table on stdout."""
    rows = []
    for r, c in enumerate(inf.ranking[:10]):
        i = inf.channels.index(c)
        v = None if inf.ablation is None else float(inf.ablation[i])
        drop = "—" if v is None or v != v else f"{v:.4g}"
        rows.append([r + 1, c, f"{float(inf.taylor[i]):.4g}", f"{float(inf.gradient[i]):.4g}", drop])
    header = ("rank", "channel", "a·∂y/∂a", "mean ∂y/∂a", "drop when zeroed")
    _table(f"channels of {inf.layer} by influence on the {inf.target}", header, rows, justify="right")


#: tcav's own options
TcavConcept = Annotated[
    list[str],
    typer.Option(
        "--concept", help="NAME=folder of the concept's example images (repeat the option for several concepts)."
    ),
]
TcavRandom = Annotated[
    str,
    typer.Option(
        "--random",
        help="Folder of random images: each run draws two disjoint sets "
        "of the concept's size from it (counter-examples, and a random concept).",
    ),
]
TcavTarget = Annotated[str, typer.Option("--target", "-t", help="The class tested: index or name.")]
TcavData = Annotated[
    str | None,
    typer.Option(
        "--data",
        "-d",
        help="The class's images: those labelled --target in "
        "a dataset (digits, cluttered-digits, an ImageFolder); default "
        "cluttered-digits for cluttered-digits-cnn.",
    ),
]
TcavImage = Annotated[
    list[str] | None,
    typer.Option("--image", "-i", help="The class's images as files, a folder or a glob (instead of --data)."),
]
TcavN = Annotated[int, typer.Option("--n", min=2, help="At most this many images of the class.")]
TcavRuns = Annotated[
    int, typer.Option("--runs", min=2, help="Random counter-example sets (Kim et al.: the t-test's sample size).")
]
TcavClassifier = Annotated[str, typer.Option("--classifier", help="sgd (Captum's default SGDClassifier) or logistic.")]
TcavBonferroni = Annotated[bool, typer.Option("--bonferroni", help="Divide the 0.05 level by the number of concepts.")]


@inside_app.command("tcav")
@model_options
def tcav_cmd(
    *,
    model: Model,
    layer: Layer,
    concept: TcavConcept,
    random: TcavRandom,
    target: TcavTarget,
    data: TcavData = None,
    image: TcavImage = None,
    n: TcavN = 100,
    runs: TcavRuns = 10,
    classifier: TcavClassifier = "sgd",
    bonferroni: TcavBonferroni = False,
    weights: Weights = None,
    pretrained: Pretrained = False,
    trust_pickle: TrustPickle = False,
    device: Device = "cpu",
    out: Out = Path("cnnlens-out"),
    force: Force = False,
) -> None:
    """TCAV (Kim et al. 2018): does a concept, given as example images, raise a class's score at a layer? Scores
    over several random counter-example sets, a t-test against random CAVs, a bar chart and a report."""
    from ..inside import tcav
    from ..inside.pages import tcav_page

    concepts = _concepts(concept)
    report_dir = out_dir(out, force, data, image, random, *concepts.values(), weights)
    M = open_model(model, weights, pretrained, trust_pickle, device)
    if classifier not in ("sgd", "logistic"):
        raise UserError(f"--classifier {classifier!r}: choose sgd or logistic")
    imgs = {k: _folder_images(M.model, v, f"--concept {k}=") for k, v in concepts.items()}
    pool = _folder_images(M.model, random, "--random")
    k, x = _class_inputs(M, target, data or ("cluttered-digits" if model == "cluttered-digits-cnn" else None), image, n)
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
    _say_tcav(r, runs)
    counts = {c: len(v) for c, v in imgs.items()}
    pg = tcav_page(
        model, M.model, r, concepts=counts, pool=len(pool), runs=runs, classifier=classifier, bonferroni=bonferroni
    )
    _write(pg, report_dir, f"{len(imgs)} concept(s)")


def _say_tcav(r, runs: int) -> None:
    """Each concept's TCAV score against the random CAVs', in a table on stdout."""
    rows = [
        [
            w["concept"],
            f"{w['score']:.2f}±{w['score_std']:.2f}",
            f"{w['random']:.2f}",
            f"{w['p_value']:.2g}",
            "yes" if w["significant"] else "n.s.",
        ]
        for w in r.rows()
    ]
    header = ("concept", "score", "random", "p", "significant")
    _table(f"TCAV for class {r.target_name or r.target} at {r.layer} ({runs} runs)", header, rows, justify="right")


def _concepts(given: list[str]) -> dict[str, str]:
    """``--concept NAME=folder`` options as {name: folder}."""
    concepts = {}
    for c in given:
        name, sep, folder = c.partition("=")
        if not sep or not name.strip() or not folder.strip():
            raise UserError(f"--concept {c!r}: give NAME=folder, e.g. --concept stripes=images/stripes")
        concepts[name.strip()] = folder.strip()
    return concepts


def _class_inputs(M: Session, target: str, data: str | None, image, n: int):
    """TCAV's class: its index and its images (from --image, or those labelled --target in --data)."""
    import torch

    from ..inside.tcav import class_images, class_index

    try:
        k, _ = class_index(M.model, target)
    except (TypeError, ValueError) as e:
        raise UserError(f"--target: {e}") from None
    if image:
        return k, _images(M.model, image, None, n)[0]
    ds = _dataset(M, data, None)
    if not is_labelled(ds):
        raise UserError(f"--data {data}: has no labels, so no images of class {target}; give --image")
    xs = class_images(ds, k, n)
    if len(xs) < 2:
        raise UserError(f"--data {data}: {len(xs)} image(s) of class {target}; need at least 2")
    return k, torch.stack(xs)
