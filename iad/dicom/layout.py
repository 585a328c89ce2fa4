"""From a folder of DICOM files to a sorted, consistent list of slices (headers only)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
import warnings

import numpy as np

from iad.dicom.headers import FileHeader, FrameHeader, FrameRef, PixelStorage, UnusableFile, read_header

AXIAL = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
ORIENTATION_TOLERANCE = 1e-3  # max |difference| of direction cosines still called the same plane
_POSITION_DECIMALS = 4  # projected positions closer than 0.1 µm count as ties


class SeriesReadError(Exception):
    """A folder that yields no usable slice; the message names the folder, the file and the reason."""


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

def scan_series(folder: str | Path) -> SeriesLayout:
    """Read every file's header in `folder` and return the kept slices, sorted along the slice normal.

    Dropped (listed in `dropped`): non-DICOM or unreadable files and files without a grey-level image
    (with a warning each), LOCALIZER images, and slices outside the largest group sharing series UID,
    size and orientation (one warning). Sorting is ascending by ImagePositionPatient projected on the
    normal of ImageOrientationPatient; ties go by InstanceNumber, frame index, then file name. When any
    kept slice lacks a position the whole series is sorted by that fallback key instead.
    """
    folder = Path(folder)
    headers, dropped = _read_headers(folder)
    frames = []
    for header in headers:
        for frame in header.frames:
            if frame.is_localizer:
                dropped.append(_drop_entry(header, frame, "LOCALIZER image"))
            else:
                frames.append(frame)
    if not frames:
        raise SeriesReadError(f"{folder}: no usable slice; {_summary(dropped)}")
    frames = _largest_consistent_group(folder, frames, headers, dropped)
    return _build_layout(folder, frames, headers, dropped)


def _read_headers(folder: Path) -> tuple[list[FileHeader], list[tuple[str, str]]]:
    if not folder.is_dir():
        raise SeriesReadError(f"{folder}: series folder does not exist or is not a folder")
    paths = sorted(p for p in folder.iterdir() if p.is_file())
    if not paths:
        raise SeriesReadError(f"{folder}: series folder is empty")
    headers, dropped = [], []
    for path in paths:
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


def _consistency_key(frame: FrameHeader, planes: list[np.ndarray]) -> tuple[str, int, int, int]:
    """(series, rows, cols, plane id); plane ids cluster orientations within the tolerance (-1: none)."""
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
    return frame.series_uid, frame.rows, frame.cols, plane


def _largest_consistent_group(
    folder: Path, frames: list[FrameHeader], headers: list[FileHeader], dropped: list[tuple[str, str]]
) -> list[FrameHeader]:
    """Keep the most numerous (series, size, orientation) group; ties go to the group seen first."""
    planes: list[np.ndarray] = []
    keys = [_consistency_key(frame, planes) for frame in frames]
    counts = Counter(keys)
    if len(counts) == 1:
        return frames
    kept_key = max(counts, key=counts.__getitem__)  # first maximal key in file order
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


def _describe_key(key: tuple[str, int, int, int], planes: list[np.ndarray]) -> str:
    series_uid, rows, cols, plane = key
    orientation = "none" if plane < 0 else np.array2string(planes[plane], precision=3, separator=",")
    return f"series {series_uid or '?'} {rows}x{cols} orientation {orientation}"


def _build_layout(
    folder: Path, frames: list[FrameHeader], headers: list[FileHeader], dropped: list[tuple[str, str]]
) -> SeriesLayout:
    first = frames[0]
    assumed = []
    if first.orientation is None:
        assumed.append("orientation")
    orientation = AXIAL.copy() if first.orientation is None else np.array(first.orientation, dtype=np.float64)
    if first.pixel_spacing is None:
        assumed.append("pixel_spacing")
    normal = slice_normal(orientation)

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
