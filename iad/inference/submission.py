"""Predict a folder of series folders (or one series) into a submission CSV and per-series timings."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from iad.datasets import NoSeriesError, series_folders_in  # noqa: F401 - NoSeriesError: callers import it here
from iad.inference.predictor import TIMING_STAGES, Predictor
from iad.labels import LABEL_COLS, UID_COL
from iad.utils.io import write_csv_atomic

log = logging.getLogger(__name__)

SUBMISSION_FILE = "submission.csv"
TIMINGS_FILE = "timings.csv"
TIMING_COLUMNS = [UID_COL, *(f"{stage}_s" for stage in TIMING_STAGES), "total_s", "fallback"]


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
