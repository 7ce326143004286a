"""The value every attack returns: :class:`AttackResult`."""

from __future__ import annotations

import dataclasses

import torch

from ..results import Result, figure_inputs

# Late (CONTRIBUTING.md, Imports): the drawing layer (matplotlib), in figure() and preview().


@dataclasses.dataclass(frozen=True)
class AttackResult(Result):
    """What an attack returns (tensors detached, on CPU).

    x_adv: adversarial images N×C×H×W in [0, 1].
    success: per sample, whether the goal was reached (targeted: ``pred_after == classes``;
        untargeted: ``pred_after != classes``).
    pred_before / pred_after: the arg-max class on ``x`` and on ``x_adv`` (LongTensor N).
    steps: gradient steps used per sample (PGD stops early per sample).
    perturbation: ``x_adv − x``.
    eps: the budget of each sample (N), in pixel units; for :func:`minimal_eps`, the
        smallest ε found (``inf`` where none up to ``max_eps`` worked).
    settings: what ran (method, norm, steps, step size, target, ...).
    classes: the class aimed at (targeted) or pushed away from (untargeted), per sample.
    targeted: whether the attack was targeted.
    logits_before / logits_after: N×K logits on ``x`` and on ``x_adv``.
    extras: method-specific values (``eps_lower`` for :func:`minimal_eps`).

    >>> r.success.float().mean()            # doctest: +SKIP
    >>> r.linf()                            # doctest: +SKIP  # ||x_adv − x||∞ per sample
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    pred_before: torch.Tensor
    pred_after: torch.Tensor
    steps: torch.Tensor
    perturbation: torch.Tensor
    eps: torch.Tensor
    settings: dict = dataclasses.field(default_factory=dict)
    classes: torch.Tensor | None = None
    targeted: bool = False
    logits_before: torch.Tensor | None = None
    logits_after: torch.Tensor | None = None
    extras: dict = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return self.x_adv.shape[0]

    def headline(self) -> str:
        what = self.settings.get("method", "attack")
        return f"AttackResult: {what} on {len(self)} image(s), success {int(self.success.sum())}/{len(self)}"

    def preview(self):
        """The adversarial images (first row) and their perturbations made visible (second), at most 6."""
        from ..viz import image_grid

        k = min(len(self), 6)
        return image_grid(list(self.x_adv[:k]) + list(self.amplified()[:k]), ncols=k, size=1.2)

    def figure(self, x: torch.Tensor, names=None, class_names=None):
        """One row per image: the original and the adversarial image with their top class and probability,
        and the perturbation amplified to be seen.

        >>> attacks.pgd(model, x, eps=2 / 255).figure(x, class_names=model.spec.class_names)   # doctest: +SKIP
        """
        from ..figures.attacks import attack_figure

        x, names = figure_inputs(x, names, len(self), tuple(self.x_adv.shape[-2:]), "attacked")
        return attack_figure(x, self, names, class_names=class_names)

    @property
    def success_rate(self) -> float:
        """Fraction of samples whose goal was reached."""
        return float(self.success.float().mean()) if len(self) else float("nan")

    def linf(self) -> torch.Tensor:
        """||x_adv − x||∞ per sample (N)."""
        return self.perturbation.flatten(1).abs().amax(1)

    def l2(self) -> torch.Tensor:
        """||x_adv − x||₂ per sample (N)."""
        return self.perturbation.flatten(1).norm(dim=1)

    def amplified(self) -> torch.Tensor:
        """The perturbation made visible: ``0.5 + δ / (2·max|δ|)`` per sample, in [0, 1] (grey = no change)."""
        d = self.perturbation
        m = d.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, *([1] * (d.dim() - 1)))
        return (0.5 + d / (2 * m)).clamp(0, 1)

    def probabilities(self, after: bool = True) -> torch.Tensor:
        """N×K class probabilities (softmax of the logits, float32) on ``x_adv`` (``after=True``) or on ``x``."""
        logits = self.logits_after if after else self.logits_before
        if logits is None:
            raise ValueError("this result carries no logits; run the attack through cnnlens.attacks")
        return logits.float().softmax(1)

    def topk(self, k: int = 5, after: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(probabilities, classes) of the top-k on ``x_adv`` (``after=True``) or on ``x``; each N×k."""
        p = self.probabilities(after)
        v, i = p.topk(min(k, p.shape[1]), dim=1)
        return v, i
