"""Report sections for the inside-the-network views, shared by the CLI and ``cnnlens demo``.

Each ``add_*`` function renders one result into a report section; the demo's part is
:mod:`cnnlens.demo.inside`.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from collections.abc import Sequence

import torch

from ..attribution import guided_backprop
from ..attribution.report import GUIDED_NOTE
from ..figures.inside import class_mean_figure, deconv_figure
from ..targets import Target

log = logging.getLogger(__name__)

#: short introductions to each method, shown above its results
INTROS = {
    "filters": (
        "The first view into a CNN is its filters. A first-layer filter sees the three colour channels, so it can "
        "be drawn as a small RGB image: colour blobs and oriented edges. Deeper filters have one slice per input "
        "channel (dozens to hundreds); each slice can be drawn in grey, but together they are hard to read — which "
        "is why the views below look at what units respond to rather than at their weights. Feature maps show the "
        "other side: a layer's output for one image, one map per channel."
    ),
    "receptive": (
        "What can a unit see? Its receptive field is the patch of input pixels that can change its value. Each "
        "k×k convolution or pooling widens it by (k−1)·(product of the strides below), each stride multiplies the "
        "step between neighbouring units: early units see a few pixels, deep units most of the image. cnnlens "
        "computes it by following the real forward pass (padding, dilation, residual branches take the larger "
        "field) and checks it with a gradient probe: the pixels where ∂a_ij/∂x ≠ 0."
    ),
    "search": (
        "Dataset search (maximally activating patches): pick a unit, run the whole data set through the network, "
        "keep the images that activate it most, and show the part of each image the unit actually sees — its "
        "receptive field. That is why the patches are crops: an early unit sees a small part of the image, a deep "
        "one a large part. The class histogram of a channel's top images says which classes it is discriminative "
        "for. One pass over the data feeds search, statistics and influence together, in O(k × channels) memory."
    ),
    "stats": (
        "Neuron-level statistics: one neuron's activities over the data set. The histogram shows how often it "
        "fires and how strongly; sparsity is the fraction of zeros after the ReLU; a dead channel never fires. "
        "Averaging a channel's activity per class shows which classes drive it; the selectivity index "
        "(μ_max − μ_rest)/(μ_max + μ_rest) is 0 for a channel that answers every class alike and 1 for one class only."
    ),
    "influence": (
        "Does a neuron matter for the decision? The derivative ∂y_c/∂a tells how much the class score y_c would "
        "move if a channel's activity a moved (Grad-CAM's channel weight is its spatial mean); a·∂y_c/∂a is the "
        "first-order estimate of what zeroing the channel would cost, and the ablation measures that cost "
        "exactly, one forward pass per channel. Before a global-average-pool + linear head the two agree exactly: "
        "the drop for channel k is w_k^c · mean(A_k)."
    ),
    "deconv": (
        "Deconvnet (Zeiler & Fergus 2014) maps one unit back to pixel space: the forward pass records, for every "
        "max-pool, where each maximum came from (the switches); the unit's activation is sent down the layers "
        "again, max-pools replaced by unpooling into the recorded positions, ReLUs applied again to the signal "
        "(un-ReLU), convolutions replaced by transposed convolutions with the same filters (flipped kernels). "
        "Guided backprop differs in one rule: at each ReLU it also keeps only where the forward input was positive."
    ),
    "maximize": (
        "Activation maximisation / class model visualisation: fix the trained weights and run gradient ascent "
        "on the pixels of the input to maximise a class's pre-softmax score (or a channel, or one neuron). "
        "Each pixel is pushed independently, so the raw result is high-frequency noise; regularisers keep it "
        "closer to a natural image: total variation ‖∇x‖², L2 decay, a Gaussian blur every few steps, random "
        "jitter/scale/rotation, and a Fourier parameterisation with decorrelated colour. A variant "
        "minimises the squared error between the network's response and a chosen target response instead "
        "(Mahendran &amp; Vedaldi 2016)."
    ),
    "dream": (
        "Deep Dream (Mordvintsev et al. 2015) starts from a photo instead of noise and boosts whatever a layer "
        "already sees in it: gradient ascent on the layer's activation energy, the gradient normalised at each "
        "step, the image randomly rolled (jitter), and done at several scales (octaves) so the patterns grow at "
        "several sizes — dogs in clouds."
    ),
    "tcav": (
        "Testing with concept activation vectors (TCAV; Kim et al., ICML 2018) asks whether a human concept, "
        "given as a set of example images, matters to a class. A linear classifier separates the layer's "
        "activations of the concept's images from those of random images; the normal of its boundary, pointing "
        "to the concept, is the concept activation vector (CAV). The TCAV score is the share of the class's "
        "images whose class score rises when the layer's activation moves along the CAV (a positive directional "
        "derivative). A CAV trained on random images scores something too, so the training is repeated against "
        "several random sets and the concept's scores are compared with those of random-against-random CAVs by a "
        "two-sided t-test: a concept with p ≥ 0.05 is marked not significant (n.s.), whatever its score. The "
        "scores equal Captum's TCAV on the same CAV."
    ),
}


def intro_for(key: str, **ran) -> str:
    """The introduction of one command's section, saying only what ran (``ran``: the facts that vary).

    filters: images (bool); search: labels (bool); stats: labels; influence: ablation ("all", "top k", None);
    deconv: guided (bool); maximize: objective ("class", "channel", "neuron"), regularisers (list of names);
    dream: objective ("layer" or "class").
    """
    text = INTROS[key]
    if key == "filters" and not ran.get("images"):
        text = text.replace(
            " Feature maps show the other side: a layer's output for one image, one map per channel.", ""
        )
    elif key == "search":
        text = text.replace(
            " One pass over the data feeds search, statistics and influence together, in O(k × channels) memory.",
            " One pass over the data, in O(k × channels) memory.",
        )
        if not ran.get("labels", True):
            text = text.replace(
                " The class histogram of a channel's top images says which classes it is discriminative for.",
                " The data has no labels, so no class histogram.",
            )
    elif key == "stats" and not ran.get("labels", True):
        text = (
            text.split(" Averaging a channel's activity per class")[0]
            + " The data has no labels, so there are no per-class means or selectivity here."
        )
    elif key == "influence":
        ablation = ran.get("ablation")
        if ablation is None:
            text = text.replace(
                "and the ablation measures that cost exactly, one forward pass per channel. Before "
                "a global-average-pool + linear head the two agree exactly: the drop for channel k is "
                "w_k^c · mean(A_k).",
                "(no channel was zeroed here: --no-ablation).",
            )
        elif ablation != "all":
            text = text.replace(
                "one forward pass per channel.",
                f"one forward pass per channel — here for the {ablation} channels with the largest a·∂y_c/∂a.",
            )
    elif key == "deconv" and not ran.get("guided", True):
        text = text.replace(
            " Guided backprop differs in one rule: at each ReLU it also keeps only where the forward "
            "input was positive.",
            "",
        )
    elif key == "maximize":
        what = {
            "class": "a class's pre-softmax score",
            "channel": "a channel's mean activation",
            "neuron": "one neuron (the centre unit of a channel)",
        }.get(ran.get("objective", ""), None)
        regs = ran.get("regularisers") or []
        text = (
            "Activation maximisation / class model visualisation (Erhan et al. 2009; Simonyan et al. 2014): fix "
            "the trained weights and run gradient ascent on the pixels of the input to maximise "
            f"{what or 'an objective'}. Each pixel is pushed independently, so the raw result is "
            "high-frequency noise; regularisers keep it closer to a natural image. "
            + (f"Here: {', '.join(regs)}." if regs else "Here none was used.")
        )
    elif key == "dream" and ran.get("objective") == "class":
        text = text.replace(
            "boosts whatever a layer already sees in it: gradient ascent on the layer's activation energy",
            "boosts what makes it look like a class: gradient ascent on the class score",
        )
    return text


def png(fig) -> bytes:
    """A matplotlib figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def tensors_file(result) -> bytes:
    """The tensors of a result dataclass, as ``torch.save`` bytes."""
    buf = io.BytesIO()
    torch.save(
        {
            f.name: getattr(result, f.name)
            for f in dataclasses.fields(result)
            if torch.is_tensor(getattr(result, f.name))
        },
        buf,
    )
    return buf.getvalue()


# ---------------------------------------------------------------------------
# one result → one part of a section
def add_filters(sec, f, *, max_filters: int = 64, caption: str | None = None) -> bytes:
    img = png(f.figure(max_filters=max_filters))
    sec.figure(img, caption or f"{f.layer}: {tuple(f.weights.shape)} filters ({f.mode}, each normalised, grey = 0)")
    sec.data(f"filters {f.layer}", {"shape": list(f.weights.shape), "mode": f.mode})
    return img


def add_feature_maps(sec, fm, image=None, caption: str | None = None, max_channels: int = 16, sample: int = 0) -> bytes:
    img = png(fm.figure(sample=sample, image=image, max_channels=max_channels))
    sec.figure(img, caption or f"feature maps of {fm.layer} (each map min–max scaled)")
    return img


def rf_rows(rfs) -> list[list]:
    rows = []
    for rf in rfs:
        probe = "—" if rf.probe is None else ("agrees" if rf.probe.agrees else f"differs: {rf.probe.found}")
        rows.append(
            [
                rf.layer,
                "whole image" if rf.is_global else f"{rf.size[0]}×{rf.size[1]}",
                f"{rf.stride[0]}×{rf.stride[1]}",
                f"({rf.offset[0]}, {rf.offset[1]})",
                f"{rf.grid[0]}×{rf.grid[1]}",
                probe,
            ]
        )
    return rows


RF_HEADER = ["layer", "receptive field (px)", "stride", "offset of unit (0,0)", "grid", "gradient probe"]


def add_receptive_fields(sec, rfs) -> None:
    sec.table(
        rf_rows(rfs),
        header=RF_HEADER,
        caption="unit (i, j) sees rows offset + i·stride … + size "
        "(a negative offset reaches into the padding); the probe compares ∂a_ij/∂x's support with the field",
    )
    sec.data("receptive fields", [rf.to_dict() for rf in rfs])


def add_search(sec, r, class_names=None, channels: Sequence[int] | None = None, n: int | None = None) -> bytes | None:
    """The channels' top patches (channels that never fired are named instead of drawn as empty rows) and a table;
    returns the figure's PNG, or None when no channel fired."""
    chans = list(channels) if channels is not None else list(r.channels)
    silent = set(r.never_fired())
    shown = [c for c in chans if c not in silent]
    quiet = [c for c in chans if c in silent]
    img = None
    h, w = r.rf.size
    if shown:
        img = png(r.figure(channels=shown, n=n, class_names=class_names))
        sec.figure(
            img,
            f"{r.layer}: top-{n or r.k} patches of channels {', '.join(map(str, shown[:12]))}"
            f"{', …' if len(shown) > 12 else ''}: each patch is the receptive field of the channel's strongest "
            f"unit in that image, {h}×{w} px, upsampled nearest-neighbour so every pixel is a visible block "
            "(✂ = field clipped at the border, zero-filled); titles: activation · true class",
        )
    if quiet:
        sec.text(
            f"<p>{r.layer}: channel{'s' if len(quiet) > 1 else ''} {', '.join(map(str, quiet))} never fired "
            f"(activation ≤ 0 at every position of every image scanned): no patch to show.</p>"
        )

    def top_class(c: int):
        hist = r.class_histogram[r.row(c)]
        if int(hist.sum()) == 0:
            return "— (no labels)", 0
        k = int(hist.argmax())
        return (class_names[k] if class_names and k < len(class_names) else k), int(hist.max())

    rows = []
    for c in chans:
        if c in silent:
            rows.append([c, "never fired", 0, float(r.activations[r.row(c), 0])])
        else:
            name, count = top_class(c)
            rows.append([c, name, count, float(r.activations[r.row(c), 0])])
    sec.table(
        rows,
        header=["channel", "most frequent class in top-k", "count", "top activation"],
        caption=f"{r.layer}: which classes the channel's top-{r.k} images belong to",
    )
    sec.data(
        f"search {r.layer}",
        {
            "channels": list(r.channels),
            "indices": r.indices,
            "activations": r.activations,
            "class_histogram": r.class_histogram,
            "clipped": r.clipped,
            "never_fired": sorted(silent),
        },
    )
    return img


def add_stats(sec, st, class_names=None, channels: Sequence[int] | None = None) -> list[bytes | None]:
    chans = list(channels) if channels is not None else list(range(min(16, len(st.mean))))
    a = png(st.figure(channels=chans))
    sec.figure(
        a,
        f"{st.layer}: activation histograms (log counts) of channels {chans[0]}…{chans[-1]}; "
        "sp = sparsity, sel = selectivity; dead channels in red",
    )
    present = int((st.class_count > 0).sum())
    if present == 0:
        b = None
        sec.text("<p>The data has no labels (a flat folder of images): no per-class means or selectivity.</p>")
    else:
        b = png(class_mean_figure(st, class_names))
        K = st.class_mean.shape[0]
        sec.figure(
            b,
            f"{st.layer}: mean activation of every channel per class, for the {present} classes present "
            f"in the data" + (f" (of {K})" if present < K else ""),
        )
    order = torch.argsort(st.selectivity, descending=True).tolist()

    def name(k: int) -> str:
        return "—" if k < 0 else class_names[k] if class_names and k < len(class_names) else str(k)

    rows = [
        [
            c,
            name(int(st.preferred_class[c])),
            float(st.selectivity[c]),
            float(st.mean[c]),
            float(st.std[c]),
            float(st.sparsity[c]),
        ]
        for c in order[:8]
    ]
    sec.table(
        rows,
        header=["channel", "preferred class", "selectivity", "mean", "std", "sparsity"],
        caption=f"{st.layer}: the most class-selective channels; dead channels: "
        f"{st.dead_channels or 'none'}; mean sparsity {float(st.sparsity.mean()):.2f}",
    )
    sec.data(
        f"stats {st.layer}",
        {
            "mean": st.mean,
            "var": st.var,
            "sparsity": st.sparsity,
            "dead": st.dead_channels,
            "selectivity": st.selectivity,
            "preferred_class": st.preferred_class,
        },
    )
    return [a, b]


def add_influence(sec, inf, top: int = 12) -> bytes:
    img = png(inf.figure(top=top))
    sec.figure(img, f"influence of {inf.layer}'s channels on the {inf.target}, mean over {inf.count} images")
    rows = []
    for rank, c in enumerate(inf.ranking[:top]):
        i = inf.channels.index(c)
        v = None if inf.ablation is None else float(inf.ablation[i])
        rows.append([rank + 1, c, float(inf.taylor[i]), float(inf.gradient[i]), "—" if v is None or v != v else v])
    agree = ""
    if inf.ablation is not None:
        done = ~torch.isnan(inf.ablation)
        ranked = [c for c in inf.ranking if bool(done[inf.channels.index(c)])]
        which = (
            "the ablation ranking"
            if bool(done.all())
            else f"the ablation ranking of the {int(done.sum())} channels zeroed "
            "(the top ones by a·∂y/∂a; — : not zeroed)"
        )
        agree = (
            f"; the a·∂y/∂a ranking {'equals' if ranked == inf.ablation_ranking else 'differs from'} {which}"
            f" (largest |difference| {float((inf.taylor[done] - inf.ablation[done]).abs().max()):.2g})"
        )
    sec.table(
        rows,
        header=["rank", "channel", "a·∂y/∂a", "mean ∂y/∂a", "drop when zeroed"],
        caption=f"channels ranked by a·∂y/∂a{agree}",
    )
    sec.data(f"influence {inf.layer}", inf.to_dict())
    return img


def add_tcav(sec, r) -> bytes:
    """The TCAV bar chart and a table of each concept's score, the random CAVs' score and the p-value."""
    img = png(r.figure())
    name = r.target_name if r.target_name is not None else r.target
    sec.figure(
        img,
        f"TCAV scores for class {name} at {r.layer}: mean over {r.settings.get('runs')} runs (±1 std); "
        "* significant, n.s. not (two-sided t-test against random CAVs)",
    )
    rows = [
        [
            x["concept"],
            round(x["score"], 3),
            round(x["score_std"], 3),
            round(x["random"], 3),
            f"{x['p_value']:.2g}",
            "yes" if x["significant"] else "no (n.s.)",
            round(x["cav_accuracy"], 3),
        ]
        for x in r.rows()
    ]
    sec.table(
        rows,
        header=["concept", "TCAV score", "std", "random CAVs", "p", "significant", "CAV accuracy"],
        caption=f"{r.n_inputs} images of the class; significance level {r.settings.get('level'):g}"
        + (" (Bonferroni)" if r.settings.get("bonferroni") else "")
        + "; CAV accuracy: the linear classifier on its held-out third",
    )
    sec.data(f"tcav {r.layer}", r.to_dict())
    return img


def guided_for(model, x, p) -> torch.Tensor | None:
    """Guided backprop of the same units a deconvnet projection used (N×C×H×W), or None if unavailable."""
    outs = []
    for i in range(x.shape[0]):
        positions = p.positions
        if positions is None:
            t = Target.channel(p.layer, p.channel)
        else:
            t = Target.neuron(p.layer, p.channel, *positions[i].tolist())
        raw = guided_backprop(model, x[i : i + 1], t, reduce="none").raw
        assert raw is not None  # reduce="none" keeps the per-channel gradients
        outs.append(raw[0])
    return torch.stack(outs)


def add_deconv(sec, model, x, projections, labels=None, with_guided: bool = True) -> bytes:
    guided: list[torch.Tensor] | None = None
    if with_guided:
        found = [guided_for(model, x, p) for p in projections]
        if all(g is not None for g in found):
            guided = [g for g in found if g is not None]
    img = png(deconv_figure(x, projections, guided, labels))
    what = " next to guided backprop of the same unit" if guided is not None else ""
    sec.figure(
        img, f"deconvnet projections of the strongest unit of {projections[0].layer}'s channels{what} (grey = 0)"
    )
    if guided is not None:
        sec.text(GUIDED_NOTE)
        corr = [
            float(torch.corrcoef(torch.stack([p.images.flatten(), g.flatten()]))[0, 1])
            for p, g in zip(projections, guided, strict=True)
        ]
        sec.data("deconv vs guided backprop correlation", corr)
    return img


def add_visualizations(sec, v, titles, caption: str) -> bytes:
    img = png(v.figure(titles=titles, ncols=min(6, len(titles))))
    sec.figure(img, caption)
    sec.data(f"maximize {v.objective}", {"start": v.start, "final": v.final, "settings": v.settings})
    return img


def add_dream(sec, originals, d, caption: str) -> bytes:
    img = png(d.figure(originals=originals))
    sec.figure(img, caption)
    sec.data("deep dream", {"start": d.start, "final": d.final, "settings": d.settings})
    return img
