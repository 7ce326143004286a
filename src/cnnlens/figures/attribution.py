"""Attribution drawn: maps over their images with colour bars in the method's units, grids of methods and
images, faithfulness curves, the randomisation cascade.

Takes result values (duck-typed: ``Explanation``, ``Faithfulness``, randomisation results) and draws through
:mod:`cnnlens.viz`; what a method's map means (title, unit, signed, clipped) comes from its record in
:mod:`cnnlens.registry`. ``Explanation.figure`` calls :func:`method_figure`; the report and the CLI call the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from ..registry import is_signed, lookup, title_of
from ..viz import DIVERGING, SEQUENTIAL, overlay, show_image, subplots

if TYPE_CHECKING:
    from ..attribution.faithfulness import Faithfulness
    from ..results import Explanation


#: the methods that fail Adebayo et al.'s sanity check; every map of theirs in a report carries a note
GUIDED = ("guided_backprop", "guided_gradcam")


GUIDED_MARK = "⚠ fails the sanity check"

#: the mark in the title of a map whose attributions do not add up to the score (``extras["complete"]`` False,
#: set by :func:`cnnlens.attribution.completeness.completeness`)
INCOMPLETE_MARK = "⚠ does not add up to the score"


def guided_mark(ax, method: str) -> None:
    """Write the sanity-check warning under a guided map's axes (nothing for other methods)."""
    if method in GUIDED:
        ax.text(0.5, -0.04, GUIDED_MARK, transform=ax.transAxes, ha="center", va="top", fontsize=7, color="#b35900")


def completeness_mark(ax, e: Explanation) -> None:
    """Add the completeness warning to the title of a map whose attributions do not add up to the score."""
    if e.extras.get("complete") is False:
        ax.set_title(
            f"{ax.get_title()}\n{INCOMPLETE_MARK}".lstrip("\n"), fontsize=ax.title.get_fontsize(), color="#b00020"
        )


def _heat(e: Explanation, i: int, shared: bool) -> tuple[torch.Tensor, bool]:
    m = e.maps[i].float()
    signed = is_signed(e.method)  # by the kind of map, never per image
    info = lookup(e.method)
    if info and info.clipped and m.numel() > 1:
        q = float(torch.quantile(m.abs().flatten(), 0.995))
        if q > 0:
            m = m.clamp(-q, q)
    if shared:
        scale = float(m.abs().max())
        m = m / scale if scale > 0 else m
    return m, signed


def overlay_figure(image: torch.Tensor, e: Explanation, i: int, *, title: str = "", shared: bool = False):
    """One map over its image with a colour bar (values in the method's units, or [0, 1]/[−1, 1] if shared)."""
    fig, ax = subplots(figsize=(3.4, 3.0))
    m, signed = _heat(e, i, shared)
    vmin, vmax = (0.0, 1.0) if shared and not signed else (None, None)
    overlay(
        ax, image, m, title=title or title_of(e.method), diverging=signed, label=_unit(e, shared), vmin=vmin, vmax=vmax
    )
    guided_mark(ax, e.method)
    completeness_mark(ax, e)
    fig.tight_layout()
    return fig


def grid_figure(
    image: torch.Tensor,
    name: str,
    expls: dict,
    i: int,
    faith: dict | None = None,
    *,
    shared: bool = False,
    caption_top: str = "",
):
    """The original and every map side by side, each with its colour bar and deletion/insertion AUC."""
    ok = [(k, e) for k, e in expls.items() if not isinstance(e, Exception)]
    n = len(ok) + 1
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = subplots(rows, cols, figsize=(3.3 * cols, 3.2 * rows), squeeze=False)
    show_image(axes[0, 0], image, f"{name}\n{caption_top}" if caption_top else name)
    for j, (k, e) in enumerate(ok, start=1):
        ax = axes.flat[j]
        m, signed = _heat(e, i, shared)
        t = title_of(k)
        if faith and k in faith:
            f = faith[k]
            t += f"\ndel {float(f.deletion_auc[i]):.3f} · ins {float(f.insertion_auc[i]):.3f}"
        vmin, vmax = (0.0, 1.0) if shared and not signed else (None, None)
        overlay(ax, image, m, title=t, diverging=signed, label=_unit(e, shared), vmin=vmin, vmax=vmax)
        guided_mark(ax, e.method)
        completeness_mark(ax, e)
    for ax in list(axes.flat)[n:]:
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def images_by_methods_figure(
    images: torch.Tensor,
    names: Sequence[str],
    expls: dict,
    faith: dict | None = None,
    *,
    rows: Sequence[int] | None = None,
    shared: bool = False,
    class_names: Sequence[str] | None = None,
):
    """A grid: one row per image (the image with its explained class), one column per method (the map over the
    image, its colour bar with units, deletion/insertion AUC); occlusion adds its probability map."""
    ok = [(k, e) for k, e in expls.items() if not isinstance(e, Exception)]
    rows = list(range(len(names))) if rows is None else list(rows)
    cols = [("image", None)] + [(k, e) for k, e in ok]
    if any(k == "occlusion" and "probability" in e.extras for k, e in ok):
        cols.append(("probability", dict(ok)["occlusion"]))
    fig, axes = subplots(len(rows), len(cols), figsize=(3.1 * len(cols), 3.0 * len(rows)), squeeze=False)
    for r, i in enumerate(rows):
        for c, (k, e) in enumerate(cols):
            ax = axes[r, c]
            if k == "image":
                cls = int(ok[0][1].classes[i]) if ok else -1
                cname = class_names[cls] if class_names and 0 <= cls < len(class_names) else str(cls)
                show_image(ax, images[i], f"{names[i]}\nexplained: {short(cname, 24)}")
            elif k == "probability":
                probability_panel(ax, e, i)
            else:
                m, signed = _heat(e, i, shared)
                t = title_of(k)
                if faith and k in faith:
                    t += f"\ndel {float(faith[k].deletion_auc[i]):.3f} · ins {float(faith[k].insertion_auc[i]):.3f}"
                vmin, vmax = (0.0, 1.0) if shared and not signed else (None, None)
                overlay(ax, images[i], m, title=t, diverging=signed, label=_unit(e, shared), vmin=vmin, vmax=vmax)
    fig.tight_layout()
    return fig


def method_figure(
    images: torch.Tensor,
    names: Sequence[str],
    e: Explanation,
    faith: Faithfulness | None = None,
    class_names: Sequence[str] | None = None,
    extra: str | None = None,
):
    """One method across several images: overlay + colour bar, the class and the AUCs in each title.

    ``extra="probability"`` adds a row with the occlusion probability map.
    """
    n = len(names)
    rows = 2 if extra else 1
    fig, axes = subplots(rows, n, figsize=(3.2 * n, 3.0 * rows), squeeze=False)
    for i in range(n):
        m, signed = _heat(e, i, False)
        c = int(e.classes[i])
        cname = class_names[c] if class_names and 0 <= c < len(class_names) else str(c)
        t = f"{names[i]}: {short(cname)}"
        if faith is not None:
            t += f"\ndel {float(faith.deletion_auc[i]):.3f} · ins {float(faith.insertion_auc[i]):.3f}"
        overlay(axes[0, i], images[i], m, title=t, diverging=signed, label=_unit(e, False))
        guided_mark(axes[0, i], e.method)
        completeness_mark(axes[0, i], e)
        if extra == "probability":
            probability_panel(axes[1, i], e, i)
    fig.tight_layout()
    return fig


def _unit(e: Explanation, shared: bool) -> str:
    method = lookup(e.method)
    return "fraction of the largest |value|" if shared else (method.unit if method else "attribution")


def probability_panel(ax, e: Explanation, i: int) -> None:
    """Occlusion's probability map: P(class) with the square at each position (sequential map, 0 to 1)."""
    prob = e.extras["probability"][i].float()
    im = ax.imshow(prob.numpy(), cmap=SEQUENTIAL, vmin=0, vmax=1, interpolation="nearest")
    ax.set_title("occlusion: P(class) with\nthe square at each position", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    cb = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    cb.set_label("probability", fontsize=7)
    cb.ax.tick_params(labelsize=7)


def curves_figure(faith: dict, i: int, name: str):
    """Deletion and insertion curves of every method for image i."""
    fig, (a, b) = subplots(1, 2, figsize=(9, 3.2))
    for k, f in faith.items():
        a.plot(f.deletion.fractions, f.deletion.scores[i], label=f"{title_of(k)} ({float(f.deletion_auc[i]):.3f})")
        b.plot(f.insertion.fractions, f.insertion.scores[i], label=f"{title_of(k)} ({float(f.insertion_auc[i]):.3f})")
    for ax, t in ((a, "deletion (lower is better)"), (b, "insertion (higher is better)")):
        ax.set_title(f"{name}: {t}", fontsize=9)
        ax.set_xlabel("fraction of pixels removed" if ax is a else "fraction of pixels inserted", fontsize=8)
        ax.set_ylabel("class probability", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def randomization_figure(image: torch.Tensor, results: dict, i: int = 0):
    """Maps of each method as the layers are re-initialised from the top down (with ρ in each title)."""
    rows = len(results)
    cols = 1 + max(len(r.layers) for r in results.values())
    fig, axes = subplots(rows, cols, figsize=(2.5 * cols, 2.5 * rows), squeeze=False)
    for r_i, (k, r) in enumerate(results.items()):
        overlay(axes[r_i, 0], image, r.original[i], title=f"{title_of(k)}\ntrained", colorbar=False)
        guided_mark(axes[r_i, 0], k)
        for j, layer in enumerate(r.layers):
            rho = float(r.correlations[j, i])
            overlay(
                axes[r_i, j + 1],
                image,
                r.maps[j, i],
                colorbar=False,
                title=f"down to {short(layer, 16)}\nρ = {rho:.2f}"
                if rho == rho
                else f"down to {short(layer, 16)}\nρ undefined",
            )
        for ax in axes[r_i, len(r.layers) + 1 :]:
            ax.set_axis_off()
    fig.tight_layout()
    return fig


def short(s: str, n: int = 18) -> str:
    s = str(s).split(",")[0]
    return s if len(s) <= n else s[: n - 1] + "…"


def augmented_figure(x, names, e: Explanation):
    n = len(names)
    fig, axes = subplots(1, 2 * n + 1, figsize=(2.3 * (2 * n + 1), 2.5), squeeze=False)
    for i in range(n):
        overlay(axes[0, 2 * i], x[i], e.extras["single"][i], title=f"{names[i]}\nGrad-CAM", colorbar=False)
        overlay(axes[0, 2 * i + 1], x[i], e.maps[i], title="augmented", colorbar=False)
    ax = axes[0, -1]
    for i in range(n):
        ax.plot(e.extras["objective"][i].numpy(), lw=1)
    ax.set_title("objective", fontsize=8)
    ax.set_xlabel("step", fontsize=7)
    ax.tick_params(labelsize=6)
    fig.tight_layout()
    return fig


def class_means_figure(expls: dict, class_names=None):
    """Each method's mean map over the images of each explained class: a figure and {class: count}."""
    first = next(iter(expls.values()))
    classes = sorted(set(int(c) for c in first.classes))
    fig, axes = subplots(len(classes), len(expls), figsize=(2.2 * len(expls), 2.2 * len(classes)), squeeze=False)
    counts = {}
    for r, c in enumerate(classes):
        sel = first.classes == c
        counts[str(c)] = int(sel.sum())
        label = class_names[c] if class_names and c < len(class_names) else str(c)
        for j, (k, e) in enumerate(expls.items()):
            mean = e.maps[e.classes == c].float().mean(0)
            ax = axes[r, j]
            if is_signed(k):
                lim = float(mean.abs().max()) or 1.0
                ax.imshow(mean.numpy(), cmap=DIVERGING, vmin=-lim, vmax=lim)
            else:
                ax.imshow(mean.numpy(), cmap=SEQUENTIAL)
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(title_of(k), fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{label} ({counts[str(c)]})", fontsize=8)
    fig.tight_layout()
    return fig, counts
