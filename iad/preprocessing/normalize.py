"""Modality-unit → uint8 normalisation straight from stored pixel values (no float copy).

The rescale slope/intercept and the window fold into one affine map of stored values, applied with
a single saturating OpenCV pass per slice. CT uses a fixed HU window; MR is scaled between
per-volume percentiles, found from a histogram of the stored values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
import hashlib
import json
import math

import cv2
import numpy as np

CACHE_FORMAT_VERSION = 1


class NoContrastError(ValueError):
    """A series whose normalised input is one flat value: nothing to score (blank, slope 0, NaN pixels)."""


@dataclass(frozen=True)
class PreprocessConfig:
    """Settings that define a cached volume; any change gives a new cache key.

    ct_window: (centre, width) in Hounsfield units. The reference solution clipped *stored* values
        (before RescaleIntercept); set `ct_apply_rescale=False` to reproduce that exactly. With the
        usual intercept of -1024 the two differ by 1024 HU, so the reference's "40/450" window
        on stored values is really a window centred at -984 HU on CT series that carry an intercept.
    mr_percentiles: (low, high) percentiles of the volume mapped to 0 and 255 for non-CT series.
    image_size: square in-plane size of the cached slices (None keeps the native size).
    """

    ct_window: tuple[float, float] = (40.0, 450.0)
    ct_apply_rescale: bool = True
    mr_percentiles: tuple[float, float] = (0.5, 99.5)
    image_size: int | None = None
    format_version: int = field(default=CACHE_FORMAT_VERSION)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ct_window", tuple(float(v) for v in self.ct_window))
        object.__setattr__(self, "mr_percentiles", tuple(float(v) for v in self.mr_percentiles))
        if self.ct_window[1] <= 0:
            raise ValueError(f"ct_window width must be positive, got {self.ct_window}")
        low, high = self.mr_percentiles
        if not 0 <= low < high <= 100:
            raise ValueError(f"mr_percentiles must satisfy 0 <= low < high <= 100, got {self.mr_percentiles}")
        if self.image_size is not None and self.image_size < 8:
            raise ValueError(f"image_size must be >= 8 or None, got {self.image_size}")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @property
    def key(self) -> str:
        """Short stable hash of the settings: the cache sub-folder name."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha1(blob).hexdigest()[:12]


def window_bounds(config: PreprocessConfig) -> tuple[float, float]:
    """(low, high) of the CT window in the units it applies to."""
    centre, width = config.ct_window
    return centre - width / 2, centre + width / 2


def window_slice(stored: np.ndarray, slope: float, intercept: float, low: float, high: float) -> np.ndarray:
    """uint8 image 255 * clip((stored * slope + intercept - low) / (high - low), 0, 1), rounded.

    Fast path (positive slope, integer pixels): one saturating OpenCV pass. Values below `low` are
    first raised to the smallest stored value inside the window, because convertScaleAbs takes |x|.
    """
    scale = 255.0 / max(high - low, 1e-6)
    if slope > 0 and stored.dtype in _CV_INT_DTYPES:
        info = np.iinfo(stored.dtype)
        floor = math.ceil((low - intercept) / slope)
        if floor > info.max:  # every value lies below the window
            return np.zeros(stored.shape, dtype=np.uint8)
        floor = max(floor, info.min)
        clipped = cv2.max(stored, float(floor))
        return cv2.convertScaleAbs(clipped, alpha=slope * scale, beta=(intercept - low) * scale)
    values = stored.astype(np.float32) * slope + intercept
    np.nan_to_num(values, copy=False, nan=low, posinf=high, neginf=low)  # float pixels: NaN/inf are repaired
    return np.clip(np.rint((values - low) * scale), 0, 255).astype(np.uint8)


_CV_INT_DTYPES = frozenset(np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16, np.int32))


def percentile_bounds(slices: list[np.ndarray], rescale: list[tuple[float, float]],
                      percentiles: tuple[float, float], step: int = 2) -> tuple[float, float]:
    """Modality-unit values at the given percentiles of a volume (every `step`-th row and column).

    With one positive rescale and 8/16-bit pixels, a histogram of stored values answers without a
    float copy of the volume; otherwise the subsample is rescaled to float first.
    """
    dtypes = {s.dtype for s in slices}
    (dtype,) = dtypes if len(dtypes) == 1 else (None,)
    if len(set(rescale)) == 1 and rescale[0][0] > 0 and dtype is not None and dtype.kind in "iu" and dtype.itemsize <= 2:
        slope, intercept = rescale[0]
        unsigned = np.uint8 if dtype.itemsize == 1 else np.uint16
        counts = np.zeros(256 if dtype.itemsize == 1 else 65536, dtype=np.int64)
        for image in slices:
            counts += np.bincount(np.ascontiguousarray(image[::step, ::step]).view(unsigned).ravel(), minlength=len(counts))
        values = np.arange(len(counts), dtype=unsigned).view(dtype).astype(np.float64)
        order = np.argsort(values, kind="stable")
        cumulative = np.cumsum(counts[order])
        ranks = [min(int(np.searchsorted(cumulative, cumulative[-1] * p / 100.0)), len(order) - 1) for p in percentiles]
        low, high = (values[order[r]] * slope + intercept for r in ranks)
    else:
        sample = np.concatenate([(s[::step, ::step].astype(np.float32) * a + b).ravel() for s, (a, b) in zip(slices, rescale)])
        sample = sample[np.isfinite(sample)]
        if not sample.size:
            raise NoContrastError("no finite pixel value (NaN or inf everywhere)")
        low, high = np.percentile(sample, percentiles)
    return float(low), float(max(high, low + 1e-6))


def resize_slice(image: np.ndarray, size: int | None) -> np.ndarray:
    """Square in-plane resize (area when shrinking, linear when growing); None keeps the image."""
    if size is None or image.shape == (size, size):
        return image
    shrinking = size < max(image.shape)
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def volume_window(modality: str, slices: list[np.ndarray], rescale: list[tuple[float, float]],
                  config: PreprocessConfig) -> tuple[float, float, dict]:
    """(low, high) in modality units for a whole series, and a record of how they were chosen."""
    if modality == "CT":
        low, high = window_bounds(config)
        return low, high, {"kind": "ct_window", "low": low, "high": high, "rescaled": config.ct_apply_rescale}
    low, high = percentile_bounds(slices, rescale, config.mr_percentiles)
    return low, high, {"kind": "percentile", "percentiles": list(config.mr_percentiles), "low": low, "high": high}


def effective_rescale(modality: str, slope: float, intercept: float, config: PreprocessConfig) -> tuple[float, float]:
    """The rescale the window applies to: identity for CT in the reference's stored-value mode."""
    if modality == "CT" and not config.ct_apply_rescale:
        return 1.0, 0.0
    return slope, intercept


def display_slice(stored: np.ndarray, slope: float, intercept: float, low: float, high: float, invert: bool,
                  size: int | None) -> np.ndarray:
    """The windowed, resized uint8 image; MONOCHROME1 (`invert`) is inverted after the window, as a viewer shows it."""
    image = window_slice(stored, slope, intercept, low, high)
    if invert:
        cv2.bitwise_not(image, dst=image)
    return resize_slice(image, size)


def normalise_slices(modality: str, slices: list[np.ndarray], rescale: list[tuple[float, float]],
                     config: PreprocessConfig, out, invert: list[bool] | None = None) -> dict:
    """Window every stored slice of a series into `out[z]` (uint8, resized); returns the intensity record.

    `slices[z]` are released as they are written, so the stored volume is not held twice. `invert[z]`
    marks MONOCHROME1 slices.
    """
    rescale = [effective_rescale(modality, a, b, config) for a, b in rescale]
    low, high, intensity = volume_window(modality, slices, rescale, config)
    for z in range(len(slices)):
        out[z] = display_slice(slices[z], *rescale[z], low, high, bool(invert and invert[z]), config.image_size)
        slices[z] = None
    return intensity


def require_contrast(low: int, high: int, where: object) -> None:
    """Raise NoContrastError when a normalised volume's darkest and brightest voxels are equal."""
    if low == high:
        raise NoContrastError(f"{where}: the normalised input has no contrast (every voxel is {low}); a blank or "
                              "constant series (e.g. RescaleSlope 0, non-finite pixels) is not scored")


def mean_over_slices(volume: np.ndarray) -> np.ndarray:
    """Mean over slices as uint8 (the brain detector's input); sums 257-slice chunks in uint16, which cannot overflow."""
    total = np.zeros(volume.shape[1:], dtype=np.uint64)
    for start in range(0, volume.shape[0], 257):
        total += volume[start:start + 257].sum(axis=0, dtype=np.uint16)
    return mean_from_sum(total, volume.shape[0])


def mean_from_sum(total: np.ndarray, n_slices: int) -> np.ndarray:
    """The uint8 mean image from a per-pixel sum over `n_slices` slices (rounded half to even)."""
    return np.rint(total / max(n_slices, 1)).astype(np.uint8)
