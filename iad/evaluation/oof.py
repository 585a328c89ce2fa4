"""The OOF file: one row per held-out series with its predictions and its true labels.

Columns: SeriesInstanceUID, fold, Modality, the 14 label names (predicted probabilities), then
`true_<label>` for the 14 true labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from iad.folds import FOLD_COL
from iad.labels import LABEL_COLS, MODALITY_COL, UID_COL
from iad.metrics import auc_report

TRUE_PREFIX = "true_"
ID_COLS = (UID_COL, FOLD_COL, MODALITY_COL)


def true_col(label: str) -> str:
    return f"{TRUE_PREFIX}{label}"


TRUE_COLS = tuple(true_col(c) for c in LABEL_COLS)


def make_oof(series_info: pd.DataFrame, preds: np.ndarray) -> pd.DataFrame:
    """OOF frame from series info (uid, fold, Modality, 14 true labels by name) and N×14 predictions."""
    truth = series_info[list(ID_COLS)].reset_index(drop=True)
    truth[list(TRUE_COLS)] = series_info[list(LABEL_COLS)].to_numpy(dtype=int)
    return with_predictions(truth, preds)


def with_predictions(series: pd.DataFrame, preds: np.ndarray) -> pd.DataFrame:
    """OOF frame from series rows holding ID_COLS and TRUE_COLS, and N×14 predictions in LABEL_COLS order."""
    preds = np.asarray(preds, dtype=float)
    if preds.shape != (len(series), len(LABEL_COLS)):
        raise ValueError(f"predictions of shape {preds.shape} for {len(series)} series")
    frame = series[list(ID_COLS)].reset_index(drop=True).copy()
    frame[list(LABEL_COLS)] = preds
    frame[list(TRUE_COLS)] = series[list(TRUE_COLS)].to_numpy()
    return frame


def read_oof(path: str | Path) -> pd.DataFrame:
    """Read and check an OOF file (clear error naming the file and the missing columns)."""
    frame = pd.read_csv(path)
    missing = [c for c in (*ID_COLS, *LABEL_COLS, *TRUE_COLS) if c not in frame.columns]
    if missing:
        raise ValueError(f"OOF file {path}: missing columns {missing[:4]}{'...' if len(missing) > 4 else ''}")
    if frame[UID_COL].duplicated().any():
        raise ValueError(f"OOF file {path}: duplicated SeriesInstanceUID rows")
    return frame


def score_oof(frame: pd.DataFrame, pred_cols=LABEL_COLS) -> dict:
    """Weighted AUC overall, per label and per modality of an OOF frame."""
    return auc_report(frame, list(pred_cols), list(TRUE_COLS), group_col=MODALITY_COL)
