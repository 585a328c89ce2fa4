"""Image planes of a synthetic series: how the patient-aligned render grid is stored as images.

A phantom is rendered on a grid whose axes are the patient's (slices along z, rows along y,
columns along x; see `plan.Geometry`). A view stores that grid as (slice, row, column) images by
permuting and flipping its axes: axial keeps it, coronal images are (x → columns, feet → rows) and
slices run to the back, sagittal images are (y → columns, feet → rows) and slices run from the
patient's left to the right. Slices always ascend along the slice normal (row × column cosines),
the order `iad.dicom` sorts them in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AXIAL = "axial"


@dataclass(frozen=True)
class View:
    """Stored axis a (slice, row, column) is render axis `axes[a]` (0 = z, 1 = y, 2 = x), reversed
    where `flipped[a]`."""

    axes: tuple[int, int, int]
    flipped: tuple[bool, bool, bool]

    @property
    def orientation(self) -> tuple[int, ...]:
        """ImageOrientationPatient: patient direction of a row (columns grow), then of a column."""
        return (*self._direction(2), *self._direction(1))

    @property
    def normal(self) -> np.ndarray:
        """The slice normal (row × column cosines), along which stored slices ascend."""
        return np.cross(self._direction(2), self._direction(1)).astype(float)

    def _direction(self, stored_axis: int) -> tuple[int, int, int]:
        patient = [0, 0, 0]
        patient[2 - self.axes[stored_axis]] = -1 if self.flipped[stored_axis] else 1  # render z, y, x → patient x, y, z
        return tuple(patient)

    def shape(self, render_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """Stored (slices, rows, columns) of a render grid of `render_shape` (z, y, x)."""
        return tuple(render_shape[axis] for axis in self.axes)

    def spacing(self, render_spacing: tuple[float, float, float]) -> tuple[float, float, float]:
        """Stored (slice step, row spacing, column spacing) in mm from the render grid's (x, y, z) spacing."""
        return tuple(render_spacing[2 - axis] for axis in self.axes)

    def to_stored(self, volume: np.ndarray) -> np.ndarray:
        """The render volume (z, y, x) as stored (slice, row, column) images (a view, not a copy)."""
        stored = volume.transpose(self.axes)
        return stored[tuple(slice(None, None, -1) if flip else slice(None) for flip in self.flipped)]

    def stored_voxel(self, render_shape: tuple[int, int, int], voxel: np.ndarray) -> np.ndarray:
        """Continuous stored (slice, row, column) of a continuous render voxel (z, y, x)."""
        voxel = np.asarray(voxel, dtype=float)
        return np.array([render_shape[axis] - 1 - voxel[axis] if flip else voxel[axis]
                         for axis, flip in zip(self.axes, self.flipped)])

    def render_index(self, render_shape: tuple[int, int, int], stored: tuple[int, int, int]) -> tuple[int, int, int]:
        """Render voxel (z, y, x) of an integer stored voxel (slice, row, column)."""
        index = [0, 0, 0]
        for axis, flip, value in zip(self.axes, self.flipped, stored):
            index[axis] = render_shape[axis] - 1 - value if flip else value
        return tuple(index)


VIEWS: dict[str, View] = {
    AXIAL: View(axes=(0, 1, 2), flipped=(False, False, False)),
    "coronal": View(axes=(1, 0, 2), flipped=(False, True, False)),
    "sagittal": View(axes=(2, 0, 1), flipped=(True, True, False)),
}
# Share of each non-axial view among the series (the real table: ~2% coronal, ~1.5% sagittal).
NON_AXIAL_SHARES: dict[str, float] = {"coronal": 0.03, "sagittal": 0.02}
