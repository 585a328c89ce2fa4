"""Predict a folder of series folders (or one series) into a submission CSV and per-series timings."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from pydicom.misc import is_dicom

from iad.datasets import series_folders
from iad.inference.predictor import TIMING_STAGES, Predictor
from iad.labels import LABEL_COLS, UID_COL
from iad.utils.io import write_csv_atomic

log = logging.getLogger(__name__)

SUBMISSION_FILE = "submission.csv"
TIMINGS_FILE = "timings.csv"
TIMING_COLUMNS = [UID_COL, *(f"{stage}_s" for stage in TIMING_STAGES), "total_s", "fallback"]


class NoSeriesError(ValueError):
    """The input holds no series to predict (or is ambiguous); the message says what was found."""


def series_folders_in(path: str | Path) -> list[Path]:
    """The series of an input folder: the folder itself when it holds DICOM files, else its sub-folders.

    Hidden entries and files without the DICOM preamble are ignored (and logged). Every visible
    sub-folder of a folder of series is a series, readable or not, so it gets a (fallback) row.
    """
    path = Path(path)
    if not path.is_dir():
        raise NoSeriesError(f"input {path} is not a folder")
    visible = [p for p in sorted(path.iterdir()) if not p.name.startswith(".")]
    files = [p for p in visible if p.is_file()]
    dicom_files = [p for p in files if is_dicom(p)]
    folders = list(series_folders(path).values())
    ignored = len(files) - len(dicom_files) + sum(1 for p in path.iterdir() if p.name.startswith("."))
    if dicom_files and folders:
        raise NoSeriesError(f"input {path} is ambiguous: {len(dicom_files)} DICOM files (e.g. {dicom_files[0].name}) "
                            f"next to {len(folders)} sub-folders (e.g. {folders[0].name}); give one series or a "
                            "folder of series folders")
    if dicom_files:
        log.info("input %s: one series of %d DICOM files (%d hidden or non-DICOM entries ignored)", path,
                 len(dicom_files), ignored)
        return [path]
    if not folders:
        raise NoSeriesError(f"input {path} holds no series: no DICOM file and no sub-folder "
                            f"({ignored} hidden or non-DICOM entries ignored)")
    log.info("input %s: a folder of %d series (%d hidden or non-DICOM entries ignored)", path, len(folders), ignored)
    return folders


def predict_folder(predictor: Predictor, input_dir: str | Path, out_dir: str | Path,
                   progress: bool = True) -> pd.DataFrame:
    """Write `submission.csv` (SeriesInstanceUID + 14 columns) and `timings.csv`; never stops on a bad series."""
    from tqdm.auto import tqdm

    rows, timings = [], []
    for folder in tqdm(series_folders_in(input_dir), desc="predicting", unit="series", disable=not progress):
        prediction = predictor.predict_safe(folder)
        rows.append({UID_COL: folder.name, **prediction.probabilities})
        total = sum(prediction.timings.as_dict().values())
        timings.append({UID_COL: folder.name, **prediction.timings.as_dict(), "total_s": round(total, 4),
                        "fallback": prediction.fallback_reason or ""})
    out_dir = Path(out_dir)
    submission = pd.DataFrame(rows, columns=[UID_COL, *LABEL_COLS])
    write_csv_atomic(submission, out_dir / SUBMISSION_FILE, index=False)
    write_csv_atomic(pd.DataFrame(timings, columns=TIMING_COLUMNS), out_dir / TIMINGS_FILE, index=False)
    fallbacks = sum(bool(t["fallback"]) for t in timings)
    log.info("%d series predicted (%d fallback rows) → %s", len(rows), fallbacks, out_dir / SUBMISSION_FILE)
    return submission
