"""Looking inside the network: filters, receptive fields, dataset search, activation
maximisation, deconvnet, Deep Dream, neuron statistics, channel influence and concepts (TCAV, network dissection).

    from cnnlens.inside import receptive_field, dataset_search, maximize, objectives
    rf = receptive_field(model, "features.3")                 # size, stride, offset (+ gradient probe)
    top = dataset_search(model, "digits", "features.3", k=9)  # top-9 patches per channel, one scan
    viz = maximize(model, objectives.channel("features.3", [0, 1, 2]) - 0.05 * objectives.tv(), steps=128)

Dataset-level views (:func:`dataset_search`, :func:`neuron_stats`,
:func:`influence` on a dataset) are accumulators of :func:`cnnlens.scanning.scan`,
so they share one forward pass with evaluation and run under ``torchrun``.
"""

from __future__ import annotations

from .deconv import Projection, deconvnet
from .dissect import Dissection, DissectionAccumulator, LayerDissection, dissect
from .dream import Dream, deep_dream
from .filters import FeatureMaps, Filters, feature_maps, filters
from .influence import Influence, InfluenceAccumulator, influence
from .maximize import Objective, Visualization, maximize, objectives, total_variation
from .microscope import (
    BuildingBlocks,
    ChannelViews,
    ClassInfluence,
    LayerScan,
    MicroscopeAccumulator,
    MicroscopeScan,
    UnitProjections,
    building_blocks,
    class_influence,
    layer_edges,
    maximize_channels,
    microscope_scan,
    top_maps,
    unit_projections,
)
from .receptive import ReceptiveField, RFProbe, receptive_field
from .search import SearchAccumulator, SearchResult, dataset_search
from .stats import NeuronStats, StatsAccumulator, neuron_stats
from .tcav import TCAV, tcav

__all__ = [
    "filters",
    "feature_maps",
    "receptive_field",
    "ReceptiveField",
    "dataset_search",
    "SearchResult",
    "maximize",
    "objectives",
    "Objective",
    "deconvnet",
    "deep_dream",
    "neuron_stats",
    "influence",
    "Filters",
    "FeatureMaps",
    "RFProbe",
    "SearchAccumulator",
    "Visualization",
    "Projection",
    "Dream",
    "NeuronStats",
    "StatsAccumulator",
    "Influence",
    "InfluenceAccumulator",
    "total_variation",
    "microscope_scan",
    "MicroscopeScan",
    "MicroscopeAccumulator",
    "LayerScan",
    "layer_edges",
    "maximize_channels",
    "ChannelViews",
    "building_blocks",
    "BuildingBlocks",
    "class_influence",
    "ClassInfluence",
    "top_maps",
    "unit_projections",
    "UnitProjections",
    "tcav",
    "TCAV",
    "dissect",
    "Dissection",
    "DissectionAccumulator",
    "LayerDissection",
]
