"""Any torchattacks attack on a cnnlens model, returned as an :class:`AttackResult`.

torchattacks (Kim 2020) implements some forty attacks (PGD variants, AutoAttack,
Square, One-Pixel, ...). They assume models that take images in [0, 1] — which
cnnlens models do (normalisation is their first layer) — so the bridge only
adds what cnnlens gives every attack: the inputs and target checked first, the
model run inside :class:`~cnnlens.tap.guarded` (eval mode, frozen parameters,
everything torchattacks changes undone, also when it raises), and the logits,
predictions and success of each image before and after.
"""

from __future__ import annotations

import difflib
import inspect
import math
from typing import Any

import torch
from torch import nn

from ..autograd import needs_autograd
from ..extras import require
from ..tap import guarded
from .common import (
    attack_result,
    checked_inputs,
    class_names_of,
    describe_target,
    goal_reached,
    predict,
    resolve_classes,
)
from .result import AttackResult


def _torchattacks():
    return require("attacks", "torchattacks", what="the torchattacks bridge")


def torchattacks_class(attack: Any) -> type[Any]:
    """A torchattacks attack class from its name (``"PGD"``, case-insensitive) or the class itself."""
    if isinstance(attack, type):
        if not callable(getattr(attack, "forward", None)):
            raise TypeError(f"{attack.__name__} is not a torchattacks attack (it has no forward())")
        return attack
    if not isinstance(attack, str):
        raise TypeError(
            f"attack_class must be a torchattacks class or its name, e.g. 'PGD', got {type(attack).__name__}"
        )
    ta = _torchattacks()
    base = ta.attack.Attack
    known = {
        n.lower(): getattr(ta, n)
        for n in dir(ta)
        if isinstance(getattr(ta, n), type) and issubclass(getattr(ta, n), base) and getattr(ta, n) is not base
    }
    key = attack.strip().lower()
    if key not in known:
        close = [known[c].__name__ for c in difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)]
        hint = f"did you mean {', '.join(close)}?" if close else "e.g. PGD, PGDL2, DeepFool, CW, Square, AutoAttack"
        raise ValueError(f"torchattacks has no attack {attack!r}; {hint}")
    return known[key]


def bridged_error(attack: str, e: Exception, *, targeted: bool = False) -> Exception:
    """One line naming the cause and the fix for a torchattacks failure (the caller chains the original as the
    cause; ``cnnlens --debug`` shows its traceback)."""
    text = " ".join(str(e).split())[:200] or type(e).__name__
    if targeted and ("targeted" in text.lower() or isinstance(e, (NotImplementedError, AttributeError))):
        return ValueError(
            f"torchattacks' {attack} cannot attack toward a class ({type(e).__name__}: {text}); "
            "drop target= for an untargeted attack, or pick an attack with a targeted mode (PGD, CW)"
        )
    kind = ValueError if isinstance(e, (ValueError, TypeError, IndexError, KeyError)) else RuntimeError
    return kind(
        f"torchattacks' {attack} failed on this model ({type(e).__name__}: {text}); check its arguments "
        f"with help(torchattacks.{attack}) (cnnlens --debug shows torchattacks' traceback)"
    )


class _InModelDtype(nn.Module):
    """The model, called with its input cast to the model's floating dtype (as LayerTap.run does)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.training = model.training  # what the attack library reads (and restores) is the model's own mode
        self.dtype = next(
            (t.dtype for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()), None
        )

    def forward(self, x):
        return self.model(x if self.dtype is None or x.dtype == self.dtype else x.to(self.dtype))


@needs_autograd
def from_torchattacks(
    attack_class: Any,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    target: Any = None,
    **kwargs: Any,
) -> AttackResult:
    """Run ``torchattacks.<attack_class>(model, **kwargs)`` on ``x`` and return an :class:`AttackResult`.

    Untargeted (``target=None``): away from ``y``, or from the predicted class without
    labels. With a class target (an index, a name, ``"second"``, per-sample classes)
    the attack runs in torchattacks' targeted mode toward those classes (the attack
    must support it). ``eps`` in the result is the attack's ``eps`` (its budget) when
    it has one, else the L2 norm of each perturbation (``inf`` where it failed).

    >>> r = from_torchattacks("PGD", model, x, y, eps=8/255, alpha=2/255, steps=10)   # doctest: +SKIP
    >>> r = from_torchattacks(torchattacks.Square, model, x, eps=8/255)               # doctest: +SKIP
    """
    cls = torchattacks_class(attack_class)
    x, y, t = checked_inputs(model, x, y, target)
    n = x.shape[0]
    params = inspect.signature(cls.__init__).parameters
    if not any(v.kind is inspect.Parameter.VAR_KEYWORD for v in params.values()):
        unknown = [k for k in kwargs if k not in params or k in ("self", "model")]
        if unknown:
            raise ValueError(f"{cls.__name__} takes no argument {unknown[0]!r}; see help(torchattacks.{cls.__name__})")
    with guarded(model):
        net = _InModelDtype(model)  # a bfloat16/float16 model gets its own dtype; the images stay as given
        logits0, classes = resolve_classes(net, x, y, t)
        try:
            atk = cls(net, **kwargs)
            if t is not None:
                atk.set_mode_targeted_by_label(quiet=True)
            x_adv = atk(x.clone(), classes.clone()).detach()
        except Exception as e:  # noqa: BLE001 - one line; torchattacks' own error is kept as the cause (--debug)
            raise bridged_error(cls.__name__, e, targeted=t is not None) from e
        logits1 = predict(net, x_adv)
    if x_adv.shape != x.shape:
        raise ValueError(f"{cls.__name__} returned images of shape {tuple(x_adv.shape)} for inputs {tuple(x.shape)}")
    targeted = t is not None
    ok = goal_reached(logits1.argmax(1), classes, targeted)
    budget = getattr(atk, "eps", None)
    if isinstance(budget, (int, float)) and not isinstance(budget, bool):
        eps = torch.full((n,), float(budget), dtype=x.dtype, device=x.device)
    else:
        l2 = (x_adv - x).flatten(1).norm(dim=1)
        eps = torch.where(ok, l2, torch.full_like(l2, math.inf))
    steps = getattr(atk, "steps", 1)
    used = torch.full((n,), int(steps) if isinstance(steps, int) else 1, dtype=torch.long)
    # torchattacks' L2 attacks say so in their name (PGDL2, CW, DeepFool are L2; the rest L∞)
    l2_attack = "L2" in cls.__name__ or cls.__name__ in ("CW", "DeepFool", "EADL1", "EADEN") or budget is None
    settings = {
        "method": f"torchattacks:{cls.__name__}",
        "norm": "2" if l2_attack else "inf",
        **{k: v for k, v in kwargs.items() if isinstance(v, (int, float, str, bool))},
        "target": describe_target(t, class_names_of(model)),
    }
    return attack_result(x, x_adv, used, logits0, logits1, classes, targeted, eps, settings)
