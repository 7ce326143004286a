"""Augmented Grad-CAM (Morbidelli et al., ICASSP 2020): heat-map super-resolution as an inverse problem.

Grad-CAM is coarse: its grid is the last layer's (7×7 for a 224-pixel
EfficientNet). Show the network L randomly rotated and translated copies of the
image; each gives a low-resolution Grad-CAM g_l, which is modelled as the same
high-resolution heat map h, moved by the known augmentation A_l and down-sampled
by D to the CAM grid. Recover h by solving

    argmin_h  ½ Σ_l ‖D(A_l(h)) − g_l‖² + λ·TV_ℓ1(h) + (μ/2)·‖h‖²,

TV_ℓ1(h) = Σ |h[i+1, j] − h[i, j]| + |h[i, j+1] − h[i, j]| (anisotropic, keeps
edges). Here A_l is an exact differentiable warp (``affine_grid``/``grid_sample``,
the very transform applied to the image), D is area averaging onto the CAM grid
(``adaptive_avg_pool2d``), and the convex, non-smooth objective is minimised by
Adam on its subgradient, all L augmentations batched.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..autograd import needs_autograd
from ..batching import check_batch_size, chunks
from ..results import Explanation
from .cam import flat_note, gradcam_tap, gradcam_weights, layer_gradient, layer_name
from .common import Layout, Progress, finish, prepare, upsample

PADDINGS = ("reflection", "zeros", "border")
#: default super-resolution factor: h is solved on a grid SUPER× finer than the CAM grid (at most the input size)
SUPER = 8


def random_affines(
    L: int,
    size: tuple[int, int],
    *,
    max_angle: float = 15.0,
    max_shift: float = 0.1,
    seed: int = 0,
    identity_first: bool = True,
) -> torch.Tensor:
    """L random rotations (±max_angle degrees) and translations (±max_shift of the size) as L×2×3 thetas.

    The thetas are in ``affine_grid``'s normalised coordinates (align_corners=False),
    built so that the rotation is a true rotation in pixels for non-square images.
    The first is the identity when ``identity_first``.

    >>> random_affines(3, (8, 8), seed=1)[0].tolist()
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    """
    if not (isinstance(L, int) and L >= 1):
        raise ValueError(f"the number of augmentations must be a positive int, got {L!r}")
    H, W = size
    g = torch.Generator().manual_seed(int(seed))
    ang = (torch.rand(L, generator=g, dtype=torch.float64) * 2 - 1) * math.radians(max_angle)
    sh = (torch.rand(L, 2, generator=g, dtype=torch.float64) * 2 - 1) * max_shift
    if identity_first:
        ang[0] = 0
        sh[0] = 0
    c, s = torch.cos(ang), torch.sin(ang)
    theta = torch.zeros(L, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = c
    theta[:, 0, 1] = -s * H / W
    theta[:, 0, 2] = 2 * sh[:, 0]
    theta[:, 1, 0] = s * W / H
    theta[:, 1, 1] = c
    theta[:, 1, 2] = 2 * sh[:, 1]
    return theta.float()


def warp(x: torch.Tensor, thetas: torch.Tensor, padding: str = "reflection") -> torch.Tensor:
    """Apply each theta to the matching image: B×C×H×W and B×2×3 → B×C×H×W (bilinear)."""
    grid = F.affine_grid(thetas.to(device=x.device, dtype=x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


class Operator:
    """h (N×Hs×Ws) ↦ D(A_l(h)) for every l (N×L×h×w): warp by each theta, then area-average to the CAM grid.

    Linear and differentiable in h; the L warps run as one batched ``grid_sample``
    (samples as channels, since every sample shares the augmentations).
    """

    def __init__(
        self,
        thetas: torch.Tensor,
        size: tuple[int, int],
        grid: tuple[int, int],
        padding: str = "reflection",
        device=None,
    ):
        if padding not in PADDINGS:
            raise ValueError(f"padding={padding!r} is not known; use one of {', '.join(PADDINGS)}")
        self.L = thetas.shape[0]
        self.size = (int(size[0]), int(size[1]))
        self.grid = (int(grid[0]), int(grid[1]))
        self.padding = padding
        self.grids = F.affine_grid(
            thetas.to(device=device, dtype=torch.float32), [self.L, 1, *self.size], align_corners=False
        )

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        n = h.shape[0]
        a = F.grid_sample(
            h.unsqueeze(0).expand(self.L, n, *self.size),
            self.grids,
            mode="bilinear",
            padding_mode=self.padding,
            align_corners=False,
        )
        return F.adaptive_avg_pool2d(a, self.grid).transpose(0, 1)


def total_variation(h: torch.Tensor) -> torch.Tensor:
    """Anisotropic TV_ℓ1 of each map in N×H×W: Σ|Δ_i h| + Σ|Δ_j h| (N)."""
    return (h[:, 1:, :] - h[:, :-1, :]).abs().flatten(1).sum(1) + (h[:, :, 1:] - h[:, :, :-1]).abs().flatten(1).sum(1)


def objective(h: torch.Tensor, g: torch.Tensor, op: Operator, lam: float, mu: float) -> torch.Tensor:
    """½ Σ_l ‖D(A_l(h)) − g_l‖² + λ TV_ℓ1(h) + μ/2 ‖h‖², per sample (N)."""
    r = op(h) - g
    return 0.5 * (r * r).flatten(1).sum(1) + lam * total_variation(h) + 0.5 * mu * (h * h).flatten(1).sum(1)


def default_weights(L: int, size: tuple[int, int], grid: tuple[int, int]) -> tuple[float, float]:
    """Default (λ, μ) for maps scaled to max 1: λ = 0.02·L/r², μ = 0.01·L/r², r² = solve pixels per CAM cell.

    The data term's curvature scales like L/r², so these keep the same balance for
    any number of augmentations and any super-resolution factor.
    """
    r2 = (size[0] * size[1]) / (grid[0] * grid[1])
    return 0.02 * L / r2, 0.01 * L / r2


def superresolve(
    g: torch.Tensor,
    thetas: torch.Tensor,
    size: tuple[int, int],
    *,
    lam: float,
    mu: float,
    steps: int = 300,
    lr: float = 0.05,
    padding: str = "reflection",
    init: torch.Tensor | None = None,
    progress: Progress | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve argmin_h ½ Σ_l ‖D(A_l(h)) − g_l‖² + λ TV_ℓ1(h) + μ/2 ‖h‖² for each sample.

    ``g``: N×L×h×w low-resolution maps; ``thetas``: L×2×3 (see :func:`random_affines`);
    ``size``: (Hs, Ws) of h. Adam on the (sub)gradient, learning rate ``lr`` (in the
    units of g) with cosine decay over ``steps``; returns the iterate with the lowest
    objective per sample, and the objective per step (N×steps).
    Starts from ``init`` (N×Hs×Ws), by default the bilinear upsampling of g_0.

    >>> h, hist = superresolve(g, thetas, (56, 56), lam=1e-3, mu=1e-4)   # doctest: +SKIP
    """
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if lam < 0 or mu < 0:
        raise ValueError(f"lam and mu must be ≥ 0, got lam={lam}, mu={mu}")
    g = g.detach().float()
    op = Operator(thetas, size, (int(g.shape[-2]), int(g.shape[-1])), padding, g.device)
    if init is None:
        init = upsample(g[:, 0], (int(size[0]), int(size[1])))
    h = init.detach().float().clone().requires_grad_(True)
    best = h.detach().clone()
    best_f = torch.full((g.shape[0],), float("inf"), device=g.device)
    hist = torch.empty(g.shape[0], steps)
    opt = torch.optim.Adam([h], lr=lr)
    with torch.enable_grad():
        for k in range(steps):
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * k / steps))
            f = objective(h, g, op, lam, mu)
            with torch.no_grad():
                better = f < best_f
                best_f = torch.where(better, f, best_f)
                best[better] = h[better]
                hist[:, k] = f.detach().cpu()
            opt.zero_grad(set_to_none=True)
            f.sum().backward()
            opt.step()
            if progress:
                progress(k + 1, steps)
        with torch.no_grad():
            f = objective(h, g, op, lam, mu)
            better = f < best_f
            best[better] = h[better]
    return best.detach(), hist


@needs_autograd
def augmented_gradcam(
    model: nn.Module,
    x: torch.Tensor,
    target: Any = "predicted",
    *,
    layer: Any = None,
    augmentations: int = 100,
    max_angle: float = 15.0,
    max_shift: float = 0.1,
    size: Any = None,
    lam: float | None = None,
    mu: float | None = None,
    steps: int = 150,
    lr: float = 0.05,
    seed: int = 0,
    padding: str = "reflection",
    normalize: bool = True,
    batch_size: int | None = None,
    y: torch.Tensor | None = None,
    progress: Progress | None = None,
    channels_last: bool | None = None,
    layout: str | None = None,
) -> Explanation:
    """Augmented Grad-CAM: a high-resolution heat map h from L augmented Grad-CAMs (see module docs).

    1. A_1..A_L: random rotations (±``max_angle``°) and translations (±``max_shift`` of
       the size), seeded, the first the identity; the image is warped by each
       (``padding`` for the pixels from outside).
    2. g_l = Grad-CAM of the warped image for the class of the clean image (batched).
    3. h = argmin ½ Σ_l ‖D(A_l(h)) − g_l‖² + λ TV_ℓ1(h) + μ/2 ‖h‖² on a ``size`` grid
       (default: 8× the CAM grid, at most the input size; the cost per step grows
       with L·Hs·Ws), by :func:`superresolve`. With ``normalize`` the g_l of
       each image are first divided by their maximum (so λ, μ do not depend on the
       model's gradient scale) and h is scaled back; λ, μ default to
       :func:`default_weights`.

    ``maps`` = h at input size, ``raw`` = h on its grid, ``extras["cams"]`` = the g_l
    (N×L×h×w), ``extras["single"]`` = the plain Grad-CAM upsampled, ``extras["objective"]``
    = the objective per step, ``extras["thetas"]`` = the augmentations; ``layout`` as in
    :func:`~cnnlens.attribution.gradcam`.

    >>> e = augmented_gradcam(model, x, augmentations=32, size=(112, 112), steps=150)   # doctest: +SKIP
    """
    batch_size = check_batch_size(batch_size, x)
    if padding not in PADDINGS:
        raise ValueError(f"padding={padding!r} is not known; use one of {', '.join(PADDINGS)}")
    p = prepare(model, x, target, y, "augmented_gradcam")
    H, W = p.size
    if isinstance(size, int):
        size = (size, size)
    if size is not None:
        size = (int(size[0]), int(size[1]))
    L = int(augmentations)
    thetas = random_affines(L, (H, W), max_angle=max_angle, max_shift=max_shift, seed=seed)
    name = layer_name(model, p, layer)
    total = p.n * L
    cams, A, classes, s = _augmented_cams(
        model, p, name, layout, channels_last, thetas, padding, batch_size, progress, steps
    )
    grid = tuple(A.shape[-2:])
    if size is None:
        size = (min(H, SUPER * grid[0]), min(W, SUPER * grid[1]))
    note = flat_note(model, p, name, A)
    if lam is None or mu is None:
        dl, dm = default_weights(L, size, grid)
        lam = dl if lam is None else lam
        mu = dm if mu is None else mu
    step_progress = (lambda k, n: progress(total + k, total + steps)) if progress else None
    fit = dict(lam=float(lam), mu=float(mu), steps=steps, lr=lr, padding=padding, progress=step_progress)
    h, hist, scale = _superresolve_cams(cams, thetas, size, normalize, fit)
    settings = {"layer": name, "augmentations": L, "max_angle": max_angle, "max_shift": max_shift, "size": size}
    settings |= {"grid": grid, "lam": float(lam), "mu": float(mu), "steps": steps, "lr": lr, "seed": seed}
    settings |= {"padding": padding, "normalize": normalize}
    extras = {"cams": cams, "single": upsample(cams[:, 0], (H, W)), "objective": hist, "thetas": thetas}
    extras |= {"scale": scale, "score": s}
    maps = upsample(h, (H, W))
    return finish(p, maps, "augmented_gradcam", classes, layer=name, raw=h, settings=settings, extras=extras, note=note)


def _augmented_cams(model, p, name: str, layout, channels_last, thetas, padding: str, batch_size: int, progress, steps):
    """The Grad-CAM of every augmented image for the class of the clean image (N×L×h×w, ``batch_size`` warped
    images per forward); the layer's activations of the last batch, the classes and their scores."""
    L = thetas.shape[0]
    tap, leaf = gradcam_tap(model, p, name, layout)
    dev = p.x.device
    th = thetas.to(device=dev, dtype=p.x.dtype)
    total = p.n * L
    with tap:
        run_layout = Layout(model, p.x, channels_last)
        A, G, classes, s = layer_gradient(tap, leaf, p, p.x, layout=run_layout)
        grid = tuple(A.shape[-2:])
        cams = torch.empty(p.n, L, *grid, device=dev)
        for a, b in chunks(total, batch_size):
            idx = torch.arange(a, b, device=dev)
            si, li = idx // L, idx % L
            xb = warp(p.x[si], th[li], padding)
            A, G, _, _ = layer_gradient(tap, leaf, p, xb, classes[si], run_layout)
            A, G = A.float(), G.float()
            cams[si, li] = torch.einsum("nk,nkhw->nhw", gradcam_weights(A, G), A).clamp_min(0)
            if progress:
                progress(b, total + steps)
    return cams, A, classes, s


def _superresolve_cams(cams: torch.Tensor, thetas: torch.Tensor, size, normalize: bool, fit: dict):
    """h from the cams by :func:`superresolve` (``fit``: its settings), each image's cams divided by their
    maximum first with ``normalize`` and h scaled back: (h, the objective per step, the scale)."""
    dev = cams.device
    scale = cams.flatten(1).amax(1) if normalize else torch.ones(cams.shape[0], device=dev)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    g = cams / safe.view(-1, 1, 1, 1)
    h, hist = superresolve(g, thetas.to(dev), size, **fit)
    h = h * safe.view(-1, 1, 1) * (scale > 0).view(-1, 1, 1)
    return h, hist, scale
