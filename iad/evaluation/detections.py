"""Merge a detector sweep: every fold's out-of-fold detections into one file, and a per-fold mAP table."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from iad.contract import CV_FILE, DETECTIONS_FILE, ERROR_FILE, FOLD_PREFIX, RESULT_FILE, YOLO_DIR, fold_runs
from iad.labels import SOP_COL, UID_COL
from iad.utils.io import write_csv_atomic, write_json_atomic

DETECTOR_REPORT = "detector"  # cv.json `kind` of a detector sweep


def is_detector_sweep(sweep_dir: str | Path) -> bool:
    """True when the sweep's folds are detector runs (they write detections.csv, not oof.csv)."""
    return any((run / DETECTIONS_FILE).exists() or (run / YOLO_DIR).is_dir() for run in fold_runs(sweep_dir))


def read_detections(path: str | Path) -> pd.DataFrame:
    """A detections.csv with its ids as text and frame as a nullable integer."""
    frame = pd.read_csv(path, dtype={UID_COL: str, SOP_COL: str})
    frame["frame"] = frame["frame"].astype("Int64")
    return frame


def merge_detection_sweep(sweep_dir: str | Path) -> dict:
    """Concatenate the folds' detections.csv into the sweep's, and write cv.json with each fold's mAP."""
    sweep_dir = Path(sweep_dir)
    frames, folds = [], {}
    for run in fold_runs(sweep_dir):
        result = json.loads((run / RESULT_FILE).read_text()) if (run / RESULT_FILE).exists() else {}
        status = {"complete": bool(result), "failed": (run / ERROR_FILE).exists()}
        if result:
            status.update({key: result.get(key) for key in ("map50", "map50_95", "per_class", "best_epoch")})
        if (run / DETECTIONS_FILE).exists():
            detections = read_detections(run / DETECTIONS_FILE)
            frames.append(detections.assign(fold=run.name.removeprefix(FOLD_PREFIX)))
            status["n_series"] = int(detections[UID_COL].nunique())
        folds[run.name] = status
    if not frames:
        raise FileNotFoundError(f"no fold detections under {sweep_dir}/{FOLD_PREFIX}*/{DETECTIONS_FILE}")
    merged = pd.concat(frames, ignore_index=True)
    done = [f for f in folds.values() if f.get("complete")]
    report = {"kind": DETECTOR_REPORT, "folds": folds, "n_detections": len(merged),
              "n_series": int(merged[UID_COL].nunique()),
              "map50": _mean(f["map50"] for f in done), "map50_95": _mean(f["map50_95"] for f in done)}
    write_csv_atomic(merged, sweep_dir / DETECTIONS_FILE, index=False)
    write_json_atomic(report, sweep_dir / CV_FILE)
    return report


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(sum(values) / len(values), 6) if values else None


def format_detection_report(report: dict) -> str:
    """Per-fold mAP50 / mAP50-95 table (the reference write-up's), and the fold mean."""
    def fmt(value) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    lines = [f"{'':<20}{'mAP50':>8}{'mAP50-95':>10}{'series':>8}"]
    for name, fold in report["folds"].items():
        flag = "" if fold.get("complete") else ("  (failed)" if fold.get("failed") else "  (incomplete)")
        lines.append(f"{name:<20}{fmt(fold.get('map50')):>8}{fmt(fold.get('map50_95')):>10}{fold.get('n_series', 0):>8}{flag}")
    lines.append(f"{'mean of folds':<20}{fmt(report['map50']):>8}{fmt(report['map50_95']):>10}{report['n_series']:>8}")
    return "\n".join(lines)
