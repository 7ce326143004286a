"""Deep Dream (Mordvintsev et al. 2015): amplify what a layer sees in a photo.

Start from an image and climb the gradient of J, a layer's activation energy
``J = mean(a²)`` or a class's pre-softmax score, with normalised steps

    x ← clip(x + η · g / mean|g|, 0, 1),   g = ∂J/∂x at a randomly rolled x,

over several octaves: the image is first dreamt at a small scale, the detail that
appeared (x − base) is carried up to the next scale, and so on up to full size,
so the patterns grow at several sizes. The output stays a valid image in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..autograd import needs_autograd
from ..inputs import check_not_empty
from ..results import Result
from ..tap import LayerRef, LayerTap, resolve_layer
from ..targets import as_target

# Late (CONTRIBUTING.md, Imports): the drawing layer (matplotlib), in figure() and preview().


@dataclass(frozen=True)
class Dream(Result):
    """images: N×C×H×W in [0, 1]; objective: what was amplified; start / final: J per image
    on the original and on the dreamt image (full size, no jitter); settings: all that ran."""

    images: torch.Tensor
    objective: str
    start: torch.Tensor
    final: torch.Tensor
    settings: dict = field(default_factory=dict)

    def figure(self, originals: torch.Tensor | None = None, titles=None):
        from ..viz import image_grid

        imgs, tt = [], []
        for i, im in enumerate(self.images):
            if originals is not None:
                imgs.append(originals[i])
                tt.append("original")
            imgs.append(im)
            tt.append(titles[i] if titles else f"dream (J {float(self.start[i]):.3g} → {float(self.final[i]):.3g})")
        return image_grid(imgs, tt, ncols=2 if originals is not None else 4, size=3.0)


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


@needs_autograd
def deep_dream(
    model: nn.Module,
    image: torch.Tensor,
    layer: LayerRef | None = None,
    target=None,
    *,
    octaves: int = 4,
    octave_scale: float = 1.4,
    steps: int = 10,
    step_size: float = 0.01,
    jitter: int = 16,
    min_size: int = 16,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Dream:
    """Multi-octave gradient ascent from ``image`` on a layer's mean(a²) (``layer=``) or a class score (``target=``).

    ``image``: C×H×W or N×C×H×W in [0, 1]. Octave o (0 = full size) is dreamt at
    ``size / octave_scale**o`` (at least ``min_size`` pixels), ``steps`` normalised
    steps of ``step_size`` each, with a random roll of up to ±``jitter`` pixels.

    Example::

        d = deep_dream(model, photo, "net.blocks.4", octaves=3, steps=8)
        d.images      # N×3×H×W in [0, 1]
    """
    if (layer is None) == (target is None):
        raise ValueError("deep_dream amplifies either a layer (layer=...) or a class score (target=...); give one")
    if not torch.is_tensor(image) or image.dim() not in (3, 4):
        raise TypeError("image must be a tensor C×H×W or N×C×H×W in [0, 1] (load it with cnnlens.load_images)")
    if octaves < 1 or steps < 0 or octave_scale <= 1:
        raise ValueError("need octaves ≥ 1, steps ≥ 0 and octave_scale > 1")
    base = check_not_empty(image[None] if image.dim() == 3 else image).detach().float()
    if float(base.min()) < 0 or float(base.max()) > 1:
        raise ValueError("image values must be in [0, 1] (pixel space); load it with cnnlens.load_images")
    p0 = next(model.parameters(), None)
    base = base.to(p0.device if p0 is not None else base.device)
    layers, stop, what, J = _dream_objective(model, base, layer, target)
    H, W = base.shape[-2:]
    sizes = _octave_sizes(H, W, octaves, octave_scale, min_size)
    gen = torch.Generator().manual_seed(int(seed))
    total, done = len(sizes) * steps, 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    with LayerTap(model, layers, stop_after=stop) as tap:
        with torch.no_grad():
            start = J(tap, base).cpu()
        detail = None
        img = base
        for size in sizes:
            b = _resize(base, size)
            img = b if detail is None else (b + _resize(detail, size)).clamp(0, 1)
            img = _ascend(tap, J, img, size, size == (H, W), steps, step_size, jitter, gen, tick)
            detail = img - b
        with torch.no_grad():
            final = J(tap, img).cpu()
    settings = {
        "octaves": len(sizes),
        "sizes": sizes,
        "octave_scale": octave_scale,
        "steps": steps,
        "step_size": step_size,
        "jitter": jitter,
        "seed": seed,
        "objective": what,
    }
    return Dream(img.detach().cpu(), what, start, final, settings)


def _dream_objective(model: nn.Module, base: torch.Tensor, layer, target):
    """What :func:`deep_dream` amplifies: (layers to tap, where the forward stops, its description,
    J(tap, x) → one value per image: the layer's mean(a²) or the class score)."""
    names = getattr(getattr(model, "spec", None), "class_names", None) or None
    if layer is not None:
        name, _ = resolve_layer(model, layer)
        layers, stop, what = [name], name, f"mean({name}²)"
        t = None
    else:
        t = as_target(target, names)
        if not t.is_class:
            raise ValueError("target= takes a class (index, name, 'predicted'); for a layer give layer=")
        t.validate(len(base), len(names) if names else None)
        layers, stop, what = [], None, t.describe(names)

    def J(tap: LayerTap, x: torch.Tensor) -> torch.Tensor:
        logits = tap.run(x)
        if t is None:
            return tap[layers[0]].pow(2).flatten(1).mean(1)
        return t.score(logits, t.classes(logits))

    return layers, stop, what, J


def _octave_sizes(H: int, W: int, octaves: int, octave_scale: float, min_size: int) -> list[tuple[int, int]]:
    """The octaves' sizes, smallest first: (H, W) / octave_scale**o, at least ``min_size``, repeats dropped."""
    sizes: list[tuple[int, int]] = []
    for o in reversed(range(octaves)):
        s = (max(min_size, round(H / octave_scale**o)), max(min_size, round(W / octave_scale**o)))
        s = (min(s[0], H), min(s[1], W))
        if not sizes or sizes[-1] != s:
            sizes.append(s)
    return sizes


def _ascend(tap, J, img, size, full_size: bool, steps: int, step_size: float, jitter: int, gen, tick) -> torch.Tensor:
    """``steps`` normalised gradient steps on J at one octave, each through a random roll of the image."""
    for _ in range(steps):
        dy, dx = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=gen)) if jitter else (0, 0)
        xr = torch.roll(img, (dy, dx), dims=(-2, -1)).requires_grad_(True)
        try:
            val = J(tap, xr)
        except RuntimeError as e:
            if not full_size:
                raise ValueError(
                    f"the model does not take a {size[0]}×{size[1]} input ({e}); use octaves=1 for a fixed-size model"
                ) from e
            raise
        (g,) = torch.autograd.grad(val.sum(), xr)
        g = torch.roll(g, (-dy, -dx), dims=(-2, -1))
        g = g / (g.abs().flatten(1).mean(1).view(-1, 1, 1, 1) + 1e-8)
        img = (img + step_size * g).clamp(0, 1).detach()
        tick()
    return img
