"""The reference's label-cleaning rule on out-of-fold predictions (pandas/numpy only, no torch).

A negative series whose blended out-of-fold prediction has "Aneurysm Present" > `present_threshold`
and max(location) > `location_threshold` becomes positive with every location above
`location_threshold`; its boxes are the exp0 detector's out-of-fold detections at or above
`detector_confidence` (original pixels, `iad.boxes.ANEURYSM_BOX_COLS`). A flipped series without a
box is left out of training (neither negative nor placeable) and counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
import os
from pathlib import Path

import numpy as np
import pandas as pd

from iad.boxes import ANEURYSM_BOX_COLS, BOX_COLS, XYXY_COLS
from iad.contract import DETECTIONS_FILE, OOF_FILE
from iad.evaluation.detections import read_detections
from iad.evaluation.oof import read_oof
from iad.labels import LABEL_COLS, LOCATION_COLS, MODALITY_COL, PRESENT_COL, SOP_COL, UID_COL

LOCATIONS_SEP = ";"  # flipped.csv: the locations a series was flipped to, joined
FLIPPED_COLS = (UID_COL, MODALITY_COL, "present", "max_location", "locations", "n_boxes", "kept")
GRID = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)  # thresholds tried against hidden positives (threshold_grid.csv)


@dataclass(frozen=True)
class Thresholds:
    """The rule's thresholds (the reference's: 0.9, 0.9 and the detector's 0.2)."""

    present: float = 0.9
    location: float = 0.9
    detector_confidence: float = 0.2

    def __post_init__(self):
        for name in ("present", "location", "detector_confidence"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} threshold must be in [0, 1], got {getattr(self, name)}")


@dataclass(frozen=True)
class Cleaned:
    """What the rule gives: the training label table, the flipped series' boxes and one row per flipped series."""

    train_labels: pd.DataFrame  # the input table, flipped rows relabelled, flipped rows without a box removed
    boxes: pd.DataFrame  # ANEURYSM_BOX_COLS
    flipped: pd.DataFrame  # FLIPPED_COLS


def table_file(path: str | os.PathLike, name: str) -> Path:
    """`path` itself when it is a file, else `<path>/<name>` (a sweep folder's merged file)."""
    path = Path(path)
    return path / name if path.is_dir() else path


def load_member(path: str | os.PathLike, member: str = "member") -> pd.DataFrame:
    """A member's OOF predictions (a sweep folder's oof.csv, or the file), its path in `attrs["file"]`."""
    file = table_file(path, OOF_FILE)
    if not file.exists():
        raise FileNotFoundError(f"cleaning member {member!r}: no OOF file at {file}")
    frame = read_oof(file)  # refuses a series held twice
    frame.attrs["file"] = str(file)
    return frame


def align_member(oof: pd.DataFrame, labels: pd.DataFrame, member: str = "member") -> pd.DataFrame:
    """`load_member`'s predictions for exactly the series of `labels`, in their order.

    Every series must be scored (each by the fold model that never trained on it): a series the OOF
    file lacks is a ValueError naming the member and the file.
    """
    missing = labels.loc[~labels[UID_COL].isin(oof[UID_COL]), UID_COL]
    if len(missing):
        raise ValueError(f"cleaning member {member!r}: {oof.attrs.get('file', 'its OOF file')} lacks {len(missing)} "
                         f"of the {len(labels)} series (e.g. {missing.iloc[0]}); every series needs its out-of-fold "
                         "prediction (all folds run?)")
    return oof.set_index(UID_COL).loc[labels[UID_COL], list(LABEL_COLS)].reset_index()

def blend(members: Mapping[str, pd.DataFrame], weights: Mapping[str, float]) -> pd.DataFrame:
    """Weighted mean (weights normalised to sum 1) of aligned member predictions: uid + 14 columns."""
    names = list(members)
    w = np.asarray([float(weights[name]) for name in names])
    if not len(names) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"cleaning members need non-negative weights with a positive sum, got {dict(weights)}")
    uids = members[names[0]][UID_COL].to_numpy()
    for name in names[1:]:
        if not np.array_equal(members[name][UID_COL].to_numpy(), uids):
            raise ValueError(f"cleaning members {names[0]!r} and {name!r} are not aligned on the same series")
    stacked = np.stack([members[name][list(LABEL_COLS)].to_numpy(float) for name in names])
    blended = np.tensordot(w / w.sum(), stacked, axes=1)
    return pd.DataFrame(blended, columns=list(LABEL_COLS)).assign(**{UID_COL: uids})[[UID_COL, *LABEL_COLS]]


def read_detection_table(path: str | os.PathLike) -> pd.DataFrame:
    """exp0's out-of-fold detections (a sweep folder's detections.csv, or the file)."""
    file = table_file(path, DETECTIONS_FILE)
    if not file.exists():
        raise FileNotFoundError(f"detections: no {DETECTIONS_FILE} at {file} (run the exp0 sweep first)")
    frame = read_detections(file)
    original = [f"orig_{col}" for col in XYXY_COLS]
    missing = [c for c in (UID_COL, SOP_COL, "frame", "cls", "confidence", *original) if c not in frame.columns]
    if missing:
        raise ValueError(f"detections {file}: missing columns {missing}")
    return frame


def detection_boxes(detections: pd.DataFrame, uids, confidence: float) -> pd.DataFrame:
    """The detections of series `uids` at or above `confidence` on slices, as aneurysm boxes (original pixels).

    The detections file does not record the original image size: width and height are left empty.
    """
    keep = detections[UID_COL].isin(list(uids)) & (detections["confidence"] >= confidence) & detections[SOP_COL].notna()
    hits = detections[keep]
    boxes = pd.DataFrame({UID_COL: hits[UID_COL], SOP_COL: hits[SOP_COL], "frame": hits["frame"], "cls": hits["cls"],
                          **{box: hits[f"orig_{xyxy}"] for box, xyxy in zip(BOX_COLS, XYXY_COLS, strict=True)},
                          "width": np.nan, "height": np.nan})
    return boxes[list(ANEURYSM_BOX_COLS)].reset_index(drop=True)


def clean_labels(labels: pd.DataFrame, predictions: pd.DataFrame, detections: pd.DataFrame | None,
                 thresholds: Thresholds = Thresholds()) -> Cleaned:
    """Apply the rule (module docstring) to a train.csv-format table and blended OOF `predictions`.

    `detections`: exp0's out-of-fold detections (None: no detector, so no flipped series has a box).
    """
    scores = predictions.set_index(UID_COL).reindex(labels[UID_COL])
    if scores[list(LABEL_COLS)].isna().any().any():
        raise ValueError("predictions lack some series of the label table")
    present = scores[PRESENT_COL].to_numpy(float)
    locations = scores[list(LOCATION_COLS)].to_numpy(float)
    negative = labels[PRESENT_COL].to_numpy() == 0
    flip = negative & (present > thresholds.present) & (locations.max(axis=1) > thresholds.location)
    on = locations[flip] > thresholds.location
    flipped_uids = labels.loc[flip, UID_COL].to_numpy()
    if detections is None:
        boxes = pd.DataFrame(columns=list(ANEURYSM_BOX_COLS))
    else:
        boxes = detection_boxes(detections, flipped_uids, thresholds.detector_confidence)
    n_boxes = boxes[UID_COL].value_counts().reindex(flipped_uids, fill_value=0).to_numpy()
    flipped = pd.DataFrame({
        UID_COL: flipped_uids,
        MODALITY_COL: labels.loc[flip, MODALITY_COL].to_numpy(),
        "present": present[flip].round(6),
        "max_location": locations[flip].max(axis=1).round(6),
        "locations": [LOCATIONS_SEP.join(np.asarray(LOCATION_COLS)[row]) for row in on],
        "n_boxes": n_boxes,
        "kept": n_boxes > 0,
    }, columns=list(FLIPPED_COLS))
    relabelled = labels.copy()
    rows = np.flatnonzero(flip)
    relabelled.loc[relabelled.index[rows], list(LOCATION_COLS)] = on.astype(int)
    relabelled.loc[relabelled.index[rows], PRESENT_COL] = 1
    dropped = set(flipped.loc[~flipped["kept"], UID_COL])
    train_labels = relabelled[~relabelled[UID_COL].isin(dropped)].reset_index(drop=True)
    return Cleaned(train_labels=train_labels, boxes=boxes, flipped=flipped)


def cleaning_report(labels: pd.DataFrame, cleaned: Cleaned, hidden: pd.DataFrame | None = None) -> dict:
    """Counts per modality and, with the hidden positives' true labels (synthetic data), the rule's
    precision and recall on them and the chance precision (hidden share of the negative series: the
    precision of flipping negatives at random)."""
    flipped = cleaned.flipped
    per_modality = {}
    for modality, group in labels.groupby(MODALITY_COL):
        mine = flipped[flipped[MODALITY_COL] == modality]
        per_modality[str(modality)] = {"series": len(group), "negative": int((group[PRESENT_COL] == 0).sum()),
                                       "flipped": len(mine), "flipped_with_boxes": int(mine["kept"].sum()),
                                       "left_out": int((~mine["kept"]).sum())}
    report = {
        "series": len(labels),
        "negative": int((labels[PRESENT_COL] == 0).sum()),
        "flipped": len(flipped),
        "flipped_with_boxes": int(flipped["kept"].sum()),
        "left_out_without_box": int((~flipped["kept"]).sum()),
        "boxes": len(cleaned.boxes),
        "per_modality": per_modality,
    }
    if hidden is not None:
        report["hidden"] = hidden_scores(labels, flipped, hidden)
    return report


def hidden_scores(labels: pd.DataFrame, flipped: pd.DataFrame, hidden: pd.DataFrame) -> dict:
    """Precision, recall and chance precision of the flipped series against the hidden positives; and how
    often a correctly flipped series' locations include one of its true locations."""
    negatives = set(labels.loc[labels[PRESENT_COL] == 0, UID_COL])
    truth = hidden.set_index(UID_COL)
    hidden_uids = set(truth.index) & negatives
    found = [uid for uid in flipped[UID_COL] if uid in hidden_uids]
    located = flipped.set_index(UID_COL).loc[found, "locations"]
    location_hits = sum(bool(set(located[uid].split(LOCATIONS_SEP)) & {c for c in LOCATION_COLS if truth.at[uid, c] == 1})
                        for uid in found)
    return {
        "hidden_positives": len(hidden_uids),
        "negatives": len(negatives),
        "flipped": len(flipped),
        "true_flips": len(found),
        "precision": len(found) / len(flipped) if len(flipped) else None,
        "recall": len(found) / len(hidden_uids) if hidden_uids else None,
        "chance_precision": len(hidden_uids) / len(negatives) if negatives else None,
        "location_hit_rate": location_hits / len(found) if found else None,
    }


def threshold_grid(labels: pd.DataFrame, predictions: pd.DataFrame, hidden: pd.DataFrame,
                   values=GRID) -> pd.DataFrame:
    """The flips' precision and recall against the hidden positives for every (present, location) pair of
    thresholds in `values` (synthetic data): how the rule's thresholds trade them off for these models."""
    rows = []
    for present in values:
        for location in values:
            flipped = clean_labels(labels, predictions, None, Thresholds(present, location)).flipped
            rows.append({"present_threshold": present, "location_threshold": location,
                         **hidden_scores(labels, flipped, hidden)})
    return pd.DataFrame(rows)


def format_report(report: dict) -> str:
    """A few lines: flips per modality and, on synthetic data, precision / recall against the hidden truth."""
    lines = [f"label cleaning: {report['flipped']} of {report['negative']} negative series flipped to positive "
             f"({report['flipped_with_boxes']} with boxes, {report['left_out_without_box']} without: left out of "
             f"training), {report['boxes']} boxes"]
    lines += [f"  {name:<12} negatives {m['negative']:>5}  flipped {m['flipped']:>4}  with boxes {m['flipped_with_boxes']:>4}"
              for name, m in report["per_modality"].items()]
    hidden = report.get("hidden")
    if hidden:
        def fmt(value):
            return "n/a" if value is None else f"{value:.3f}"

        lines.append(f"  hidden positives {hidden['hidden_positives']}: precision {fmt(hidden['precision'])} "
                     f"(chance {fmt(hidden['chance_precision'])}), recall {fmt(hidden['recall'])}, "
                     f"flipped locations right {fmt(hidden['location_hit_rate'])}")
    return "\n".join(lines)
