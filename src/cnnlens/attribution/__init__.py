"""Why this prediction: attribution maps and how faithful they are.

Every method is ``method(model, x, target="predicted", **settings) -> Explanation``
for any ``nn.Module`` mapping N×C×H×W pixels in [0, 1] to N×K logits:

==========================  ===============================================================
``saliency``                ∂S_c/∂x, max |·| over channels (Simonyan et al. 2014)
``smoothgrad``              saliency averaged over noisy copies (Smilkov et al. 2017)
``gradient_x_input``        x ⊙ ∂S_c/∂x
``integrated_gradients``    path integral from a baseline, with the completeness gap
``occlusion``               logit drop / probability map under a sliding patch (Zeiler & Fergus)
``cam``                     Σ_k w_k^c f_k for a GAP + linear head (Zhou et al. 2016)
``gradcam``/``gradcam_pp``  ReLU(Σ_k α_k A^k) at any layer (Selvaraju et al. 2017; Grad-CAM++)
``xgradcam``                α_k = Σ_ij A_ij G_ij / Σ_ij A_ij (Fu et al. 2020)
``hirescam``                ReLU(Σ_k G^k ⊙ A^k) (Draelos & Carin 2020)
``layercam``                ReLU(Σ_k ReLU(G^k) ⊙ A^k), fused over layers (Jiang et al. 2021)
``eigencam``                first principal component of the activations (Muhammad & Yeasin 2020)
``guided_backprop``         the ReLU backward rule overridden (Springenberg et al. 2015)
``guided_gradcam``          guided backprop ⊙ Grad-CAM
``augmented_gradcam``       super-resolved Grad-CAM from augmented copies (Morbidelli et al. 2020)
``ablation_cam``            channels weighted by the score drop when zeroed (Desai & Ramaswamy 2020)
``score_cam``               channels weighted by the score of the input masked by them (Wang et al. 2020)
``segment``                 a map → an object mask: GrabCut seeded by the map (Simonyan et al. 2014 §3)
==========================  ===============================================================

Common settings: ``target`` (index, list/tensor per sample, "predicted", "second", "true"
with ``y=labels``, a class name, or a ``Target.channel``/``Target.neuron`` for the gradient
methods, occlusion and Grad-CAM), ``layer`` (CAM family; default: the last spatial layer,
logged), ``batch_size`` (images per forward for the methods that run several; default automatic),
``channels_last`` (all but CAM; default: on for image-sized inputs),
``progress(done, total)``. Inputs in float16/bfloat16 are computed in the model's dtype
(float32); results are float32 on the CPU; an all-zero map is flagged in
``extras["empty"]``, never NaN; a map constant over the image (it shows no location) is
flagged in ``extras["constant_map"]`` and logged as a warning. The model is never changed: LayerTap restores it, also
when the model raises.

``captum(model, x, "DeepLift")`` runs any Captum attribution class (DeepLift, GradientShap,
LRP, Lime, KernelShap, FeatureAblation, ...) and returns an Explanation (``pip install
'cnnlens[captum]'``).

``explain_images(model, x, methods)`` runs several methods and scores them in one call (an
``ExplainRun``: maps, faithfulness, failures, timings, top-k), what ``cnnlens explain`` shows.

``faithfulness`` / ``deletion`` / ``insertion`` (Petsiuk et al. 2018) and
``randomization_check`` (Adebayo et al. 2018) measure how much a map can be trusted.

>>> import cnnlens
>>> model = cnnlens.load_model("digits-cnn")                      # doctest: +SKIP
>>> e = cnnlens.attribution.gradcam(model, x, target="second")    # doctest: +SKIP
"""

from __future__ import annotations

from ..registry import REGISTRY, Method, method_info
from .augmented import augmented_gradcam, random_affines, superresolve
from .bridge import captum
from .cam import cam, eigencam, gradcam, gradcam_pp, hirescam, layercam, xgradcam
from .cam_ablation import ablation_cam, score_cam
from .explain import ExplainRun, explain_images
from .faithfulness import Curve, Faithfulness, Randomization, deletion, faithfulness, insertion, randomization_check
from .gradients import gradient_x_input, integrated_gradients, saliency, smoothgrad
from .guided import guided_backprop, guided_gradcam
from .occlusion import occlusion
from .segment import segment

#: every attribution method by name (``-`` in CLI names maps to ``_``); what is known of each: ``REGISTRY``
METHODS = {name: m.fn for name, m in REGISTRY.items()}

__all__ = [
    "METHODS",
    "REGISTRY",
    "Method",
    "method_info",
    "ExplainRun",
    "explain_images",
    "Curve",
    "Faithfulness",
    "Randomization",
    "ablation_cam",
    "augmented_gradcam",
    "cam",
    "captum",
    "deletion",
    "eigencam",
    "faithfulness",
    "gradcam",
    "gradcam_pp",
    "gradient_x_input",
    "guided_backprop",
    "guided_gradcam",
    "hirescam",
    "insertion",
    "integrated_gradients",
    "layercam",
    "occlusion",
    "random_affines",
    "randomization_check",
    "saliency",
    "score_cam",
    "segment",
    "smoothgrad",
    "superresolve",
    "xgradcam",
]
