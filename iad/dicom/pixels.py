"""Pixel reading: native little-endian files straight from disk, everything else through pydicom."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import BrokenExecutor
from dataclasses import dataclass
from pathlib import Path
import threading
import warnings

import numpy as np
import pydicom

from iad.dicom.decode_pool import discard_pool, get_pool, ordered_map
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
    time budget is checked before each file. With `layout.limits.workers` > 1 compressed files are
    decoded on a pool, ahead of the consumer; what is yielded, dropped and warned is the same as serial.
    """
    by_file = _slices_by_file(layout)
    for (path, slices), stored in zip(by_file.items(), _decoded_files(layout, by_file), strict=True):
        if isinstance(stored, str):  # a corrupt file costs its own slices only; it is reported instead
            warnings.warn(f"skipping {path}: {stored}", SeriesReadWarning, stacklevel=2)
            layout.dropped.append((str(path), stored))
            continue
        for z, frame in slices:
            ref = layout.frames[z]
            yield z, stored[frame], ref.slope, ref.intercept


def decode_file(path: Path, storage: PixelStorage | None, rows: int, cols: int, last_frame: int) -> np.ndarray | str:
    """All frames of one file as (frames, rows, cols), or the reason it could not be decoded."""
    try:
        stored = _read_file_frames(path, storage)
        _check_shape(stored, rows, cols, last_frame)
        return stored
    except Exception as err:  # noqa: BLE001 - any decoder failure is this file's, reported by the caller
        return f"unreadable pixels ({type(err).__name__}: {err})"


def decode_file_in_worker(*job) -> tuple[np.ndarray | str, list[tuple[type[Warning], str]]]:
    """`decode_file` plus the warnings it raised, for the caller to raise again (a worker process's
    warnings would stay in its own stderr); in a thread they are raised where they happen."""
    if threading.current_thread() is not threading.main_thread():
        return decode_file(*job), []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stored = decode_file(*job)
    return stored, [(w.category, str(w.message)) for w in caught]


def _from_worker(outcome: tuple[np.ndarray | str, list[tuple[type[Warning], str]]]) -> np.ndarray | str:
    stored, caught = outcome
    for category, message in caught:
        warnings.warn(message, category, stacklevel=4)
    return stored


def _decoded_files(layout: SeriesLayout, by_file: dict[Path, list[tuple[int, int]]]) -> Iterator[np.ndarray | str]:
    """`decode_file` of each file in `by_file` order, the time budget checked before each.

    Compressed files go to the read pool when `layout.limits.workers` > 1; uncompressed ones are read
    directly here (a pool would only add copies).
    """
    jobs = [(path, layout.storage.get(path), layout.rows, layout.cols, max(frame for _, frame in slices))
            for path, slices in by_file.items()]
    compressed = [job for job in jobs if job[1] is None]
    workers = layout.limits.workers
    pooled = (ordered_map(get_pool(layout.limits.pool, workers), decode_file_in_worker, compressed, workers)
              if workers > 1 and len(compressed) > 1 else None)
    try:
        for job in jobs:
            layout.limits.check_time(layout.folder)
            if pooled is None or job[1] is not None:
                yield decode_file(*job)
                continue
            try:
                stored = _from_worker(next(pooled))
            except BrokenExecutor as err:  # the pool, not the file, failed: this file and the rest go serial
                discard_pool(layout.limits.pool, workers, err)
                pooled = None
                stored = decode_file(*job)
            yield stored
    finally:
        if pooled is not None:
            pooled.close()


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


def _check_shape(stored: np.ndarray, rows: int, cols: int, last_frame: int) -> None:
    if stored.shape[1:] != (rows, cols) or stored.shape[0] <= last_frame:
        raise ValueError(f"decoded shape {stored.shape} does not hold frame {last_frame} of {rows}x{cols}")
