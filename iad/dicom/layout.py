"""From a folder of DICOM files to a sorted, consistent list of slices (headers only)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
import time
import warnings

import numpy as np

from iad.dicom.decode_pool import DEFAULT_POOL
from iad.dicom.headers import FileHeader, FrameHeader, FrameRef, PixelStorage, UnusableFile, read_header

AXIAL = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
ORIENTATION_TOLERANCE = 1e-3  # max |difference| of direction cosines still called the same plane
_POSITION_DECIMALS = 4  # projected positions closer than 0.1 µm count as ties
# A series may lose this share of its slices (at least one) to undecodable pixels or missing positions;
# those slices are dropped with a warning. Beyond it the series fails (undecodable) or is sorted without
# positions (missing positions), because the volume would no longer be the one the scanner made.
MAX_BAD_SLICE_FRACTION = 0.1
MAX_SERIES_BYTES = 4 * 2**30  # default cap on the pixels one series may decode (ReadLimits)


class SeriesReadError(Exception):
    """A folder that yields no usable slice; the message names the folder, the file and the reason."""


class SeriesTimeout(TimeoutError):
    """The per-series time budget ran out."""


@dataclass(frozen=True)
class ReadLimits:
    """What reading one series may cost: decoded pixel bytes, a `time.perf_counter()` deadline, and the
    workers decoding its compressed files (1: serial; `pool`: "processes" or "threads", see
    `iad.dicom.decode_pool`)."""

    max_series_bytes: int = MAX_SERIES_BYTES
    deadline: float | None = None
    workers: int = 1
    pool: str = DEFAULT_POOL

    def check_time(self, where: Path) -> None:
        if self.deadline is not None and time.perf_counter() > self.deadline:
            raise SeriesTimeout(f"{where}: per-series time budget exceeded")


def allowed_bad_slices(n_slices: int) -> int:
    """How many of `n_slices` may be dropped as bad (MAX_BAD_SLICE_FRACTION, at least one)."""
    return max(1, int(n_slices * MAX_BAD_SLICE_FRACTION))


class SeriesReadWarning(UserWarning):
    """A file or frame was skipped while reading a series (see the layout's `dropped`)."""


@dataclass(eq=False)
class SeriesLayout:
    """The slices of one series, filtered and sorted, read from headers only.

    `assumed` names the geometry that was missing and defaulted: "orientation" (identity axial),
    "pixel_spacing" (1, 1), "positions" (slices sorted by InstanceNumber, frame, file name),
    "slice_spacing" (1.0). `storage` holds the direct-read description of each native
    little-endian file (None or absent: decode through pydicom).
    """

    folder: Path
    series_uid: str
    modality: str
    frames: list[FrameRef]
    rows: int
    cols: int
    orientation: np.ndarray
    pixel_spacing: tuple[float, float]
    slice_spacing: float
    dropped: list[tuple[str, str]]
    assumed: tuple[str, ...] = ()
    storage: dict[Path, PixelStorage | None] = field(default_factory=dict, repr=False)
    limits: ReadLimits = field(default_factory=ReadLimits, repr=False)

    @property
    def positions(self) -> np.ndarray:
        """(Z, 3) float64 ImagePositionPatient per slice, NaN rows where unknown."""
        nan = (np.nan, np.nan, np.nan)
        return np.array([f.position or nan for f in self.frames], dtype=np.float64).reshape(-1, 3)

    @cached_property
    def _index(self) -> dict[tuple[str, int], int]:
        return {(f.sop_uid, f.frame): z for z, f in enumerate(self.frames)}

    def index_of(self, sop_uid: str, frame: int | None = None) -> int:
        """Slice index (sorted order) of a SOP instance, and of its frame for multi-frame files."""
        return slice_index_of(self._index, sop_uid, frame, f"kept slices of {self.folder}")

def scan_series(folder: str | Path, limits: ReadLimits | None = None) -> SeriesLayout:
    """Read every file's header in `folder` and return the kept slices, sorted along the slice normal.

    Dropped (listed in `dropped`): non-DICOM or unreadable files, files whose declared image cannot be
    in the file, and files without a grey-level image (with a warning each), LOCALIZER images and
    frames with RescaleSlope 0, and slices outside the kept group (one warning). Slices are grouped by
    series UID, size, orientation, echo and temporal position; the kept group has the most slices,
    then the larger in-plane size, then the lowest echo and temporal position (dcm2niix would write
    each group as its own volume; one volume is kept, never two interleaved). A degenerate
    ImageOrientationPatient counts as missing (axial assumed, with a warning).

    Sorting is ascending by ImagePositionPatient projected on the slice normal; ties go by
    InstanceNumber, frame index, then file name. Slices without a position are dropped (with a warning)
    while they are at most `allowed_bad_slices`; beyond that the whole series is sorted by the tie key.
    Raises SeriesReadError when the kept slices would decode to more than `limits.max_series_bytes`.
    """
    folder = Path(folder)
    limits = limits or ReadLimits()
    headers, dropped = _read_headers(folder, limits)
    frames = []
    for header in headers:
        for frame in header.frames:
            if frame.is_localizer:
                dropped.append(_drop_entry(header, frame, "LOCALIZER image"))
            elif frame.ref.slope == 0:
                dropped.append(_drop_entry(header, frame, "RescaleSlope 0 (a constant image)"))
            else:
                frames.append(frame)
    if not frames:
        raise SeriesReadError(f"{folder}: no usable slice; {_summary(dropped)}")
    frames = _largest_consistent_group(folder, frames, headers, dropped)
    layout = _build_layout(folder, frames, headers, dropped, limits)
    _check_size(layout, headers)
    return layout


def _check_size(layout: SeriesLayout, headers: list[FileHeader]) -> None:
    kept = {ref.path for ref in layout.frames}
    total = sum(header.decoded_bytes for header in headers if header.path in kept)
    if total > layout.limits.max_series_bytes:
        largest = max((h for h in headers if h.path in kept), key=lambda h: h.decoded_bytes)
        raise SeriesReadError(f"{layout.folder}: decoding would allocate {total / 2**20:.0f} MiB, over the "
                              f"{layout.limits.max_series_bytes / 2**20:.0f} MiB allowed per series (largest file "
                              f"{largest.path}: {largest.decoded_bytes / 2**20:.0f} MiB; raise max_series_mb)")


def _read_headers(folder: Path, limits: ReadLimits) -> tuple[list[FileHeader], list[tuple[str, str]]]:
    if not folder.is_dir():
        raise SeriesReadError(f"{folder}: series folder does not exist or is not a folder")
    paths = sorted(p for p in folder.iterdir() if p.is_file())
    if not paths:
        raise SeriesReadError(f"{folder}: series folder is empty")
    headers, dropped = [], []
    for path in paths:
        limits.check_time(folder)
        try:
            headers.append(read_header(path))
        except UnusableFile as err:
            _skip_file(path, str(err), dropped)
        except Exception as err:  # one unreadable file must not sink the series; it is reported instead
            _skip_file(path, f"unreadable header ({type(err).__name__}: {err})", dropped)
    return headers, dropped


def _skip_file(path: Path, reason: str, dropped: list[tuple[str, str]]) -> None:
    warnings.warn(f"skipping {path}: {reason}", SeriesReadWarning, stacklevel=4)
    dropped.append((str(path), reason))


def _drop_entry(header: FileHeader, frame: FrameHeader, reason: str) -> tuple[str, str]:
    if len(header.frames) > 1:
        reason = f"frame {frame.ref.frame}: {reason}"
    return str(frame.ref.path), reason


def _summary(dropped: list[tuple[str, str]]) -> str:
    first_path, first_reason = dropped[0]
    return f"all {len(dropped)} files/frames dropped, e.g. {first_path}: {first_reason}"


GroupKey = tuple  # (series, rows, cols, plane id, echo, temporal position)


def _consistency_key(frame: FrameHeader, planes: list[np.ndarray]) -> GroupKey:
    """(series, rows, cols, plane id, echo, temporal); plane ids cluster orientations within the
    tolerance (-1: none)."""
    plane = -1
    if frame.orientation is not None:
        cosines = np.asarray(frame.orientation)
        for plane_id, seen in enumerate(planes):
            if np.abs(cosines - seen).max() <= ORIENTATION_TOLERANCE:
                plane = plane_id
                break
        else:
            planes.append(cosines)
            plane = len(planes) - 1
    return frame.series_uid, frame.rows, frame.cols, plane, frame.echo, frame.temporal


def _largest_consistent_group(
    folder: Path, frames: list[FrameHeader], headers: list[FileHeader], dropped: list[tuple[str, str]]
) -> list[FrameHeader]:
    """Keep one consistent group: most slices, then larger in-plane size, then lowest echo and temporal
    position, then the smaller series UID and orientation, a missing one last (never the file order)."""
    planes: list[np.ndarray] = []
    keys = [_consistency_key(frame, planes) for frame in frames]
    counts = Counter(keys)
    if len(counts) == 1:
        return frames

    def rank(key: GroupKey) -> tuple:
        series_uid, rows, cols, plane, echo, temporal = key
        orientation = (True, ()) if plane < 0 else (False, tuple(planes[plane]))
        return (-counts[key], -rows * cols, _none_last(echo), _none_last(temporal), series_uid, orientation)

    kept_key = min(counts, key=rank)
    header_of = {header.path: header for header in headers}
    kept_group = _describe_key(kept_key, planes)
    kept = []
    for frame, key in zip(frames, keys, strict=True):
        if key == kept_key:
            kept.append(frame)
        else:
            reason = f"not in the largest consistent group ({_describe_key(key, planes)} vs kept {kept_group})"
            dropped.append(_drop_entry(header_of[frame.ref.path], frame, reason))
    groups = ", ".join(f"{_describe_key(key, planes)}: {count}" for key, count in counts.items())
    warnings.warn(
        f"{folder}: kept {len(kept)} of {len(frames)} slices; dropped {len(frames) - len(kept)} whose "
        f"series, size or orientation differ (groups: {groups})",
        SeriesReadWarning,
        stacklevel=3,
    )
    return kept


def _none_last(value: float | None) -> tuple[bool, float]:
    return value is None, value or 0.0


def _describe_key(key: GroupKey, planes: list[np.ndarray]) -> str:
    series_uid, rows, cols, plane, echo, temporal = key
    orientation = "none" if plane < 0 else np.array2string(planes[plane], precision=3, separator=",")
    extra = "".join(f" {name} {value:g}" for name, value in (("echo", echo), ("temporal position", temporal))
                    if value is not None)
    return f"series {series_uid or '?'} {rows}x{cols} orientation {orientation}{extra}"


def _build_layout(
    folder: Path, frames: list[FrameHeader], headers: list[FileHeader], dropped: list[tuple[str, str]],
    limits: ReadLimits,
) -> SeriesLayout:
    first = frames[0]
    assumed = []
    if first.orientation is None:
        assumed.append("orientation")
        if first.bad_orientation is not None:
            warnings.warn(f"{first.ref.path}: degenerate ImageOrientationPatient {list(first.bad_orientation)} "
                          "(not two orthogonal unit vectors); assuming axial", SeriesReadWarning, stacklevel=3)
    orientation = AXIAL.copy() if first.orientation is None else np.array(first.orientation, dtype=np.float64)
    if first.pixel_spacing is None:
        assumed.append("pixel_spacing")
    normal = slice_normal(orientation)

    unplaced = [frame for frame in frames if frame.ref.position is None]
    if unplaced and len(unplaced) <= allowed_bad_slices(len(frames)) < len(frames):
        header_of = {header.path: header for header in headers}
        for frame in unplaced:
            dropped.append(_drop_entry(header_of[frame.ref.path], frame, "no ImagePositionPatient"))
        warnings.warn(f"{folder}: dropped {len(unplaced)} of {len(frames)} slices without ImagePositionPatient "
                      f"(first {unplaced[0].ref.path}); the others keep their position order",
                      SeriesReadWarning, stacklevel=3)
        frames = [frame for frame in frames if frame.ref.position is not None]
    elif unplaced and len(unplaced) < len(frames):
        warnings.warn(f"{folder}: {len(unplaced)} of {len(frames)} slices lack ImagePositionPatient; "
                      "sorting every slice by InstanceNumber instead", SeriesReadWarning, stacklevel=3)
    if all(frame.ref.position is not None for frame in frames):
        frames = sorted(frames, key=lambda frame: (_projection(frame, normal), *_fallback_key(frame)))
        slice_spacing = _median_step([_projection(frame, normal) for frame in frames])
    else:
        assumed.append("positions")
        frames = sorted(frames, key=_fallback_key)
        slice_spacing = None
    if slice_spacing is None:
        slice_spacing = first.spacing_between_slices or first.slice_thickness
    if slice_spacing is None:
        assumed.append("slice_spacing")

    kept_paths = {frame.ref.path for frame in frames}
    return SeriesLayout(
        folder=folder,
        series_uid=first.series_uid,
        modality=first.modality,
        frames=[frame.ref for frame in frames],
        rows=first.rows,
        cols=first.cols,
        orientation=orientation,
        pixel_spacing=first.pixel_spacing or (1.0, 1.0),
        slice_spacing=float(slice_spacing or 1.0),
        dropped=dropped,
        assumed=tuple(assumed),
        storage={header.path: header.storage for header in headers if header.path in kept_paths},
        limits=limits,
    )


def slice_normal(orientation) -> np.ndarray:
    """The slice normal (row × column direction cosines) of an ImageOrientationPatient."""
    orientation = np.asarray(orientation, dtype=np.float64)
    return np.cross(orientation[:3], orientation[3:])


def project_position(position, normal: np.ndarray) -> float | None:
    """A slice's position along the normal (mm, rounded so float noise cannot reorder ties); None if unknown."""
    if position is None or np.isnan(np.asarray(position, dtype=np.float64)).any():
        return None
    return round(float(np.dot(position, normal)), _POSITION_DECIMALS)


def keep_decoded(layout: SeriesLayout, decoded: list[int] | np.ndarray) -> SeriesLayout:
    """The layout restricted to the slices in `decoded`; raise when more than `allowed_bad_slices` are missing.

    The reasons of undecodable files are in `layout.dropped` (see `iter_stored_slices`).
    """
    n_slices = len(layout.frames)
    kept = sorted(set(int(z) for z in decoded))
    if len(kept) == n_slices:
        return layout
    first_missing = layout.frames[min(set(range(n_slices)) - set(kept))].path
    reason = dict(layout.dropped).get(str(first_missing), "not decoded")
    if not kept:
        raise SeriesReadError(f"{layout.folder}: no slice could be decoded, e.g. {first_missing}: {reason}")
    lost = n_slices - len(kept)
    if lost > allowed_bad_slices(n_slices):
        raise SeriesReadError(f"{layout.folder}: {lost} of {n_slices} slice(s) could not be decoded, more than the "
                              f"{allowed_bad_slices(n_slices)} allowed (first: {first_missing}: {reason})")
    warnings.warn(f"{layout.folder}: dropped {lost} undecodable slice(s) of {n_slices} (first {first_missing}: "
                  f"{reason})", SeriesReadWarning, stacklevel=2)
    return replace(layout, frames=[layout.frames[z] for z in kept])


def slice_index_of(index: Mapping[tuple[str, int], int], sop_uid: str, frame: int | None, where: str) -> int:
    """Slice z of a SOP instance (and its frame, for multi-frame files) in an index {(sop uid, frame): z}.

    `frame=None` is accepted only when the instance gives exactly one slice; `where` names the volume.
    """
    if frame is not None:
        if (sop_uid, int(frame)) not in index:
            raise KeyError(f"frame {frame} of SOPInstanceUID {sop_uid} is not in the {where}")
        return index[(sop_uid, int(frame))]
    matches = [z for (sop, _), z in index.items() if sop == sop_uid]
    if len(matches) > 1:
        raise KeyError(f"SOPInstanceUID {sop_uid} has {len(matches)} frames in the {where}; pass frame=")
    if not matches:
        raise KeyError(f"SOPInstanceUID {sop_uid} is not in the {where}")
    return matches[0]


def _projection(frame: FrameHeader, normal: np.ndarray) -> float:
    projected = project_position(frame.ref.position, normal)
    assert projected is not None
    return projected


def _fallback_key(frame: FrameHeader) -> tuple[int, int, int, str]:
    """InstanceNumber (absent ones last), frame index, file name: stable whatever the file order."""
    number = frame.instance_number
    return (number is None, number or 0, frame.ref.frame, frame.ref.path.name)


def _median_step(projections: list[float]) -> float | None:
    """Median of the non-zero gaps between sorted projected positions (None when all coincide)."""
    steps = np.abs(np.diff(projections))
    steps = steps[steps > 10.0**-_POSITION_DECIMALS / 2]
    return float(np.median(steps)) if steps.size else None
