"""The images a detector sees, built from cached uint8 volumes (no torch): one source of pixels for
training, out-of-fold detection and inference."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def slice_stack(volume: np.ndarray, z: int, offsets: Sequence[int]) -> np.ndarray:
    """H×W×C uint8 image of slices z + offsets (clipped to the volume, as the classifiers' 2.5D input)."""
    index = np.clip(int(z) + np.asarray(offsets, dtype=np.int64), 0, volume.shape[0] - 1)
    return np.ascontiguousarray(np.stack([volume[i] for i in index], axis=-1))


def mean_stack(mean_image: np.ndarray, channels: int = 3) -> np.ndarray:
    """H×W×C uint8 image of the series' mean image repeated in every channel."""
    image = np.asarray(mean_image, dtype=np.uint8)
    return np.ascontiguousarray(np.repeat(image[..., None], channels, axis=-1))
