"""The page of each ``cnnlens inside`` command, from the command's result.

Each ``*_page`` function returns a report (the model's spec at the top, one section with its introduction and
settings, the figures) and the files written beside it (PNG, JSON, tensors): the command parses its options, runs
the method and writes what these return. ``name`` is the model as given on the command line.

    f = cnnlens.inside.filters(model, "features.0")
    rep, files = filters_page("digits-cnn", model, f)
    for k, blob in files.items():
        rep.file(k, blob)
    rep.write("out")
"""

from __future__ import annotations

import io
import json
from typing import Any

from ..report import Report
from ..viz import to_pil
from .report import (
    add_deconv,
    add_dream,
    add_feature_maps,
    add_filters,
    add_influence,
    add_receptive_fields,
    add_search,
    add_stats,
    add_tcav,
    add_visualizations,
    intro_for,
    tensors_file,
)


def page(title: str, section: str, intro_key: str, settings: dict, *, model=None, ran: dict | None = None):
    """A report titled ``title`` (describing ``model`` if given) and its one section: the introduction of
    ``intro_key`` (as it ``ran``) and ``settings`` (values that are not numbers or text shown as text)."""
    rep = Report(title)
    if model is not None:
        rep.describe_model(model)
    return rep, rep.section(
        section,
        intro_for(intro_key, **(ran or {})),
        {k: v if isinstance(v, (int, float, str)) else str(v) for k, v in settings.items()},
    )


def json_file(result: Any) -> bytes:
    """A result (its ``to_dict()``) or a plain value as indented JSON."""
    return json.dumps(result.to_dict() if hasattr(result, "to_dict") else result, indent=2).encode()


def filters_page(name: str, model, f, images=None, fm=None, names=()):
    """The filters of ``f``; with ``images`` also their feature maps ``fm`` (one figure per image)."""
    rep, sec = page(
        f"cnnlens inside filters: {name}",
        "Filters",
        "filters",
        {"model": name, "layer": f.layer},
        model=model,
        ran={"images": images is not None},
    )
    files = {"filters.png": add_filters(sec, f), "filters.json": json_file(f), "filters.pt": tensors_file(f)}
    for i, nm in enumerate(names):
        files[f"feature_maps_{i}.png"] = add_feature_maps(
            sec, fm, image=images[i], sample=i, caption=f"feature maps of {f.layer} for {nm}"
        )
    return rep, files


def receptive_page(name: str, model, rfs, probe: bool):
    """The receptive fields ``rfs`` of the layers, in a table."""
    rep, sec = page(
        f"cnnlens inside rf: {name}",
        "Receptive fields",
        "receptive",
        {"model": name, "probe": probe, "input size": rfs[0].input_size if rfs else "-"},
        model=model,
    )
    add_receptive_fields(sec, rfs)
    return rep, {"receptive_fields.json": json_file([r.to_dict() for r in rfs])}


def search_page(name: str, model, r, *, data, labels, images: int, processes: int, labelled: bool, class_names=None):
    """Dataset search: the top images and patches, 16 channels a figure."""
    rep, sec = page(
        f"cnnlens inside search: {name}",
        "Dataset search",
        "search",
        {
            "model": name,
            "data": data,
            "labels": labels,
            "layer": r.layer,
            "k": r.k,
            "images": images,
            "processes": processes,
        },
        model=model,
        ran={"labels": labelled},
    )
    files = {}
    cs = list(r.channels)
    for part in range(0, len(cs), 16):
        img = add_search(sec, r, class_names, channels=cs[part : part + 16])
        if img is not None:
            files[f"search_{part // 16}.png"] = img
    files.update({"search.json": json_file(r), "search.pt": tensors_file(r)})
    return rep, files


def regularisers(param, tv, l2, l2_decay, blur_every, blur_sigma, jitter, scale, rotate) -> list[str]:
    """The regularisers of an activation maximisation that ran, in words (for the report's introduction)."""
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


def maximize_page(name: str, model, v, titles, *, kind: str, regularisers: list[str], steps: int):
    """Activation maximisation: the images ``v`` with their ``titles`` and start → final objective; ``kind`` is
    class, neuron or channel."""
    rep, sec = page(
        f"cnnlens inside maximize: {name}",
        "Activation maximisation",
        "maximize",
        {"model": name, "objective": v.objective, **v.settings},
        model=model,
        ran={"objective": kind, "regularisers": regularisers},
    )
    img = add_visualizations(
        sec,
        v,
        [f"{t}: {float(s):.3g}→{float(f):.3g}" for t, s, f in zip(titles, v.start, v.final, strict=False)],
        f"{v.objective}: {steps} steps",
    )
    return rep, {"maximize.png": img, "maximize.json": json_file(v), "maximize.pt": tensors_file(v)}


def deconv_page(name: str, model, x, projs, labels, *, channels, position: str, guided: bool):
    """Deconvnet projections ``projs`` (one per channel) of the images ``x``, guided backprop alongside."""
    rep, sec = page(
        f"cnnlens inside deconv: {name}",
        "Deconvnet",
        "deconv",
        {
            "model": name,
            "layer": projs[0].layer,
            "channels": channels,
            "position": position,
            "guided backprop alongside": guided,
        },
        model=model,
        ran={"guided": guided},
    )
    files = {"deconv.png": add_deconv(sec, model, x, projs, labels=labels, with_guided=guided)}
    for p in projs:
        files[f"deconv_ch{p.channel}.json"] = json_file(p)
        files[f"deconv_ch{p.channel}.pt"] = tensors_file(p)
    return rep, files


def dream_page(name: str, model, x, d, *, kind: str):
    """Deep Dream ``d`` of the images ``x`` (``kind``: layer or class), each dream also as a PNG of its own."""
    rep, sec = page(
        f"cnnlens inside dream: {name}",
        "Deep Dream",
        "dream",
        {"model": name, **d.settings},
        model=model,
        ran={"objective": kind},
    )
    files = {"dream.png": add_dream(sec, x, d, f"{d.objective}: {float(d.start[0]):.3g} → {float(d.final[0]):.3g}")}
    for i in range(d.images.shape[0]):
        buf = io.BytesIO()
        to_pil(d.images[i]).save(buf, format="PNG")
        files[f"dream_{i}.png"] = buf.getvalue()
    files.update({"dream.json": json_file(d), "dream.pt": tensors_file(d)})
    return rep, files


def stats_page(
    name: str,
    model,
    st,
    *,
    data,
    labels,
    images: int,
    bins: int,
    processes: int,
    labelled: bool,
    class_names=None,
    channels=None,
):
    """Neuron statistics ``st``: histograms of ``channels`` (default a few) and per-class means."""
    rep, sec = page(
        f"cnnlens inside stats: {name}",
        "Neuron statistics",
        "stats",
        {
            "model": name,
            "data": data,
            "labels": labels,
            "layer": st.layer,
            "images": images,
            "bins": bins,
            "processes": processes,
        },
        model=model,
        ran={"labels": labelled},
    )
    a, b = add_stats(sec, st, class_names, channels=channels)
    files = {
        "stats.png": a,
        **({"class_mean.png": b} if b is not None else {}),
        "stats.json": json_file(st),
        "stats.pt": tensors_file(st),
    }
    return rep, files


def influence_page(name: str, model, inf, *, ablation: bool, processes: int):
    """Channel influence ``inf``: gradients, a·∂y/∂a and (with ``ablation``) the drop when a channel is zeroed."""
    ablated = inf.settings.get("ablated")
    zeroed = (
        "no"
        if not ablation
        else f"every channel ({len(inf.channels)})"
        if ablated is None
        else f"the top {len(ablated)} of {len(inf.channels)} channels by a·∂y/∂a"
    )
    rep, sec = page(
        f"cnnlens inside influence: {name}",
        "Channel influence",
        "influence",
        {
            "model": name,
            "layer": inf.layer,
            "target": inf.target,
            "images": inf.count,
            "channels ranked": len(inf.channels),
            "zeroed (ablation)": zeroed,
            "processes": processes,
        },
        model=model,
        ran={"ablation": None if not ablation else "all" if ablated is None else len(ablated)},
    )
    img = add_influence(sec, inf)
    return rep, {"influence.png": img, "influence.json": json_file(inf), "influence.pt": tensors_file(inf)}


def tcav_page(name: str, model, r, *, concepts: dict, pool: int, runs: int, classifier: str, bonferroni: bool):
    """TCAV scores ``r`` as a bar chart; ``concepts`` maps each concept to its number of images, ``pool`` is the
    number of random images."""
    rep, sec = page(
        f"cnnlens inside tcav: {name}",
        "Concepts: TCAV",
        "tcav",
        {
            "model": name,
            "layer": r.layer,
            "target": r.target_name or r.target,
            "class images": r.n_inputs,
            "concepts": ", ".join(f"{c} ({n})" for c, n in concepts.items()),
            "random pool": pool,
            "runs": runs,
            "classifier": classifier,
            "Bonferroni": bonferroni,
        },
        model=model,
    )
    img = add_tcav(sec, r)
    return rep, {"tcav.png": img, "tcav.json": json_file(r), "tcav.pt": tensors_file(r)}
