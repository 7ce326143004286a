"""The offline HTML report: ``index.html``, ``images/``, ``results.json``.

Build a :class:`Report`, add sections (text, figures, tables, data), then
``write(out_dir)``. Nothing in the page loads from the network. The directory is
written atomically: everything goes to a sibling temporary directory that
replaces ``out_dir`` only once complete, so a failed run never leaves a
half-written report over a good one.

A folder is replaced only when it is new, empty, or holds a previous cnnlens
output and nothing else (its ``.cnnlens.json`` manifest lists what it wrote);
otherwise ``write`` refuses unless ``force=True``. The current directory, the home directory, and any folder that
holds one of the run's inputs are never replaced, even with ``force``
(:func:`check_out_dir`).

Example::

    rep = Report("cnnlens on my model")
    sec = rep.section("Evaluation", intro="What the confusion matrix shows ...",
                      settings={"model": "digits-cnn", "top-k": [1, 3]})
    sec.figure(fig, "Confusion matrix")
    sec.table([["0", "0.98"]], header=["class", "recall"])
    sec.data("evaluation", result.to_dict())
    rep.write("demo-report")
"""

from __future__ import annotations

import html
import io
import json
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from .results import jsonable


def show_setting(v: Any) -> str:
    """A setting as a person reads it: lists joined by commas, floats to 4 significant digits.

    >>> show_setting([0.0, 0.03137254901960784, "pgd"])
    '0, 0.03137, pgd'
    """
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(show_setting(x) for x in v)
    if isinstance(v, dict):
        return ", ".join(f"{k}={show_setting(x)}" for k, x in v.items())
    return str(v)


#: the manifest every cnnlens output folder carries: what it wrote, so a rerun may replace exactly that
MANIFEST = ".cnnlens.json"
FORMAT = "cnnlens-output/1"


def _listed_files(folder: Path) -> set[str] | None:
    """The files and folders (``name/``) a previous cnnlens output says it wrote, or None if it is not one."""
    try:
        head = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(head, dict) or head.get("format") != FORMAT or not isinstance(head.get("files"), list):
        return None
    return {str(f) for f in head["files"]} | {MANIFEST}


def _foreign(folder: Path, listed: set[str], limit: int = 3) -> list[str]:
    """Up to ``limit`` entries of ``folder`` that are not in ``listed`` (nor folders that hold listed files)."""
    dirs = {p.rstrip("/") for p in listed if p.endswith("/")}
    dirs |= {p.rsplit("/", 1)[0] for p in listed if "/" in p.rstrip("/")}
    dirs |= {d.rsplit("/", i)[0] for d in list(dirs) for i in range(1, d.count("/") + 1)}
    found: list[str] = []
    for root, subdirs, files in os.walk(folder, followlinks=False):
        rel_root = Path(root).relative_to(folder).as_posix()
        for name in sorted(subdirs + files):
            rel = name if rel_root == "." else f"{rel_root}/{name}"
            full = Path(root, name)
            if (rel in dirs and full.is_dir() and not full.is_symlink()) or (rel in listed and not full.is_dir()):
                continue
            found.append(rel)
            if len(found) >= limit:
                return found
        subdirs[:] = [d for d in subdirs if (f"{d}" if rel_root == "." else f"{rel_root}/{d}") in dirs]
    return found


def check_out_dir(
    out: str | os.PathLike,
    *,
    force: bool = False,
    protect: tuple = (),
    option: str = "--out",
    force_hint: str = "--force (force=True)",
) -> Path:
    """The resolved report folder, or a one-line ``ValueError`` if writing there could lose someone's files.

    Allowed: a new folder, an empty one, or a previous cnnlens output (report, export, site)
    that holds only what it wrote (its ``.cnnlens.json`` manifest lists it). A folder with other files
    is replaced only with ``force=True``. Never replaced, even with ``force``: the current directory, the home
    directory, a folder that holds either, and a folder that is or holds one of the paths in ``protect`` (the run's
    inputs). ``option`` and ``force_hint``
    name the folder's option and the way to force in the message (the CLI's ``--export`` and ``--force``).

    >>> check_out_dir("/tmp/new-cnnlens-report")                       # doctest: +SKIP
    PosixPath('/tmp/new-cnnlens-report')
    """
    out = Path(out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise ValueError(f"{option} {out} is a file; give a directory path for the report")
    guarded = [(Path.cwd().resolve(), "the current directory"), (Path.home().resolve(), "your home directory")]
    guarded += [(Path(p).expanduser().resolve(), f"the input {p}") for p in protect if p is not None]
    for path, what in guarded:
        if out == path or out in path.parents:
            where = what if out == path else f"a folder that holds {what}"
            raise ValueError(
                f"{option} {out} is {where}, which a report must never replace; "
                f"give a new folder such as {out / 'cnnlens-report'}"
            )
    if out.is_dir() and not force:
        listed = _listed_files(out)
        foreign = _foreign(out, listed or set())
        if foreign:
            kind = (
                "a previous cnnlens output plus other files"
                if listed is not None
                else "files that are not a cnnlens output"
            )
            raise ValueError(
                f"{option} {out} holds {kind} ({', '.join(foreign)}); give a new or empty folder, "
                f"or {force_hint} to replace it and everything in it"
            )
    return out


def write_atomically(
    out: str | os.PathLike, build: Callable[[Path], None], *, force: bool = False, protect: tuple = ()
) -> Path:
    """Fill a new folder with ``build(tmp)`` and put it at ``out`` only when complete; returns ``out``.

    ``out`` is checked first (:func:`check_out_dir`: never a folder with someone's files unless
    ``force``, never the current directory, home, or a folder holding one of ``protect``). The
    folder gets the usual permissions (umask) and a manifest of what was written, so the next
    run may replace it. If ``build`` raises, nothing changes at ``out``.
    """
    out = check_out_dir(out, force=force, protect=protect)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()  # os.mkdir honours the umask (tempfile.mkdtemp would leave mode 0700)
    try:
        build(tmp)
        files = sorted(p.relative_to(tmp).as_posix() + ("/" if p.is_dir() else "") for p in tmp.rglob("*"))
        (tmp / MANIFEST).write_text(json.dumps({"format": FORMAT, "files": files}, indent=1))
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-") or "item"


@dataclass
class _Block:
    kind: str  # text | figure | table | gallery
    payload: dict


@dataclass
class Section:
    """A part of the report: a title, a teaching intro, the settings that ran, and content."""

    title: str
    intro: str = ""
    settings: dict = field(default_factory=dict)
    blocks: list[_Block] = field(default_factory=list)
    results: dict = field(default_factory=dict)
    _report: Report | None = None

    def text(self, html_text: str) -> Section:
        """A paragraph of HTML (trusted: written by cnnlens, not user input)."""
        self.blocks.append(_Block("text", {"html": html_text}))
        return self

    def figure(self, image: Any, caption: str = "", name: str | None = None, width: int | None = None) -> str:
        """Add a matplotlib Figure, a PIL image or PNG bytes; returns its path in the report."""
        assert self._report is not None
        path = self._report._add_image(image, name or f"{self.title}-{caption}")
        self.blocks.append(_Block("figure", {"src": path, "caption": caption, "width": width}))
        return path

    def gallery(self, items: list[tuple[Any, str]], caption: str = "", width: int = 220) -> None:
        """Several images side by side: ``[(image, label), ...]``."""
        assert self._report is not None
        srcs = [(self._report._add_image(img, f"{self.title}-{caption}-{label}"), label) for img, label in items]
        self.blocks.append(_Block("gallery", {"items": srcs, "caption": caption, "width": width}))

    def table(self, rows: list[list[Any]], header: list[str] | None = None, caption: str = "") -> None:
        fmt = [[_fmt(c) for c in r] for r in rows]
        self.blocks.append(_Block("table", {"rows": fmt, "header": header or [], "caption": caption}))

    def data(self, key: str, value: Any) -> None:
        """Store a value in ``results.json`` under this section."""
        self.results[key] = jsonable(value)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


class Report:
    """An offline HTML report assembled in memory and written atomically."""

    def __init__(self, title: str = "cnnlens report", subtitle: str = ""):
        self.title = title
        self.subtitle = subtitle
        self.sections: list[Section] = []
        self._images: dict[str, bytes] = {}
        self._files: dict[str, bytes] = {}
        self.meta: dict[str, Any] = {}

    def describe_model(self, model: Any) -> dict:
        """Show what ``model`` is at the top of the report and in ``results.json`` (``meta.model``): its
        weights file and SHA-256, input, mean/std, classes; a warning when its weights are random.

        Sections whose settings name the model get its weights beside it."""
        spec = getattr(model, "spec", model)
        info = spec.settings() if hasattr(spec, "settings") else {"model": str(getattr(spec, "name", spec))}
        self.meta["model"] = info
        if getattr(spec, "random_weights", False):
            self.meta["warnings"] = [
                *self.meta.get("warnings", []),
                f"{info['model']}: random initial weights: explanations of an untrained model "
                "(no weights file was given; pass --weights FILE)",
            ]
        for sec in self.sections:
            self._add_weights(sec.settings)
        return info

    def describe_models(self, models: dict) -> None:
        """Several models (``{name: model}``, as sections name them in their ``model`` setting): each model's spec
        and weights in ``results.json`` (``meta.models``), and its weights beside it in those sections."""
        infos = {k: getattr(m, "spec", m).settings() for k, m in models.items()}
        self.meta["models"] = infos
        for sec in self.sections:
            info = infos.get(str(sec.settings.get("model", "")))
            if info:
                self._add_weights(sec.settings, info)

    def _add_weights(self, settings: dict, info: dict | None = None) -> None:
        info = info or self.meta.get("model")
        if not info or "model" not in settings or "weights" in settings:
            return
        items = list(settings.items())
        at = [k for k, _ in items].index("model") + 1
        extra = [("weights", info.get("weights"))]
        if info.get("weights sha256"):
            extra.append(("weights sha256", info["weights sha256"]))
        settings.clear()
        settings.update(items[:at] + extra + items[at:])

    def section(self, title: str, intro: str = "", settings: dict | None = None) -> Section:
        sec = Section(title=title, intro=intro, settings=dict(settings or {}), _report=self)
        self._add_weights(sec.settings)
        self.sections.append(sec)
        return sec

    def file(self, name: str, data: bytes | str) -> str:
        """Add a file (CSV, JSON, ...) written into the report directory with it, atomically.

        ``name`` is a relative path such as ``"confusion.csv"`` or ``"tables/x.csv"``.
        """
        rel = Path(name)
        if (
            rel.is_absolute()
            or ".." in rel.parts
            or not rel.parts
            or rel.as_posix() in ("index.html", "results.json")
            or rel.parts[0] == "images"
        ):
            raise ValueError(
                f"report file {name!r}: give a relative path inside the report "
                "(not index.html, results.json or images/)"
            )
        self._files[rel.as_posix()] = data.encode() if isinstance(data, str) else bytes(data)
        return rel.as_posix()

    def _add_image(self, image: Any, name: str) -> str:
        data = png_bytes(image)
        stem = _slug(name)[:80]
        fname, i = f"{stem}.png", 1
        while f"images/{fname}" in self._images:
            i += 1
            fname = f"{stem}-{i}.png"
        self._images[f"images/{fname}"] = data
        return f"images/{fname}"

    def results(self) -> dict:
        return {
            "title": self.title,
            "meta": jsonable(self.meta),
            "sections": {s.title: {"settings": jsonable(s.settings), **s.results} for s in self.sections},
        }

    def render_html(self) -> str:
        env = Environment(loader=PackageLoader("cnnlens", "templates"), autoescape=select_autoescape(["html"]))
        env.filters["setting"] = show_setting
        tpl = env.get_template("report.html.j2")
        return tpl.render(report=self, sections=self.sections, slug=_slug, generated=time.strftime("%Y-%m-%d %H:%M"))

    def write(self, out_dir: str | os.PathLike, *, force: bool = False, protect: tuple = ()) -> Path:
        """Write ``index.html``, ``images/`` and ``results.json`` to ``out_dir`` atomically.

        Refuses a folder that holds anything but a previous cnnlens report unless ``force``, and
        never replaces the current directory, the home directory or a folder holding one of
        ``protect`` (see :func:`check_out_dir`). The folder gets the usual permissions (umask).
        """

        def build(tmp: Path) -> None:
            (tmp / "images").mkdir()
            for rel, data in self._images.items():
                (tmp / rel).write_bytes(data)
            for rel, data in self._files.items():
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                (tmp / rel).write_bytes(data)
            (tmp / "results.json").write_text(json.dumps(self.results(), indent=2))
            (tmp / "index.html").write_text(self.render_html(), encoding="utf-8")

        return write_atomically(out_dir, build, force=force, protect=protect) / "index.html"


def png_bytes(image: Any) -> bytes:
    """PNG bytes of a matplotlib Figure, a PIL image, a path to a PNG, or bytes."""
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, (str, Path)):
        return Path(image).read_bytes()
    buf = io.BytesIO()
    if hasattr(image, "savefig"):
        image.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        pyplot = sys.modules.get("matplotlib.pyplot")  # a caller's pyplot figure is released (never imported here)
        if pyplot is not None:
            pyplot.close(image)
    elif hasattr(image, "save"):
        image.save(buf, format="PNG")
    else:
        raise TypeError(f"cannot put {type(image).__name__} in a report; give a Figure, a PIL image or PNG bytes")
    return buf.getvalue()


def escape(s: Any) -> str:
    return html.escape(str(s))
