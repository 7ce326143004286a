"""One attack on a batch of images, in batches, as one value: :func:`attack_images`.

What ``cnnlens attack`` does, for a Python user: FGSM, PGD, DeepFool, C&W L2 or the minimal-ε PGD search on
every image, batch by batch, the results joined into one :class:`AttackResult`.
:func:`cnnlens.attacks.report.add_attack_run_section` presents an :class:`AttackRun` in a report.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..batching import check_batch_size
from .gradient import fgsm, minimal_eps, pgd
from .minnorm import cw, deepfool
from .result import AttackResult

#: the attacks :func:`attack_images` runs, by name
ATTACKS = ("fgsm", "pgd", "deepfool", "cw")
#: the default number of steps of each attack (PGD steps, DeepFool iterations, C&W Adam steps)
DEFAULT_STEPS = {"fgsm": 10, "pgd": 10, "deepfool": 50, "cw": 100}


@dataclasses.dataclass(frozen=True)
class AttackRun:
    """What :func:`attack_images` returns.

    images: the N×C×H×W images attacked (CPU); names: one name per image; result: the
    :class:`AttackResult` of all of them; method: fgsm, pgd, deepfool, cw or minimal (the minimal-ε search
    over PGD); class_names: the model's class names, if it has them.
    """

    images: torch.Tensor
    names: list
    result: AttackResult
    method: str
    class_names: list | None = None

    def __len__(self) -> int:
        return self.images.shape[0]


def concat_results(parts: Sequence[AttackResult]) -> AttackResult:
    """Several :class:`AttackResult` of the same attack (one per batch) as one: tensors joined along the
    images, the settings of the first."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(first):
        vals = [getattr(p, f.name) for p in parts]
        if torch.is_tensor(vals[0]):
            fields[f.name] = torch.cat(vals)
        elif f.name == "extras":
            fields[f.name] = {k: torch.cat([p.extras[k] for p in parts]) for k in first.extras}
        else:
            fields[f.name] = vals[0]
    return type(first)(**fields)


def attack_images(
    model,
    x: torch.Tensor,
    method: str = "pgd",
    *,
    eps: float = 2 / 255,
    target: Any = "second",
    norm: str = "inf",
    steps: int | None = None,
    step_size: float | None = None,
    c: float = 1.0,
    overshoot: float = 0.02,
    random_start: bool = False,
    minimal: bool = False,
    seed: int = 0,
    batch_size: int | None = None,
    names: Sequence[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> AttackRun:
    """Attack ``x`` with ``method`` (fgsm, pgd, deepfool or cw; ``minimal=True``: each image's smallest ε by
    bisection over PGD) in batches of ``batch_size`` (None: automatic), and join the results.

    ``steps`` None: the attack's default (:data:`DEFAULT_STEPS`). ``progress(batches_done)`` after each batch.

    >>> run = attack_images(model, x, "pgd", eps=2/255)                # doctest: +SKIP
    >>> run.result.success                                             # doctest: +SKIP
    """
    method = str(method).strip().lower()
    if method not in ATTACKS:
        raise ValueError(f"method {method!r} is not known; use one of {', '.join(ATTACKS)}")
    if minimal and method != "pgd":
        raise ValueError(
            "minimal=True searches over PGD; use it with method='pgd' (deepfool and cw are minimal already)"
        )
    steps = DEFAULT_STEPS[method] if steps is None else steps
    batch_size = check_batch_size(batch_size, x)
    parts = []
    for b, s in enumerate(range(0, x.shape[0], batch_size)):
        xb = x[s : s + batch_size]
        if minimal:
            r = minimal_eps(model, xb, target=target, norm=norm, steps=steps, random_start=random_start, seed=seed)
        elif method == "fgsm":
            r = fgsm(model, xb, eps=eps, target=target, norm=norm)
        elif method == "deepfool":
            r = deepfool(model, xb, target=target, steps=steps, overshoot=overshoot)
        elif method == "cw":
            r = cw(model, xb, target=target, c=c, steps=steps)
        else:
            r = pgd(
                model,
                xb,
                eps=eps,
                steps=steps,
                step_size=step_size,
                target=target,
                norm=norm,
                random_start=random_start,
                seed=seed,
            )
        parts.append(r)
        if progress is not None:
            progress(b + 1)
    names = list(names) if names is not None else [str(i) for i in range(x.shape[0])]
    class_names = getattr(getattr(model, "spec", None), "class_names", None)
    return AttackRun(
        x.detach().cpu(),
        names,
        concat_results(parts),
        "minimal" if minimal else method,
        list(class_names) if class_names else None,
    )
