"""How a CNN breaks: adversarial attacks, robustness over a dataset, robust training.

* :func:`fgsm`, :func:`pgd`, :func:`minimal_eps` — gradient attacks in pixel space
  ([0, 1], ε in pixel units), on the logits; each returns an :class:`AttackResult`.
* :func:`deepfool`, :func:`cw` — minimum-norm L2 attacks (DeepFool; Carlini–Wagner L2):
  the smallest perturbation that changes the decision, ``result.eps`` = its L2 norm.
* :func:`from_torchattacks` — any torchattacks attack on a cnnlens model, as an :class:`AttackResult`.
* :func:`robustness` / :class:`RobustnessAccumulator` — accuracy against ε per
  attack over a dataset, as an accumulator of :func:`cnnlens.scan`.
* :mod:`~cnnlens.attacks.robust` — adversarial training and the input-gradient
  penalty as training losses (``cnnlens train digits --robust ...``).
* :mod:`~cnnlens.attacks.concentration` — why adversarial examples exist: in high
  dimension almost all of a ball's volume lies near its boundary.

Example::

    import cnnlens
    from cnnlens.attacks import pgd, minimal_eps
    model = cnnlens.load_model("efficientnet-lite0")
    x = cnnlens.load_images(["cat.jpg"], model)
    r = pgd(model, x, eps=1/255)                  # toward the second most likely class
    m = minimal_eps(model, x)                     # the ε each image needs
"""

from __future__ import annotations

from .gradient import fgsm, minimal_eps, pgd
from .minnorm import cw, deepfool
from .result import AttackResult

__all__ = [
    "AttackResult",
    "fgsm",
    "pgd",
    "minimal_eps",
    "deepfool",
    "cw",
    "from_torchattacks",
    "robustness",
    "RobustnessAccumulator",
    "RobustnessResult",
    "adversarial_loss",
    "gradient_penalty_loss",
    "input_gradient_penalty",
]


def __getattr__(name):  # keep `import cnnlens.attacks` light
    if name in ("robustness", "RobustnessAccumulator", "RobustnessResult"):
        from . import curves as _r

        return getattr(_r, name)
    if name in ("adversarial_loss", "gradient_penalty_loss", "input_gradient_penalty"):
        from . import robust as _rb

        return getattr(_rb, name)
    if name == "from_torchattacks":
        from .bridge import from_torchattacks

        return from_torchattacks
    if name in SUBMODULES:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'cnnlens.attacks' has no attribute {name!r}")


#: the documented submodules, reachable as attributes without importing them first
SUBMODULES = ("robust", "concentration", "curves", "bridge")


def __dir__():
    """The public API (also what loads on first use) and the submodules, for ``dir()`` and tab completion."""
    return sorted(set(__all__) | set(SUBMODULES) | {k for k in globals() if not k.startswith("_")} - {"annotations"})
