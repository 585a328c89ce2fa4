"""NIfTI volumes saved under different affines come out in iad.dicom's (slice, row, column) LPS layout."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from iad.external.orientation import orient

MARK = (1, 2, 3)  # (slice, row, column) in the DICOM layout: superior-wards, posterior-wards, patient-left-wards


def reference() -> np.ndarray:
    """A (slice, row, column) volume with distinct values and one marked voxel."""
    volume = np.random.default_rng(0).integers(0, 100, size=(5, 6, 7)).astype(np.int16)
    volume[MARK] = 1000
    return volume


def rotation_z(degrees: float) -> np.ndarray:
    t = np.radians(degrees)
    return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])


def affine(columns: list[tuple[float, float, float]], spacing=(1.0, 1.0, 1.0), rotation=None) -> np.ndarray:
    """Voxel → RAS affine whose voxel axes point along `columns` (RAS unit vectors)."""
    out = np.eye(4)
    out[:3, :3] = np.array(columns, dtype=float).T * np.array(spacing)
    if rotation is not None:
        out[:3, :3] = rotation @ out[:3, :3]
    out[:3, 3] = (-40.0, 12.5, 30.0)
    return out


R, L, A, P, S, INF = (1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)


def stored(volume: np.ndarray, case: str) -> tuple[np.ndarray, np.ndarray]:
    """The reference volume as a NIfTI file stores it under `case`, written out index by index from the
    convention (column → patient left, row → posterior, slice → superior), independently of nibabel."""
    n_slices, n_rows, n_columns = volume.shape
    if case == "RAS":  # i → right, j → anterior, k → superior
        data = np.empty((n_columns, n_rows, n_slices), volume.dtype)
        for i, j, k in np.ndindex(data.shape):
            data[i, j, k] = volume[k, n_rows - 1 - j, n_columns - 1 - i]
        return data, affine([R, A, S], spacing=(0.4, 0.4, 0.8))
    if case == "LPS":  # the DICOM axes stored column-first, as dcm2niix writes them
        data = np.empty((n_columns, n_rows, n_slices), volume.dtype)
        for i, j, k in np.ndindex(data.shape):
            data[i, j, k] = volume[k, j, i]
        return data, affine([L, P, S])
    if case == "flipped":  # left-right and head-foot flipped: i → right, j → posterior, k → inferior
        data = np.empty((n_columns, n_rows, n_slices), volume.dtype)
        for i, j, k in np.ndindex(data.shape):
            data[i, j, k] = volume[n_slices - 1 - k, j, n_columns - 1 - i]
        return data, affine([R, P, INF])
    if case == "permuted":  # i → superior, j → anterior, k → left
        data = np.empty((n_slices, n_rows, n_columns), volume.dtype)
        for i, j, k in np.ndindex(data.shape):
            data[i, j, k] = volume[i, n_rows - 1 - j, k]
        return data, affine([S, A, L], spacing=(0.7, 0.5, 0.5))
    if case == "oblique":  # LPS turned 12 degrees about the head-foot axis
        data, _ = stored(volume, "LPS")
        return data, affine([L, P, S], rotation=rotation_z(12))
    raise ValueError(case)


@pytest.mark.parametrize("case", ["RAS", "LPS", "flipped", "permuted", "oblique"])
def test_marked_voxel_lands_at_the_same_slice_row_column(tmp_path, case):
    volume = reference()
    data, aff = stored(volume, case)
    path = tmp_path / f"{case}.nii.gz"
    nib.save(nib.Nifti1Image(data, aff), str(path))
    image = nib.load(str(path))
    out = orient(np.asanyarray(image.dataobj), image.affine)
    assert tuple(np.argwhere(out == 1000)[0]) == MARK
    np.testing.assert_array_equal(out, volume)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="3-D"):
        orient(np.zeros((2, 2)), np.eye(4))
    with pytest.raises(ValueError, match="4x4"):
        orient(np.zeros((2, 2, 2)), np.eye(3))
    singular = np.eye(4)
    singular[2, 2] = 0
    with pytest.raises(ValueError, match="degenerate"):
        orient(np.zeros((2, 2, 2)), singular)
