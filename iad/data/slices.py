"""Slice tables for 2.5D training and validation (pandas/numpy only, no torch).

A *series table* has one row per series (uid, modality, fold, the 14 labels, slice count, crop
box); an *item table* has one row per sample (series row, slice index).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from iad.labels import LABEL_COLS, MODALITY_COL, PRESENT_COL, UID_COL

SERIES_COL = "series"  # row of the series table an item belongs to
SLICE_COL = "z"
BACKGROUND_COL = "background"  # a slice of a positive series far from its aneurysms: trained with all labels 0
SLICE_MM_COL = "slice_mm"  # slice spacing of a series (mm), in the series table


def positive_slices(localizers: pd.DataFrame, boxes: pd.DataFrame | None, n_slices: int, window: int) -> np.ndarray:
    """Slices of one positive series that show an aneurysm.

    Boxed slices when the series has boxes (the reference's hand-drawn boxes mark exactly where the
    aneurysm is visible), else every slice within `window` of a localizer slice.
    """
    if boxes is not None and len(boxes):
        z = boxes["slice_index"].to_numpy()
    elif len(localizers):
        centres = localizers["slice_index"].to_numpy()
        z = (centres[:, None] + np.arange(-window, window + 1)[None, :]).ravel()
    else:
        return np.empty(0, dtype=np.int64)
    return np.unique(np.clip(z, 0, n_slices - 1)).astype(np.int64)


def train_items(series: pd.DataFrame, localizers: pd.DataFrame, boxes: pd.DataFrame | None,
                window: int, background_mm: float | None = None) -> pd.DataFrame:
    """Every slice of negative series; only aneurysm slices of positive series (as the reference).

    With `background_mm`, slices of a positive series at least that far (mm, through-plane, needs
    the series table's `slice_mm`) from every aneurysm slice are added as negative items whose
    targets are all 0 (`background` column): the same anatomy without the aneurysm, which keeps a
    model from learning a positive series' look instead of the aneurysm. A positive series with
    neither localizers nor boxes contributes no slice (its label cannot be placed) and is counted in
    the `dropped_positive` attribute of the result.
    """
    by_series_loc = dict(tuple(localizers.groupby(UID_COL))) if len(localizers) else {}
    by_series_box = dict(tuple(boxes.groupby(UID_COL))) if boxes is not None and len(boxes) else {}
    parts, dropped = [], 0
    for row, record in enumerate(series.itertuples(index=False)):
        uid, n_slices = getattr(record, UID_COL), int(record.n_slices)
        if series[PRESENT_COL].iat[row] == 0:
            parts.append(_items(row, np.arange(n_slices), positive=False))
            continue
        z = positive_slices(by_series_loc.get(uid, localizers.iloc[:0]), by_series_box.get(uid), n_slices, window)
        dropped += int(len(z) == 0)
        parts.append(_items(row, z, positive=True))
        if background_mm is not None and len(z):
            distance_mm = np.abs(np.arange(n_slices)[:, None] - z[None, :]).min(axis=1) * float(series[SLICE_MM_COL].iat[row])
            parts.append(_items(row, np.flatnonzero(distance_mm >= background_mm), positive=False, background=True))
    columns = [SERIES_COL, SLICE_COL, "positive", BACKGROUND_COL]
    items = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
    items.attrs["dropped_positive"] = dropped
    return items


def _items(row: int, z: np.ndarray, positive: bool, background: bool = False) -> pd.DataFrame:
    return pd.DataFrame({SERIES_COL: row, SLICE_COL: z, "positive": positive, BACKGROUND_COL: background})


def eval_items(series: pd.DataFrame, stride: int = 1) -> pd.DataFrame:
    """Every `stride`-th slice of each series (always including the last), for series-level evaluation."""
    parts = []
    for row, n_slices in enumerate(series["n_slices"].to_numpy()):
        z = np.unique(np.r_[np.arange(0, n_slices, max(stride, 1)), n_slices - 1])
        parts.append(pd.DataFrame({SERIES_COL: row, SLICE_COL: z}))
    if not parts:
        return pd.DataFrame({SERIES_COL: np.empty(0, np.int64), SLICE_COL: np.empty(0, np.int64)})
    return pd.concat(parts, ignore_index=True)


def series_labels(series: pd.DataFrame) -> np.ndarray:
    """N×14 float32 label matrix in LABEL_COLS order."""
    return series[list(LABEL_COLS)].to_numpy(dtype=np.float32)


def holdout_split(series: pd.DataFrame, n_holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, held-out rows) for full-data training that keeps `n_holdout` series for monitoring.

    The held-out series are drawn stratified by modality and presence so the monitor sees each kind.
    """
    if n_holdout <= 0:
        return np.arange(len(series)), np.empty(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    strata = series[MODALITY_COL].astype(str) + "/" + series[PRESENT_COL].astype(str)
    share = n_holdout / len(series)
    held = []
    for _, rows in series.groupby(strata).indices.items():
        k = int(round(len(rows) * share))
        held.extend(rng.choice(rows, size=min(k, len(rows)), replace=False).tolist())
    held = np.sort(np.asarray(held[:n_holdout], dtype=np.int64))
    return np.setdiff1d(np.arange(len(series)), held), held
