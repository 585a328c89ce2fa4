"""NIfTI volumes into the array layout `iad.dicom` gives RSNA axial series (no torch).

`iad.dicom` returns an axial series as (slice, row, column) in DICOM LPS: slices ascend superior-wards,
the row index grows posterior, the column index grows towards the patient's left (radiological view).
In nibabel's RAS axis codes that is ("S", "P", "L"). The voxel axes of a NIfTI volume are matched to
these from its affine (`io_orientation`: the nearest world axis of each voxel axis, so a slightly
oblique acquisition goes to its closest plane); no per-dataset flips or rotations.
"""

from __future__ import annotations

from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform
import numpy as np

DICOM_AXCODES = ("S", "P", "L")  # (slice, row, column) of an axial series from iad.dicom, as RAS axis codes


def orientation(affine: np.ndarray) -> np.ndarray:
    """nibabel orientation (axis, flip) rows that take a volume with this affine to `DICOM_AXCODES`."""
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise ValueError(f"orient: expected a finite 4x4 affine, got shape {affine.shape}")
    start = io_orientation(affine)
    if np.isnan(start).any():
        raise ValueError("orient: the affine has a degenerate (zero or collinear) voxel axis")
    return ornt_transform(start, axcodes2ornt(DICOM_AXCODES))


def orient(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The 3-D `volume` (voxel axes as in its NIfTI `affine`) as (slice, row, column), see the module doc."""
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"orient: expected a 3-D volume, got shape {volume.shape}")
    return np.ascontiguousarray(apply_orientation(volume, orientation(affine)))
