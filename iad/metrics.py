"""The competition metric, weighted multilabel ROC-AUC, and per-label / per-modality reports (no torch)."""

from __future__ import annotations

from collections.abc import Sequence
import math

import numpy as np
import pandas as pd

from iad.labels import LABEL_COLS, MODALITY_COL, PRESENT_COL

PRESENT_WEIGHT = 13.0  # each location column weighs 1


def format_auc(value) -> str:
    """An AUC for a report table: 4 decimals, "nan" when there is none."""
    return "nan" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def label_weights(label_cols: Sequence[str] = LABEL_COLS) -> np.ndarray:
    """Metric weight of each column: 13 for "Aneurysm Present", 1 for every location."""
    return np.array([PRESENT_WEIGHT if col == PRESENT_COL else 1.0 for col in label_cols])


def per_label_auc(y_true, y_pred, label_cols: Sequence[str] = LABEL_COLS) -> dict[str, float]:
    """ROC-AUC of each column; NaN for a column whose y_true holds a single class.

    `y_true` / `y_pred`: DataFrames holding `label_cols`, or N x len(label_cols) arrays in that order.
    """
    truth = _matrix(y_true, label_cols, "y_true")
    pred = _matrix(y_pred, label_cols, "y_pred")
    if truth.shape != pred.shape:
        raise ValueError(f"y_true and y_pred differ in shape: {truth.shape} vs {pred.shape}")
    return {col: _auc(truth[:, j], pred[:, j]) for j, col in enumerate(label_cols)}


def weighted_auc(y_true, y_pred, label_cols: Sequence[str] = LABEL_COLS) -> float:
    """Official score: (13 * AUC(present) + sum of the 13 location AUCs) / 26.

    A column whose y_true holds a single class has no AUC: it is left out and the remaining
    weights are renormalised (the score is their weighted mean). NaN when no column has both
    classes.
    """
    return weighted_mean_auc(per_label_auc(y_true, y_pred, label_cols))


def auc_report(
    df: pd.DataFrame,
    pred_cols: Sequence[str],
    true_cols: Sequence[str] = LABEL_COLS,
    group_col: str | None = MODALITY_COL,
    label_cols: Sequence[str] = LABEL_COLS,
) -> dict:
    """Weighted and per-label AUC over all rows of `df` and within each `group_col` value.

    `pred_cols[i]` and `true_cols[i]` hold label `label_cols[i]`. Returns
    {"n_series", "weighted_auc", "per_label": {label: auc}, "by_group": {group: same keys}}
    ("by_group" only when `group_col` is given).
    """
    if not len(pred_cols) == len(true_cols) == len(label_cols):
        raise ValueError(
            f"pred_cols, true_cols and label_cols differ in length: {len(pred_cols)}, {len(true_cols)}, {len(label_cols)}"
        )
    missing = [col for col in (*pred_cols, *true_cols, *([group_col] if group_col else [])) if col not in df]
    if missing:
        raise ValueError(f"auc_report: missing column(s) {missing}")
    report = _scores(df, pred_cols, true_cols, label_cols)
    if group_col is not None:
        report["by_group"] = {
            str(group): _scores(rows, pred_cols, true_cols, label_cols) for group, rows in df.groupby(group_col, sort=True)
        }
    return report


def _scores(df: pd.DataFrame, pred_cols, true_cols, label_cols) -> dict:
    aucs = per_label_auc(df[list(true_cols)].to_numpy(), df[list(pred_cols)].to_numpy(), label_cols)
    return {"n_series": len(df), "weighted_auc": weighted_mean_auc(aucs), "per_label": aucs}


def _auc(truth: np.ndarray, pred: np.ndarray) -> float:
    """ROC-AUC of one column, NaN when `truth` holds a single class."""
    from sklearn.metrics import roc_auc_score  # here, so importing the metric module stays light (inference)

    if len(np.unique(truth)) < 2:
        return float("nan")
    return float(roc_auc_score(truth, pred))


def weighted_mean_auc(aucs: dict[str, float]) -> float:
    """Metric-weighted mean of per-label AUCs ({label: auc}) that exist (not NaN); NaN when none does."""
    values = np.array(list(aucs.values()))
    weights = label_weights(list(aucs))
    scored = ~np.isnan(values)
    if not scored.any():
        return float("nan")
    return float(np.sum(weights[scored] * values[scored]) / np.sum(weights[scored]))


def _matrix(values, label_cols: Sequence[str], name: str) -> np.ndarray:
    """N x len(label_cols) float matrix from a DataFrame (columns picked by name) or an array."""
    if isinstance(values, pd.DataFrame):
        missing = [col for col in label_cols if col not in values.columns]
        if missing:
            raise ValueError(f"{name}: missing column(s) {missing}")
        values = values[list(label_cols)]
    matrix = np.asarray(values, dtype=float)
    if matrix.ndim != 2 or matrix.shape[1] != len(label_cols):
        raise ValueError(f"{name}: expected shape (N, {len(label_cols)}), got {matrix.shape}")
    if np.isnan(matrix).any():
        raise ValueError(f"{name} contains NaN")
    return matrix
