"""Torch dataset of 2.5D slice samples drawn from cached volumes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from iad.data.crops import center_crop
from iad.data.inputs import SliceInput
from iad.data.masks import box_mask, sphere_mask
from iad.data.slices import BACKGROUND_COL, SERIES_COL, SLICE_COL
from iad.labels import FLIP_PERM

FLIP_NAMES = frozenset({"HorizontalFlip"})
MAX_OPEN_VOLUMES = 512


@dataclass(frozen=True)
class MaskSpec:
    """Segmentation targets: boxes where drawn, else disks/Gaussians of `radius_mm` around localizers."""

    radius_mm: float = 4.0
    kind: str = "disk"


class SliceDataset(Dataset):
    """Samples (series row, slice) → {"image" (C×H×W uint8), "target", "series"[, "mask"]}.

    `volume_of(uid)` returns the cached Z×H×W uint8 volume (memory-mapped). A horizontal flip in the
    albumentations `transform` (built with `save_applied_params=True`) swaps left/right labels.
    Items marked `background` (slices far from a positive series' aneurysms) get all-zero targets.
    `item_targets` (items × 14, e.g. soft pseudo-labels) replaces the series' labels item by item;
    with `series_ids=False` every sample's "series" is -1 (not a row of an RSNA series table).
    """

    def __init__(self, series: pd.DataFrame, items: pd.DataFrame, labels: np.ndarray,
                 volume_of: Callable[[str], np.ndarray], slice_input: SliceInput,
                 crop_boxes: list[tuple[float, float, float, float]], center_crop_ratio: float = 1.0,
                 transform=None, masks: MaskSpec | None = None, localizer_points: dict | None = None,
                 box_pixels_by_slice: dict | None = None, spacings: list | None = None,
                 item_targets: np.ndarray | None = None, series_ids: bool = True):
        self.uids = series["SeriesInstanceUID"].tolist()
        self.rows = items[SERIES_COL].to_numpy(np.int64)
        self.slices = items[SLICE_COL].to_numpy(np.int64)
        self.background = items[BACKGROUND_COL].to_numpy(bool) if BACKGROUND_COL in items else np.zeros(len(items), bool)
        self.labels = labels
        self.volume_of = volume_of
        self.input = slice_input
        self.boxes = [center_crop(box, center_crop_ratio) for box in crop_boxes]
        self.transform = transform
        self.masks = masks
        self.points = localizer_points or {}
        self.drawn_boxes = box_pixels_by_slice or {}
        self.spacings = spacings
        self.item_targets = None if item_targets is None else np.asarray(item_targets, dtype=np.float32)
        if self.item_targets is not None and len(self.item_targets) != len(self.rows):
            raise ValueError(f"item_targets has {len(self.item_targets)} rows for {len(self.rows)} items")
        self.series_ids = series_ids
        self._open: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def volume(self, row: int) -> np.ndarray:
        uid = self.uids[row]
        if uid not in self._open:
            if len(self._open) >= MAX_OPEN_VOLUMES:
                self._open.clear()
            self._open[uid] = self.volume_of(uid)
        return self._open[uid]

    def mask(self, row: int, z: int, height: int, width: int) -> np.ndarray:
        drawn = self.drawn_boxes.get((row, z))
        if drawn is not None:
            return box_mask(drawn, height, width)
        points = self.points.get(row)
        if points is None:
            return np.zeros((height, width), dtype=np.float32)
        return sphere_mask(points, z, height, width, self.spacings[row], self.masks.radius_mm, self.masks.kind)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row, z = int(self.rows[index]), int(self.slices[index])
        volume = self.volume(row)
        if self.masks is None:
            image, mask = self.input.image(volume, z, self.boxes[row]), None
        else:
            image, mask = self.input.image(volume, z, self.boxes[row], self.mask(row, z, *volume.shape[1:]))
        if self.item_targets is not None:
            target = self.item_targets[index]
        else:
            target = np.zeros_like(self.labels[row]) if self.background[index] else self.labels[row]
        if self.transform is not None:
            out = self.transform(image=image, mask=mask) if mask is not None else self.transform(image=image)
            image, mask = out["image"], out.get("mask", mask)
            if any(name in FLIP_NAMES for name, _ in out.get("applied_transforms", ())):
                target = target[list(FLIP_PERM)]
        sample = {
            "image": self.input.to_tensor(image),
            "target": torch.tensor(target, dtype=torch.float32),
            "series": torch.as_tensor(row if self.series_ids else -1, dtype=torch.long),
        }
        if mask is not None:
            sample["mask"] = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None]
        return sample
