"""Detector training items: which cached images a detector learns from and their YOLO labels (no torch).

An *item table* has one row per image: SeriesInstanceUID, slice_index (the cached slice; -1 = the
series' mean image), split ("train" / "val") and `labels`, the image's boxes as YOLO text lines
("<class> <cx> <cy> <w> <h>", normalised, joined by ";"; empty for a background image). The tables
are written as CSV next to the detector run (`items/train.csv`, `items/val.csv`): what ultralytics
trains on is inspectable, and its pixels come from the series cache, never from exported PNGs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from iad.boxes import BOX_COLS
from iad.folds import FOLD_COL
from iad.labels import PRESENT_COL, UID_COL

SLICE_COL = "slice_index"
SPLIT_COL = "split"
LABELS_COL = "labels"
MEAN_IMAGE = -1  # slice_index of an item that is the series' mean image
ITEM_COLS = (UID_COL, SLICE_COL, SPLIT_COL, LABELS_COL)
LINE_SEP = ";"


def yolo_lines(boxes: pd.DataFrame, classes: Sequence[str], source: str) -> str:
    """YOLO label lines of one image's boxes (pixel xmin..ymax of a `width` x `height` image)."""
    unknown = sorted(set(boxes["cls"]) - set(classes))
    if unknown:
        raise ValueError(f"{source}: box classes {unknown} are not among the detector's classes {list(classes)}")
    x0, y0, x1, y1 = (boxes[c].to_numpy(float) for c in BOX_COLS)
    width, height = boxes["width"].to_numpy(float), boxes["height"].to_numpy(float)
    x0, x1 = np.clip(x0, 0, width), np.clip(x1, 0, width)
    y0, y1 = np.clip(y0, 0, height), np.clip(y1, 0, height)
    keep = (x1 > x0) & (y1 > y0)
    index = [classes.index(c) for c in boxes["cls"]]
    lines = [f"{k} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}" for k, cx, cy, w, h, ok in zip(
        index, (x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height, keep) if ok]
    return LINE_SEP.join(lines)


def parse_lines(text: str) -> tuple[np.ndarray, np.ndarray]:
    """(classes (n, 1) float32, boxes (n, 4) normalised xywh float32) of an item's `labels` text."""
    rows = [line.split() for line in str(text or "").split(LINE_SEP) if line.strip()] if isinstance(text, str) else []
    if not rows:
        return np.zeros((0, 1), np.float32), np.zeros((0, 4), np.float32)
    values = np.asarray(rows, dtype=np.float32)
    if values.shape[1] != 5:
        raise ValueError(f"YOLO label lines need 5 values each, got {text!r}")
    return values[:, :1], values[:, 1:]


def aneurysm_items(series: pd.DataFrame, boxes: pd.DataFrame, n_slices: dict[str, int], fold: int,
                   classes: Sequence[str], negative_fraction: float, seed: int) -> tuple[pd.DataFrame, dict]:
    """exp0 items of one fold: every boxed slice, plus a sampled share of the slices of negative series.

    series: the label table with folds; boxes: drawn boxes mapped into cache pixels
    (`iad.boxes.map_boxes(...).mapped`); n_slices: cached slices per series. Validation is fold
    `fold`, training every other fold. A positive series without boxes gives no item (counted in the
    returned report); its unboxed slices are never used as background, since boxes cover only the
    slices near each localizer.
    """
    rng = np.random.default_rng(seed)
    boxes = boxes[boxes[UID_COL].isin(n_slices)]
    boxed = boxes.groupby([UID_COL, SLICE_COL], sort=True)
    positive = pd.DataFrame({
        UID_COL: [uid for uid, _ in boxed.groups], SLICE_COL: [int(z) for _, z in boxed.groups],
        LABELS_COL: [yolo_lines(group, classes, f"{uid} slice {z}") for (uid, z), group in boxed]})
    negative_series = series.loc[(series[PRESENT_COL] == 0) & series[UID_COL].isin(n_slices), UID_COL]
    negatives = [(uid, z) for uid in negative_series for z in range(n_slices[uid])
                 if rng.random() < negative_fraction]
    negative = pd.DataFrame(negatives, columns=[UID_COL, SLICE_COL]).assign(**{LABELS_COL: ""})
    items = pd.concat([positive, negative], ignore_index=True)
    fold_of = series.set_index(UID_COL)[FOLD_COL]
    items[SPLIT_COL] = np.where(items[UID_COL].map(fold_of).to_numpy() == fold, "val", "train")
    unboxed = series.loc[(series[PRESENT_COL] == 1) & series[UID_COL].isin(n_slices) & ~series[UID_COL].isin(boxes[UID_COL])]
    report = {"boxed_slices": len(positive), "background_slices": len(negative),
              "positive_series_without_boxes": len(unboxed)}
    return items[list(ITEM_COLS)], report


def brain_items(series: pd.DataFrame, brain_boxes: pd.DataFrame, classes: Sequence[str], fold: int | None,
                cached: set[str]) -> tuple[pd.DataFrame, dict]:
    """exp1 items: one mean image per series with a brain box.

    The split is the box archive's own lists (`brain_det/train.txt`, `val.txt`) when `fold` is None
    and every cached box has a list; otherwise fold `fold` validates (series without a fold train).
    """
    boxes = brain_boxes[brain_boxes[UID_COL].isin(cached)]
    grouped = boxes.groupby(UID_COL, sort=True)
    items = pd.DataFrame({UID_COL: list(grouped.groups), SLICE_COL: MEAN_IMAGE,
                          LABELS_COL: [yolo_lines(group, classes, f"{uid} mean image") for uid, group in grouped]})
    if fold is None:
        split_of = boxes.groupby(UID_COL)["split"].first()
        if split_of.isna().any():
            missing = split_of[split_of.isna()].index[:3].tolist()
            raise ValueError(f"brain boxes: {int(split_of.isna().sum())} series are in neither brain_det/train.txt "
                             f"nor val.txt (e.g. {missing}); set data.fold to split by the fold file instead")
        items[SPLIT_COL] = items[UID_COL].map(split_of).to_numpy()
        how = "brain_det/train.txt and val.txt"
    else:
        fold_of = series.set_index(UID_COL)[FOLD_COL]
        items[SPLIT_COL] = np.where(items[UID_COL].map(fold_of).to_numpy() == fold, "val", "train")
        how = f"fold {fold}"
    report = {"series": len(items), "split": how, "per_class": boxes["cls"].value_counts().to_dict()}
    return items[list(ITEM_COLS)], report


def oof_slices(series_uids: Sequence[str], n_slices: dict[str, int], stride: int = 1) -> pd.DataFrame:
    """The slices a fold detector scores out of fold: every `stride`-th slice of each held-out series."""
    rows = [(uid, z) for uid in series_uids for z in range(0, n_slices[uid], max(1, int(stride)))]
    return pd.DataFrame(rows, columns=[UID_COL, SLICE_COL])
