"""Robustifying a model: adversarial training and the input-gradient-norm penalty, as training losses.

Both are ``loss_fn(model, x, y) -> loss`` objects for :func:`cnnlens.train.train_digits`
(``cnnlens train digits --robust adversarial|gradient-penalty``), and work with any
training loop that calls them on a pixel-space model ([0, 1] input):

* :func:`adversarial_loss` — train on clean and attacked images, labels kept
  (Goodfellow et al. 2015; Madry et al. 2018):
  ``L = (1 − m)·CE(f(x), y) + m·CE(f(x_adv), y)``, ``x_adv`` = FGSM (with a random
  start, Wong et al. 2020) or PGD within ε of ``x``, recomputed at every step
  against the current weights.
* :func:`gradient_penalty_loss` — make the function flat around the data, the
  "∂F/∂x = 0" (Drucker & LeCun 1992; Ross & Doshi-Velez 2018):
  ``L = mean_i [ CE(f(x_i), y_i) + λ·||∂CE(f(x_i), y_i)/∂x_i||² ]``, by double
  backpropagation (``create_graph=True``).

Unlike the attack functions, these use the model *as it is* (training mode,
trainable parameters): the attack inside adversarial training takes gradients
with respect to the input only (``torch.autograd.grad``), so it leaves the
parameters' ``.grad`` alone, and the optimiser step sees only the training loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..models import load_model
from .common import (
    check_steps,
    eps_tensor,
    loss_grad,
    parse_norm,
    project,
    random_start_point,
    resolve_step_size,
    take_step,
)

ROBUST = ("none", "adversarial", "gradient-penalty")
#: defaults of ``--robust adversarial`` (FGSM with a random start) and ``--robust gradient-penalty``
ADV_EPS = 0.1
GP_LAMBDA = 1.0


def input_gradient_penalty(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, create_graph: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-sample CE, per-sample ||∂CE_i/∂x_i||²) of ``model`` as it is (N and N).

    ``create_graph=True`` keeps the graph so the penalty can itself be
    differentiated (double backpropagation). The CE is summed before the
    gradient, so each sample's gradient is its own.

    >>> ce, pen = input_gradient_penalty(model, x, y)       # doctest: +SKIP
    """
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        logits = model(xr)
        if not torch.is_tensor(logits) or logits.dim() != 2:
            raise TypeError("the model must return N×K logits for the gradient penalty")
        ce = F.cross_entropy(logits, y, reduction="none")
        (g,) = torch.autograd.grad(ce.sum(), xr, create_graph=create_graph)
    return ce, g.pow(2).flatten(1).sum(1)


@dataclass(frozen=True)
class GradientPenaltyLoss:
    """``L = mean_i [CE_i + λ·||∂CE_i/∂x_i||²]`` by double backpropagation; a ``loss_fn`` for training.

    >>> loss_fn = gradient_penalty_loss(lam=1.0)
    >>> model = cnnlens.train.train_digits(loss_fn=loss_fn)      # doctest: +SKIP
    """

    lam: float = GP_LAMBDA

    def terms(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss's parts (means over the batch): ``ce``, ``penalty`` (||∂CE/∂x||²), ``loss``."""
        ce, pen = input_gradient_penalty(model, x, y, create_graph=True)
        return {"ce": ce.mean(), "penalty": pen.mean(), "loss": ce.mean() + self.lam * pen.mean()}

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.terms(model, x, y)["loss"]

    def describe(self) -> dict:
        return {"robust": "gradient-penalty", "lambda": self.lam, "loss": "mean_i CE_i + λ·||∂CE_i/∂x_i||²"}


@dataclass(frozen=True)
class AdversarialLoss:
    """``L = (1 − mix)·CE(f(x), y) + mix·CE(f(x_adv), y)``, x_adv attacked against the current weights.

    method ``"fgsm"``: a random start in the ε-ball, then one step of ``step_size``
    (default 1.25·ε, Wong et al. 2020); ``"pgd"``: ``steps`` steps of
    ``step_size`` (default 2.5·ε/steps) from a random start. The random start
    draws from torch's global generator, so a seeded training run is reproducible.

    >>> loss_fn = adversarial_loss(eps=0.1)
    >>> model = cnnlens.train.train_digits(loss_fn=loss_fn)      # doctest: +SKIP
    """

    eps: float = ADV_EPS
    method: str = "fgsm"
    steps: int = 1
    step_size: float | None = None
    mix: float = 0.5
    norm: str = "inf"

    def __post_init__(self):
        if self.method not in ("fgsm", "pgd"):
            raise ValueError(f"adversarial training method {self.method!r} is not known; use 'fgsm' or 'pgd'")
        if not (0.0 <= self.mix <= 1.0):
            raise ValueError(f"mix must be in [0, 1] (the weight of the adversarial term), got {self.mix}")
        if not (self.eps > 0):
            raise ValueError(f"eps must be > 0 for adversarial training, got {self.eps}")
        check_steps(self.steps)
        object.__setattr__(self, "norm", parse_norm(self.norm))

    def examples(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The attacked images (detached) for this batch, against the model as it is."""
        x = x.detach()
        n = x.shape[0]
        e = eps_tensor(self.eps, n, x)
        gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ())))  # from the (seeded) global RNG
        x_adv = random_start_point(x, e, self.norm, gen)
        if self.method == "fgsm":
            steps, alpha = 1, resolve_step_size(self.step_size if self.step_size is not None else 1.25 * self.eps, e, 1)
        else:
            steps, alpha = self.steps, resolve_step_size(self.step_size, e, self.steps)
        for _ in range(steps):  # untargeted: raise CE(y); projected around x, clipped to [0, 1]
            _, direction = loss_grad(model, x_adv, y, False)
            x_adv = project(take_step(x_adv, direction, alpha, self.norm), x, e, self.norm)
        return x_adv.detach()

    def terms(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """``clean`` CE, ``adversarial`` CE and the mixed ``loss``."""
        x_adv = self.examples(model, x, y)
        n = x.shape[0]
        logits = model(torch.cat([x, x_adv]))
        clean = F.cross_entropy(logits[:n], y)
        adv = F.cross_entropy(logits[n:], y)
        return {"clean": clean, "adversarial": adv, "loss": (1 - self.mix) * clean + self.mix * adv}

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.terms(model, x, y)["loss"]

    def describe(self) -> dict:
        return {
            "robust": "adversarial",
            "method": self.method,
            "eps": self.eps,
            "steps": self.steps if self.method == "pgd" else 1,
            "step_size": self.step_size
            if self.step_size is not None
            else ("1.25·ε" if self.method == "fgsm" else "2.5·ε/steps"),
            "mix": self.mix,
            "norm": self.norm,
            "random_start": True,
            "loss": "(1 − mix)·CE(x) + mix·CE(x_adv)",
        }


def adversarial_loss(
    eps: float = ADV_EPS,
    method: str = "fgsm",
    steps: int = 1,
    step_size: float | None = None,
    mix: float = 0.5,
    norm: str = "inf",
) -> AdversarialLoss:
    """A training loss mixing clean and attacked images (labels kept); see :class:`AdversarialLoss`."""
    return AdversarialLoss(eps=eps, method=method, steps=steps, step_size=step_size, mix=mix, norm=norm)


def gradient_penalty_loss(lam: float = GP_LAMBDA) -> GradientPenaltyLoss:
    """A training loss CE + λ·||∂CE/∂x||² (double backpropagation); see :class:`GradientPenaltyLoss`."""
    if not (lam >= 0):
        raise ValueError(f"lam must be ≥ 0 (the penalty's weight), got {lam}")
    return GradientPenaltyLoss(lam=float(lam))


def robust_loss(robust: str, **kw):
    """The training loss for ``--robust none|adversarial|gradient-penalty`` (None for ``none``)."""
    key = str(robust).strip().lower().replace("_", "-")
    if key == "none":
        return None
    if key in ("adversarial", "adv"):
        return adversarial_loss(
            **{k: v for k, v in kw.items() if k in ("eps", "method", "steps", "step_size", "mix", "norm")}
        )
    if key in ("gradient-penalty", "gp"):
        return gradient_penalty_loss(**{k: v for k, v in kw.items() if k in ("lam",)})
    raise ValueError(f"--robust {robust!r} is not known; use one of {', '.join(ROBUST)}")


def robust_weights_path(robust: str):
    """The shipped weight file of digits-cnn trained with ``--robust adversarial|gradient-penalty``.

    Reproduce with ``cnnlens train digits --seed 0 --epochs 20 --robust <kind> --out <this path>``.
    """
    key = str(robust).strip().lower().replace("_", "-")
    if key not in ROBUST[1:]:
        raise ValueError(
            f"no shipped weights for --robust {robust!r}; use 'adversarial' or 'gradient-penalty' "
            "(the plain model is load_model('digits-cnn'))"
        )
    return (
        Path(__file__).resolve().parent.parent
        / "models"
        / "weights"
        / f"digits_cnn_{key.replace('-', '_')}.safetensors"
    )


def load_digits(robust: str = "none"):
    """digits-cnn trained with ``--robust none|adversarial|gradient-penalty`` (all three ship with cnnlens).

    >>> models = {k: load_digits(k) for k in ("none", "adversarial", "gradient-penalty")}   # doctest: +SKIP
    """
    if str(robust).strip().lower() == "none":
        return load_model("digits-cnn")
    return load_model("digits-cnn", weights=robust_weights_path(robust))
