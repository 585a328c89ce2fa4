"""How a model sees one slice: 2.5D channels, crop, resize, normalisation.

Shared by training, validation and the predictor, so inference rebuilds the input exactly from the
run's configuration (`data.input` in the checkpoint). Samples stay uint8 until they reach the device:
`normalize` runs there on whole batches (the DataModule's `on_after_batch_transfer`, the predictor).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

from iad.contract import SliceInputSpec
from iad.data.crops import box_pixels

AREA_BELOW = 1 / 1.5  # resize with INTER_AREA when shrinking below this scale (antialiasing), else linear


class SliceInput:
    """2.5D slice stack → cropped, resized uint8 image; `normalize` turns batches into model input.

    offsets: slice offsets stacked as channels, e.g. (-1, 0, 1) = slices (t−1, t, t+1); edges are
        replicated. Use (-2, 0, 2) for the "t ± k" variant.
    mean, std: per-channel normalisation of [0, 1] intensities (match the backbone's pretraining).
    """

    def __init__(self, img_size: int = 96, offsets: Sequence[int] = (-1, 0, 1),
                 mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5)):
        self.img_size = int(img_size)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        if len(mean) != len(self.offsets) or len(std) != len(self.offsets):
            raise ValueError(f"mean/std need one value per channel ({len(self.offsets)} offsets)")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    @property
    def channels(self) -> int:
        return len(self.offsets)

    def image(self, volume: np.ndarray, z: int, box, mask: np.ndarray | None = None):
        """H×W×C uint8 crop of slices z + offsets (clipped to the volume), resized to img_size².

        Crops before stacking, so only the box is read from the (memory-mapped) volume. With a mask
        (H×W float, full-slice coordinates) returns (image, mask) cropped and resized alike.
        """
        depth, height, width = volume.shape
        x0, y0, x1, y1 = box_pixels(box, height, width)
        index = np.clip(z + self.offsets, 0, depth - 1)
        image = cv2.merge([np.ascontiguousarray(volume[i, y0:y1, x0:x1]) for i in index])
        if image.ndim == 2:
            image = image[..., None]
        size = (self.img_size, self.img_size)
        shrink = min(self.img_size / (x1 - x0), self.img_size / (y1 - y0))
        interpolation = cv2.INTER_AREA if shrink < AREA_BELOW else cv2.INTER_LINEAR
        resized = cv2.resize(image, size, interpolation=interpolation)
        if resized.ndim == 2:
            resized = resized[..., None]
        if mask is None:
            return resized
        return resized, cv2.resize(np.ascontiguousarray(mask[y0:y1, x0:x1]), size, interpolation=cv2.INTER_LINEAR)

    @staticmethod
    def to_tensor(image: np.ndarray) -> torch.Tensor:
        """H×W×C uint8 array → C×H×W uint8 tensor (no copy)."""
        return torch.from_numpy(image).permute(2, 0, 1)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """B×C×H×W uint8 → normalised float32, on whatever device the batch is."""
        mean = torch.tensor(self.mean, device=images.device).view(1, -1, 1, 1) * 255.0
        std = torch.tensor(self.std, device=images.device).view(1, -1, 1, 1) * 255.0
        return (images.float() - mean) / std

    def __call__(self, volume: np.ndarray, z: int, box) -> torch.Tensor:
        """The uint8 evaluation input (C×H×W) for slice z; no augmentation."""
        return self.to_tensor(self.image(volume, z, box))

    def spec(self) -> SliceInputSpec:
        """The settings that define this input (the checkpoint's record of it)."""
        return SliceInputSpec(self.img_size, tuple(self.offsets.tolist()), self.mean, self.std)

    @classmethod
    def from_spec(cls, spec: SliceInputSpec) -> SliceInput:
        return cls(spec.img_size, spec.offsets, spec.mean, spec.std)
