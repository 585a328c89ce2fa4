"""Where the finding is, per series (no torch): which slices the aneurysm detector sees, how its fold
models' boxes become one detection, and the `Finding` a user reads in `findings.csv` and a PNG.

Slices (`DetectorCost.slices`): "top" (default) runs the detector on the `top_k` slices the
classifiers score highest for "Aneurysm Present" (blended per slice like the series prediction),
each with `neighbours` slices on either side: at most top_k × (2 × neighbours + 1) slices, whatever
the series' length, and the slices the classifiers saw the aneurysm on. "all" runs it on every
`stride`-th slice (the same cost as the classifiers' slice_stride).

Folds: each fold detector scores each slice by its most confident box (0 without one); a slice's
score is the mean over folds, as the classifiers' folds are averaged, so one fold's false positive
counts for 1/k. The finding is the best-scoring slice; its box and class are those of the fold most
confident on it (weighted box fusion would buy little for one box per series), its confidence the
fold mean.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from numbers import Real
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from iad.boxes import XYXY_COLS
from iad.ensembling.spec import ALL_FOLDS
from iad.labels import LOCATION_COLS, PRESENT_COL, SOP_COL, UID_COL
from iad.utils.io import atomic_write

FINDINGS_FILE = "findings.csv"
FINDINGS_DIR = "findings"  # <output>/findings/<SeriesInstanceUID>.png, one per positive series with a box
FINDING_COLUMNS = (UID_COL, "present", "location", "location_probability", SOP_COL, "frame", *XYXY_COLS,
                   "confidence", "class", "slice_index", "reason")
SLICE_MODES = ("top", "all")


@dataclass(frozen=True)
class DetectorCost:
    """What the aneurysm detector spends per series (see the module docstring): the slices it sees
    (`slices` "top": `top_k` best classifier slices ± `neighbours`; "all": every `stride`-th), the
    fold detectors run (`folds`: "all" or indices), the lowest confidence kept (`conf`) and the
    images per forward pass (`batch_size`)."""

    slices: str = "top"
    top_k: int = 4
    neighbours: int = 2
    stride: int = 1
    folds: str | tuple[int, ...] = ALL_FOLDS
    conf: float = 0.05
    batch_size: int = 16

    @classmethod
    def from_settings(cls, settings: Mapping) -> DetectorCost:
        """From a spec entry's (or overrides') keys; unknown keys (e.g. `path`) are ignored; ValueError when invalid."""
        problem = detector_cost_problem(settings)
        if problem:
            raise ValueError(f"aneurysm detector: {problem}")
        chosen = {key: settings[key] for key in cls.__dataclass_fields__ if settings.get(key) is not None}
        if isinstance(chosen.get("folds"), list):
            chosen["folds"] = tuple(chosen["folds"])
        return cls(**chosen)

    def to_dict(self) -> dict:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}


def _count(value, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


_COST_CHECKS = {
    "slices": (lambda v: v in SLICE_MODES, f"must be one of {list(SLICE_MODES)}"),
    "top_k": (lambda v: _count(v, 1), "must be an integer >= 1"),
    "neighbours": (lambda v: _count(v, 0), "must be an integer >= 0"),
    "stride": (lambda v: _count(v, 1), "must be an integer >= 1"),
    "folds": (lambda v: v == ALL_FOLDS or (isinstance(v, (list, tuple)) and len(v) > 0 and all(_count(i, 0) for i in v)),
              f"must be {ALL_FOLDS!r} or a non-empty list of fold indices"),
    "conf": (lambda v: isinstance(v, Real) and not isinstance(v, bool) and 0 <= v < 1, "must be a number in [0, 1)"),
    "batch_size": (lambda v: _count(v, 1), "must be an integer >= 1"),
}


def detector_cost_problem(settings: Mapping) -> str | None:
    """Why the detector cost settings in `settings` are invalid (None: valid; absent or null keys are defaults)."""
    for key, (valid, rule) in _COST_CHECKS.items():
        value = settings.get(key)
        if value is not None and not valid(value):
            return f"{key} {value!r} {rule}"
    return None


def detection_slices(n_slices: int, cost: DetectorCost, scores: np.ndarray | None = None) -> np.ndarray:
    """Sorted slice indices the detector runs on; "top" without any classifier score falls back to "all"."""
    if n_slices <= 0:
        return np.zeros(0, dtype=np.int64)
    scored = None if scores is None else np.flatnonzero(np.isfinite(scores))
    if cost.slices == "all" or scored is None or scored.size == 0:
        return np.arange(0, n_slices, cost.stride)
    # Stable sort on the negated scores: ties keep the lower slice index.
    top = scored[np.argsort(-scores[scored], kind="stable")[:cost.top_k]]
    around = (top[:, None] + np.arange(-cost.neighbours, cost.neighbours + 1)[None, :]).ravel()
    return np.unique(np.clip(around, 0, n_slices - 1))


@dataclass(frozen=True)
class Detection:
    """The strongest detection of a series: its slice, box (x0, y0, x1, y1 in the detector's input pixels),
    fold-mean confidence and class index."""

    slice_index: int
    box: tuple[float, float, float, float]
    confidence: float
    cls: int


def strongest_detection(per_fold: Sequence[Sequence[np.ndarray]], zs: Sequence[int]) -> Detection | None:
    """Fuse fold detectors' outputs (per fold, one (K, 6) array per slice of `zs`: x0, y0, x1, y1, conf, class)."""
    if not per_fold or len(zs) == 0:
        return None
    for fold, slices in enumerate(per_fold):
        if len(slices) != len(zs):
            raise ValueError(f"fold detector {fold} returned {len(slices)} results for {len(zs)} slices")
    tops = np.array([[float(d[:, 4].max()) if len(d) else 0.0 for d in slices] for slices in per_fold])  # folds x slices
    means = tops.mean(axis=0)
    best = int(np.argmax(means))
    if means[best] <= 0:
        return None
    fold = int(np.argmax(tops[:, best]))
    boxes = np.asarray(per_fold[fold][best])
    row = boxes[int(np.argmax(boxes[:, 4]))]
    return Detection(int(zs[best]), tuple(float(v) for v in row[:4]), float(means[best]), int(row[5]))


def scale_box(box: Sequence[float], from_hw: tuple[int, int], to_hw: tuple[int, int]) -> tuple[float, ...]:
    """A box (x0, y0, x1, y1) in an image of `from_hw` (height, width) rescaled to one of `to_hw`."""
    sy, sx = to_hw[0] / from_hw[0], to_hw[1] / from_hw[1]
    x0, y0, x1, y1 = box
    return (x0 * sx, y0 * sy, x1 * sx, y1 * sy)


@dataclass
class Finding:
    """Where the finding is in one series.

    present / location / location_probability: the blended 'Aneurysm Present' probability and the most
    probable of the 13 locations. The detection fields (sop_uid, frame, slice_index, box in original
    pixels of that slice, confidence, class_name) are None when there is none, and `reason` says why.
    `image`: the detected slice at its original size (uint8), for the PNG; not written to the CSV.
    """

    series_uid: str
    present: float
    location: str
    location_probability: float
    sop_uid: str | None = None
    frame: int | None = None
    slice_index: int | None = None
    box: tuple[float, float, float, float] | None = None
    confidence: float | None = None
    class_name: str | None = None
    reason: str | None = None
    image: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def from_probabilities(cls, series_uid: str, probabilities: Mapping[str, float], reason: str | None = None) -> Finding:
        """A finding without a detection: the series' present probability and its most probable location."""
        location = max(LOCATION_COLS, key=lambda col: probabilities[col])  # first of equals, in LOCATION_COLS order
        return cls(series_uid, float(probabilities[PRESENT_COL]), location, float(probabilities[location]), reason=reason)

    def row(self) -> dict:
        """The finding's `findings.csv` row (FINDING_COLUMNS)."""
        box = self.box or (None,) * len(XYXY_COLS)  # original pixels of the slice
        return {UID_COL: self.series_uid, "present": self.present, "location": self.location,
                "location_probability": self.location_probability, SOP_COL: self.sop_uid, "frame": self.frame,
                **{col: None if v is None else round(v, 2) for col, v in zip(XYXY_COLS, box)},
                "confidence": self.confidence, "class": self.class_name, "slice_index": self.slice_index,
                "reason": self.reason}

    def without_image(self) -> Finding:
        return replace(self, image=None)


def findings_frame(findings: Sequence[Finding]) -> pd.DataFrame:
    """`findings.csv` as a frame: FINDING_COLUMNS, one row per finding; box-less rows have empty box fields."""
    frame = pd.DataFrame([f.row() for f in findings], columns=list(FINDING_COLUMNS))
    return frame.astype({"frame": "Int64", "slice_index": "Int64"})


def finding_picture(finding: Finding) -> np.ndarray:
    """The finding's slice (BGR, original size) with the box and the location, probabilities and confidence written on it."""
    if finding.image is None or finding.box is None:
        raise ValueError(f"series {finding.series_uid}: no detected slice to draw ({finding.reason})")
    picture = cv2.cvtColor(np.ascontiguousarray(finding.image, dtype=np.uint8), cv2.COLOR_GRAY2BGR)
    height, width = picture.shape[:2]
    thickness = max(1, round(min(height, width) / 256))
    x0, y0, x1, y1 = (round(v) for v in finding.box)
    cv2.rectangle(picture, (x0, y0), (x1, y1), (0, 0, 255), thickness)
    lines = [f"{finding.location} {finding.location_probability:.2f}",
             f"{PRESENT_COL} {finding.present:.2f}",
             f"{finding.class_name} {finding.confidence:.2f}"]
    scale = max(0.3, min(height, width) / 1024)
    step = round(28 * scale) + 4
    for index, text in enumerate(lines):
        origin = (4, step * (index + 1))
        cv2.putText(picture, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
        cv2.putText(picture, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 255, 255), thickness, cv2.LINE_AA)
    return picture


def write_finding_png(finding: Finding, path: str | Path) -> Path:
    """Write `finding_picture` as a PNG, atomically."""
    ok, encoded = cv2.imencode(".png", finding_picture(finding))
    if not ok:
        raise ValueError(f"series {finding.series_uid}: PNG encoding failed")
    with atomic_write(path, "wb") as handle:
        handle.write(encoded.tobytes())
    return Path(path)
