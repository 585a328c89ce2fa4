"""Cross-validation folds by series: read, make (multilabel-stratified), check balance (no torch)."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from iad.labels import LABEL_COLS, MODALITIES, MODALITY_COL, PRESENT_COL, UID_COL, validate_series_labels
from iad.utils.io import write_csv_atomic

FOLD_COL = "fold"
N_FOLDS = 5  # the reference's split (train_kfold.csv)


def read_folds(path: str | os.PathLike) -> pd.DataFrame:
    """Read a fold file (SeriesInstanceUID, fold) such as train_kfold.csv and validate it."""
    return validate_folds(pd.read_csv(path), source=str(path))


def validate_folds(df: pd.DataFrame, source: str = "<folds>") -> pd.DataFrame:
    """Return (SeriesInstanceUID, fold int) after checking columns, uniqueness and integer folds >= 0."""
    missing = [col for col in (UID_COL, FOLD_COL) if col not in df.columns]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing}")
    duplicated = df.loc[df[UID_COL].duplicated(), UID_COL].unique()
    if len(duplicated):
        raise ValueError(f"{source}: {len(duplicated)} series appear more than once, e.g. {list(duplicated[:5])}")
    fold = pd.to_numeric(df[FOLD_COL], errors="coerce")
    bad = df.loc[fold.isna() | (fold % 1 != 0) | (fold < 0), FOLD_COL]
    if len(bad):
        raise ValueError(f"{source}: folds must be integers >= 0, found {list(bad.unique()[:5])}")
    return pd.DataFrame({UID_COL: df[UID_COL].to_numpy(), FOLD_COL: fold.astype(int).to_numpy()})


def make_folds(labels: pd.DataFrame, n_folds: int = N_FOLDS, seed: int = 42) -> pd.DataFrame:
    """Assign every series to one of `n_folds` folds, deterministically for `seed`.

    Multilabel-stratified (iterative stratification) on the 14 labels plus one-hot Modality, then
    refined by swapping series between folds (see `_rebalance`): the greedy stratification alone
    leaves whichever labels it handles last (the positive rate, or the commonest location)
    several series off. Returns (SeriesInstanceUID, fold) in the order of `labels`.
    """
    labels = validate_series_labels(labels, source="make_folds labels")
    targets = _stratification_targets(labels)
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold  # pulls in scikit-learn: only when folds are made

    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold = np.empty(len(labels), dtype=int)
    for k, (_, held_out) in enumerate(splitter.split(np.zeros(len(labels)), targets)):
        fold[held_out] = k
    fold = _rebalance(fold, targets, n_folds)
    return pd.DataFrame({UID_COL: labels[UID_COL].to_numpy(), FOLD_COL: fold})


def write_folds(folds: pd.DataFrame, path: str | os.PathLike) -> None:
    """Validate and write (SeriesInstanceUID, fold) as CSV atomically."""
    write_csv_atomic(validate_folds(folds, source=str(path)), path)


def attach_folds(labels: pd.DataFrame, folds: pd.DataFrame) -> pd.DataFrame:
    """`labels` with a `fold` column; ValueError when some series has no fold.

    Series in `folds` but not in `labels` are ignored, so a fold file can serve a subset.
    """
    fold_of = validate_folds(folds).set_index(UID_COL)[FOLD_COL]
    unassigned = labels.loc[~labels[UID_COL].isin(fold_of.index), UID_COL]
    if len(unassigned):
        raise ValueError(f"{len(unassigned)} of {len(labels)} series have no fold, e.g. {list(unassigned[:5])}")
    return labels.assign(**{FOLD_COL: labels[UID_COL].map(fold_of).astype(int).to_numpy()})


def series_with_folds(train_csv: str | os.PathLike, folds_csv: str | os.PathLike, seed: int = 42,
                      require_folds: bool = True) -> pd.DataFrame:
    """The series label table with a `fold` column from `folds_csv` (-1 where a series has none).

    A missing fold file is written first (multilabel-stratified, `seed`), so every stage of a dataset
    splits alike. With `require_folds`, a series the fold file lacks is an error naming the file.
    """
    from iad.labels import read_series_labels

    labels = read_series_labels(train_csv)
    if not os.path.exists(folds_csv):
        write_folds(make_folds(labels, seed=seed), folds_csv)
    merged = labels.merge(read_folds(folds_csv), on=UID_COL, how="left")
    if merged[FOLD_COL].isna().any() and require_folds:
        missing = merged.loc[merged[FOLD_COL].isna(), UID_COL].head(3).tolist()
        raise ValueError(f"fold file {folds_csv} lacks {int(merged[FOLD_COL].isna().sum())} series, e.g. {missing}")
    merged[FOLD_COL] = merged[FOLD_COL].fillna(-1).astype(int)
    return merged


def fold_balance(labels: pd.DataFrame, folds: pd.DataFrame) -> pd.DataFrame:
    """One row per fold: n_series, positive_rate, `<modality> share` columns, per-label positive counts."""
    df = attach_folds(labels, folds)
    grouped = df.groupby(FOLD_COL)
    balance = pd.DataFrame({"n_series": grouped.size(), "positive_rate": grouped[PRESENT_COL].mean()})
    for modality in MODALITIES:
        balance[f"{modality} share"] = (df[MODALITY_COL] == modality).groupby(df[FOLD_COL]).mean()
    return balance.join(grouped[list(LABEL_COLS)].sum())


def _stratification_targets(labels: pd.DataFrame) -> np.ndarray:
    """N x (14 + n_modalities) 0/1 matrix: the labels and the one-hot modality."""
    modality = np.stack([(labels[MODALITY_COL] == name).to_numpy() for name in MODALITIES], axis=1)
    return np.hstack([labels[list(LABEL_COLS)].to_numpy(), modality]).astype(int)


def _rebalance(fold: np.ndarray, targets: np.ndarray, n_folds: int) -> np.ndarray:
    """Swap pairs of series between folds while that lowers the imbalance; fold sizes are kept.

    Imbalance: the sum over folds and target columns of (count in fold - total / n_folds)^2.
    Series with equal target rows are interchangeable, so the search runs over distinct rows
    (patterns) and always swaps the first series of each pattern, which keeps it deterministic.
    """
    fold = fold.copy()
    patterns, pattern_of = np.unique(targets, axis=0, return_inverse=True)
    pattern_of = pattern_of.reshape(-1)
    counts = np.stack([np.bincount(pattern_of[fold == k], minlength=len(patterns)) for k in range(n_folds)])
    deviation = counts @ patterns - targets.sum(axis=0) / n_folds
    # diff[i, j]: change in a fold's target counts when a series of pattern i is replaced by one of j.
    diff = patterns[None, :, :] - patterns[:, None, :]
    swap_cost = 2 * (diff**2).sum(axis=-1)
    while True:
        best_change, best = -1e-9, None
        for a in range(n_folds):
            for b in range(a + 1, n_folds):
                # change[i, j]: imbalance change when a series of pattern i in fold a trades places
                # with one of pattern j in fold b.
                change = 2 * diff @ (deviation[a] - deviation[b]) + swap_cost
                change[counts[a] == 0, :] = np.inf
                change[:, counts[b] == 0] = np.inf
                i, j = np.unravel_index(np.argmin(change), change.shape)
                if change[i, j] < best_change:
                    best_change, best = change[i, j], (a, b, i, j)
        if best is None:
            return fold
        a, b, i, j = best
        fold[np.flatnonzero((fold == a) & (pattern_of == i))[0]] = b
        fold[np.flatnonzero((fold == b) & (pattern_of == j))[0]] = a
        counts[a, i] -= 1
        counts[b, i] += 1
        counts[b, j] -= 1
        counts[a, j] += 1
        deviation[a] += diff[i, j]
        deviation[b] -= diff[i, j]
