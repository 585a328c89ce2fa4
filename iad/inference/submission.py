"""Predict a folder of series folders (or one series) into a submission CSV and per-series timings, and with
`localize` into findings.csv and a PNG per positive series."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from iad.contract import SUBMISSION_FILE
from iad.datasets import NoSeriesError, series_folders_in  # noqa: F401 - NoSeriesError: callers import it here
from iad.detection.findings import FINDINGS_DIR, FINDINGS_FILE, Finding, findings_frame, write_finding_png
from iad.inference.predictor import TIMING_STAGES, Predictor
from iad.labels import LABEL_COLS, UID_COL
from iad.utils.io import write_csv_atomic

log = logging.getLogger(__name__)

TIMINGS_FILE = "timings.csv"
TIMING_COLUMNS = [UID_COL, *(f"{stage}_s" for stage in TIMING_STAGES), "total_s", "fallback"]


def predict_folder(predictor: Predictor, input_dir: str | Path, out_dir: str | Path,
                   progress: bool = True, localize: bool = False, localize_threshold: float = 0.5) -> pd.DataFrame:
    """Write `submission.csv` (SeriesInstanceUID + 14 columns) and `timings.csv`; never stops on a bad series.

    `localize` also writes `findings.csv` (one row per series) and `findings/<SeriesInstanceUID>.png` for
    each series whose 'Aneurysm Present' probability is at least `localize_threshold` and that has a box.
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    if localize and predictor.localizer is None:
        log.warning("localize: no aneurysm detector loaded (set aneurysm_detector.path, or use a spec or bundle that "
                    "names one); findings.csv gets locations and probabilities without boxes")
    rows, timings, findings = [], [], []
    for folder in tqdm(series_folders_in(input_dir), desc="predicting", unit="series", disable=not progress):
        prediction = predictor.predict_safe(folder, localize=localize)
        if localize:
            findings.append(_keep_finding(prediction.finding, out_dir / FINDINGS_DIR, localize_threshold))
        rows.append({UID_COL: folder.name, **prediction.probabilities})
        total = sum(prediction.timings.as_dict().values())
        timings.append({UID_COL: folder.name, **prediction.timings.as_dict(), "total_s": round(total, 4),
                        "fallback": prediction.fallback_reason or ""})
    submission = pd.DataFrame(rows, columns=[UID_COL, *LABEL_COLS])
    write_csv_atomic(submission, out_dir / SUBMISSION_FILE, index=False)
    write_csv_atomic(pd.DataFrame(timings, columns=TIMING_COLUMNS), out_dir / TIMINGS_FILE, index=False)
    fallbacks = sum(bool(t["fallback"]) for t in timings)
    log.info("%d series predicted (%d fallback rows) → %s", len(rows), fallbacks, out_dir / SUBMISSION_FILE)
    if localize:
        write_csv_atomic(findings_frame(findings), out_dir / FINDINGS_FILE, index=False)
    return submission


def _keep_finding(finding: Finding, png_dir: Path, threshold: float) -> Finding:
    """Write a positive finding's PNG (a failure is logged, never fatal); the finding without its image."""
    if finding.present >= threshold and finding.box is not None:
        try:
            write_finding_png(finding, png_dir / f"{finding.series_uid}.png")
        except Exception as err:  # noqa: BLE001 - a picture must not stop a submission
            log.warning("series %s: no finding PNG (%s: %s)", finding.series_uid, type(err).__name__, err)
    return finding.without_image()
