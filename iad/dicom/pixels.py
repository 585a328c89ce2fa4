"""Pixel reading: native little-endian files straight from disk, everything else through pydicom."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
import warnings

import numpy as np
import pydicom

from iad.dicom.headers import PixelStorage
from iad.dicom.layout import ReadLimits, SeriesLayout, SeriesReadWarning, keep_decoded, scan_series


@dataclass(eq=False)
class Series:
    """A loaded series: float32 (Z, H, W) pixels in modality units plus the geometry of its slices."""

    pixels: np.ndarray
    sop_uids: list[str]
    frames: np.ndarray  # frame index within its file, per slice
    positions: np.ndarray  # (Z, 3), NaN rows where unknown
    orientation: np.ndarray  # (6,)
    spacing: tuple[float, float, float]  # (slice, row, col) mm, matching Z, H, W
    modality: str
    series_uid: str
    dropped: list[tuple[str, str]]
    layout: SeriesLayout

    def index_of(self, sop_uid: str, frame: int | None = None) -> int:
        """Slice index of a SOP instance (and frame); see SeriesLayout.index_of."""
        return self.layout.index_of(sop_uid, frame)


def iter_stored_slices(layout: SeriesLayout) -> Iterator[tuple[int, np.ndarray, float, float]]:
    """Yield (z, stored 2-D array, slope, intercept) for every slice, decoding each file once.

    Arrays keep their stored dtype (no rescale) and match pydicom's `pixel_array`. Files come in
    file-name order, not z order. A file that fails to decode is skipped with a warning and appended
    to `layout.dropped`; its slices are simply not yielded (`keep_decoded` then decides). The layout's
    time budget is checked before each file.
    """
    for path, slices in _slices_by_file(layout).items():
        layout.limits.check_time(layout.folder)
        try:
            stored = _read_file_frames(path, layout.storage.get(path))
            _check_shape(stored, layout, max(frame for _, frame in slices))
        except Exception as err:  # a corrupt file costs its own slices only; it is reported instead
            reason = f"unreadable pixels ({type(err).__name__}: {err})"
            warnings.warn(f"skipping {path}: {reason}", SeriesReadWarning, stacklevel=2)
            layout.dropped.append((str(path), reason))
            continue
        for z, frame in slices:
            ref = layout.frames[z]
            yield z, stored[frame], ref.slope, ref.intercept


def load_series(folder: str | Path, limits: ReadLimits | None = None) -> Series:
    """Scan `folder` and load its kept slices as float32 in modality units (slope/intercept applied).

    A few undecodable slices are dropped (see `keep_decoded`); MONOCHROME1 is not inverted here (the
    values keep their modality meaning; normalisation inverts the display).
    """
    layout = scan_series(folder, limits)
    pixels = np.empty((len(layout.frames), layout.rows, layout.cols), dtype=np.float32)
    decoded = np.zeros(len(layout.frames), dtype=bool)
    for z, stored, slope, intercept in iter_stored_slices(layout):
        out = pixels[z]
        out[...] = stored
        if slope != 1.0:
            out *= np.float32(slope)
        if intercept != 0.0:
            out += np.float32(intercept)
        decoded[z] = True
    if not decoded.all():
        layout = keep_decoded(layout, np.flatnonzero(decoded))
        pixels = pixels[decoded]
    return Series(
        pixels=pixels,
        sop_uids=[ref.sop_uid for ref in layout.frames],
        frames=np.array([ref.frame for ref in layout.frames], dtype=np.int64),
        positions=layout.positions,
        orientation=layout.orientation,
        spacing=(layout.slice_spacing, *layout.pixel_spacing),
        modality=layout.modality,
        series_uid=layout.series_uid,
        dropped=layout.dropped,
        layout=layout,
    )


def _slices_by_file(layout: SeriesLayout) -> dict[Path, list[tuple[int, int]]]:
    """{file: [(z, frame), ...]} in file-name order."""
    by_file: dict[Path, list[tuple[int, int]]] = {}
    for z, ref in enumerate(layout.frames):
        by_file.setdefault(ref.path, []).append((z, ref.frame))
    return dict(sorted(by_file.items()))


def _read_file_frames(path: Path, storage: PixelStorage | None) -> np.ndarray:
    """All frames of one file as (frames, rows, cols) in the stored dtype."""
    if storage is None:
        return _decode_with_pydicom(path)
    count = storage.n_frames * storage.rows * storage.cols
    stored = np.fromfile(path, dtype=storage.dtype, count=count, offset=storage.offset)
    if stored.size < count:
        raise ValueError(f"truncated pixel data ({stored.size} of {count} values)")
    stored = stored.reshape(storage.n_frames, storage.rows, storage.cols)
    unused_bits = storage.bits_allocated - storage.bits_stored
    if unused_bits:  # as pydicom does: clear (unsigned) or sign-extend (signed) the unused high bits
        np.left_shift(stored, unused_bits, out=stored)
        np.right_shift(stored, unused_bits, out=stored)
    return stored


def _decode_with_pydicom(path: Path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    return ds.pixel_array.reshape(-1, ds.Rows, ds.Columns)


def _check_shape(stored: np.ndarray, layout: SeriesLayout, last_frame: int) -> None:
    if stored.shape[1:] != (layout.rows, layout.cols) or stored.shape[0] <= last_frame:
        raise ValueError(f"decoded shape {stored.shape} does not hold frame {last_frame} of {layout.rows}x{layout.cols}")
