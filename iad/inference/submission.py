"""Predict a folder of series folders (or one series) into a submission CSV and per-series timings."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from iad.datasets import series_folders
from iad.inference.predictor import Predictor
from iad.labels import LABEL_COLS, UID_COL
from iad.utils.io import write_csv_atomic

log = logging.getLogger(__name__)

SUBMISSION_FILE = "submission.csv"
TIMINGS_FILE = "timings.csv"


def series_folders_in(path: str | Path) -> list[Path]:
    """One series folder (it holds files), or every sub-folder of a folder of series."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"input {path} is not a folder")
    if any(p.is_file() for p in path.iterdir()):
        return [path]
    return list(series_folders(path).values())


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
    write_csv_atomic(pd.DataFrame(timings), out_dir / TIMINGS_FILE, index=False)
    fallbacks = sum(bool(t["fallback"]) for t in timings)
    log.info("%d series predicted (%d fallback rows) → %s", len(rows), fallbacks, out_dir / SUBMISSION_FILE)
    return submission
