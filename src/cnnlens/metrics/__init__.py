"""How far to trust a map: the standard metrics of the explanation-evaluation literature.

Every metric returns a :class:`MetricResult` (one score per map, NaN where
undefined; ``.aggregate()`` gives the mean with a 95 % t interval) and equals
Quantus 0.6 (the reference implementation) on the same maps, model and
settings — the tests check each to 1e-4; where Quantus has a quirk the
docstring says what cnnlens does instead.

=============================  =========================================  ======  =============================
metric                         question                                   better  paper
=============================  =========================================  ======  =============================
``pointing_game``              is the map's maximum in the box?           higher  Zhang et al. 2018
``relevance_mass_accuracy``    share of the map's mass in the box         higher  Arras et al. 2022
``relevance_rank_accuracy``    share of the top-|box| pixels in the box   higher  Arras et al. 2022
``faithfulness_correlation``   does mass on a subset predict its effect?  higher  Bhatt et al. 2020
``road`` (MoRF / LeRF)         removing relevant pixels kills the class?  lower / higher  Rong et al. 2022
``max_sensitivity``            how much the map moves under noise         lower   Yeh et al. 2019
``model_parameter_randomisation``  does the map change with the weights?  lower   Adebayo et al. 2018
``localisation_iou``           IoU of the box cut from the map            higher  Zhou et al. 2016
``localisation_accuracy``      share of boxes with IoU ≥ 0.5 (ILSVRC)     higher  Zhou et al. 2016
``segmentation_iou``           IoU of the map-seeded GrabCut mask         higher  Simonyan et al. 2014
=============================  =========================================  ======  =============================

Deletion / insertion AUC (Petsiuk et al. 2018) are :func:`cnnlens.attribution.deletion`
and :func:`~cnnlens.attribution.insertion`; :func:`benchmark` scores every method on every
metric (a :class:`Leaderboard`), :func:`sanity_check` runs Adebayo et al.'s cascade for several
methods. The localisation metrics need a
ground truth: ``boxes`` (N×4 x0, y0, x1, y1 in pixels, end exclusive) or
``masks`` (N×H×W); ``cnnlens.data.cluttered_digits()`` provides both.

>>> from cnnlens import metrics, attribution
>>> e = attribution.gradcam(model, x)                                       # doctest: +SKIP
>>> metrics.pointing_game(e, boxes=ds.boxes[:8]).aggregate()              # doctest: +SKIP
"""

from __future__ import annotations

from .benchmark import Leaderboard, benchmark  # noqa: E402  (the module stays importable as cnnlens.metrics.benchmark)
from .faithfulness import ROAD_PERCENTAGES, faithfulness_correlation, noisy_linear_imputation, road
from .localisation import pointing_game, relevance_mass_accuracy, relevance_rank_accuracy
from .objects import box_from_map, box_iou, localisation_accuracy, localisation_iou, mask_iou, segmentation_iou
from .randomisation import model_parameter_randomisation
from .result import Aggregate, MetricResult, aggregate
from .robustness import max_sensitivity
from .sanity import SANITY_METHODS, SanityCheck, sanity_check

__all__ = [
    "Aggregate",
    "MetricResult",
    "ROAD_PERCENTAGES",
    "aggregate",
    "faithfulness_correlation",
    "max_sensitivity",
    "model_parameter_randomisation",
    "noisy_linear_imputation",
    "pointing_game",
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
    "road",
    "box_from_map",
    "box_iou",
    "localisation_iou",
    "localisation_accuracy",
    "mask_iou",
    "segmentation_iou",
    "SANITY_METHODS",
    "SanityCheck",
    "sanity_check",
    "Leaderboard",
    "benchmark",
]
