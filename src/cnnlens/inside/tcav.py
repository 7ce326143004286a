"""Testing with concept activation vectors (TCAV; Kim et al., ICML 2018).

A *concept* is a set of example images (stripes, a digit's fragments, ...). Kim et al. train a linear
classifier to separate a layer's activations of the concept's images from those of random images; the
normal of its decision boundary, pointing towards the concept, is the concept activation vector (CAV)
v_C. The directional derivative of class k's logit along it,

    S_{C,k,l}(x) = ∇h_{l,k}(f_l(x)) · v_C,

says whether moving the layer's activation towards the concept raises the class, and the TCAV score is
the share of the class's inputs where it does: TCAV_{C,k,l} = |{x ∈ X_k : S_{C,k,l}(x) > 0}| / |X_k|.
A CAV learnt from random images also gives some score, so Kim et al. repeat the training over several
random counter-example sets (runs) and test, with a two-sided t-test, whether the concept's scores differ
from those of CAVs that separate one random set from another; a concept whose p-value is ≥ 0.05 (or
α / #concepts with Bonferroni) is marked not significant.

cnnlens computes exactly Captum's ``TCAV`` (``captum.concept``; gradients of the logit at the layer's
output, flattened; ``sign_count`` and ``magnitude`` scores) — tested to 1e-6 with the same CAV — with
Captum's default classifier (scikit-learn's ``SGDClassifier(alpha=0.01, max_iter=1000, tol=1e-3)`` on a
2/3 training split) or a logistic regression. Activations and gradients are read through
:class:`~cnnlens.tap.LayerTap`; the model is not changed.

>>> r = tcav(model, "net.features.9", concepts={"3-strokes": c3}, random=pool, inputs=x3, target=3)  # doctest: +SKIP
>>> r.scores.mean(1), r.p_values, r.significant                                               # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ..autograd import needs_autograd
from ..batching import check_batch_size, chunks
from ..extras import require
from ..results import Result
from ..tap import LayerTap, resolve_layer

# Late (CONTRIBUTING.md, Imports): the drawing layer (matplotlib) in figure(); scipy (start-up) in tcav;
# cnnlens.attribution (start-up: `import cnnlens.inside` does not load it) in layer_gradients.

#: Kim et al.'s significance level
ALPHA = 0.05


@dataclasses.dataclass(frozen=True)
class TCAV(Result):
    """TCAV scores of concepts for one class at one layer, over ``runs`` random counter-example sets.

    scores: concepts × runs, the share of the inputs with a positive directional derivative along each
    run's CAV (Captum's ``sign_count``); magnitudes: concepts × runs, the mean directional derivative
    (Captum's ``magnitude``); random_scores / random_magnitudes: runs, the same for CAVs separating two
    random sets; p_values: concepts, two-sided t-test of ``scores[c]`` against ``random_scores``
    (``scipy.stats.ttest_ind``); significant: p < ``alpha`` (divided by the number of concepts when
    ``bonferroni``); accuracies: concepts × runs, the CAV classifier's accuracy on its held-out third;
    cavs: concepts × runs × features (unit length), random_cavs: runs × features.
    """

    layer: str
    target: int
    concepts: list
    scores: torch.Tensor
    magnitudes: torch.Tensor
    random_scores: torch.Tensor
    random_magnitudes: torch.Tensor
    p_values: torch.Tensor
    significant: torch.Tensor
    accuracies: torch.Tensor
    cavs: torch.Tensor
    random_cavs: torch.Tensor
    n_inputs: int
    target_name: str | None = None
    settings: dict = dataclasses.field(default_factory=dict)

    def __repr__(self) -> str:
        parts = [
            f"{c}: {float(self.scores[i].mean()):.2f} (p={float(self.p_values[i]):.2g}"
            f"{'' if bool(self.significant[i]) else ', n.s.'})"
            for i, c in enumerate(self.concepts)
        ]
        name = f" ({self.target_name})" if self.target_name else ""
        return (
            f"TCAV(layer={self.layer!r}, target={self.target}{name}, random: "
            f"{float(self.random_scores.mean()):.2f}, {'; '.join(parts)})"
        )

    def rows(self) -> list[dict]:
        """One dict per concept: mean and std of the score over the runs, the random CAVs' mean, p, significant."""
        return [
            {
                "concept": c,
                "score": float(self.scores[i].mean()),
                "score_std": float(self.scores[i].std()),
                "random": float(self.random_scores.mean()),
                "p_value": float(self.p_values[i]),
                "significant": bool(self.significant[i]),
                "cav_accuracy": float(self.accuracies[i].mean()),
            }
            for i, c in enumerate(self.concepts)
        ]

    def figure(self):
        """A bar chart: each concept's mean TCAV score over the runs (±1 std), the random CAVs' beside it;
        ``*`` marks a significant concept, ``n.s.`` one that is not, with the p-value."""
        from .concept_figures import tcav_figure

        return tcav_figure(self)


def class_index(model: nn.Module, target: Any) -> tuple[int, str | None]:
    """``target`` (a class index, or one of the model's class names) as (index, name or None).

    >>> class_index(model, "cat")   # doctest: +SKIP
    (3, 'cat')
    """
    names = getattr(getattr(model, "spec", None), "class_names", None)
    if isinstance(target, str):
        if names and target in names:
            return list(names).index(target), target
        if target.isdigit():
            target = int(target)
        else:
            raise ValueError(
                f"target {target!r} is not a class of the model; give a class index or one of "
                f"{', '.join(map(str, names or [])) or 'its class names'}"
            )
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)):
        raise TypeError(f"target must be a class index or name, got {type(target).__name__}")
    t = int(target)
    return t, (str(names[t]) if names and 0 <= t < len(names) else None)


def class_images(dataset, k: int, n: int | None = None) -> list[torch.Tensor]:
    """The images of a labelled dataset whose label is class ``k``: the first ``n`` (all if None), in order.

    >>> x = torch.stack(class_images(cnnlens.data.as_dataset("digits", model), 3, n=50))  # doctest: +SKIP
    """
    out: list[torch.Tensor] = []
    for i in range(len(dataset)):
        if n is not None and len(out) >= n:
            break
        xi, yi = dataset[i]
        if int(yi) == k:
            out.append(torch.as_tensor(xi))
    return out


def _images(v: Any, what: str) -> torch.Tensor:
    if not torch.is_tensor(v) or v.dim() != 4:
        got = tuple(v.shape) if torch.is_tensor(v) else type(v).__name__
        raise TypeError(f"{what}: give images as an N×C×H×W tensor in [0, 1], got {got}")
    if v.shape[0] < 2:
        raise ValueError(
            f"{what}: {v.shape[0]} image(s); a concept or random set needs at least 2 (Kim et al. use tens to hundreds)"
        )
    return v.detach()


def layer_activations(model: nn.Module, layer: str, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """The layer's outputs on ``x``, flattened: N × features (float64, CPU), read through a LayerTap."""
    bs = check_batch_size(batch_size, x)
    out = []
    with LayerTap(model, [layer], stop_after=layer, detach=True) as tap, torch.no_grad():
        for a, b in chunks(x.shape[0], bs):
            tap.run(x[a:b])
            out.append(tap[layer].reshape(b - a, -1).double().cpu())
    return torch.cat(out)


def layer_gradients(
    model: nn.Module, layer: str, x: torch.Tensor, target: int, batch_size: int | None = None
) -> torch.Tensor:
    """∂ logit_target / ∂ (the layer's output) for each image, flattened: N × features (float64, CPU)."""
    from ..attribution.common import logits_of

    bs = check_batch_size(batch_size, x)
    out = []
    with LayerTap(model, [layer]) as tap:
        for a, b in chunks(x.shape[0], bs):
            xi = x[a:b].detach().clone().requires_grad_(True)
            logits = logits_of(tap.run(xi))
            if not 0 <= target < logits.shape[1]:
                raise ValueError(f"target {target} is not a class of a model with {logits.shape[1]} outputs")
            out.append(tap.grad(logits[:, target], layer).reshape(b - a, -1).double().cpu())
    return torch.cat(out)


def directional_derivatives(gradients: torch.Tensor, cavs: torch.Tensor) -> torch.Tensor:
    """S(x) = ∇h(f_l(x)) · v for each input (rows of ``gradients``) and CAV (rows of ``cavs``): N × K."""
    return gradients.double() @ cavs.double().reshape(-1, gradients.shape[1]).T


def tcav_scores(gradients: torch.Tensor, cavs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sign-count score, magnitude) per CAV: the share of inputs with S > 0, and the mean S (Captum's
    ``sign_count`` and ``magnitude``)."""
    s = directional_derivatives(gradients, cavs)
    return (s > 0).double().mean(0), s.mean(0)


def train_cav(
    positive: torch.Tensor, negative: torch.Tensor, classifier: str = "sgd", seed: int = 0, test_fraction: float = 1 / 3
) -> tuple[torch.Tensor, float]:
    """(unit CAV pointing from ``negative`` to ``positive`` activations, held-out accuracy): a linear classifier
    (``"sgd"``: Captum's default SGDClassifier; ``"logistic"``: LogisticRegression) fitted on a random
    2/3 of the examples, its accuracy measured on the rest."""
    lin = require("data", "sklearn.linear_model", what="TCAV's linear classifier")
    LogisticRegression, SGDClassifier = lin.LogisticRegression, lin.SGDClassifier

    xs = torch.cat([positive, negative]).double().numpy()
    ys = np.r_[np.ones(len(positive)), np.zeros(len(negative))].astype(np.int64)
    rs = np.random.RandomState(seed)
    order = rs.permutation(len(ys))
    k = int(test_fraction * len(ys))
    test, train = order[:k], order[k:]
    if len(np.unique(ys[train])) < 2:
        train, test = order, order[:0]
    if classifier == "sgd":
        lm = SGDClassifier(alpha=0.01, max_iter=1000, tol=1e-3, random_state=seed)
    elif classifier == "logistic":
        lm = LogisticRegression(max_iter=1000)
    else:
        raise ValueError(f"classifier must be 'sgd' (Captum's default) or 'logistic', got {classifier!r}")
    lm.fit(xs[train], ys[train])
    w = torch.from_numpy(np.asarray(lm.coef_[0], dtype=np.float64))
    n = float(w.norm())
    cav = w / n if n > 0 else w
    acc = float((lm.predict(xs[test]) == ys[test]).mean()) if len(test) else float("nan")
    return cav, acc


def _random_sets(random: Any, runs: int, size: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(counter-example set, random concept set) per run: from a list of ≥ 2 fixed sets (run r: sets r and r+1,
    cyclically), or drawn without overlap from one pool of images."""
    if isinstance(random, (list, tuple)):
        sets = [_images(s, f"random[{i}]") for i, s in enumerate(random)]
        if len(sets) < 2:
            raise ValueError(
                "random: give one pool of images or at least 2 random sets (a CAV of random against random needs two)"
            )
        return [(sets[r % len(sets)], sets[(r + 1) % len(sets)]) for r in range(runs)]
    pool = _images(random, "random")
    m = min(size, pool.shape[0] // 2)
    if m < 2:
        raise ValueError(f"random: {pool.shape[0]} images; a pool needs at least 4 (two disjoint sets per run)")
    out = []
    for r in range(runs):
        idx = torch.from_numpy(np.random.RandomState(seed + r).permutation(pool.shape[0]))
        out.append((pool[idx[:m]], pool[idx[m : 2 * m]]))
    return out


@needs_autograd
def tcav(
    model: nn.Module,
    layer: str,
    *,
    concepts: dict,
    random: Any,
    inputs: torch.Tensor,
    target: Any,
    runs: int = 10,
    classifier: str = "sgd",
    alpha: float = ALPHA,
    bonferroni: bool = False,
    seed: int = 0,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> TCAV:
    """TCAV scores of each concept for class ``target`` at ``layer`` over ``runs`` random counter-example sets,
    with Kim et al.'s two-sided t-test against random CAVs.

    ``concepts``: {name: N×C×H×W images of the concept}; ``random``: one pool of random images (each run draws
    two disjoint sets of the concept's size from it: the counter-examples and a random "concept") or a list of
    ≥ 2 fixed random sets; ``inputs``: images of the class (X_k); ``target``: class index or name;
    ``classifier``: ``"sgd"`` (Captum's default) or ``"logistic"``; ``bonferroni``: divide ``alpha`` by the
    number of concepts. Run r trains the concept's CAV against random set r and the random CAV of random set
    r' against r, both with seed ``seed + r``. ``progress(done, total)`` counts the runs.

    >>> r = tcav(model, "net.features.9", concepts={"3": c3}, random=pool, inputs=x3, target=3)  # doctest: +SKIP
    >>> r.figure()                                                                               # doctest: +SKIP
    """
    name = _check_tcav(model, layer, concepts, runs, alpha)
    k, k_name = class_index(model, target)
    cimgs = {str(c): _images(v, f"concept {c!r}") for c, v in concepts.items()}
    x = _images(inputs, "inputs")
    size = max(v.shape[0] for v in cimgs.values())
    pairs = _random_sets(random, runs, size, seed)
    grads = layer_gradients(model, name, x, k, batch_size)
    acts = {c: layer_activations(model, name, v, batch_size) for c, v in cimgs.items()}
    cavs, accs, rcavs = _train_cavs(model, name, acts, pairs, grads.shape[1], classifier, seed, batch_size, progress)
    C = len(cimgs)
    scores, mags = tcav_scores(grads, cavs.reshape(C * runs, -1))
    rscores, rmags = tcav_scores(grads, rcavs)
    scores, mags = scores.view(C, runs), mags.view(C, runs)
    level = alpha / C if bonferroni else alpha
    p_values = _p_values(scores, rscores)
    settings = {
        "runs": runs,
        "classifier": classifier,
        "alpha": alpha,
        "bonferroni": bonferroni,
        "seed": seed,
        "level": level,
        "concept_sizes": {c: int(v.shape[0]) for c, v in cimgs.items()},
        "random": "sets" if isinstance(random, (list, tuple)) else f"pool of {int(random.shape[0])}",
        "paper": "Kim et al. 2018",
    }
    return TCAV(
        layer=name,
        target=k,
        concepts=list(cimgs),
        scores=scores,
        magnitudes=mags,
        random_scores=rscores,
        random_magnitudes=rmags,
        p_values=p_values,
        significant=p_values < level,
        accuracies=accs,
        cavs=cavs.float(),
        random_cavs=rcavs.float(),
        n_inputs=int(x.shape[0]),
        target_name=k_name,
        settings=settings,
    )


def _check_tcav(model, layer, concepts, runs, alpha) -> str:
    """:func:`tcav`'s settings checked; the layer's name."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    name, _ = resolve_layer(model, layer)
    if not isinstance(concepts, dict) or not concepts:
        raise ValueError("concepts: give a dict {name: images}, at least one concept")
    if not isinstance(runs, int) or runs < 2:
        raise ValueError(f"runs must be an int ≥ 2 (the t-test needs several random CAVs), got {runs!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}; Kim et al. use 0.05")
    return name


def _train_cavs(model, name: str, acts: dict, pairs, dim: int, classifier: str, seed: int, batch_size, progress):
    """Run r's CAV of each concept against random set r, and the random CAV of the other random set against it
    (seed ``seed + r``): (concepts × runs × dim CAVs, their accuracies, runs × dim random CAVs)."""
    cache: dict[int, torch.Tensor] = {}

    def act_of(t: torch.Tensor) -> torch.Tensor:
        key = id(t)
        if key not in cache:
            cache[key] = layer_activations(model, name, t, batch_size)
        return cache[key]

    runs = len(pairs)
    cavs = torch.zeros(len(acts), runs, dim, dtype=torch.float64)
    accs = torch.zeros(len(acts), runs, dtype=torch.float64)
    rcavs = torch.zeros(runs, dim, dtype=torch.float64)
    for r, (neg, other) in enumerate(pairs):
        a_neg = act_of(neg)
        for i, c in enumerate(acts):
            cavs[i, r], accs[i, r] = train_cav(acts[c], a_neg, classifier, seed + r)
        rcavs[r], _ = train_cav(act_of(other), a_neg, classifier, seed + r)
        if progress:
            progress(r + 1, runs)
    return cavs, accs, rcavs


def _p_values(scores: torch.Tensor, rscores: torch.Tensor) -> torch.Tensor:
    """Two-sided t-test of each concept's TCAV scores (one row per concept) against the random CAVs' scores."""
    from scipy.stats import ttest_ind

    p = []
    for i in range(scores.shape[0]):
        a, b = scores[i].numpy(), rscores.numpy()
        if np.ptp(a) == 0 and np.ptp(b) == 0:  # no spread on either side: the t statistic is undefined
            p.append(0.0 if a[0] != b[0] else 1.0)
        else:
            with warnings.catch_warnings():  # nearly equal samples: scipy warns of precision loss, p stays valid
                warnings.simplefilter("ignore", RuntimeWarning)
                p.append(float(ttest_ind(a, b).pvalue))
    return torch.tensor(p, dtype=torch.float64)
