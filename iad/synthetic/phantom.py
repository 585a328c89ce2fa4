"""Render a series plan into a 3-D volume (slices x rows x columns, ascending z, modality units).

Tissues are painted back to front (scalp, skull, CSF, brain, cisterns, bones, sinuses, veins,
arteries, look-alike bulges, aneurysms) with soft one-pixel edges, then a smooth grey-matter texture,
an MR bias field and noise are added.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from iad.synthetic import anatomy
from iad.synthetic.plan import SeriesPlan, Sphere, Tube

CURVE_STEP_MM = 2.0  # vessel centrelines are sampled this finely
TEXTURE_CELL = (4, 8, 8)  # slices, rows, columns per random texture knot


class _Canvas:
    """The volume being painted, with its grid's patient and anatomical coordinates."""

    def __init__(self, plan: SeriesPlan):
        self.geometry = plan.geometry
        self.pose = plan.pose
        self.values = np.full(plan.geometry.shape, plan.appearance.air, dtype=np.float32)
        xs, ys, zs = plan.geometry.axes()
        self.x, self.y, self.z = xs[None, None, :], ys[None, :, None], zs[:, None, None]
        ax, ay, az = plan.pose.to_anatomical(xs[None, :], ys[:, None], zs)
        self.anat_x, self.anat_y = ax.astype(np.float32), ay.astype(np.float32)
        self.anat_z = az.astype(np.float32)[:, None, None]
        self.edge_mm = plan.stored_spacing[2]  # width of the soft boundary: the images' pixel

    def box(self, centre: np.ndarray, half_extent: float) -> tuple[slice, slice, slice] | None:
        """Voxel slices covering a cube around a patient point; None when it misses the grid."""
        k, i, j = self.geometry.to_voxel(centre)
        dx, dy, dz = self.geometry.spacing
        slices = []
        for position, step, size in zip((k, i, j), (dz, dy, dx), self.geometry.shape):
            lo = max(0, int(np.floor(position - half_extent / step)))
            hi = min(size, int(np.ceil(position + half_extent / step)) + 1)
            if lo >= hi:
                return None
            slices.append(slice(lo, hi))
        return tuple(slices)

    def paint(self, box: tuple[slice, slice, slice], fraction: np.ndarray, value: float | np.ndarray) -> None:
        """Blend `value` into the box by `fraction` (partial volume at the edges)."""
        region = self.values[box]
        region += fraction * (np.asarray(value, dtype=np.float32) - region)


def _ellipsoid_fraction(canvas: _Canvas, shape: anatomy.Ellipsoid, box) -> np.ndarray:
    """Soft inside-fraction of an anatomical ellipsoid over `box`."""
    angle = np.radians(shape.angle_deg)
    cx, cy, cz = shape.centre
    a, b, c = shape.semi_axes
    dx = canvas.anat_x[box[1:]] - cx
    dy = canvas.anat_y[box[1:]] - cy
    u = (np.cos(angle) * dx + np.sin(angle) * dy) / a
    v = (-np.sin(angle) * dx + np.cos(angle) * dy) / b
    w = (canvas.anat_z[box[0]] - cz) / c
    rho = np.sqrt((u * u + v * v)[None] + w * w)
    edge = canvas.edge_mm / canvas.pose.scale
    return np.clip((1.0 - rho) * (min(a, b, c) / edge) + 0.5, 0.0, 1.0)


def _paint_ellipsoid(canvas: _Canvas, shape: anatomy.Ellipsoid, value: float) -> None:
    reach = (max(shape.semi_axes) + canvas.edge_mm) * canvas.pose.scale
    box = canvas.box(canvas.pose.to_patient(np.asarray(shape.centre, dtype=float)), reach)
    if box is not None:
        canvas.paint(box, _ellipsoid_fraction(canvas, shape, box), value)


def _shrunk_head(thickness: float) -> anatomy.Ellipsoid:
    return anatomy.Ellipsoid(anatomy.HEAD_CENTRE, tuple(a - thickness for a in anatomy.HEAD_SEMI_AXES))


def _catmull_rom(points: np.ndarray, step: float) -> np.ndarray:
    """Points every ~`step` mm along the Catmull-Rom curve through `points` (N, 3)."""
    padded = np.vstack([points[:1], points, points[-1:]])
    samples = []
    for i in range(len(points) - 1):
        p0, p1, p2, p3 = padded[i : i + 4]
        count = max(1, int(np.ceil(np.linalg.norm(p2 - p1) / step)))
        t = (np.arange(count) / count)[:, None]
        m1, m2 = (p2 - p0) / 2, (p3 - p1) / 2
        samples.append(
            (2 * t**3 - 3 * t**2 + 1) * p1 + (t**3 - 2 * t**2 + t) * m1 + (-2 * t**3 + 3 * t**2) * p2 + (t**3 - t**2) * m2
        )
    samples.append(points[-1:])
    return np.vstack(samples)


def _capsule_occupancy(canvas: _Canvas, occupancy: np.ndarray, p0, p1, r0: float, r1: float) -> None:
    """Raise `occupancy` to the soft inside-fraction of a tapered capsule from p0 to p1."""
    box = canvas.box((p0 + p1) / 2, np.linalg.norm(p1 - p0) / 2 + max(r0, r1) + canvas.edge_mm)
    if box is None:
        return
    d = p1 - p0
    vx = canvas.x[..., box[2]] - p0[0]
    vy = canvas.y[:, box[1]] - p0[1]
    vz = canvas.z[box[0]] - p0[2]
    length2 = float(d @ d)
    t = np.clip((vx * d[0] + vy * d[1] + vz * d[2]) / length2, 0, 1) if length2 > 0 else np.zeros((1, 1, 1))
    distance = np.sqrt((vx - t * d[0]) ** 2 + (vy - t * d[1]) ** 2 + (vz - t * d[2]) ** 2)
    fraction = np.clip((r0 + t * (r1 - r0) - distance) / canvas.edge_mm + 0.5, 0, 1)
    np.maximum(occupancy[box], fraction, out=occupancy[box])


def _tubes_occupancy(canvas: _Canvas, tubes: dict[str, Tube]) -> np.ndarray:
    occupancy = np.zeros(canvas.values.shape, dtype=np.float32)
    for tube in tubes.values():
        curve = _catmull_rom(tube.points, CURVE_STEP_MM)
        radii = np.interp(np.linspace(0, 1, len(curve)), [0, 1], tube.radius)
        for a, b, ra, rb in zip(curve[:-1], curve[1:], radii[:-1], radii[1:]):
            _capsule_occupancy(canvas, occupancy, a, b, ra, rb)
    return occupancy


def _spheres_occupancy(canvas: _Canvas, spheres: list[Sphere]) -> np.ndarray:
    occupancy = np.zeros(canvas.values.shape, dtype=np.float32)
    for sphere in spheres:
        _capsule_occupancy(canvas, occupancy, sphere.centre, sphere.centre, sphere.radius, sphere.radius)
    return occupancy


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """Zero-mean, unit-scale random field varying over a few voxels' cells (trilinear knots)."""
    knots = tuple(max(2, n // cell + 2) for n, cell in zip(shape, TEXTURE_CELL))
    coarse = rng.standard_normal(knots).astype(np.float32)
    return ndimage.zoom(coarse, [n / k for n, k in zip(shape, knots)], order=1, grid_mode=False)[
        : shape[0], : shape[1], : shape[2]
    ]


def _bias_field(canvas: _Canvas, coefficients: tuple[float, ...]) -> np.ndarray:
    """1 + a low-order polynomial in normalised anatomical coordinates (coil sensitivity)."""
    bx, by, bz, bq = coefficients
    sx, sy, sz = anatomy.HEAD_SEMI_AXES
    planar = 1 + bx * canvas.anat_x / sx + by * canvas.anat_y / sy + bq * ((canvas.anat_x / sx) ** 2 + (canvas.anat_y / sy) ** 2)
    return planar[None] + bz * canvas.anat_z / sz


def render_volume(plan: SeriesPlan, rng: np.random.Generator) -> np.ndarray:
    """The series' volume, float32 (slices, rows, columns) in modality units, slices ascending in z."""
    look = plan.appearance
    canvas = _Canvas(plan)
    _paint_ellipsoid(canvas, _shrunk_head(0.0), look.scalp)
    _paint_ellipsoid(canvas, _shrunk_head(anatomy.SCALP_MM), look.bone)
    _paint_ellipsoid(canvas, _shrunk_head(anatomy.SCALP_MM + anatomy.SKULL_MM), look.csf)
    brain = _shrunk_head(anatomy.SCALP_MM + anatomy.SKULL_MM + anatomy.SUBARACHNOID_MM)
    box = (slice(None),) * 3
    texture = 1 + look.texture * _smooth_field(rng, canvas.values.shape)
    canvas.paint(box, _ellipsoid_fraction(canvas, brain, box), look.brain * texture)
    for shape in anatomy.CSF_SPACES:
        _paint_ellipsoid(canvas, shape, look.csf)
    for shape in anatomy.BONES:
        _paint_ellipsoid(canvas, shape, look.bone)
    for shape in anatomy.AIR_SPACES:
        _paint_ellipsoid(canvas, shape, look.air)
    canvas.paint(box, _tubes_occupancy(canvas, plan.veins), look.vein)
    canvas.paint(
        box, np.maximum(_tubes_occupancy(canvas, plan.arteries), _spheres_occupancy(canvas, list(plan.bulges))), look.artery
    )
    sacs = [part for a in plan.aneurysms for part in (a.sac, a.bleb) if part is not None]
    if sacs:
        canvas.paint(box, _spheres_occupancy(canvas, sacs), look.aneurysm)
    volume = canvas.values
    if any(look.bias):
        volume *= _bias_field(canvas, look.bias)
    noise = rng.standard_normal(volume.shape, dtype=np.float32) * np.float32(look.noise_sd)
    if plan.style.rician:
        quadrature = rng.standard_normal(volume.shape, dtype=np.float32) * np.float32(look.noise_sd)
        return np.sqrt((volume + noise) ** 2 + quadrature**2)
    return volume + noise
