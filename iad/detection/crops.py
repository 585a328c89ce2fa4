"""The learned brain crop: one rule, used by the crop-table command and by inference (no torch).

Rule (`brain_crop`), on a series' mean image: keep the detections with confidence >= min_confidence;
the strongest of them, if it is a `brain` box, is the crop (source "detector"). Otherwise the crop is
the Otsu head box of the mean image (`iad.data.crops.head_box`, source "head_box") and the reason is
recorded: "no detection" (the detector found nothing), "low confidence" (nothing reached
min_confidence), or "abnormal" (the strongest box says the mean image is not an axial view, where a
brain box would not mean the same thing). Boxes are normalised (x0, y0, x1, y1) as in `iad.data.crops`.

A crop table is written with a sidecar JSON naming the detector (path, SHA-256), min_confidence and
the rule, so training can record which detector its crops came from and inference can run the same one.
"""

from __future__ import annotations

from dataclasses import dataclass
import json
from pathlib import Path

import numpy as np
import pandas as pd

from iad.boxes import BRAIN_CLASSES
from iad.data.crops import CROP_COLS, clip_box, head_box
from iad.labels import UID_COL
from iad.utils.io import write_csv_atomic, write_json_atomic

BRAIN, ABNORMAL = BRAIN_CLASSES
SOURCES = ("detector", "head_box")
FALLBACK_REASONS = ("no detection", "low confidence", "abnormal")
CROP_TABLE_COLS = (UID_COL, *CROP_COLS, "cls", "confidence", "source", "reason")
DEFAULT_MIN_CONFIDENCE = 0.25  # ultralytics' own default prediction threshold
RULE = ("strongest detection with confidence >= min_confidence: its box if its class is 'brain'; "
        "otherwise (no detection, low confidence, 'abnormal') the Otsu head box of the mean image")
SIDECAR_SUFFIX = ".json"
SIDECAR_KEYS = ("detector", "sha256", "min_confidence")  # what a classifier's InputSpec.brain_crop records


@dataclass(frozen=True)
class CropDecision:
    """A series' crop box (normalised), the strongest detection's class and confidence, and where the box came from.

    cls / confidence describe the strongest detection ("" / 0.0 when there is none), also when the
    head box was used; reason is None for a detector box, else one of FALLBACK_REASONS.
    """

    box: tuple[float, float, float, float]
    cls: str
    confidence: float
    source: str
    reason: str | None = None


def brain_crop(detections: np.ndarray, classes, mean_image: np.ndarray, min_confidence: float) -> CropDecision:
    """The crop of one series from its brain detections ((K, 6) rows x0, y0, x1, y1, confidence, class
    index, in mean-image pixels) by the module's rule."""
    rows = np.asarray(detections, dtype=np.float64).reshape(-1, 6)
    if not len(rows):
        return CropDecision(head_box(mean_image), "", 0.0, "head_box", "no detection")
    top = rows[int(np.argmax(rows[:, 4]))]
    cls, confidence = str(classes[int(top[5])]), float(top[4])
    if confidence < min_confidence:
        return CropDecision(head_box(mean_image), cls, confidence, "head_box", "low confidence")
    if cls != BRAIN:
        return CropDecision(head_box(mean_image), cls, confidence, "head_box", ABNORMAL)
    height, width = np.shape(mean_image)[:2]
    box = clip_box(top[:4] / np.array([width, height, width, height]))
    return CropDecision(box, cls, confidence, "detector")


def crop_row(uid: str, decision: CropDecision) -> dict:
    """One crop-table row."""
    return {UID_COL: uid, **dict(zip(CROP_COLS, decision.box)), "cls": decision.cls,
            "confidence": decision.confidence, "source": decision.source, "reason": decision.reason or ""}


def external_crop_table_name(source_name: str) -> str:
    """The crop table name of an external source's volumes, beside the datasets' `<dataset>`."""
    return f"external-{source_name}"


def sidecar_path(table: str | Path) -> Path:
    """The JSON next to a crop table that names its detector."""
    return Path(table).with_suffix(SIDECAR_SUFFIX)


def write_crop_table(rows: list[dict], path: str | Path, detector: str | Path, sha256: str,
                     min_confidence: float) -> Path:
    """Write the crop table CSV and its sidecar JSON, each atomically; returns the table path."""
    path = Path(path)
    write_csv_atomic(pd.DataFrame(rows, columns=list(CROP_TABLE_COLS)), path, index=False)
    write_json_atomic({"detector": str(Path(detector).resolve()), "sha256": sha256,
                       "min_confidence": float(min_confidence), "rule": RULE}, sidecar_path(path))
    return path


def read_sidecar(table: str | Path) -> dict | None:
    """A crop table's detector record ({detector, sha256, min_confidence}), or None without a sidecar."""
    path = sidecar_path(table)
    if not path.exists():
        return None
    try:
        blob = json.loads(path.read_text())
        return {key: blob[key] for key in SIDECAR_KEYS}
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"crop table sidecar {path}: unreadable ({type(err).__name__}: {err})") from err
