"""The aggregators a Config may name (its `aggregator` field). A new rule is one file and one line here.

Names map to "module:class" within this package, imported only when a run builds
its pipeline, so that `Config` (which takes its allowed names from here) stays
light to import.
"""
from __future__ import annotations

import importlib

AGGREGATORS = {
    "mean": "mean:MeanAggregator",  # FedAvg's n_k / n weighted mean (the default)
    "median": "median:MedianAggregator",  # coordinate-wise median (Yin et al. 2018)
    "trimmed_mean": "trimmed_mean:TrimmedMeanAggregator",  # coordinate-wise trimmed mean (Yin et al. 2018)
    "cosine": "cosine:CosineAggregator",  # n_k exp(cos(update, mean update) / T) weights (this project's design)
    "soft_clip": "soft_clip:SoftClipAggregator",  # Huber weights around the median update (this project's design)
}


def aggregator_class(name: str):
    """The class registered as `name`."""
    module, _, cls = AGGREGATORS[name].partition(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), cls)
