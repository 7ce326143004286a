"""One record per attribution method: what the CLI, the report, the explorer, the leaderboard and the tests know.

Adding a method is one function (``method(model, x, target="predicted", **settings) -> Explanation`` in a
module of ``cnnlens.attribution``) and one :class:`Method` record in :data:`REGISTRY` (CONTRIBUTING.md has a
worked example). This module imports no torch (the function loads on first use of ``Method.fn``), so the
CLI's ``--help`` lists the methods from here and stays fast.
"""

from __future__ import annotations

import functools
import html
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Method:
    """What is true of one attribution method.

    name: the registry key (the CLI accepts ``-`` for ``_``); module: the ``cnnlens.attribution`` submodule
    holding the function of that name (``fn``; a bridged record carries its own ``call``); family: ``gradient``,
    ``perturbation``, ``cam`` or ``guided``; title: the display name; paper: who introduced it;
    origin: ``native`` (cnnlens' own code) or ``bridged`` (run by another library, e.g. Captum);
    signed: the sign of a value means something (drawn on a diverging colour map centred at 0);
    clipped: a pixel-level gradient map whose display is clipped at the 99.5th percentile of |value|
    (a few extreme pixels would wash out the rest; the numbers are not clipped);
    unit: what a value means, for the colour bar; layered: reads one layer (``layer=``, default the last
    spatial layer), so the model needs one (``needs_layer``); intro: the lesson shown above its maps (HTML).
    """

    name: str
    module: str
    family: str
    title: str
    paper: str
    origin: str = "native"
    signed: bool = False
    clipped: bool = False
    unit: str = "attribution"
    layered: bool = False
    intro: str = ""
    call: Callable | None = None

    @property
    def fn(self) -> Callable[..., Any]:
        """The method's function, ``fn(model, x, target="predicted", **settings) -> Explanation``."""
        if self.call is not None:
            return self.call
        return getattr(importlib.import_module(f"cnnlens.attribution.{self.module}"), self.name)

    @property
    def needs_layer(self) -> bool:
        """Whether the method reads a spatial layer (``--layer`` applies; a model without one is refused)."""
        return self.layered

    @property
    def cli_name(self) -> str:
        return self.name.replace("_", "-")


#: every native method, in the order the CLI lists them
REGISTRY: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "saliency",
            "gradients",
            "gradient",
            "Saliency",
            "Simonyan et al. 2014",
            unit="|∂S/∂x| (score per pixel unit)",
            clipped=True,
            intro=(
                "<b>Saliency</b> (Simonyan et al. 2014): back-propagate the class score <i>before</i> the softmax, "
                "S<sub>c</sub>, to the pixels: M(i, j) = max<sub>channel</sub> |∂S<sub>c</sub>/∂x<sub>i,j</sub>|. "
                "Large values are pixels whose small change moves the score most. The pre-softmax score matters: the "
                "probability can also be raised by lowering the <i>other</i> classes' scores, which says nothing about "
                "this class. One forward and one backward pass: the quick check that the model looks at the object."
            ),
        ),
        Method(
            "smoothgrad",
            "gradients",
            "gradient",
            "SmoothGrad",
            "Smilkov et al. 2017",
            unit="mean |∂S/∂x| over noisy copies",
            clipped=True,
            intro=(
                "<b>SmoothGrad</b> (Smilkov et al. 2017): the saliency map averaged over noisy copies x + ε, ε ~ "
                "N(0, σ²) in pixel units. The gradient of a ReLU network jumps from pixel to pixel; averaging over "
                "a small neighbourhood keeps what is stable."
            ),
        ),
        Method(
            "gradient_x_input",
            "gradients",
            "gradient",
            "Gradient × input",
            "Shrikumar et al. 2016",
            unit="x·∂S/∂x (score units)",
            signed=True,
            clipped=True,
            intro=(
                "<b>Gradient × input</b>: x ⊙ ∂S<sub>c</sub>/∂x, summed over colour channels. For a linear model it is "
                "each pixel's exact share of the score (relative to a black image)."
            ),
        ),
        Method(
            "integrated_gradients",
            "gradients",
            "gradient",
            "Integrated Gradients",
            "Sundararajan et al. 2017",
            unit="share of S(x) − S(black) (score units)",
            signed=True,
            clipped=True,
            intro=(
                "<b>Integrated Gradients</b> (Sundararajan et al. 2017): the gradient averaged along the straight path "
                "from a baseline x' (here black) to x, times (x − x'). The attributions add up to S(x) − S(x') "
                "(completeness); what the numerical integral misses is reported as the completeness gap."
            ),
        ),
        Method(
            "occlusion",
            "occlusion",
            "perturbation",
            "Occlusion",
            "Zeiler & Fergus 2014",
            unit="drop of the class score (logit) when hidden",
            signed=True,
            intro=(
                "<b>Occlusion sensitivity</b> (Zeiler &amp; Fergus 2014): slide a grey square over the image and "
                "re-score at every position. Shown: the drop of the class score when the square covers each pixel "
                "(red = hiding it hurts the class). Its <i>probability map</i> (Zeiler &amp; Fergus 2014, Fig. 7) "
                "— the class probability for each position of the square, low where the square hides what the "
                "model needs — is drawn next to it. Model-agnostic (no gradient at all) but costly as one forward "
                "per position — unless, as here, only what changes is recomputed: the square alters a small region "
                "of the image and, layer by layer, only that region's projective field, so cnnlens recomputes just "
                "those boxes and reads the rest from the clean image's activations (incremental inference, "
                "Nakandala et al. 2019): the same map, several times faster."
            ),
        ),
        Method(
            "cam",
            "cam",
            "cam",
            "CAM",
            "Zhou et al. 2016",
            unit="Σ w·f (logit units; mean = score − bias)",
            signed=True,
            layered=True,
            intro=(
                "<b>Class activation map</b> (Zhou et al. 2016). With a global-average-pool + linear head, "
                "S<sub>c</sub> = Σ<sub>k</sub> w<sub>k</sub><sup>c</sup> F<sub>k</sub> + b<sub>c</sub> with "
                "F<sub>k</sub> = mean<sub>x,y</sub> f<sub>k</sub>(x, y), so S<sub>c</sub> − b<sub>c</sub> = "
                "mean<sub>x,y</sub> M<sub>c</sub>(x, y) with M<sub>c</sub>(x, y) = Σ<sub>k</sub> "
                "w<sub>k</sub><sup>c</sup> f<sub>k</sub>(x, y): the score is exactly the average of the map (Zhou "
                "et al. write Σ<sub>x,y</sub> M<sub>c</sub> = S<sub>c</sub>, with the sum that a sum-pool would "
                "take). Global average pooling keeps where each feature fired; the map is upsampled from the last "
                "layer's grid."
            ),
        ),
        Method(
            "gradcam",
            "cam",
            "cam",
            "Grad-CAM",
            "Selvaraju et al. 2017",
            unit="ReLU(Σ α·A) (score units)",
            layered=True,
            intro=(
                "<b>Grad-CAM</b> (Selvaraju et al. 2017) works for any head and any layer A: the importance of "
                "channel k for class c is α<sub>k</sub><sup>c</sup> = (1/#pixels) Σ<sub>ij</sub> "
                "∂y<sub>c</sub>/∂A<sup>k</sup><sub>ij</sub>, and the map is ReLU(Σ<sub>k</sub> "
                "α<sub>k</sub><sup>c</sup> A<sup>k</sup>). On a GAP + linear head α<sub>k</sub><sup>c</sup> = "
                "w<sub>k</sub><sup>c</sup>/(H·W): Grad-CAM is then CAM/(H·W) before the ReLU. Only the backward "
                "from the score to that layer runs, so it costs about one forward pass."
            ),
        ),
        Method(
            "gradcam_pp",
            "cam",
            "cam",
            "Grad-CAM++",
            "Chattopadhay et al. 2018",
            unit="ReLU(Σ w·A) (score units)",
            layered=True,
            intro=(
                "<b>Grad-CAM++</b> (Chattopadhay et al. 2018) weights each position's positive gradient, "
                "w<sub>k</sub> = Σ<sub>ij</sub> a<sub>ij</sub><sup>k</sup> "
                "ReLU(∂y<sub>c</sub>/∂A<sub>ij</sub><sup>k</sup>), so several instances of a class each count."
            ),
        ),
        Method(
            "xgradcam",
            "cam",
            "cam",
            "XGrad-CAM",
            "Fu et al. 2020",
            unit="ReLU(Σ w·A), w = Σ A·∂S/∂A / Σ A",
            layered=True,
            intro=(
                "<b>XGrad-CAM</b> (Fu et al. 2020): Grad-CAM with each channel's gradient averaged with the "
                "channel's own activations as weights, α<sub>k</sub> = Σ<sub>ij</sub> A<sup>k</sup><sub>ij</sub> "
                "∂y<sub>c</sub>/∂A<sup>k</sup><sub>ij</sub> / Σ<sub>ij</sub> A<sup>k</sup><sub>ij</sub>, chosen so "
                "that the map adds up to the score where the head is linear (conservation)."
            ),
        ),
        Method(
            "hirescam",
            "cam",
            "cam",
            "HiResCAM",
            "Draelos & Carin 2020",
            unit="ReLU(Σ_k A ⊙ ∂S/∂A) (score units)",
            layered=True,
            intro=(
                "<b>HiResCAM</b> (Draelos &amp; Carin 2020): Σ<sub>k</sub> ∂y<sub>c</sub>/∂A<sup>k</sup> ⊙ "
                "A<sup>k</sup> — the gradient is not averaged over positions, so the map shows exactly which "
                "positions raise the score (on a global-average-pool head it adds up to the score minus the bias)."
            ),
        ),
        Method(
            "layercam",
            "cam",
            "cam",
            "LayerCAM",
            "Jiang et al. 2021",
            unit="ReLU(Σ_k ReLU(∂S/∂A) ⊙ A)",
            layered=True,
            intro=(
                "<b>LayerCAM</b> (Jiang et al. 2021): Σ<sub>k</sub> ReLU(∂y<sub>c</sub>/∂A<sup>k</sup>) ⊙ "
                "A<sup>k</sup>, each position weighted by its own positive gradient, which keeps fine detail at "
                "earlier layers; maps of several layers can be fused."
            ),
        ),
        Method(
            "eigencam",
            "cam",
            "cam",
            "Eigen-CAM",
            "Muhammad & Yeasin 2020",
            unit="first principal component of the activations",
            layered=True,
            intro=(
                "<b>Eigen-CAM</b> (Muhammad &amp; Yeasin 2020): no gradient and no class — the layer's activations "
                "projected on their first principal component (what varies most across positions). It shows what the "
                "layer attends to, the same map for every class."
            ),
        ),
        Method(
            "guided_backprop",
            "guided",
            "guided",
            "Guided backprop",
            "Springenberg et al. 2015",
            unit="guided |∂S/∂x|",
            clipped=True,
            intro=(
                "<b>Guided backprop</b> (Springenberg et al. 2015) changes the backward rule of every ReLU: the signal "
                "passes only where the forward input was positive <i>and</i> the gradient is positive (the deconvnet's "
                "'un-ReLU' combined with the ordinary one). Sharp, image-like maps — but the sanity check below shows "
                "they barely depend on the weights of the top layers."
            ),
        ),
        Method(
            "guided_gradcam",
            "guided",
            "guided",
            "Guided Grad-CAM",
            "Selvaraju et al. 2017",
            unit="guided backprop × Grad-CAM",
            clipped=True,
            layered=True,
            intro=(
                "<b>Guided Grad-CAM</b>: guided backprop ⊙ the upsampled Grad-CAM — fine detail, restricted to the "
                "class-discriminative region."
            ),
        ),
        Method(
            "augmented_gradcam",
            "augmented",
            "cam",
            "Augmented Grad-CAM",
            "Morbidelli et al. 2020",
            unit="super-resolved Grad-CAM (score units)",
            layered=True,
            intro=(
                "<b>Augmented Grad-CAM</b> (Morbidelli et al. 2020): Grad-CAM is coarse (7×7 for this network). "
                "Show the network L randomly rotated and shifted copies of the image; each gives a low-resolution "
                "map g<sub>l</sub>, modelled as the same high-resolution map h, moved by the known augmentation "
                "A<sub>l</sub> and down-sampled by D. Recover h from the inverse problem argmin<sub>h</sub> ½ "
                "Σ<sub>l</sub> ‖D(A<sub>l</sub>(h)) − g<sub>l</sub>‖² + λ TV<sub>ℓ1</sub>(h) + (μ/2)‖h‖², solved "
                "by (sub)gradient descent; the anisotropic total variation keeps edges."
            ),
        ),
        Method(
            "ablation_cam",
            "cam_ablation",
            "cam",
            "Ablation-CAM",
            "Desai & Ramaswamy 2020",
            unit="ReLU(Σ w·A), w = relative score drop",
            layered=True,
            intro=(
                "<b>Ablation-CAM</b> (Desai &amp; Ramaswamy 2020): weigh each channel A<sub>k</sub> of the layer "
                "by how much the class score drops when the channel is set to zero, w<sub>k</sub> = (S<sub>c</sub> "
                "− S<sub>c</sub><sup>(k)</sup>)/S<sub>c</sub>, and draw ReLU(Σ<sub>k</sub> w<sub>k</sub> "
                "A<sub>k</sub>). No gradient. Before a global-average-pool + linear head the drop is exactly "
                "w<sub>k</sub><sup>c</sup> · mean(A<sub>k</sub>); elsewhere only the layers after the tapped one "
                "run again."
            ),
        ),
        Method(
            "score_cam",
            "cam_ablation",
            "cam",
            "Score-CAM",
            "Wang et al. 2020",
            unit="ReLU(Σ w·A), w = softmax of masked scores",
            layered=True,
            intro=(
                "<b>Score-CAM</b> (Wang et al. 2020): mask the image with each channel's activation map "
                "(upsampled, scaled to [0, 1]), score each masked image, and weigh the channels by the softmax of "
                "those scores. No gradient; one forward per channel."
            ),
        ),
    )
}


def lookup(name: str) -> Method | None:
    """The record of a method, or None for a name that is neither registered nor ``captum:<Class>``."""
    try:
        return method_info(name)
    except ValueError:
        return None


def method_info(name: str) -> Method:
    """The record of a method; ``captum:<Class>`` gives a bridged record (Captum runs the method).

    >>> method_info("gradcam").title
    'Grad-CAM'
    >>> method_info("captum:DeepLift").origin
    'bridged'
    """
    if name in REGISTRY:
        return REGISTRY[name]
    if name.startswith("captum:") and name != "captum:":
        return _bridged(name.split(":", 1)[1])
    known = ", ".join(m.cli_name for m in REGISTRY.values())
    raise ValueError(f"unknown attribution method {name!r}; choose from {known} or captum:<Class>")


@functools.lru_cache(maxsize=64)
def _bridged(cls: str) -> Method:
    """The record of a Captum class run through cnnlens' bridge (whether it takes a layer is read once)."""
    name = f"captum:{cls}"

    def call(model, x, **kw):
        return _bridge().captum(model, x, cls, **kw)

    return Method(
        name,
        "bridge",
        "captum",
        f"{cls} (Captum)",
        "see Captum's documentation",
        origin="bridged",
        signed=True,
        layered=_captum_takes_layer(cls),
        call=call,
        intro=(
            f"<b>{html.escape(cls)}</b>, computed by Captum (<code>captum.attr.{html.escape(cls)}"
            "</code>) through cnnlens's bridge: the attributions summed over colour channels, scored "
            "for faithfulness like every other map."
        ),
    )


def _bridge():
    """``cnnlens.attribution.bridge``, loaded by name as :attr:`Method.fn` loads every method's module: the
    registry sits below the methods (the drawing layer reads it) and never imports them."""
    return importlib.import_module("cnnlens.attribution.bridge")


def _captum_takes_layer(cls: str) -> bool:
    bridge = _bridge()
    try:
        return "layer" in inspect.signature(bridge.captum_class(cls).__init__).parameters
    except (ImportError, ValueError, TypeError):
        return False


def title_of(method: str) -> str:
    """The display name of a method (``captum:DeepLift`` → ``DeepLift (Captum)``)."""
    m = lookup(method)
    return m.title if m else method


def intro_of(method: str) -> str:
    """The lesson shown above a method's maps (a short line for a bridged Captum class)."""
    m = lookup(method)
    return m.intro if m else ""


def is_signed(method: str) -> bool:
    """Whether a map's sign means something (a diverging colour map centred at 0)."""
    m = lookup(method)
    return bool(m and m.signed)
