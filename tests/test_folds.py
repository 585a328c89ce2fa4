"""Fold files and fold generation; the atomic writers they rely on (iad.utils.io)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from iad.folds import FOLD_COL, attach_folds, fold_balance, make_folds, read_folds, write_folds
from iad.labels import LABEL_COLS, LOCATION_COLS, MODALITIES, MODALITY_COL, PRESENT_COL, UID_COL, read_series_labels
from iad.utils.io import atomic_write, write_csv_atomic, write_json_atomic

N_FOLDS = 5
# Tolerances for generated folds on the real train.csv. The brief asks for +-0.02 on rates and
# shares; the swap refinement in make_folds reaches about 0.002, so these are set tighter (plain
# iterative stratification misses them: positive rate off by 0.01-0.02 for many seeds).
POSITIVE_RATE_TOL = 0.005
MODALITY_SHARE_TOL = 0.005
LABEL_COUNT_TOL = 2.0  # series per fold, around total / N_FOLDS


@pytest.fixture(scope="module")
def real_labels(rsna_tables) -> pd.DataFrame:
    return read_series_labels(rsna_tables / "train.csv")


@pytest.fixture(scope="module")
def real_folds(real_labels) -> pd.DataFrame:
    return make_folds(real_labels, n_folds=N_FOLDS, seed=42)


@pytest.mark.shared
def test_make_folds_is_deterministic_per_seed(real_labels, real_folds):
    pd.testing.assert_frame_equal(make_folds(real_labels, n_folds=N_FOLDS, seed=42), real_folds)
    other = make_folds(real_labels, n_folds=N_FOLDS, seed=7)
    assert (other[FOLD_COL] != real_folds[FOLD_COL]).mean() > 0.5


@pytest.mark.shared
def test_make_folds_covers_every_series_once_in_input_order(real_labels, real_folds):
    assert real_folds[UID_COL].tolist() == real_labels[UID_COL].tolist()
    assert set(real_folds[FOLD_COL]) == set(range(N_FOLDS))
    sizes = real_folds[FOLD_COL].value_counts()
    assert sizes.max() - sizes.min() <= 1


@pytest.mark.shared
@pytest.mark.parametrize("seed", [42, 7])
def test_make_folds_balance(real_labels, seed):
    folds = make_folds(real_labels, n_folds=N_FOLDS, seed=seed)
    df = real_labels.assign(fold=folds[FOLD_COL].to_numpy())
    for _, rows in df.groupby("fold"):
        assert abs(rows[PRESENT_COL].mean() - df[PRESENT_COL].mean()) <= POSITIVE_RATE_TOL
        for modality in MODALITIES:
            share, overall = (rows[MODALITY_COL] == modality).mean(), (df[MODALITY_COL] == modality).mean()
            assert abs(share - overall) <= MODALITY_SHARE_TOL, modality
        deviation = rows[list(LOCATION_COLS)].sum() - df[list(LOCATION_COLS)].sum() / N_FOLDS
        assert deviation.abs().max() <= LABEL_COUNT_TOL, deviation.to_dict()


@pytest.mark.shared
def test_reference_fold_file(rsna_tables, real_labels):
    folds = read_folds(rsna_tables / "train_kfold.csv")
    assert set(folds[UID_COL]) == set(real_labels[UID_COL]) and len(folds) == len(real_labels)
    sizes = folds[FOLD_COL].value_counts()
    assert sorted(sizes.index) == list(range(N_FOLDS))
    assert sizes.min() >= 869 and sizes.max() <= 870


def _toy_labels(n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    locations = (rng.random((n, len(LOCATION_COLS))) < 0.08).astype(int)
    df = pd.DataFrame(locations, columns=list(LOCATION_COLS))
    df[PRESENT_COL] = locations.max(axis=1)
    df.insert(0, UID_COL, [f"1.2.{i}" for i in range(n)])
    df.insert(1, MODALITY_COL, [MODALITIES[i % len(MODALITIES)] for i in range(n)])
    return df


def test_make_folds_on_a_small_table():
    labels = _toy_labels()
    folds = make_folds(labels, n_folds=4, seed=0)
    assert folds[UID_COL].tolist() == labels[UID_COL].tolist()
    assert folds[FOLD_COL].value_counts().to_dict() == {0: 15, 1: 15, 2: 15, 3: 15}


def test_fold_balance_matches_a_hand_count():
    labels = _toy_labels(8)
    folds = pd.DataFrame({UID_COL: labels[UID_COL], FOLD_COL: [0, 0, 0, 1, 1, 1, 1, 1]})
    balance = fold_balance(labels, folds)
    assert balance["n_series"].tolist() == [3, 5]
    first = labels.iloc[:3]
    assert balance.loc[0, "positive_rate"] == first[PRESENT_COL].mean()
    assert balance.loc[0, "CTA share"] == 1 / 3
    assert balance.loc[1, "MRI T1post share"] == 2 / 5  # rows 3 and 7 (modalities cycle by row)
    assert balance.loc[0, list(LABEL_COLS)].tolist() == first[list(LABEL_COLS)].sum().tolist()


def test_attach_folds_requires_every_series(tmp_path):
    labels = _toy_labels(6)
    folds = pd.DataFrame({UID_COL: [*labels[UID_COL][:5], "extra"], FOLD_COL: [0, 1, 2, 0, 1, 2]})
    with pytest.raises(ValueError, match=r"1 of 6 series have no fold.*1\.2\.5"):
        attach_folds(labels, folds)
    attached = attach_folds(labels.iloc[:5], folds)
    assert attached[FOLD_COL].tolist() == [0, 1, 2, 0, 1]


def test_write_and_read_folds_round_trip(tmp_path):
    folds = pd.DataFrame({UID_COL: ["a", "b", "c"], FOLD_COL: [2, 0, 1]})
    path = tmp_path / "sub" / "folds.csv"
    write_folds(folds, path)
    pd.testing.assert_frame_equal(read_folds(path), folds)


@pytest.mark.parametrize(
    "table, problem",
    [
        ({UID_COL: ["a", "b"]}, "missing column"),
        ({"uid": ["a", "b"], FOLD_COL: [0, 1]}, "missing column"),
        ({UID_COL: ["a", "a"], FOLD_COL: [0, 1]}, "more than once"),
        ({UID_COL: ["a", "b"], FOLD_COL: [0, 1.5]}, "integers"),
        ({UID_COL: ["a", "b"], FOLD_COL: [0, "x"]}, "integers"),
        ({UID_COL: ["a", "b"], FOLD_COL: [0, None]}, "integers"),
        ({UID_COL: ["a", "b"], FOLD_COL: [0, -1]}, "integers"),
    ],
)
def test_read_folds_rejects_bad_files(tmp_path, table, problem):
    path = tmp_path / "folds.csv"
    pd.DataFrame(table).to_csv(path, index=False)
    with pytest.raises(ValueError, match=f"folds.csv.*{problem}"):
        read_folds(path)


# --- iad.utils.io ------------------------------------------------------------------------------


def test_atomic_write_failure_leaves_no_file(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), atomic_write(target) as handle:
        handle.write("partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_failure_keeps_existing_target(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_write(target, "wb") as handle:
        handle.write(b"new")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_write_replaces_target_with_plain_permissions(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_write(target) as handle:
        handle.write("new")
    assert target.read_text() == "new"
    assert target.stat().st_mode & 0o044  # readable by others as with open(), not mkstemp's 0600
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_helpers_write_csv_json_npy(tmp_path):
    df = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    write_csv_atomic(df, tmp_path / "t.csv")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "t.csv"), df)
    report = {"auc": np.float64(0.5), "n": np.int64(3), "nan": float("nan"), "v": np.arange(2)}
    write_json_atomic(report, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == {"auc": 0.5, "n": 3, "nan": None, "v": [0, 1]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "t.csv"]
