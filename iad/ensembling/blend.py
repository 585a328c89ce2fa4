"""Blending members' predictions: a weighted mean of probabilities, or of per-column normalised ranks.

A rank blend ranks each series against the others, so it needs the whole population at once; it is an
OOF analysis tool. The spec a predictor loads always blends probabilities (`blend: mean`).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

BLEND_METHODS = ("mean", "rank")


def normalised_ranks(predictions: np.ndarray) -> np.ndarray:
    """Per column, each row's average rank divided by the number of rows (in (0, 1]; ties share a rank)."""
    return rankdata(predictions, axis=-2) / predictions.shape[-2]


def blend_inputs(members: np.ndarray, method: str) -> np.ndarray:
    """The K x N x L matrices a blend averages: the predictions themselves, or their normalised ranks."""
    if method not in BLEND_METHODS:
        raise ValueError(f"unknown blend {method!r}; expected one of {BLEND_METHODS}")
    return normalised_ranks(members) if method == "rank" else members


def blend_predictions(members: np.ndarray, weights: np.ndarray, method: str = "mean") -> np.ndarray:
    """Weighted blend of K x N x L member predictions with K weights (summing to 1): N x L."""
    members, weights = np.asarray(members, dtype=float), np.asarray(weights, dtype=float)
    if members.ndim != 3 or weights.shape != (members.shape[0],):
        raise ValueError(f"{weights.shape} weights for members of shape {members.shape}")
    return np.tensordot(weights, blend_inputs(members, method), axes=1)
