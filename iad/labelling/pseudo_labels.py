"""The pseudo-label rule for external TOF-MRA slices, and its report (no torch).

Inputs are tables (see `iad.external.tables`): the slices the classifiers scored (`slice_predictions.csv`:
uid, slice index, the 14 blended probabilities, whether the slice lies on a lesion), the external
series table, the lesion boxes, and the aneurysm detector's boxes on lesion slices (`detections.csv`).

The reference's rule: a slice of a positive volume that lies on a lesion (a lesion mask has pixels on
it) is kept when its blended 'Aneurysm Present' > `present_threshold` and its largest location
probability > `location_threshold`. Its labels: present 1, the 13 locations the predicted (soft)
probabilities. Its box: of the detector boxes with confidence >= `detector_confidence`, the one
overlapping one of the slice's mask boxes most, when that IoU > `iou_threshold` ("detector"); else the
slice's largest mask box ("mask"). Control volumes give all-zero rows (every `control_stride`-th slice,
no box). Unknown and excluded volumes never give rows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from iad.boxes import XYXY_COLS
from iad.external.tables import (
    BOX_SOURCE_COL,
    CONTROL,
    LESION_COL,
    LOCATION_COL,
    POSITIVE,
    PSEUDO_COLS,
    SLICE_COL,
    STATUS_COL,
    control_label_rows,
    excluded,
    usable_series,
)
from iad.labels import LABEL_COLS, LOCATION_COLS, PRESENT_COL, UID_COL

ON_LESION_COL = "on_lesion"
SLICE_PREDICTION_COLS = [UID_COL, SLICE_COL, *LABEL_COLS, ON_LESION_COL]
CONFIDENCE_COL = "confidence"
DETECTION_COLS = [UID_COL, SLICE_COL, "fold", *XYXY_COLS, CONFIDENCE_COL, "class"]
DETECTOR, MASK = "detector", "mask"  # box sources


@dataclass(frozen=True)
class PseudoRule:
    """The thresholds of the rule (module docstring)."""

    present_threshold: float = 0.5
    location_threshold: float = 0.5
    iou_threshold: float = 0.1
    detector_confidence: float = 0.2
    controls: bool = True
    control_stride: int = 4

    def __post_init__(self) -> None:
        for name in ("present_threshold", "location_threshold", "iou_threshold", "detector_confidence"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"pseudo-label rule: {name} {getattr(self, name)} must lie in [0, 1]")
        if int(self.control_stride) < 1:
            raise ValueError(f"pseudo-label rule: control_stride {self.control_stride} must be >= 1")

    def to_dict(self) -> dict:
        return asdict(self)


def box_iou(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of every box of `boxes` (N×4, x0 y0 x1 y1) with every one of `others` (M×4): N×M."""
    boxes, others = np.asarray(boxes, float).reshape(-1, 4), np.asarray(others, float).reshape(-1, 4)
    x0 = np.maximum(boxes[:, None, 0], others[None, :, 0])
    y0 = np.maximum(boxes[:, None, 1], others[None, :, 1])
    x1 = np.minimum(boxes[:, None, 2], others[None, :, 2])
    y1 = np.minimum(boxes[:, None, 3], others[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda b: np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)  # noqa: E731
    union = area(boxes)[:, None] + area(others)[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def on_lesion(slices: pd.DataFrame, series: pd.DataFrame, lesion_boxes: pd.DataFrame) -> np.ndarray:
    """Per row of `slices` (uid, slice_index): whether it is a slice of a usable positive volume with lesion pixels."""
    positive = set(usable_series(series, POSITIVE))
    lesion = {(uid, int(z)) for uid, z in zip(lesion_boxes[UID_COL], lesion_boxes[SLICE_COL]) if uid in positive}
    return np.array([(uid, int(z)) in lesion for uid, z in zip(slices[UID_COL], slices[SLICE_COL])], dtype=bool)


def passes(slices: pd.DataFrame, rule: PseudoRule) -> np.ndarray:
    """Whether each scored slice's probabilities pass the rule's thresholds (present and max location)."""
    present = slices[PRESENT_COL].to_numpy(float)
    location = slices[list(LOCATION_COLS)].to_numpy(float).max(axis=1)
    return (present > rule.present_threshold) & (location > rule.location_threshold)


def choose_box(mask_boxes: pd.DataFrame, detections: pd.DataFrame, rule: PseudoRule) -> tuple[np.ndarray, str]:
    """The box of one kept slice (module docstring) and its source, from its mask boxes and detector boxes."""
    masks = mask_boxes[list(XYXY_COLS)].to_numpy(float)
    confident = detections[detections[CONFIDENCE_COL] >= rule.detector_confidence]
    if len(confident):
        found = confident[list(XYXY_COLS)].to_numpy(float)
        best = box_iou(found, masks).max(axis=1)
        top = int(np.argmax(best))
        if best[top] > rule.iou_threshold:
            return found[top], DETECTOR
    return masks[int(np.argmax(mask_boxes["voxels"].to_numpy()))], MASK


def select_pseudo_labels(slices: pd.DataFrame, series: pd.DataFrame, lesion_boxes: pd.DataFrame,
                         detections: pd.DataFrame, rule: PseudoRule) -> pd.DataFrame:
    """The pseudo-label table (PSEUDO_COLS) from the scored slices (SLICE_PREDICTION_COLS), series.csv,
    lesion_boxes.csv and the detector boxes (DETECTION_COLS), by the rule in the module docstring."""
    kept = slices[slices[ON_LESION_COL].astype(bool).to_numpy() & passes(slices, rule)]
    masks = dict(iter(lesion_boxes.groupby([UID_COL, SLICE_COL])))
    found = dict(iter(detections.groupby([UID_COL, SLICE_COL])))
    empty = detections.iloc[:0]
    rows = []
    for uid, z, locations in zip(kept[UID_COL], kept[SLICE_COL].astype(int), kept[list(LOCATION_COLS)].to_numpy(float)):
        box, source = choose_box(masks[(uid, z)], found.get((uid, z), empty), rule)
        rows.append([uid, z, *locations.tolist(), 1.0, *box.tolist(), source])
    frame = pd.DataFrame(rows, columns=PSEUDO_COLS)
    if rule.controls:
        frame = pd.concat([frame, control_rows(slices, series, rule.control_stride)], ignore_index=True)
    return frame.astype({SLICE_COL: int})


def control_rows(slices: pd.DataFrame, series: pd.DataFrame, stride: int) -> pd.DataFrame:
    """All-zero label rows for every `stride`-th scored slice of the usable control volumes (no box)."""
    controls = slices[slices[UID_COL].isin(set(usable_series(series, CONTROL)))]
    controls = controls[controls[SLICE_COL].astype(int) % int(stride) == 0]
    return control_label_rows(controls[UID_COL], controls[SLICE_COL])


# ---- report ----------------------------------------------------------------------------------------
def pseudo_report(series: pd.DataFrame, slices: pd.DataFrame, pseudo: pd.DataFrame, rule: PseudoRule,
                  truth: pd.DataFrame | None = None, lesion_boxes: pd.DataFrame | None = None) -> dict:
    """Counts (volumes per dataset and status, slices scored / on a lesion / kept, box sources, controls
    passing the thresholds) and, given `truth` (TRUTH_COLS) and `lesion_boxes`, top-location accuracy."""
    labelled = pseudo[pseudo[PRESENT_COL] > 0]
    controls = slices[slices[UID_COL].isin(set(usable_series(series, CONTROL)))]
    positives = usable_series(series, POSITIVE)
    report = {
        "rule": rule.to_dict(),
        "volumes": _volume_counts(series),
        "slices": {"scored": len(slices), "on_lesion": int(slices[ON_LESION_COL].astype(bool).sum()),
                   "kept": len(labelled), "control_rows": int((pseudo[PRESENT_COL] == 0).sum())},
        "series": {"positive": len(positives), "with_pseudo_labels": int(labelled[UID_COL].nunique())},
        "box_source": dict(Counter(labelled[BOX_SOURCE_COL].astype(str))),
        "control_slices_passing": _share(passes(controls, rule)) if len(controls) else None,
    }
    if lesion_boxes is not None:
        report["detector_box_iou"] = detector_box_iou(labelled, lesion_boxes)
    if truth is not None and lesion_boxes is not None:
        on = slices[slices[ON_LESION_COL].astype(bool)]
        report["truth"] = {"kept_slices": slice_accuracy(labelled, truth, lesion_boxes),
                           "on_lesion_slices": slice_accuracy(on, truth, lesion_boxes),
                           "series": series_accuracy(labelled, truth)}
    return report


def detector_box_iou(labelled: pd.DataFrame, lesion_boxes: pd.DataFrame) -> float | None:
    """Mean IoU of the detector boxes the rule chose with the best-overlapping mask box of their slice (None: none)."""
    chosen = labelled[labelled[BOX_SOURCE_COL] == DETECTOR]
    if chosen.empty:
        return None
    masks = dict(iter(lesion_boxes.groupby([UID_COL, SLICE_COL])))
    ious = [box_iou(np.asarray(box, float), masks[(uid, int(z))][list(XYXY_COLS)].to_numpy(float)).max()
            for uid, z, box in zip(chosen[UID_COL], chosen[SLICE_COL], chosen[list(XYXY_COLS)].to_numpy(float))]
    return float(np.mean(ious))


def _volume_counts(series: pd.DataFrame) -> dict:
    """{dataset: {status: volumes, "excluded": volumes}} (an excluded volume counts only as excluded)."""
    left_out = excluded(series)
    counts: dict = {}
    for dataset, group in series.groupby("dataset"):
        out = group[~left_out[group.index]]
        counts[str(dataset)] = {**{str(k): int(v) for k, v in out[STATUS_COL].value_counts().items()},
                                "excluded": int(left_out[group.index].sum())}
    return counts


def _share(flags) -> float:
    return float(np.mean(flags)) if len(flags) else float("nan")


def true_locations(truth: pd.DataFrame, lesion_boxes: pd.DataFrame) -> dict[tuple[str, int], set[str]]:
    """(uid, slice_index) → the true locations of the lesions with pixels on that slice."""
    located = lesion_boxes[[UID_COL, LESION_COL, SLICE_COL]].merge(truth[[UID_COL, LESION_COL, LOCATION_COL]],
                                                                   on=[UID_COL, LESION_COL], how="inner")
    return {(uid, int(z)): set(group[LOCATION_COL]) for (uid, z), group in located.groupby([UID_COL, SLICE_COL])}


def _accuracy(predicted: list[str], expected: list[set[str]]) -> dict:
    """Top-location accuracy, its chance level (a uniform guess over the 13 locations) and the accuracy of
    always guessing the commonest true location of these rows (`majority`: a baseline that knows their truth)."""
    if not predicted:
        return {"n": 0, "accuracy": None, "chance": None, "majority": None}
    counts = Counter(location for locations in expected for location in locations)
    majority = counts.most_common(1)[0][0]
    return {"n": len(predicted),
            "accuracy": _share([p in e for p, e in zip(predicted, expected)]),
            "chance": _share([len(e) / len(LOCATION_COLS) for e in expected]),
            "majority": _share([majority in e for e in expected])}


def top_locations(frame: pd.DataFrame) -> list[str]:
    """The most probable of the 13 locations of each row (first of equals, in LOCATION_COLS order)."""
    return [LOCATION_COLS[i] for i in frame[list(LOCATION_COLS)].to_numpy(float).argmax(axis=1)]


def slice_accuracy(frame: pd.DataFrame, truth: pd.DataFrame, lesion_boxes: pd.DataFrame) -> dict:
    """How often a slice's top location is one of the true locations of the lesions on it."""
    truths = true_locations(truth, lesion_boxes)
    keys = [(uid, int(z)) for uid, z in zip(frame[UID_COL], frame[SLICE_COL])]
    known = [key in truths for key in keys]
    rows = frame[np.array(known, dtype=bool)] if len(frame) else frame
    return _accuracy(top_locations(rows), [truths[key] for key, ok in zip(keys, known) if ok])


def series_accuracy(labelled: pd.DataFrame, truth: pd.DataFrame) -> dict:
    """How often a series' top location (max over its pseudo-labelled slices) is one of its lesions' locations."""
    if labelled.empty:
        return _accuracy([], [])
    per_series = labelled.groupby(UID_COL)[list(LOCATION_COLS)].max()
    truths: Mapping[str, set[str]] = truth.groupby(UID_COL)[LOCATION_COL].agg(set).to_dict()
    per_series = per_series[per_series.index.isin(list(truths))]
    return _accuracy(top_locations(per_series), [truths[uid] for uid in per_series.index])
