"""Robustness of a model over a dataset: accuracy against ε for each attack, in one scan.

:class:`RobustnessAccumulator` plugs into :func:`cnnlens.scanning.scan` like any other
accumulator (``update``, ``merge``, ``compute``), so the same code runs in one
process or sharded under ``torchrun``. For every batch and every ε it attacks
each image away from its true label (FGSM: one gradient reused for every ε; PGD:
one run per ε; the minimum-norm attacks DeepFool and C&W: one run for all ε, an
image counting as broken at ε when the perturbation found is within ε, measured in
the curve's norm) and counts the images still classified correctly:

    robust accuracy(ε) = #{i : argmax f(x_adv_i(ε)) = y_i} / N

At ε = 0 the attack returns the input, so robust accuracy equals clean accuracy.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..attribution.gradients import saliency
from ..autograd import needs_autograd
from ..results import Result
from ..scanning import Batch, scan
from ..tap import LayerTap
from .common import (
    check_steps,
    eps_tensor,
    fgsm_core,
    loss_grad,
    parse_norm,
    parse_target,
    pgd_core,
    predict,
    resolve_step_size,
)
from .minnorm import cw_core, deepfool_core

# Late (CONTRIBUTING.md, Imports): the drawing layer (matplotlib), in figure() and preview().

log = logging.getLogger(__name__)

ATTACKS = ("fgsm", "pgd")
#: attacks that look for the smallest perturbation (L2) instead of using a budget: one run gives every ε
MIN_NORM = ("deepfool", "cw")
DEFAULT_EPS = (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255)


def _check_eps_list(eps: Any) -> tuple[float, ...]:
    if isinstance(eps, (int, float)) and not isinstance(eps, bool):
        eps = [eps]
    try:
        vals = tuple(float(e) for e in eps)
    except (TypeError, ValueError):
        raise TypeError(f"eps must be a list of numbers in pixel units, e.g. [0, 1/255, 2/255], got {eps!r}") from None
    if not vals:
        raise ValueError("eps is empty; give at least one budget, e.g. eps=[0, 2/255]")
    if any(not math.isfinite(e) or e < 0 for e in vals):
        raise ValueError(f"every eps must be finite and ≥ 0 (pixel units), got {list(vals)}")
    if len(set(vals)) != len(vals):
        raise ValueError(f"eps has repeated values {list(vals)}; list each budget once")
    return tuple(sorted(vals))


def _check_attacks(attacks: Any) -> tuple[str, ...]:
    if isinstance(attacks, str):
        attacks = [a for a in attacks.split(",") if a.strip()]
    out = tuple(str(a).strip().lower() for a in attacks)
    bad = [a for a in out if a not in ATTACKS + MIN_NORM]
    if bad or not out:
        raise ValueError(f"unknown attack {bad[0] if bad else '(none)'!r}; choose from {', '.join(ATTACKS + MIN_NORM)}")
    if len(set(out)) != len(out):
        raise ValueError(f"attack listed twice in {list(out)}")
    return out


class RobustnessAccumulator:
    """Accuracy under attack for a list of ε, per attack and per class, plus a small gallery.

    eps: budgets in pixel units (0 gives clean accuracy); attacks: any of ``"fgsm"``,
    ``"pgd"``, ``"deepfool"``, ``"cw"``; steps / step_size / norm / random_start / seed: PGD
    settings (step size 2.5·ε/steps by default); deepfool_steps, cw_steps, cw_c: the
    minimum-norm attacks' iterations and C&W's c (they minimise the L2 norm; with
    ``norm="inf"`` the L∞ norm of what they find is used, a weaker attack there);
    target: ``None`` (untargeted, away from the true label, the usual robust accuracy) or a class target such as
    ``"second"``; gallery: how many attacked images to keep (the lowest dataset indices that the gallery attack
    flips, each at the smallest ε in the list that flips it), with saliency maps
    before and after.

    Example::

        acc = RobustnessAccumulator(eps=[0, 2/255, 8/255])
        (r,) = cnnlens.scan(model, "digits", [acc])
        r.accuracy["pgd"]
    """

    layers: Sequence[str] = ()

    def __init__(
        self,
        eps: Sequence[float] = DEFAULT_EPS,
        attacks: Sequence[str] = ATTACKS,
        *,
        steps: int = 10,
        step_size: float | None = None,
        norm: str = "inf",
        target: Any = None,
        random_start: bool = False,
        seed: int = 0,
        gallery: int = 6,
        class_names: Sequence[str] | None = None,
        deepfool_steps: int = 50,
        cw_steps: int = 100,
        cw_c: float = 1.0,
    ):
        self.eps = _check_eps_list(eps)
        self.attacks = _check_attacks(attacks)
        self.steps = check_steps(steps)
        self.deepfool_steps = check_steps(deepfool_steps)
        self.cw_steps = check_steps(cw_steps)
        if isinstance(cw_c, bool) or not isinstance(cw_c, (int, float)) or not cw_c > 0:
            raise ValueError(f"cw_c must be a number > 0, got {cw_c!r}")
        self.cw_c = float(cw_c)
        self.step_size = step_size
        self.norm = parse_norm(norm)
        self.target = target
        self.random_start = bool(random_start)
        self.seed = int(seed)
        if isinstance(gallery, bool) or not isinstance(gallery, int) or gallery < 0:
            raise ValueError(f"gallery must be an integer ≥ 0 (images to keep), got {gallery!r}")
        self.gallery_size = gallery
        self.gallery_attack = "pgd" if "pgd" in self.attacks else self.attacks[0]
        self.class_names = tuple(class_names) if class_names else None
        self.num_classes: int | None = None
        self.n = 0
        self.clean_correct = 0
        self.support: torch.Tensor | None = None
        self.clean_class_correct: torch.Tensor | None = None
        self.correct = {a: torch.zeros(len(self.eps), dtype=torch.long) for a in self.attacks}
        self.class_correct: dict[str, torch.Tensor] = {}
        self.gallery: list[dict] = []

    # ------------------------------------------------------------------ settings
    def settings(self) -> dict:
        s = {
            "eps": list(self.eps),
            "attacks": list(self.attacks),
            "norm": self.norm,
            "pgd_steps": self.steps,
            "pgd_step_size": "2.5·ε/steps" if self.step_size is None else self.step_size,
            "target": "untargeted (away from the true label)" if self.target is None else str(self.target),
            "random_start": self.random_start,
            "seed": self.seed,
            "gallery_attack": self.gallery_attack,
            "loss": "cross-entropy on logits",
        }
        if "deepfool" in self.attacks:
            s.update(deepfool_steps=self.deepfool_steps, deepfool_overshoot=0.02)
        if "cw" in self.attacks:
            s.update(cw_steps=self.cw_steps, cw_c=self.cw_c, cw_lr=0.01, cw_kappa=0.0)
        return s

    def _min_norm(self, attack: str, forward, x, classes, targeted, logits):
        """(x found, its perturbation's norm in the curve's norm, inf where the goal was not reached, prediction)."""
        if attack == "deepfool":
            x_adv, _ = deepfool_core(forward, x, classes, targeted, self.deepfool_steps, 0.02, 10, logits)
        else:
            x_adv = cw_core(forward, x, classes, targeted, self.cw_c, 0.0, self.cw_steps, 0.01, 1)[0]
        pred = predict(forward, x_adv).argmax(1)
        d = (x_adv - x).flatten(1)
        size = d.abs().amax(1) if self.norm == "inf" else d.norm(dim=1)
        reached = (pred == classes) if targeted else (pred != classes)
        return x_adv, torch.where(reached, size, torch.full_like(size, math.inf)), pred

    def _init(self, k: int) -> None:
        if self.num_classes is None:
            self.num_classes = k
            self.support = torch.zeros(k, dtype=torch.long)
            self.clean_class_correct = torch.zeros(k, dtype=torch.long)
            self.class_correct = {a: torch.zeros(k, len(self.eps), dtype=torch.long) for a in self.attacks}
        elif k != self.num_classes:
            raise ValueError(f"the model returned {k} classes after {self.num_classes} in an earlier batch")

    # ------------------------------------------------------------------ accumulate
    def update(self, batch: Batch) -> None:
        model = batch.model
        if model is None:
            raise ValueError("RobustnessAccumulator needs the model in the batch (run it through cnnlens.scan)")
        x, y, logits = batch.x.detach(), batch.y.reshape(-1).long(), batch.logits.detach()
        if x.numel() and (x.min() < 0 or x.max() > 1):
            raise ValueError(
                "the dataset yields images outside [0, 1]; attacks work in pixel space "
                "(normalisation belongs inside the model)"
            )
        k = logits.shape[1]
        self._init(k)
        if self.class_names is None and (names := getattr(getattr(model, "spec", None), "class_names", None)):
            self.class_names = tuple(names)
        n = len(y)
        yc = y.cpu()
        self.n += n
        clean_ok = (logits.argmax(1) == y).cpu()
        self.clean_correct += int(clean_ok.sum())
        assert self.support is not None and self.clean_class_correct is not None  # allocated by _init
        self.support += torch.bincount(yc, minlength=k)[:k]
        self.clean_class_correct += torch.bincount(yc[clean_ok], minlength=k)[:k]
        t = parse_target(self.target, model)
        targeted = t is not None
        classes = y if t is None else t.classes(logits, y)
        gen = torch.Generator().manual_seed(self.seed)
        # the gallery attack: the first ε > 0 (in increasing order) that flips each clean-correct image
        flip_eps = torch.full((n,), math.inf, dtype=torch.float64)
        flip_x = x.clone()
        flip_pred = torch.full((n,), -1, dtype=torch.long)
        with LayerTap(model) as tap:
            for a in self.attacks:
                direction = None
                found = self._min_norm(a, tap.run, x, classes, targeted, logits) if a in MIN_NORM else None
                for j, eps in enumerate(self.eps):
                    e = eps_tensor(eps, n, x)
                    if found is not None:
                        within = (found[1] <= eps).view(-1, 1, 1, 1)
                        x_adv = torch.where(within, found[0], x)
                        pred = torch.where(within.view(-1), found[2], logits.argmax(1))
                    elif a == "fgsm":
                        if direction is None and eps > 0:
                            _, direction = loss_grad(tap.run, x, classes, targeted)
                        x_adv = x if eps == 0 else fgsm_core(tap.run, x, classes, targeted, e, self.norm, direction)
                    else:
                        alpha = resolve_step_size(self.step_size, e, self.steps)
                        x_adv, _ = pgd_core(
                            tap.run, x, classes, targeted, e, self.steps, alpha, self.norm, self.random_start, gen, True
                        )
                    if found is None:
                        pred = predict(tap.run, x_adv).argmax(1)
                    ok = (pred == y).cpu()
                    self.correct[a][j] += int(ok.sum())
                    self.class_correct[a][:, j] += torch.bincount(yc[ok], minlength=k)[:k]
                    if a == self.gallery_attack and eps > 0 and self.gallery_size:
                        new = clean_ok & ~ok & torch.isinf(flip_eps)
                        flip_eps[new] = eps
                        flip_x[new.to(x.device)] = x_adv[new.to(x.device)]
                        flip_pred[new] = pred.cpu()[new]
        if self.gallery_size:
            self._add_gallery(model, batch, x, yc, flip_eps, flip_x, flip_pred)

    def _add_gallery(self, model, batch, x, yc, flip_eps, flip_x, flip_pred) -> None:
        idx = batch.index.reshape(-1).cpu()
        cand = torch.isfinite(flip_eps).nonzero().view(-1).tolist()
        taken = {g["index"] for g in self.gallery}
        cand = sorted((int(idx[i]), i) for i in cand if int(idx[i]) not in taken)
        room = self.gallery_size
        worst = sorted(g["index"] for g in self.gallery)[room - 1] if len(self.gallery) >= room else math.inf
        cand = [(di, i) for di, i in cand if di < worst][:room]
        if not cand:
            return

        sel = torch.tensor([i for _, i in cand], device=x.device)
        with torch.enable_grad():  # the scan runs under no_grad
            sal0 = saliency(model, x[sel], target=yc[sel.cpu()].tolist()).maps
            sal1 = saliency(model, flip_x[sel], target=flip_pred[sel.cpu()].tolist()).maps
        for r, (di, i) in enumerate(cand):
            self.gallery.append(
                {
                    "index": di,
                    "label": int(yc[i]),
                    "pred_adv": int(flip_pred[i]),
                    "eps": float(flip_eps[i]),
                    "attack": self.gallery_attack,
                    "x": x[i].detach().cpu(),
                    "x_adv": flip_x[i].detach().cpu(),
                    "saliency_before": sal0[r].cpu(),
                    "saliency_after": sal1[r].cpu(),
                }
            )
        self.gallery = sorted(self.gallery, key=lambda g: g["index"])[: self.gallery_size]

    def merge(self, other: RobustnessAccumulator) -> RobustnessAccumulator:
        """Combine two shards' counts (and galleries: the lowest indices win)."""
        if not isinstance(other, RobustnessAccumulator):
            raise TypeError(f"cannot merge a RobustnessAccumulator with {type(other).__name__}")
        if other.settings() != self.settings():
            raise ValueError("cannot merge robustness accumulators with different eps, attacks or settings")
        out = RobustnessAccumulator.__new__(RobustnessAccumulator)
        if other.num_classes is None or self.num_classes is None:  # an empty shard adds nothing
            src = self if other.num_classes is None else other
            out.__dict__.update(src.__dict__)
            out.gallery = list(src.gallery)
            return out
        out.__dict__.update(self.__dict__)
        if self.num_classes != other.num_classes:
            raise ValueError(f"cannot merge results for {self.num_classes} and {other.num_classes} classes")
        out.n = self.n + other.n
        out.clean_correct = self.clean_correct + other.clean_correct
        # both shards saw a batch (num_classes is set), so _init allocated their counts
        assert self.support is not None and other.support is not None
        assert self.clean_class_correct is not None and other.clean_class_correct is not None
        out.support = self.support + other.support
        out.clean_class_correct = self.clean_class_correct + other.clean_class_correct
        out.correct = {a: self.correct[a] + other.correct[a] for a in self.attacks}
        out.class_correct = {a: self.class_correct[a] + other.class_correct[a] for a in self.attacks}
        out.class_names = self.class_names or other.class_names
        out.gallery = sorted(self.gallery + other.gallery, key=lambda g: g["index"])[: self.gallery_size]
        return out

    def compute(self) -> RobustnessResult:
        if self.n == 0:
            raise ValueError("the robustness scan saw no samples; check that the dataset is not empty")
        k = self.num_classes
        # a sample was seen, so _init set the classes and allocated the counts
        assert k is not None and self.support is not None and self.clean_class_correct is not None

        def frac(num, den):
            return torch.where(
                den > 0, num.double() / den.clamp_min(1).double(), torch.full_like(num, math.nan, dtype=torch.double)
            )

        return RobustnessResult(
            eps=self.eps,
            attacks=self.attacks,
            n=self.n,
            clean_accuracy=self.clean_correct / self.n,
            accuracy={a: self.correct[a].double() / self.n for a in self.attacks},
            per_class={
                a: frac(self.class_correct[a], self.support[:, None].expand(k, len(self.eps))) for a in self.attacks
            },
            clean_per_class=frac(self.clean_class_correct, self.support),
            support=self.support.clone(),
            gallery=list(self.gallery),
            class_names=self.class_names,
            settings=self.settings(),
        )


@dataclass(frozen=True)
class RobustnessResult(Result):
    """Accuracy against ε for each attack over a dataset.

    eps: the budgets (increasing, pixel units); accuracy[attack]: robust accuracy per ε;
    clean_accuracy: accuracy without attack; per_class[attack]: K×E robust accuracy per
    class (NaN for a class without samples); clean_per_class, support: per class;
    gallery: attacked images (``x``, ``x_adv``, ``label``, ``pred_adv``, ``eps``,
    ``saliency_before``, ``saliency_after``).
    """

    eps: tuple[float, ...]
    attacks: tuple[str, ...]
    n: int
    clean_accuracy: float
    accuracy: dict
    per_class: dict
    clean_per_class: torch.Tensor
    support: torch.Tensor
    gallery: list = field(default_factory=list)
    class_names: tuple | None = None
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["gallery"] = [{k: v for k, v in g.items() if not torch.is_tensor(v)} for g in self.gallery]
        return d

    def table(self) -> tuple[list[str], list[list]]:
        """(header, rows): accuracy per ε for each attack."""
        norm = "L∞" if self.settings.get("norm", "inf") == "inf" else "L2"
        header = [f"ε in pixel units ({norm})", "ε in grey levels (×255)"] + [f"{a} accuracy" for a in self.attacks]
        rows = [
            [round(float(e), 6), round(float(e) * 255, 3)] + [float(self.accuracy[a][j]) for a in self.attacks]
            for j, e in enumerate(self.eps)
        ]
        return header, rows

    def figure(self, title: str | None = None):
        """Accuracy against ε, one line per attack, clean accuracy dashed."""
        from ..figures.attacks import curves_figure

        return curves_figure({"": self}, title=title)

    def gallery_figure(self, max_items: int = 6):
        """Rows: clean image, adversarial image, amplified perturbation, saliency before, saliency after."""
        from ..figures.attacks import gallery_figure

        return gallery_figure(self, max_items)


@needs_autograd
def robustness(
    model: nn.Module,
    data: Any,
    eps: Sequence[float] = DEFAULT_EPS,
    attacks: Sequence[str] = ATTACKS,
    *,
    steps: int = 10,
    step_size: float | None = None,
    norm: str = "inf",
    target: Any = None,
    random_start: bool = False,
    seed: int = 0,
    gallery: int = 6,
    batch_size: int = 64,
    device: Any = None,
    progress=None,
    **minimum_norm: Any,
) -> RobustnessResult:
    """Accuracy under FGSM/PGD (and DeepFool/C&W) for each ε over a dataset, in one :func:`cnnlens.scan` pass.

    ``minimum_norm``: ``deepfool_steps``, ``cw_steps``, ``cw_c`` (see :class:`RobustnessAccumulator`).

    acc_attack(ε) = mean_i [argmax f(x_adv_i) = y_i], x_adv = attack(x, y, ε) away from the true label.

    >>> r = robustness(cnnlens.load_model("digits-cnn"), "digits", eps=[0, 2/255, 8/255])   # doctest: +SKIP
    >>> r.clean_accuracy, r.accuracy["pgd"]                                                  # doctest: +SKIP
    """
    acc = RobustnessAccumulator(
        eps,
        attacks,
        steps=steps,
        step_size=step_size,
        norm=norm,
        target=target,
        random_start=random_start,
        seed=seed,
        gallery=gallery,
        **minimum_norm,
    )
    if target is not None:
        parse_target(target, model)  # validate before the scan
    (res,) = scan(model, data, [acc], batch_size=batch_size, device=device, progress=progress)
    return res
