"""Blend weights that maximise the OOF weighted AUC, and a nested cross-validation estimate of them.

The weighted AUC is piecewise constant in the weights: its gradient is zero almost everywhere, and a
smooth surrogate (sigmoid-smoothed pairwise AUC) costs O(positives x negatives) per evaluation and
moves the optimum with its bandwidth. With a handful of members a direct search on the exact metric
is cheap instead (one ranking per label column per evaluation), so the search is:

- starts: the best single member, equal weights, and `random_starts` Dirichlet(1) draws (seeded);
- each start is refined by pairwise weight transfer: move `step` of weight from one member to
  another when that raises the score; `step` halves from 1/4 down to 1/64 once no move helps.

Every candidate stays on the simplex (weights >= 0, summing to 1), a useless member can reach
exactly 0, the result scores at least as high as the best single member and as equal weights, and
it is deterministic for a seed.
"""

from __future__ import annotations

from itertools import permutations

import numpy as np
from scipy.stats import rankdata

from iad.ensembling.blend import blend_inputs, blend_predictions
from iad.metrics import label_weights, weighted_auc

OPTIMIZER = "exact weighted AUC; starts: best single, equal, Dirichlet; refined by pairwise weight transfer"
INITIAL_STEP = 0.25
MIN_STEP = 1 / 64
MIN_GAIN = 1e-12  # a move must beat float noise to count as an improvement


class BlendObjective:
    """iad.metrics.weighted_auc of a weighted blend of fixed K x N x 14 inputs (rank-sum AUC, no sklearn)."""

    def __init__(self, inputs: np.ndarray, truth: np.ndarray):
        truth = np.asarray(truth).astype(bool)
        n_positive = truth.sum(axis=0)
        scored = (n_positive > 0) & (n_positive < len(truth))  # a single-class column has no AUC
        if not scored.any():
            raise ValueError("no label column holds both classes: nothing to optimise")
        self.inputs = np.asarray(inputs, dtype=float)[:, :, scored]
        self.positive = truth[:, scored]
        self.n_positive = n_positive[scored]
        self.n_negative = len(truth) - self.n_positive
        column_weights = label_weights()[scored]
        self.column_weights = column_weights / column_weights.sum()

    def __call__(self, weights: np.ndarray) -> float:
        positive_rank_sums = self._positive_rank_sums(np.tensordot(weights, self.inputs, axes=1))
        aucs = (positive_rank_sums - self.n_positive * (self.n_positive + 1) / 2) / (self.n_positive * self.n_negative)
        return float(aucs @ self.column_weights)

    def _positive_rank_sums(self, blended: np.ndarray) -> np.ndarray:
        """Per column, the sum of the positives' ranks (ties share their average rank)."""
        order = np.argsort(blended, axis=0)
        positive_in_order = np.take_along_axis(self.positive, order, axis=0)
        rank_sums = (np.arange(1, len(blended) + 1) @ positive_in_order).astype(float)
        # argsort ranks are exact without ties; rankdata (several times slower) settles tied columns
        tied = (np.diff(np.take_along_axis(blended, order, axis=0), axis=0) == 0).any(axis=0)
        if tied.any():
            rank_sums[tied] = (rankdata(blended[:, tied], axis=0) * self.positive[:, tied]).sum(axis=0)
        return rank_sums


def optimize_weights(members: np.ndarray, truth: np.ndarray, *, method: str = "mean", seed: int = 0,
                     random_starts: int = 4) -> np.ndarray:
    """Non-negative weights summing to 1 that maximise the weighted AUC of the `method` blend of K x N x 14 members."""
    objective = BlendObjective(blend_inputs(members, method), truth)
    n_members = len(members)
    vertices = np.eye(n_members)
    best_single = vertices[int(np.argmax([objective(vertex) for vertex in vertices]))]
    rng = np.random.default_rng(seed)
    starts = [best_single, np.full(n_members, 1 / n_members), *rng.dirichlet(np.ones(n_members), size=random_starts)]
    best_weights, best_score = None, -np.inf
    for start in starts:
        weights, score = _refine(objective, start)
        if score > best_score + MIN_GAIN:
            best_weights, best_score = weights, score
    return best_weights / best_weights.sum()


def _refine(objective: BlendObjective, weights: np.ndarray) -> tuple[np.ndarray, float]:
    """Hill-climb by moving weight between pairs of members, with a halving step."""
    weights, score = weights.copy(), objective(weights)
    step = INITIAL_STEP
    while step >= MIN_STEP:
        improved = True
        while improved:
            improved = False
            for source, target in permutations(range(len(weights)), 2):
                moved = min(step, weights[source])
                if moved <= 0:
                    continue
                candidate = weights.copy()
                candidate[source] -= moved
                candidate[target] += moved
                candidate_score = objective(candidate)
                if candidate_score > score + MIN_GAIN:
                    weights, score, improved = candidate, candidate_score, True
        step /= 2
    return weights, score


def mean_fold_auc(members: np.ndarray, truth: np.ndarray, folds: np.ndarray, weights: np.ndarray, method: str = "mean") -> float:
    """Mean over folds of the weighted AUC of the blend with fixed `weights` (a rank blend is ranked within each fold)."""
    truth, folds = np.asarray(truth), np.asarray(folds)
    return float(np.nanmean([weighted_auc(truth[folds == fold], blend_predictions(members[:, folds == fold], weights, method))
                             for fold in np.unique(folds)]))


def nested_cv(members: np.ndarray, truth: np.ndarray, folds: np.ndarray, names: list[str], *, method: str = "mean",
              seed: int = 0, random_starts: int = 4) -> dict:
    """Score weight optimisation honestly: for each fold, weights fit on the other folds score that fold.

    Returns {"folds": {fold: {"n_series", "weighted_auc", "weights": {name: w}}}, "mean_fold_auc", "pooled_auc"};
    "pooled_auc" scores every fold's held-out blend together. (A rank blend is ranked within each fold.)
    """
    truth, folds = np.asarray(truth), np.asarray(folds)
    fold_ids = np.unique(folds)
    if len(fold_ids) < 2:
        raise ValueError(f"nested cross-validation needs at least 2 folds, got {list(fold_ids)}")
    held_out, per_fold = np.empty(truth.shape), {}
    for fold in fold_ids:
        test = folds == fold
        weights = optimize_weights(members[:, ~test], truth[~test], method=method, seed=seed, random_starts=random_starts)
        held_out[test] = blend_predictions(members[:, test], weights, method)
        per_fold[str(fold)] = {
            "n_series": int(test.sum()),
            "weighted_auc": weighted_auc(truth[test], held_out[test]),
            "weights": dict(zip(names, weights.tolist())),
        }
    return {
        "folds": per_fold,
        "mean_fold_auc": float(np.nanmean([fold["weighted_auc"] for fold in per_fold.values()])),
        "pooled_auc": weighted_auc(truth, held_out),
    }
