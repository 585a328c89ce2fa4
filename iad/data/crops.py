"""Per-series crop boxes: a brain-detector table when given, an intensity head box as fallback.

Boxes are (x0, y0, x1, y1) normalised to [0, 1] of the cached image, so they hold for any cache
size. No torch import.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from iad.boxes import XYXY_COLS
from iad.labels import UID_COL

FULL_BOX = (0.0, 0.0, 1.0, 1.0)
CROP_COLS = XYXY_COLS  # a crop table's box columns, normalised to [0, 1]


def head_box(mean_image: np.ndarray, margin: float = 0.05) -> tuple[float, float, float, float]:
    """Bounding box of the largest bright component of the mean-over-slices image (Otsu threshold)."""
    image = np.asarray(mean_image, dtype=np.uint8)
    if image.max() == image.min():
        return FULL_BOX
    _, mask = cv2.threshold(image, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return FULL_BOX
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h = (int(stats[largest, k]) for k in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT))
    height, width = image.shape
    box = (x / width - margin, y / height - margin, (x + w) / width + margin, (y + h) / height + margin)
    return clip_box(box)


def clip_box(box) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = (float(np.clip(v, 0.0, 1.0)) for v in box)
    if x1 - x0 < 0.05 or y1 - y0 < 0.05:
        return FULL_BOX
    return x0, y0, x1, y1


def center_crop(box, ratio: float) -> tuple[float, float, float, float]:
    """The centred `ratio` part of a box (the reference's test-time crop 0.75)."""
    if ratio >= 1.0:
        return tuple(box)
    x0, y0, x1, y1 = box
    dx, dy = (x1 - x0) * (1 - ratio) / 2, (y1 - y0) * (1 - ratio) / 2
    return x0 + dx, y0 + dy, x1 - dx, y1 - dy


def box_pixels(box, height: int, width: int) -> tuple[int, int, int, int]:
    """Integer pixel bounds (x0, y0, x1, y1) of a normalised box; at least one pixel wide."""
    x0, y0, x1, y1 = box
    px0, py0 = int(np.floor(x0 * width)), int(np.floor(y0 * height))
    px1, py1 = max(int(np.ceil(x1 * width)), px0 + 1), max(int(np.ceil(y1 * height)), py0 + 1)
    return px0, py0, min(px1, width), min(py1, height)


def series_crop_boxes(uids, crop_table: dict, head_crop: bool, mean_image) -> list[tuple[float, float, float, float]]:
    """Each series' crop: its box in `crop_table` (`read_crop_table`), else the head box of its mean image
    (`mean_image(uid)`) when `head_crop`, else the full image."""
    return [crop_table[uid] if uid in crop_table else head_box(mean_image(uid)) if head_crop else FULL_BOX
            for uid in uids]


def read_crop_table(path: str | Path) -> dict[str, tuple[float, float, float, float]]:
    """SeriesInstanceUID → normalised box from a CSV with columns SeriesInstanceUID, x0, y0, x1, y1."""
    table = pd.read_csv(path)
    missing = [c for c in (UID_COL, *CROP_COLS) if c not in table.columns]
    if missing:
        raise ValueError(f"crop table {path}: missing columns {missing}")
    values = table[list(CROP_COLS)].to_numpy(dtype=float)
    if not np.isfinite(values).all() or (values < 0).any() or (values > 1).any():
        raise ValueError(f"crop table {path}: boxes must be normalised to [0, 1]")
    return {uid: clip_box(v) for uid, v in zip(table[UID_COL], values)}
