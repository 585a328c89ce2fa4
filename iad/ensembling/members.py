"""Ensemble members: their config, their OOF / prediction files, and aligning those files by series.

A member's `path` is a sweep (or run) folder, whose `oof.csv` is read, or a CSV file itself. An OOF
file (iad.evaluation.oof format) carries the true labels; a prediction file holds only
SeriesInstanceUID and the 14 label columns. The true labels, folds and modalities come from the first
member whose file is an OOF file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
import math
from pathlib import Path
import warnings

import numpy as np
import pandas as pd

from iad.contract import OOF_FILE
from iad.ensembling.spec import tta_settings_problem
from iad.evaluation.oof import ID_COLS, TRUE_COLS, read_oof
from iad.labels import LABEL_COLS, UID_COL

_MAX_LISTED = 5  # series ids quoted in an alignment error


@dataclass(frozen=True)
class EnsembleMember:
    """One model of the ensemble as configured: where its predictions are and how it runs at test time.

    `checkpoints`: the sweep/run folder the predictor loads; by default `path` when it is a folder,
    else the CSV's folder.
    """

    name: str
    path: Path
    weight: float | None = None
    hflip_tta: bool = False
    center_crop: float = 1.0
    checkpoints: Path | None = None

    def __post_init__(self):
        problem = tta_settings_problem(self.hflip_tta, self.center_crop)
        if problem:
            raise ValueError(f"ensemble member {self.name!r}: {problem}")

    @property
    def prediction_file(self) -> Path:
        return self.path / OOF_FILE if self.path.is_dir() else self.path

    @property
    def checkpoint_dir(self) -> Path:
        if self.checkpoints is not None:
            return Path(self.checkpoints).resolve()
        return (self.path if self.path.is_dir() else self.path.parent).resolve()


def parse_members(members: Mapping[str, Mapping]) -> list[EnsembleMember]:
    """Members from the config mapping {name: {path, weight, hflip_tta, center_crop, checkpoints}}."""
    if not members:
        raise ValueError("the ensemble has no members (set ensemble.members)")
    parsed = []
    for name, settings in members.items():
        settings = dict(settings or {})
        if settings.get("path") is None:
            raise ValueError(f"ensemble member {name!r} has no path")
        unknown = set(settings) - ({field.name for field in fields(EnsembleMember)} - {"name"})
        if unknown:
            raise ValueError(f"ensemble member {name!r}: unknown setting(s) {sorted(unknown)}")
        settings["path"] = Path(settings["path"]).expanduser()
        parsed.append(EnsembleMember(name=str(name), **settings))
    return parsed


def member_weights(members: Sequence[EnsembleMember]) -> np.ndarray:
    """The configured weights, normalised to sum to 1 (they are relative)."""
    missing = [m.name for m in members if m.weight is None]
    if missing:
        raise ValueError(f"ensemble member(s) {missing} have no weight (or use ensemble.weights=equal / optimize)")
    weights = np.array([m.weight for m in members], dtype=float)
    if not np.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"member weights must be >= 0 and not all 0, got {dict(zip([m.name for m in members], weights))}")
    return weights / math.fsum(weights)


def read_predictions(path: str | Path) -> pd.DataFrame:
    """Read an OOF file (when it has every true_<label> column) or a prediction file; checks columns and values."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no prediction file {path} (a member's path is a sweep folder with {OOF_FILE} or a CSV)")
    frame = pd.read_csv(path)
    present_true = [col for col in TRUE_COLS if col in frame.columns]
    if present_true:
        if len(present_true) < len(TRUE_COLS):
            raise ValueError(f"{path}: has {len(present_true)} of the {len(TRUE_COLS)} true_<label> columns")
        return read_oof(path)
    missing = [col for col in (UID_COL, *LABEL_COLS) if col not in frame.columns]
    if missing:
        raise ValueError(f"prediction file {path}: missing columns {missing}")
    if frame[UID_COL].duplicated().any():
        raise ValueError(f"prediction file {path}: duplicated {UID_COL} rows")
    if frame[list(LABEL_COLS)].isna().any().any():
        raise ValueError(f"prediction file {path}: empty (NaN) predictions")
    return frame


def _has_truth(frame: pd.DataFrame) -> bool:
    return all(col in frame.columns for col in TRUE_COLS)


@dataclass(frozen=True)
class AlignedPredictions:
    """Members' predictions on one common, ordered set of series.

    `series`: one row per series with ID_COLS and TRUE_COLS; `predictions[name]`: N x 14 array in
    LABEL_COLS order, row i for `series` row i.
    """

    series: pd.DataFrame
    predictions: dict[str, np.ndarray]

    def stacked(self) -> np.ndarray:
        """K x N x 14 array, members in insertion order."""
        return np.stack(list(self.predictions.values()))


def align_members(files: Mapping[str, Path], *, intersect: bool = False) -> AlignedPredictions:
    """Read each member's file and align the rows by SeriesInstanceUID.

    Different series sets raise ValueError naming both files, unless `intersect`: then the series
    every member has are kept (in the truth file's order) with a warning.
    """
    frames = _read_files(files)
    truth_name = next((name for name, frame in frames.items() if _has_truth(frame)), None)
    if truth_name is None:
        raise ValueError(f"no member file carries the true labels (an OOF file with {TRUE_COLS[0]!r}...): {list(files.values())}")
    truth_file, truth = files[truth_name], frames[truth_name]
    uids = _common_series(truth_file, truth, {files[name]: frame for name, frame in frames.items()}, intersect)
    series = truth.set_index(UID_COL).loc[uids].reset_index()[[*ID_COLS, *TRUE_COLS]]
    for name, frame in frames.items():
        if name != truth_name and _has_truth(frame):
            _warn_on_other_truth(series, frame, truth_file, files[name])
    predictions = {name: frame.set_index(UID_COL).loc[uids, list(LABEL_COLS)].to_numpy(float) for name, frame in frames.items()}
    return AlignedPredictions(series=series, predictions=predictions)


def _read_files(files: Mapping[str, Path]) -> dict[str, pd.DataFrame]:
    frames = {}
    for name, path in files.items():
        try:
            frames[name] = read_predictions(path)
        except (OSError, ValueError) as err:
            raise type(err)(f"ensemble member {name!r}: {err}") from err
    return frames


def _common_series(truth_file: Path, truth: pd.DataFrame, frames: Mapping[Path, pd.DataFrame], intersect: bool) -> pd.Index:
    """The truth file's series (in its order) that every file holds; raises or warns when the sets differ."""
    truth_uids = pd.Index(truth[UID_COL])
    common, mismatches = truth_uids, []
    for file, frame in frames.items():
        uids = pd.Index(frame[UID_COL])
        if set(uids) != set(truth_uids):
            mismatches.append(_mismatch(truth_file, truth_uids, file, uids))
            common = common[common.isin(uids)]
    if mismatches and not intersect:
        raise ValueError("; ".join(mismatches) + "; set ensemble.intersect=true to blend the common series only")
    if mismatches:
        warnings.warn("; ".join(mismatches) + f"; keeping the {len(common)} series all members share", stacklevel=3)
    if common.empty:
        raise ValueError(f"the member files share no series: {list(frames)}")
    return common


def _mismatch(file_a: Path, uids_a: pd.Index, file_b: Path, uids_b: pd.Index) -> str:
    only_a, only_b = uids_a.difference(uids_b), uids_b.difference(uids_a)
    parts = [f"{len(only_a)} of {file_a}'s series are missing from it (e.g. {list(only_a[:_MAX_LISTED])})"] if len(only_a) else []
    if len(only_b):
        parts.append(f"it has {len(only_b)} series not in {file_a} (e.g. {list(only_b[:_MAX_LISTED])})")
    return f"member file {file_b} holds other series than {file_a}: " + "; ".join(parts)


def _warn_on_other_truth(series: pd.DataFrame, frame: pd.DataFrame, truth_file: Path, file: Path) -> None:
    """Another OOF file's labels may differ legitimately (e.g. a model trained on cleaned labels): warn."""
    other = frame.set_index(UID_COL).reindex(series[UID_COL])[list(TRUE_COLS)].to_numpy()
    differing = int((other != series[list(TRUE_COLS)].to_numpy()).any(axis=1).sum())
    if differing:
        warnings.warn(f"{file}: true labels differ from {truth_file} on {differing} series; scoring with {truth_file}'s",
                      stacklevel=2)
