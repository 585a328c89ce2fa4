"""The competition metric: weighted multilabel ROC-AUC (present weighs 13, each location 1, over 26)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from iad.labels import LABEL_COLS, MODALITY_COL, PRESENT_COL
from iad.metrics import auc_report, per_label_auc, weighted_auc

PRESENT = LABEL_COLS.index(PRESENT_COL)
LOCATIONS = [j for j in range(len(LABEL_COLS)) if j != PRESENT]


def _random_case(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_true = (rng.random((n, 14)) < 0.3).astype(int)
    y_pred = np.clip(y_true * 0.3 + rng.random((n, 14)), 0, None)  # better than chance, not perfect
    return y_true, y_pred


def test_weighted_auc_matches_the_formula():
    y_true, y_pred = _random_case()
    auc = [roc_auc_score(y_true[:, j], y_pred[:, j]) for j in range(14)]
    expected = (13 * auc[PRESENT] + sum(auc[j] for j in LOCATIONS)) / 26
    assert weighted_auc(y_true, y_pred) == pytest.approx(expected, abs=1e-12)


def test_one_class_column_is_skipped_and_weights_renormalised():
    y_true, y_pred = _random_case(seed=1)
    empty = LABEL_COLS.index("Left Anterior Cerebral Artery")
    y_true[:, empty] = 0
    scored = [j for j in LOCATIONS if j != empty]
    expected = (
        13 * roc_auc_score(y_true[:, PRESENT], y_pred[:, PRESENT])
        + sum(roc_auc_score(y_true[:, j], y_pred[:, j]) for j in scored)
    ) / 25
    assert weighted_auc(y_true, y_pred) == pytest.approx(expected, abs=1e-12)
    aucs = per_label_auc(y_true, y_pred)
    assert math.isnan(aucs["Left Anterior Cerebral Artery"])
    assert sum(math.isnan(v) for v in aucs.values()) == 1


def test_perfect_predictions_score_one():
    y_true, _ = _random_case(seed=2)
    assert weighted_auc(y_true, y_true.astype(float)) == 1.0


def test_divides_by_26_not_14():
    y_true, _ = _random_case(seed=3)
    y_pred = np.full(y_true.shape, 0.5)  # constant: AUC 0.5 for every location
    y_pred[:, PRESENT] = y_true[:, PRESENT]  # perfect: AUC 1 for present
    assert weighted_auc(y_true, y_pred) == pytest.approx((13 * 1.0 + 13 * 0.5) / 26)  # 0.75
    assert weighted_auc(y_true, y_pred) != pytest.approx((13 * 1.0 + 13 * 0.5) / 14)


def test_nan_when_no_column_has_two_classes():
    y_true = np.zeros((10, 14), dtype=int)
    assert math.isnan(weighted_auc(y_true, np.random.default_rng(0).random((10, 14))))


def test_dataframes_are_matched_by_column_name():
    y_true, y_pred = _random_case(seed=4)
    shuffled = list(reversed(LABEL_COLS))
    true_df = pd.DataFrame(y_true, columns=list(LABEL_COLS))[shuffled]
    pred_df = pd.DataFrame(y_pred, columns=list(LABEL_COLS))[shuffled]
    assert weighted_auc(true_df, pred_df) == weighted_auc(y_true, y_pred)


@pytest.mark.parametrize(
    "y_true, y_pred, problem",
    [
        (np.zeros((4, 13)), np.zeros((4, 13)), "expected shape"),
        (np.zeros((4, 14)), np.zeros((5, 14)), "differ in shape"),
        (np.zeros((4, 14)), np.full((4, 14), np.nan), "NaN"),
        (pd.DataFrame({"a": [0, 1]}), np.zeros((2, 14)), "missing column"),
    ],
)
def test_bad_inputs_raise(y_true, y_pred, problem):
    with pytest.raises(ValueError, match=problem):
        weighted_auc(y_true, y_pred)


def test_auc_report_overall_and_per_modality():
    y_true, y_pred = _random_case(n=300, seed=5)
    pred_cols = [f"pred {c}" for c in LABEL_COLS]
    df = pd.concat([pd.DataFrame(y_true, columns=list(LABEL_COLS)), pd.DataFrame(y_pred, columns=pred_cols)], axis=1)
    df[MODALITY_COL] = np.where(np.arange(300) % 3 == 0, "MRA", "CTA")
    report = auc_report(df, pred_cols, list(LABEL_COLS))
    assert report["n_series"] == 300
    assert report["weighted_auc"] == pytest.approx(weighted_auc(y_true, y_pred))
    assert report["per_label"] == pytest.approx(per_label_auc(y_true, y_pred))
    assert set(report["by_group"]) == {"CTA", "MRA"}
    mra = df[MODALITY_COL] == "MRA"
    assert report["by_group"]["MRA"]["n_series"] == mra.sum()
    assert report["by_group"]["MRA"]["weighted_auc"] == pytest.approx(weighted_auc(y_true[mra], y_pred[mra]))
    assert "by_group" not in auc_report(df, pred_cols, list(LABEL_COLS), group_col=None)


def test_auc_report_checks_columns():
    df = pd.DataFrame(np.zeros((3, 14)), columns=list(LABEL_COLS))
    with pytest.raises(ValueError, match="missing column"):
        auc_report(df, list(LABEL_COLS), list(LABEL_COLS))  # no Modality column
    with pytest.raises(ValueError, match="length"):
        auc_report(df, list(LABEL_COLS)[:13], list(LABEL_COLS), group_col=None)
