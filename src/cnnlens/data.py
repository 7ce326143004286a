"""Images and datasets in the model's pixel space (N×C×H×W, float32 in [0, 1]).

:func:`load_images` turns files, folders, globs, PIL images, numpy arrays and
tensors into one batch sized for a model; :func:`read_images` does the same and
also returns each image's name and what was skipped. :func:`as_dataset` turns
``"digits"``, an ImageFolder directory, a ``Dataset`` or a ``DataLoader`` into
something :func:`cnnlens.scan` can stream. Both apply one preprocessing,
:class:`Preprocess`, so an image gives the same tensor either way.

Preprocessing, in order:

1. EXIF orientation (``PIL.ImageOps.exif_transpose``).
2. Values to [0, 1]: 8-bit by 255; 16-bit and other high-bit-depth integer
   images (and 32-bit float files) by their own range, ``(v − min) / (max − min)``
   over the image (a constant image gives 0), so a 12-bit scan stored in 16 bits
   is not left nearly black; float arrays and tensors must already be in [0, 1].
3. Transparency (RGBA, LA, P with a transparent colour) composited on
   ``background`` (RGB in [0, 1]; its luma for grey images):
   ``out = α·colour + (1 − α)·background``.
4. Channels to what the model expects (``model.spec.channels``): grey → RGB
   repeats the channel, RGB → grey takes the ITU-R 601-2 luma
   (0.299 R + 0.587 G + 0.114 B, as PIL's ``convert("L")``); logged at INFO.
5. Size per ``model.spec.input_size``. 3-channel models (ImageNet style): resize
   so the image covers ``input_size / crop_pct`` keeping its aspect ratio, then
   centre-crop ``input_size`` (``crop_pct`` from ``spec.extra``, default 0.875:
   the 256 → 224 evaluation transform such weights are evaluated with; the
   object stays undistorted). Other models (digits and other small grey
   inputs): a plain resize to ``input_size``, so nothing is cut off. Override
   with ``spec.extra["resize"] = "crop" | "stretch"``; ``size=`` always means a
   plain resize. Bilinear with antialiasing (torchvision) unless
   ``spec.extra["interpolation"]`` says otherwise.
"""

from __future__ import annotations

import csv
import glob as _glob
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .extras import require
from .models.cluttered import boxes_to_masks
from .models.cluttered import cluttered_digits as make
from .models.digits import digits_split
from .models.imagenet import imagenet_class_names

# Late, for start-up (CONTRIBUTING.md, Imports): torchvision, in _resize and image_folder.

log = logging.getLogger(__name__)

#: dataset names :func:`as_dataset` knows
DATASETS = ("digits", "cluttered-digits")

_ACCEPTED_DATA = (
    "'digits', 'cluttered-digits', an ImageFolder directory (one sub-folder per class), "
    "a torch Dataset of (x, y) or a DataLoader yielding (x, y)"
)
_ACCEPTED_IMAGES = "file paths, globs, folders, PIL images, numpy arrays (H×W or H×W×C) and tensors (C×H×W or N×C×H×W)"
_LUMA = (0.299, 0.587, 0.114)


# ---------------------------------------------------------------------------
# decoding: one source → float C×H×W in [0, 1], C ∈ {1, 2, 3, 4} (2/4 carry alpha)
# ---------------------------------------------------------------------------


def _own_range(a: np.ndarray) -> np.ndarray:
    """(v − min) / (max − min) over the whole image; a constant image gives zeros."""
    a = a.astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros_like(a, dtype=np.float32)
    return ((a - lo) / (hi - lo)).astype(np.float32)


def _array_to_unit(a: np.ndarray, what: str) -> np.ndarray:
    """Values of an H×W or H×W×C array to float32 [0, 1] (8-bit by 255, other ints by own range)."""
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if a.dtype == np.bool_:
        return a.astype(np.float32)
    if np.issubdtype(a.dtype, np.integer):
        return _own_range(a)
    if np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float32)
        if not np.isfinite(a).all():
            raise ValueError(f"{what} contains NaN or infinite values; give finite pixel values in [0, 1]")
        lo, hi = float(a.min()), float(a.max())
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise ValueError(
                f"{what} is a float image with values in [{lo:.3g}, {hi:.3g}]; cnnlens expects [0, 1] "
                "(divide 0–255 data by 255, or pass it as uint8)"
            )
        return np.clip(a, 0.0, 1.0)
    raise TypeError(f"{what} has dtype {a.dtype}; give uint8, uint16 or float pixel values")


def _pil_to_tensor(im, what: str) -> torch.Tensor:
    """A PIL image (EXIF orientation already applied) → float C×H×W in [0, 1], alpha kept."""
    mode = im.mode
    if mode == "1":
        im = im.convert("L")
    elif mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in ("PA", "RGBa"):
        im = im.convert("RGBA")
    elif mode == "La":
        im = im.convert("LA")
    elif mode == "L" and "transparency" in im.info:
        im = im.convert("LA")
    elif mode == "RGB" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("L", "LA", "RGB", "RGBA"):
        t = torch.from_numpy(np.array(im)).float() / 255.0
    elif im.mode.startswith("I") or im.mode == "F":  # 16/32-bit integer, 32-bit float: own range
        t = torch.from_numpy(_own_range(np.array(im)))
    else:  # CMYK, YCbCr, LAB, HSV, RGBX, ...
        t = torch.from_numpy(np.asarray(im.convert("RGB")).copy()).float() / 255.0
    if t.dim() == 2:
        t = t.unsqueeze(-1)
    return t.permute(2, 0, 1).contiguous()


def open_image(path: str | os.PathLike):
    """Open an image file with PIL and apply its EXIF orientation; a clear error naming a bad file."""
    p = Path(path)
    try:
        with Image.open(p) as im:
            im.load()
            return ImageOps.exif_transpose(im)
    except UnidentifiedImageError:
        raise ValueError(f"{p}: not an image file PIL can read; give a JPEG, PNG, TIFF, BMP, WebP, ... file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(
            f"{p}: corrupt or truncated image ({str(e).strip() or type(e).__name__}); re-export it or remove it"
        ) from None


def _tensor_images(t: torch.Tensor, what: str) -> list[torch.Tensor]:
    """A tensor (H×W, C×H×W or N×C×H×W) → list of float C×H×W in [0, 1]."""
    t = t.detach().cpu()
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() == 3:
        t = t.unsqueeze(0)
    if t.dim() != 4 or t.shape[1] not in (1, 2, 3, 4):
        raise ValueError(f"{what} has shape {tuple(t.shape)}; give a tensor H×W, C×H×W or N×C×H×W with C in 1–4")
    if t.dtype == torch.uint8:
        t = t.float() / 255.0
    elif t.dtype == torch.bool:
        t = t.float()
    elif not t.is_floating_point():
        return [torch.from_numpy(_own_range(x.numpy())) for x in t]
    else:
        t = t.float()
        if not torch.isfinite(t).all():
            raise ValueError(f"{what} contains NaN or infinite values; give finite pixel values in [0, 1]")
        lo, hi = float(t.min()), float(t.max())
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise ValueError(
                f"{what} has values in [{lo:.3g}, {hi:.3g}]; cnnlens expects pixel values in [0, 1] "
                "(un-normalise it, or divide 0–255 data by 255)"
            )
        t = t.clamp(0, 1)
    return list(t)


def _array_images(a: np.ndarray, what: str) -> list[torch.Tensor]:
    """A numpy array (H×W, H×W×C or N×H×W×C) → list of float C×H×W in [0, 1]."""
    if a.ndim == 3 and a.shape[-1] not in (1, 2, 3, 4) and a.shape[0] in (1, 3, 4):
        raise ValueError(
            f"{what} has shape {a.shape}, which looks channels-first; numpy images are H×W×C "
            "(use np.moveaxis(a, 0, -1)) or pass a torch tensor C×H×W"
        )
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"{what} has shape {a.shape}; give H×W, H×W×C or N×H×W×C with C in 1–4")
    out = []
    for x in a:
        u = _array_to_unit(np.ascontiguousarray(x), what)
        out.append(torch.from_numpy(u).permute(2, 0, 1).contiguous())
    return out


def _composite(t: torch.Tensor, background: Sequence[float]) -> torch.Tensor:
    """Drop alpha: ``α·colour + (1 − α)·background`` (background luma for grey)."""
    if t.shape[0] not in (2, 4):
        return t
    colour, alpha = t[:-1], t[-1:]
    bg = torch.tensor(background, dtype=t.dtype).view(-1, 1, 1)
    if colour.shape[0] == 1:
        bg = (bg.view(-1) * torch.tensor(_LUMA, dtype=t.dtype)).sum().view(1, 1, 1)
    return alpha * colour + (1 - alpha) * bg


def _to_channels(t: torch.Tensor, channels: int) -> torch.Tensor:
    if t.shape[0] == channels:
        return t
    if channels == 3 and t.shape[0] == 1:
        return t.expand(3, -1, -1).contiguous()
    if channels == 1 and t.shape[0] == 3:
        # ITU-R 601-2 luma, PIL's convert("L") weights (torchvision's use 0.2989, so white ≠ 1)
        return (t * torch.tensor(_LUMA, dtype=t.dtype).view(3, 1, 1)).sum(0, keepdim=True).clamp_(0.0, 1.0)
    raise ValueError(f"cannot convert a {t.shape[0]}-channel image to {channels} channels")


# ---------------------------------------------------------------------------
# the shared preprocessing
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Preprocess:
    """Decode, composite, convert channels and resize one image to float C×H×W in [0, 1].

    Used by :func:`load_images` and by the ImageFolder datasets of :func:`as_dataset`
    (picklable, so DataLoader workers can use it). See the module docstring for
    each step.

    >>> p = Preprocess(size=(32, 32), channels=1)
    >>> p(torch.rand(3, 64, 48)).shape
    torch.Size([1, 32, 32])
    """

    size: tuple[int, int] | None = None
    channels: int | None = None
    resize: str = "stretch"  # "crop" (cover input_size/crop_pct, centre-crop) or "stretch"
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    background: tuple[float, ...] = (1.0, 1.0, 1.0)

    @staticmethod
    def for_model(model=None, *, size=None, channels=None, background=(1.0, 1.0, 1.0)) -> Preprocess:
        """The preprocessing a model's ``spec`` asks for (``size``/``channels`` override it)."""
        spec = getattr(model, "spec", None)
        bg = _check_background(background)
        resize, crop_pct, interp = "stretch", 0.875, "bilinear"
        if channels is not None and channels not in (1, 3):
            raise ValueError(f"channels={channels}: give 1 (grey) or 3 (RGB)")
        if size is not None:
            size = _check_size(size)
        elif spec is not None and getattr(spec, "input_size", None):
            size = _check_size(spec.input_size)
            extra = getattr(spec, "extra", {}) or {}
            resize = extra.get("resize", "crop" if spec.channels == 3 else "stretch")
            crop_pct = float(extra.get("crop_pct", 0.875))
            interp = extra.get("interpolation", "bilinear")
            if resize not in ("crop", "stretch"):
                raise ValueError(f"spec.extra['resize'] = {resize!r}; use 'crop' or 'stretch'")
            if not 0 < crop_pct <= 1:
                raise ValueError(f"spec.extra['crop_pct'] = {crop_pct}; give a value in (0, 1]")
        if channels is None and spec is not None:
            channels = getattr(spec, "channels", None)
        return Preprocess(
            size=size, channels=channels, resize=resize, crop_pct=crop_pct, interpolation=interp, background=bg
        )

    def decode(self, image: Any, what: str = "image") -> torch.Tensor:
        """Any single source (PIL image, array H×W[×C], tensor C×H×W, path) → float C×H×W, alpha composited."""
        if isinstance(image, (str, os.PathLike)):
            image = open_image(image)
        if isinstance(image, Image.Image):
            t = _pil_to_tensor(ImageOps.exif_transpose(image), what)  # idempotent after open_image
        elif isinstance(image, np.ndarray):
            if image.ndim > 3:
                raise ValueError(f"{what}: one image expected, got an array of shape {image.shape}")
            (t,) = _array_images(image, what)
        elif torch.is_tensor(image):
            ts = _tensor_images(image, what)
            if len(ts) != 1:
                raise ValueError(f"{what}: one image expected, got a batch of {len(ts)}")
            t = ts[0]
        else:
            raise TypeError(f"{what}: cannot read {type(image).__name__} as an image; give {_ACCEPTED_IMAGES}")
        return _composite(t, self.background)

    def finish(self, t: torch.Tensor) -> torch.Tensor:
        """Channel conversion and resizing of a decoded float C×H×W (C ∈ {1, 3})."""
        if self.channels is not None:
            t = _to_channels(t, self.channels)
        if self.size is not None and tuple(t.shape[-2:]) != tuple(self.size):
            t = self._resize(t)
        return t

    def _resize(self, t: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        mode = InterpolationMode(self.interpolation)
        assert self.size is not None  # only called when a size is set
        H, W = self.size
        h, w = t.shape[-2:]
        if self.resize == "crop":
            s = max(H / self.crop_pct / h, W / self.crop_pct / w)
            nh, nw = max(H, round(h * s)), max(W, round(w * s))
            t = F.resize(t, [nh, nw], interpolation=mode, antialias=True)
            t = F.center_crop(t, [H, W])
        else:
            t = F.resize(t, [H, W], interpolation=mode, antialias=True)
        return t.clamp_(0.0, 1.0)

    def __call__(self, image: Any) -> torch.Tensor:
        return self.finish(self.decode(image))


def _check_size(size) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"size={size!r}: give an int or (height, width)") from None
    if h < 1 or w < 1:
        raise ValueError(f"size={size!r}: height and width must be ≥ 1")
    return h, w


def _check_background(bg) -> tuple[float, float, float]:
    if isinstance(bg, (int, float)):
        bg = (bg, bg, bg)
    bg = tuple(float(v) for v in bg)
    if len(bg) != 3 or not all(0.0 <= v <= 1.0 for v in bg):
        raise ValueError(f"background={bg!r}: give an RGB triple in [0, 1], e.g. (1.0, 1.0, 1.0) for white")
    return bg


# ---------------------------------------------------------------------------
# load_images
# ---------------------------------------------------------------------------


@dataclass
class LoadedImages:
    """What :func:`read_images` returns.

    images: N×C×H×W float32 in [0, 1]; names: one label per image (file stem, or
    ``image<i>``; made unique); sources: the file path or ``<array>``/``<tensor>``;
    skipped: ``[(path, reason), ...]`` for unreadable files found in folders/globs;
    converted: how many images changed channel count (``"grey→RGB"`` → count).
    """

    images: torch.Tensor
    names: list[str]
    sources: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    converted: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.images.shape[0]


def _is_glob(s: str) -> bool:
    return any(c in s for c in "*?[")


def _folder_files(folder: Path) -> list[Path]:
    """Every non-hidden file below ``folder``, sorted by relative path."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in files:
            if not f.startswith("."):
                out.append(Path(root) / f)
    return sorted(out, key=lambda p: p.relative_to(folder).as_posix())


def _expand(sources) -> list[tuple[Any, str, str, bool]]:
    """Sources → [(item, name, source, from_folder)] with paths expanded (folders, globs)."""
    if isinstance(sources, (str, os.PathLike, Image.Image, np.ndarray)) or torch.is_tensor(sources):
        sources = [sources]
    if not isinstance(sources, Iterable):
        raise TypeError(f"cannot read {type(sources).__name__} as images; give {_ACCEPTED_IMAGES}")
    items: list[tuple[Any, str, str, bool]] = []
    for i, s in enumerate(sources):
        if isinstance(s, (str, os.PathLike)):
            p = Path(s).expanduser()
            if p.is_dir():
                files = _folder_files(p)
                if not files:
                    raise ValueError(f"{p}: the folder has no files; give a folder with images in it")
                items += [(f, f.stem, str(f), True) for f in files]
            elif p.is_file():
                items.append((p, p.stem, str(p), False))
            elif _is_glob(str(s)):
                files = sorted(
                    Path(f) for f in _glob.glob(os.path.expanduser(str(s)), recursive=True) if Path(f).is_file()
                )
                if not files:
                    raise ValueError(f"no file matches {str(s)!r}; check the pattern")
                items += [(f, f.stem, str(f), True) for f in files]
            else:
                raise ValueError(f"{s}: no such file or folder; give an existing image path, folder or glob")
        elif isinstance(s, Image.Image):
            fn = getattr(s, "filename", "") or ""
            items.append((s, Path(fn).stem if fn else f"image{i}", fn or "<PIL image>", False))
        elif isinstance(s, np.ndarray):
            if s.ndim == 4:
                items += [(x, f"image{i}_{j}", "<array>", False) for j, x in enumerate(s)]
            else:
                items.append((s, f"image{i}", "<array>", False))
        elif torch.is_tensor(s):
            if s.dim() == 4:
                items += [(x, f"image{i}_{j}", "<tensor>", False) for j, x in enumerate(s)]
            else:
                items.append((s, f"image{i}", "<tensor>", False))
        else:
            raise TypeError(f"item {i}: cannot read {type(s).__name__} as an image; give {_ACCEPTED_IMAGES}")
    return items


def _unique(names: list[str]) -> list[str]:
    seen: Counter = Counter()
    out = []
    for n in names:
        seen[n] += 1
        out.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return out


def read_images(
    sources, model=None, *, size=None, channels=None, background=(1.0, 1.0, 1.0), on_error: str = "raise"
) -> LoadedImages:
    """Like :func:`load_images`, but also return names, sources and what was skipped.

    >>> r = read_images([np.zeros((8, 8), np.uint8)], size=4)
    >>> r.names, tuple(r.images.shape)
    (['image0'], (1, 1, 4, 4))
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error={on_error!r}: use 'raise' or 'skip'")
    pre = Preprocess.for_model(model, size=size, channels=channels, background=background)
    items = _expand(sources)
    decoded, names, srcs, skipped = [], [], [], []
    for item, name, src, from_folder in items:
        try:
            t = pre.decode(item, name if src.startswith("<") else src)
        except ValueError as e:
            if from_folder or on_error == "skip":
                skipped.append((src, str(e)))
                continue
            raise
        decoded.append(t)
        names.append(name)
        srcs.append(src)
    if skipped:
        log.warning(
            "skipped %d file(s) that are not readable images: %s",
            len(skipped),
            ", ".join(Path(s).name for s, _ in skipped[:5]) + (" ..." if len(skipped) > 5 else ""),
        )
    if not decoded:
        raise ValueError(
            f"no readable image among {len(items)} source(s) ({len(skipped)} skipped); "
            "give image files (JPEG, PNG, ...)"
        )
    # channels: the model's, else keep (promoting grey to RGB when mixed)
    target = pre.channels
    counts = Counter(t.shape[0] for t in decoded)
    if target is None and len(counts) > 1:
        target = 3
    converted: dict[str, int] = {}
    if target is not None:
        for c, k in counts.items():
            if c != target:
                key = f"{'grey' if c == 1 else 'RGB'}→{'RGB' if target == 3 else 'grey'}"
                converted[key] = k
        if converted:
            mname = getattr(getattr(model, "spec", None), "name", None) or "the model"
            why = f"{mname} expects {target} channel(s)" if model is not None else f"{target} channel(s) requested"
            log.info("converted %s (%s)", ", ".join(f"{k} image(s) {v}" for v, k in converted.items()), why)
    final = Preprocess(
        size=pre.size,
        channels=target,
        resize=pre.resize,
        crop_pct=pre.crop_pct,
        interpolation=pre.interpolation,
        background=pre.background,
    )
    out = [final.finish(t) for t in decoded]
    shapes = {tuple(t.shape) for t in out}
    if len(shapes) > 1:
        raise ValueError(
            f"the images have different sizes ({', '.join(str(s[1:]) for s in sorted(shapes)[:3])}); "
            "pass model= or size=(H, W) to resize them"
        )
    return LoadedImages(
        images=torch.stack(out).float().contiguous(),
        names=_unique(names),
        sources=srcs,
        skipped=skipped,
        converted=converted,
    )


def load_images(
    sources, model=None, *, size=None, channels=None, background=(1.0, 1.0, 1.0), on_error: str = "raise"
) -> torch.Tensor:
    """Load images into one N×C×H×W float32 batch in [0, 1], preprocessed for ``model``.

    ``sources``: one or a list of paths, globs (``"photos/*.jpg"``), folders
    (every image file inside, recursively, sorted by path), PIL images, numpy
    arrays (H×W or H×W×C, uint8 / uint16 / float in [0, 1]; N×H×W×C for several)
    and tensors (C×H×W or N×C×H×W). Steps (module docstring): EXIF orientation;
    8-bit ÷ 255, 16-bit by the image's own range ``(v − min)/(max − min)``;
    alpha composited on ``background``; channels to ``model.spec.channels``
    (or ``channels``); size per ``model.spec.input_size`` (or ``size``, a plain resize).

    A file given explicitly that is not a readable image raises a ``ValueError``
    naming it (``on_error="skip"`` skips it instead). Inside folders and globs,
    unreadable files are skipped with a warning; :func:`read_images` reports
    them (``.skipped``) with each image's name.

    >>> x = load_images(np.full((8, 8, 3), 255, np.uint8), size=4, channels=1)
    >>> tuple(x.shape), float(x.max())
    ((1, 1, 4, 4), 1.0)
    """
    return read_images(sources, model, size=size, channels=channels, background=background, on_error=on_error).images


# ---------------------------------------------------------------------------
# datasets
# ---------------------------------------------------------------------------


class _Mapped(torch.utils.data.Dataset):
    """A dataset of (x, y) with ``transform`` applied to x."""

    def __init__(self, dataset, transform):
        self.dataset, self.transform = dataset, transform

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        x, y = self.dataset[i]
        return self.transform(x), y


class _LabelMap:
    """ImageFolder index → model class index (picklable target_transform)."""

    def __init__(self, mapping: dict[int, int]):
        self.mapping = dict(mapping)

    def __call__(self, y: int) -> int:
        return self.mapping[y]


#: the commands (and functions) that need labelled data: a flat folder of images has none
NEEDS_LABELS = "evaluate, explore, robustness, and --target true"
NO_LABELS = "inside search, inside stats, inside dream, inside influence (other targets), explain"

_WNID = re.compile(r"n\d{8}")


def imagenet_wnids() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k WordNet IDs (``n01440764``, ...) in class-index order, from timm's bundled metadata."""
    ImageNetInfo = require("timm", "timm.data", what="reading ImageNet WordNet-ID folders").ImageNetInfo

    ids = tuple(ImageNetInfo("imagenet-1k").label_names())
    if len(ids) != 1000:  # pragma: no cover - a timm change
        raise ValueError(f"timm's ImageNet-1k synset list has {len(ids)} entries, expected 1000")
    return ids


def _folder_label_map(folder_classes: list[str], model) -> tuple[dict[int, int] | None, str]:
    """Map ImageFolder's sorted class folders onto the model's class indices; returns (mapping, how).

    By name (folders named like ``model.spec.class_names``); by ImageNet WordNet ID
    (``n03775071``) when the model has ImageNet's 1000 classes; by integer folder
    names (``0``, ``281``); else by sorted folder order (torchvision's ImageFolder
    order) when the counts agree.
    """
    spec = getattr(model, "spec", None)
    names = list(getattr(spec, "class_names", ()) or ())
    if not names:
        return None, "sorted folder order (as torchvision's ImageFolder)"
    if all(c in names for c in folder_classes):
        return {i: names.index(c) for i, c in enumerate(folder_classes)}, "folder names = the model's class names"
    if all(_WNID.fullmatch(c) for c in folder_classes):
        if len(names) == 1000 and tuple(names) == imagenet_class_names():
            ids = imagenet_wnids()
            unknown = [c for c in folder_classes if c not in ids]
            if unknown:
                raise ValueError(
                    f"folder {unknown[0]} is a WordNet ID but not one of ImageNet-1k's 1000 classes; "
                    "rename the folder to a class name or index"
                )
            return (
                {i: ids.index(c) for i, c in enumerate(folder_classes)},
                "WordNet IDs (n########) mapped through ImageNet-1k's class list",
            )
        if len(folder_classes) != len(names):
            raise ValueError(
                f"the folders are WordNet IDs ({folder_classes[0]}, ...) but the model's "
                f"{len(names)} classes are not ImageNet-1k's; name the folders by the model's class "
                "names or indices, or give --class-names"
            )
    if all(c.isdigit() and int(c) < len(names) for c in folder_classes):
        return {i: int(c) for i, c in enumerate(folder_classes)}, "folder names read as class indices"
    if len(folder_classes) == len(names):
        return {i: i for i in range(len(names))}, "sorted folder order (as torchvision's ImageFolder)"
    shown = ", ".join(folder_classes[:4]) + (", ..." if len(folder_classes) > 4 else "")
    odd = [c for c in folder_classes if c not in names]
    odd_s = ", ".join(odd[:4]) + (", ..." if len(odd) > 4 else "")
    raise ValueError(
        f"the ImageFolder has {len(folder_classes)} class folders ({shown}) but the model has {len(names)} classes "
        f"and {odd_s} {'is not one of its class names' if len(odd) == 1 else 'are not its class names'}; name every "
        "folder one way: all by class name, all by ImageNet WordNet ID (n########) or all by class index"
    )


class FlatFolder(torch.utils.data.Dataset):
    """A folder of images without class sub-folders: (x, −1) pairs (no labels), preprocessed like ImageFolder."""

    labelled = False

    def __init__(self, files: list[Path], transform):
        self.files, self.transform = list(files), transform
        self.cnnlens_labels = "none (a flat folder of images)"

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        return self.transform(open_image(self.files[i])), -1


_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def _flat_images(root: Path) -> list[Path]:
    return [
        p
        for p in sorted(root.iterdir())
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in _IMAGE_SUFFIXES
    ]


def is_labelled(data) -> bool:
    """False for a dataset known to carry no labels (a flat folder of images)."""
    ds = getattr(data, "dataset", data)
    while isinstance(ds, torch.utils.data.Subset):
        ds = ds.dataset
    return getattr(ds, "labelled", True)


def require_labels(data, what: str) -> None:
    """A one-line error when ``data`` has no labels but ``what`` needs them."""
    if not is_labelled(data):
        raise ValueError(
            f"{what} needs labelled data, and a flat folder of images has none; put each class's "
            f"images in a sub-folder named after the class (labels are needed by {NEEDS_LABELS}; "
            f"a flat folder works for {NO_LABELS})"
        )


def image_folder(root: str | os.PathLike, model=None, *, background=(1.0, 1.0, 1.0)):
    """An ImageFolder (``root/<class>/<image>``) preprocessed like :func:`load_images`; a flat folder of images
    (no sub-folders) gives a :class:`FlatFolder` without labels (y = −1).

    Labels follow the model's classes (``ds.cnnlens_labels`` says how): folder names
    matched to ``model.spec.class_names``, ImageNet WordNet IDs (``n03775071``)
    through ImageNet-1k's class list, folder names read as class indices, else
    sorted folder order as torchvision's ImageFolder (which needs as many folders
    as classes; ``ds.cnnlens_class_names`` then holds the folder names).
    """
    from torchvision.datasets import ImageFolder

    pre = Preprocess.for_model(model, background=background)
    root = Path(root).expanduser()
    has_dirs = root.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir())
    if root.is_dir() and not has_dirs:
        files = _flat_images(root)
        if not files:
            raise ValueError(
                f"{root}: no images and no class sub-folders; give a folder of images, or one "
                "sub-folder of images per class"
            )
        log.info("%s: a flat folder of %d images (no labels)", root, len(files))
        return FlatFolder(files, pre)
    try:
        ds = ImageFolder(str(root), transform=pre, loader=open_image)
    except FileNotFoundError as e:
        raise ValueError(
            f"{root}: not an ImageFolder ({str(e).splitlines()[0].rstrip('.')}); "
            "put each class's images in a sub-folder named after the class"
        ) from None
    mapping, how = _folder_label_map(ds.classes, model)
    if mapping is not None and mapping != {i: i for i in range(len(ds.classes))}:
        ds.target_transform = _LabelMap(mapping)
    ds.cnnlens_labels = how
    if how.startswith("sorted folder order"):
        ds.cnnlens_class_names = tuple(ds.classes)
    log.info(
        "ImageFolder %s: %d images in %d classes, labels by %s; images → %s channel(s), size %s (%s)",
        root,
        len(ds),
        len(ds.classes),
        how,
        pre.channels or "native",
        pre.size or "native",
        pre.resize,
    )
    return ds


def _digits(model):
    ds = digits_split("test")
    spec = getattr(model, "spec", None)
    if spec is not None:
        x0, _ = ds[0]
        want = (getattr(spec, "channels", x0.shape[0]), *tuple(getattr(spec, "input_size", x0.shape[-2:])))
        if tuple(x0.shape) != tuple(want):
            pre = Preprocess.for_model(model)
            log.info("digits: converting %s images to %s for the model", tuple(x0.shape), want)
            return _Mapped(ds, pre)
    return ds


def cluttered_digits(split: str = "test"):
    """The cluttered-digits test bed: one digit among clutter on a 64×64 canvas, with its box.

    A Dataset of (x 1×64×64 in [0, 1], label) with ``.boxes`` (N×4 x0, y0, x1, y1,
    end exclusive) and ``.masks`` (N×64×64 bool); see :mod:`cnnlens.models.cluttered`.

    >>> ds = cluttered_digits("test"); len(ds), tuple(ds.boxes.shape)
    (718, (718, 4))
    """
    return make(split)


def _cluttered(model):
    ds = cluttered_digits("test")
    spec = getattr(model, "spec", None)
    if spec is not None and (
        tuple(getattr(spec, "input_size", (64, 64))) != (64, 64) or getattr(spec, "channels", 1) != 1
    ):
        raise ValueError(
            f"cluttered-digits images are 1×64×64, but the model {spec.name!r} takes "
            f"{spec.channels}×{spec.input_size[0]}×{spec.input_size[1]}; use cluttered-digits-cnn "
            "or a model made for 64×64 grey input"
        )
    return ds


def as_dataset(data, model=None):
    """Turn ``data`` into a torch ``Dataset`` (or ``DataLoader``) of (x, y) for a scan.

    ``"digits"``: the held-out split of scikit-learn's digits (what ``digits-cnn``
    is evaluated on); ``"cluttered-digits"``: the held-out split of
    :func:`cluttered_digits` (with ``.boxes``); a directory path: an ImageFolder preprocessed for
    ``model``, or a flat folder of images without labels (see :func:`image_folder`); a ``Dataset`` or ``DataLoader``:
    returned as is (its x must already be in the model's pixel space, [0, 1]).

    >>> ds = as_dataset(torch.utils.data.TensorDataset(torch.rand(4, 1, 8, 8), torch.zeros(4).long()))
    >>> len(ds)
    4
    """
    if isinstance(data, (torch.utils.data.Dataset, torch.utils.data.DataLoader)):
        return data
    if isinstance(data, (str, os.PathLike)):
        s = os.fspath(data)
        if s == "cluttered-digits":
            return _cluttered(model)
        if s in DATASETS:
            return _digits(model)
        p = Path(s).expanduser()
        if not p.exists():
            raise ValueError(f"dataset {s!r}: not a dataset name and no such directory; give {_ACCEPTED_DATA}")
        if not p.is_dir():
            raise ValueError(f"dataset {s!r} is a file; give {_ACCEPTED_DATA}")
        return image_folder(p, model)
    if torch.is_tensor(data) or isinstance(data, np.ndarray):
        raise TypeError(
            "a tensor of images has no labels; wrap images and labels in "
            "torch.utils.data.TensorDataset(x, y) to evaluate"
        )
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        return data  # a sequence of (x, y) pairs works like a map-style dataset
    raise TypeError(f"cannot use {type(data).__name__} as a dataset; give {_ACCEPTED_DATA}")


def dataset_images(data, indices: Sequence[int]) -> torch.Tensor:
    """The images of ``data`` at the given dataset indices (N×C×H×W)."""
    dataset = data.dataset if isinstance(data, torch.utils.data.DataLoader) else data
    return torch.stack([torch.as_tensor(dataset[int(i)][0]) for i in indices])


def data_input_size(data, model) -> tuple[int, int] | None:
    """The H×W of ``data``'s first image; for a dataset that cannot be indexed, the model's ``spec.input_size``
    (None if it has none)."""
    dataset = data.dataset if isinstance(data, torch.utils.data.DataLoader) else data
    try:
        x0 = dataset[0][0]
        if torch.is_tensor(x0) and x0.dim() == 3:
            return int(x0.shape[-2]), int(x0.shape[-1])
    except Exception:  # noqa: BLE001 - an iterable dataset: fall back to the model's spec
        pass
    return getattr(getattr(model, "spec", None), "input_size", None)


# ---------------------------------------------------------------------------
# ground-truth boxes for an ImageFolder
# ---------------------------------------------------------------------------


class BoxedImages(torch.utils.data.Dataset):
    """Images with labels and one ground-truth box each, in the model's input pixels.

    ``.x`` N×C×H×W in [0, 1], ``.y`` N, ``.boxes`` N×4 long (x0, y0, x1, y1, end
    exclusive), ``.masks`` N×H×W bool, ``.paths`` the files (relative to the root).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, boxes: torch.Tensor, paths: list[str]):
        self.x, self.y, self.boxes, self.paths = x, y, boxes, paths

    @property
    def masks(self) -> torch.Tensor:
        return boxes_to_masks(self.boxes, (int(self.x.shape[-2]), int(self.x.shape[-1])))

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], int(self.y[i])


def read_boxes_csv(path: str | os.PathLike) -> dict[str, tuple[float, float, float, float]]:
    """Read a boxes CSV: a header ``path,x0,y0,x1,y1`` and one row per image.

    ``path`` is relative to the ImageFolder root (``cat/001.jpg``); x0, y0, x1, y1
    are pixels of the image as stored (after its EXIF orientation), x to the
    right, y down, x1/y1 exclusive (a box covering a whole W×H image is
    ``0,0,W,H``).
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"boxes CSV {p}: no such file; give a CSV with the header path,x0,y0,x1,y1")
    out: dict[str, tuple[float, float, float, float]] = {}
    with open(p, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip() for c in rows[0]] != ["path", "x0", "y0", "x1", "y1"]:
        raise ValueError(f"boxes CSV {p}: the first line must be the header path,x0,y0,x1,y1")
    for k, r in enumerate(rows[1:], start=2):
        if not r or all(not c.strip() for c in r):
            continue
        try:
            name, *v = (c.strip() for c in r)
            x0, y0, x1, y1 = (float(c) for c in v)
        except ValueError:
            raise ValueError(f"boxes CSV {p}, line {k}: expected path,x0,y0,x1,y1 with numbers, got {r!r}") from None
        if not (x1 > x0 and y1 > y0):
            raise ValueError(f"boxes CSV {p}, line {k}: the box {x0, y0, x1, y1} is empty; need x1 > x0 and y1 > y0")
        key = Path(name).as_posix()
        if key in out:
            raise ValueError(f"boxes CSV {p}, line {k}: a second box for {name}; give one box per image")
        out[key] = (x0, y0, x1, y1)
    return out


def box_to_input(box: Sequence[float], image_size: tuple[int, int], pre: Preprocess) -> tuple[int, int, int, int]:
    """A box in original image pixels (W×H = ``image_size`` as (w, h)) → the model's input pixels,
    through ``pre``'s resize (stretch, or cover-and-centre-crop); clipped to the input, rounded outward."""
    w, h = image_size
    x0, y0, x1, y1 = (float(v) for v in box)
    if pre.size is None:
        W, H = w, h
        sx = sy = 1.0
        left = top = 0
    else:
        H, W = pre.size
        if pre.resize == "crop":
            s = max(H / pre.crop_pct / h, W / pre.crop_pct / w)
            nh, nw = max(H, round(h * s)), max(W, round(w * s))
            top, left = int(round((nh - H) / 2.0)), int(round((nw - W) / 2.0))
        else:
            nh, nw, top, left = H, W, 0, 0
        sx, sy = nw / w, nh / h
    bx0 = min(max(math.floor(x0 * sx - left), 0), W)
    by0 = min(max(math.floor(y0 * sy - top), 0), H)
    bx1 = min(max(math.ceil(x1 * sx - left), 0), W)
    by1 = min(max(math.ceil(y1 * sy - top), 0), H)
    return bx0, by0, bx1, by1


def boxed_image_folder(
    root: str | os.PathLike, boxes_csv: str | os.PathLike, model=None, *, limit: int | None = None
) -> BoxedImages:
    """An ImageFolder with a boxes CSV (:func:`read_boxes_csv`) → :class:`BoxedImages` in the model's
    input pixels (boxes mapped through the same resize/crop as the images). Images without a row in
    the CSV are left out (logged); rows naming no image of the folder are an error. ``limit``: the
    first ``limit`` boxed images (sorted by path).
    """
    root = Path(root).expanduser()
    ds = image_folder(root, model)
    table = read_boxes_csv(boxes_csv)
    pre = Preprocess.for_model(model)
    files = {Path(s).relative_to(root).as_posix(): (s, t) for s, t in ds.samples}
    missing = sorted(set(table) - set(files))
    if missing:
        raise ValueError(
            f"boxes CSV names {len(missing)} image(s) not in {root} (first: {missing[0]}); "
            "paths are relative to the ImageFolder root, like cat/001.jpg"
        )
    keys = sorted(k for k in files if k in table)
    if len(keys) < len(files):
        log.info("boxes CSV: %d of %d images have a box; the others are left out", len(keys), len(files))
    if not keys:
        raise ValueError(f"no image of {root} has a box in {boxes_csv}")
    keys = keys[:limit] if limit else keys
    xs, ys, bs = [], [], []
    for k in keys:
        path, t = files[k]
        im = open_image(path)
        bs.append(box_to_input(table[k], im.size, pre))
        xs.append(pre(im))
        ys.append(ds.target_transform(t) if ds.target_transform else t)
    return BoxedImages(torch.stack(xs), torch.tensor(ys), torch.tensor(bs, dtype=torch.long), keys)
