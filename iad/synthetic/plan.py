"""Every random choice about one synthetic series, drawn from (seed, index) alone.

A plan is cheap to make (no pixels), so tables can be rebuilt for series already on disk. Patient
coordinates are DICOM LPS: +x = patient left, +y = posterior, +z = superior. With the axial
orientation [1,0,0,0,1,0] the column index grows with +x, so the patient's left is on the image's
right (radiological convention) and a left aneurysm has a larger column index than the midline.
A small share of series is coronal or sagittal (`views.NON_AXIAL_SHARES`); their view is drawn
apart from every other choice, so the axial series are the same as before views existed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
import itertools
import math

import numpy as np
from pydicom.uid import UID, generate_uid

from iad.labels import LOCATION_COLS, MODALITIES
from iad.synthetic import anatomy, frequencies
from iad.synthetic.modalities import STYLES, ModalityStyle
from iad.synthetic.views import AXIAL, NON_AXIAL_SHARES, VIEWS, View

UID_NAMESPACE = "iad-synthetic/2"  # bumped whenever the drawing changes: caches are keyed by UID
SIZE_RANGE: tuple[int, int] = (96, 192)
FIELD_OF_VIEW_MM: tuple[float, float] = (200.0, 240.0)
NON_AXIAL_FIELD_OF_VIEW_MM: tuple[float, float] = (230.0, 260.0)  # coronal/sagittal images span the head's height
SLICES_RANGE: tuple[int, int] = (24, 64)
SLAB_MM: tuple[float, float] = (55.0, 110.0)  # preferred coverage along z before the slice-count limits
SLAB_SHIFT_MM = 10.0  # how far the slab centre may move from the centre of the required range
ANEURYSM_RADIUS_MM: tuple[float, float] = (4.5, 8.0)
ANEURYSM_NECK_SHIFT = 0.6  # dome centre sits this many radii from the parent vessel's centreline
BULGE_RADIUS_MM: tuple[float, float] = (1.6, 2.6)  # look-alikes stay clearly smaller than aneurysms
DISTRACTOR_COUNT_P: tuple[float, ...] = (0.35, 0.3, 0.2, 0.15)  # P(0, 1, 2, 3 bulges)
WARP_MM: tuple[float, float] = (0.5, 2.0)  # amplitude of the smooth vessel displacement (tortuosity)
CODEC_SHARES: dict[str, float] = {"RLE": 0.2, "J2K": 0.1}  # the rest stays uncompressed
DESCENDING_SHARE = 0.15  # series whose instance/frame order runs from head to feet
# Low-discrepancy sequences spread modalities, positives and locations evenly over any run of indices.
_GOLDEN = (math.sqrt(5) - 1) / 2
_SILVER = math.sqrt(2) - 1
_BRONZE = (math.sqrt(13) - 3) / 2
_VIEW_STEP = math.sqrt(3) - 1  # the views' own sequence, rationally independent of the three above


@dataclass(frozen=True)
class Geometry:
    """The render grid, aligned with the patient axes (mm); voxel (k, i, j) lies at (z, y, x).

    For an axial series it is the stored grid (slice, row, column); a view (`SeriesPlan.view`)
    stores other planes (see `iad.synthetic.views`).
    """

    shape: tuple[int, int, int]  # voxels along z, y, x (axial: slices, rows, columns)
    origin: tuple[float, float, float]  # patient (x, y, z) of voxel (0, 0, 0)'s centre
    spacing: tuple[float, float, float]  # mm per column (x), row (y), slice (z)

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Patient x of each column, y of each row, z of each slice."""
        nz, ny, nx = self.shape
        return tuple(o + s * np.arange(n) for o, s, n in zip(self.origin, self.spacing, (nx, ny, nz)))

    def to_voxel(self, point: np.ndarray) -> np.ndarray:
        """Continuous (slice, row, column) of a patient point."""
        x, y, z = (np.asarray(point, dtype=float) - self.origin) / self.spacing
        return np.array([z, y, x])


@dataclass(frozen=True)
class Pose:
    """Places the anatomical frame in the patient: patient = R(angle) (scale * anat) + translation."""

    scale: float
    angle_rad: float
    translation: tuple[float, float, float]

    def rotate(self, vectors: np.ndarray) -> np.ndarray:
        """Anatomical directions (..., 3) expressed in patient axes."""
        c, s = math.cos(self.angle_rad), math.sin(self.angle_rad)
        x, y, z = vectors[..., 0], vectors[..., 1], vectors[..., 2]
        return np.stack([c * x - s * y, s * x + c * y, z], axis=-1)

    def to_patient(self, points: np.ndarray) -> np.ndarray:
        """Patient coordinates of anatomical points (..., 3)."""
        return self.rotate(np.asarray(points, dtype=float) * self.scale) + self.translation

    def to_anatomical(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, ...]:
        """Anatomical coordinates of patient coordinates (broadcasting x/y against each other)."""
        tx, ty, tz = self.translation
        c, s = math.cos(self.angle_rad), math.sin(self.angle_rad)
        return ((c * (x - tx) + s * (y - ty)) / self.scale, (-s * (x - tx) + c * (y - ty)) / self.scale, (z - tz) / self.scale)


@dataclass(frozen=True)
class Tube:
    """A vessel in patient coordinates: control points (N, 3) and end radii (mm)."""

    points: np.ndarray
    radius: tuple[float, float]

    def radius_at(self, index: int) -> float:
        """Radius at control point `index` (linear in the point's index)."""
        return self.radius[0] + (self.radius[1] - self.radius[0]) * index / (len(self.points) - 1)


@dataclass(frozen=True)
class Sphere:
    centre: np.ndarray  # patient mm
    radius: float


@dataclass(frozen=True)
class Aneurysm:
    location: str
    sac: Sphere
    bleb: Sphere | None  # a daughter sac on the dome, sometimes


@dataclass(frozen=True)
class Appearance:
    """Intensities drawn for one series (modality units, gain applied)."""

    air: float
    scalp: float
    bone: float
    csf: float
    brain: float
    vein: float
    artery: float
    aneurysm: float
    texture: float
    noise_sd: float
    bias: tuple[float, ...]  # coefficients of the smooth bias field (all 0 for CT)


@dataclass(frozen=True)
class SeriesPlan:
    """Everything about one series except the noise and texture (drawn while rendering)."""

    seed: int
    index: int
    modality: str
    age: int
    sex: str  # "Female" / "Male" as in train.csv
    study_uid: UID
    series_uid: UID
    frame_of_reference_uid: UID
    sop_uids: tuple[UID, ...]  # one per file, in file order
    file_names: tuple[str, ...]
    geometry: Geometry
    view: str  # "axial", "coronal" or "sagittal" (views.VIEWS)
    pose: Pose
    descending: bool  # files (or frames) ordered from the highest slice down
    codec: str | None  # requested compression: "RLE", "J2K" or None
    arteries: dict[str, Tube]
    veins: dict[str, Tube]
    aneurysms: tuple[Aneurysm, ...]
    bulges: tuple[Sphere, ...]
    appearance: Appearance

    @property
    def style(self) -> ModalityStyle:
        return STYLES[self.modality]

    @property
    def image_plane(self) -> View:
        return VIEWS[self.view]

    @property
    def stored_shape(self) -> tuple[int, int, int]:
        """(slices, rows, columns) of the stored images."""
        return self.image_plane.shape(self.geometry.shape)

    @property
    def stored_spacing(self) -> tuple[float, float, float]:
        """(slice step, row spacing, column spacing) of the stored images, mm."""
        return self.image_plane.spacing(self.geometry.spacing)

    def stored_voxel(self, point: np.ndarray) -> np.ndarray:
        """Continuous stored (slice, row, column) of a patient point."""
        return self.image_plane.stored_voxel(self.geometry.shape, self.geometry.to_voxel(point))

    @property
    def slice_order(self) -> np.ndarray:
        """Stored slice index (ascending along the slice normal) of each file or frame, in file/frame order."""
        order = np.arange(self.stored_shape[0])
        return order[::-1] if self.descending else order

    @property
    def locations(self) -> tuple[str, ...]:
        return tuple(sorted({a.location for a in self.aneurysms}, key=LOCATION_COLS.index))


def _uid(seed: int, index: int, variant: tuple, *parts: object) -> UID:
    # The variant (size range, location weights) takes part: a series drawn with other settings is
    # other data and must not share a UID.
    return generate_uid(entropy_srcs=[UID_NAMESPACE, str(seed), str(index), *map(str, variant), *map(str, parts)])


def _series_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, index, 0]))


def _view_rng(seed: int, index: int) -> np.random.Generator:
    """The generator for a non-axial series' grid, apart from the plan's other draws."""
    return np.random.default_rng(np.random.SeedSequence([seed, index, 2]))


def draw_view(seed: int, index: int) -> str:
    """Series `index`'s view: coronal or sagittal for NON_AXIAL_SHARES of the indices (a Weyl
    sequence offset by the seed, so any run of indices gets its share), axial otherwise."""
    offset = np.random.default_rng(np.random.SeedSequence([seed, 2])).random()
    u, edge = (offset + index * _VIEW_STEP) % 1.0, 0.0
    for view, share in NON_AXIAL_SHARES.items():
        edge += share
        if u < edge:
            return view
    return AXIAL


def render_rng(seed: int, index: int) -> np.random.Generator:
    """The generator for a series' noise and texture, independent of the plan's draws."""
    return np.random.default_rng(np.random.SeedSequence([seed, index, 1]))


def _weyl_draws(seed: int, index: int) -> np.ndarray:
    """Series `index`'s values of three Weyl sequences (modality, positive flag, first location), each
    offset by the seed: any run of indices spreads over [0, 1) far more evenly than random draws."""
    offsets = np.random.default_rng(np.random.SeedSequence([seed])).random(3)
    return (offsets + index * np.array([_GOLDEN, _SILVER, _BRONZE])) % 1.0


def _modality_and_label(u: float, v: float, positive_share: float | None) -> tuple[str, bool]:
    """Modality and positive flag from two Weyl sequence values.

    Modality shares match the real table; so do the per-modality positive shares unless
    `positive_share` sets one share for every modality.
    """
    cumulative = np.cumsum([frequencies.MODALITY_COUNTS[m] for m in MODALITIES]) / frequencies.TOTAL_SERIES
    modality = MODALITIES[int(np.searchsorted(cumulative, u, side="right"))]
    share = positive_share
    if share is None:
        share = frequencies.POSITIVE_COUNTS[modality] / frequencies.MODALITY_COUNTS[modality]
    return modality, bool(v < share)


def _draw_locations(w: float, rng: np.random.Generator, weights: dict[str, float],
                    multi_share: float | None = None) -> list[str]:
    """The first location from the Weyl value `w` (so even a small dataset matches the shares), a
    second one for the real share of multi-location series (or `multi_share` of them)."""
    shares = np.array([weights[c] for c in LOCATION_COLS], dtype=float)
    shares /= shares.sum()
    first = min(int(np.searchsorted(np.cumsum(shares), w, side="right")), len(shares) - 1)
    picks = [first]
    if multi_share is None:
        multi_share = frequencies.MULTI_LOCATION_POSITIVES / frequencies.POSITIVE_SERIES
    if rng.random() < multi_share:
        rest = shares.copy()
        rest[first] = 0.0
        picks.append(int(rng.choice(len(shares), p=rest / rest.sum())))
    return [LOCATION_COLS[i] for i in sorted(picks)]


def _draw_pose(rng: np.random.Generator) -> Pose:
    return Pose(
        scale=float(rng.uniform(0.93, 1.07)),
        angle_rad=math.radians(rng.uniform(-6.0, 6.0)),
        translation=(float(rng.uniform(-5, 5)), float(rng.uniform(-25, 0)), float(rng.uniform(-80, 80))),
    )


def _image_size(rng: np.random.Generator, size_range: tuple[int, int],
                field_of_view: tuple[float, float]) -> tuple[int, int, float]:
    """Columns, rows (a multiple of 8 within `size_range`, sometimes taller than wide) and square pixel (mm)."""
    lo, hi = size_range
    columns = int(rng.integers(lo // 8, hi // 8 + 1)) * 8
    rows = columns if rng.random() < 0.7 else min(hi, columns + 16 * int(rng.integers(1, 3)))
    return columns, rows, round(float(rng.uniform(*field_of_view)) / columns, 4)


def _slab(rng: np.random.Generator, style: ModalityStyle, low: float, high: float, max_slices: int) -> tuple[int, float, float]:
    """Slices, step and first slice's position (mm) of a slab along the slice axis covering [low, high]."""
    step = round(max(float(rng.uniform(*style.slice_spacing)), (high - low) / (max_slices - 1)), 4)
    needed = math.ceil((high - low) / step) + 1
    slices = int(np.clip(max(needed, round(rng.uniform(*SLAB_MM) / step)), SLICES_RANGE[0], max_slices))
    slack = (slices - 1) * step - (high - low)
    return slices, step, low - slack / 2 + rng.uniform(-1, 1) * min(slack / 2, SLAB_SHIFT_MM)


def _draw_geometry(rng: np.random.Generator, style: ModalityStyle, pose: Pose, size_range: tuple[int, int],
                   max_slices: int) -> Geometry:
    columns, rows, pixel = _image_size(rng, size_range, FIELD_OF_VIEW_MM)
    z_lo, z_hi = (pose.translation[2] + pose.scale * z for z in anatomy.REQUIRED_Z_RANGE)
    slices, step, z0 = _slab(rng, style, z_lo, z_hi, max_slices)
    head_x, head_y, _ = pose.to_patient(np.array(anatomy.HEAD_CENTRE))
    centre_x, centre_y = head_x + rng.uniform(-6, 6), head_y + rng.uniform(-6, 6)
    origin = (centre_x - (columns - 1) / 2 * pixel, centre_y - (rows - 1) / 2 * pixel, z0)
    return Geometry((slices, rows, columns), tuple(round(float(v), 4) for v in origin), (pixel, pixel, step))


def _draw_view_geometry(rng: np.random.Generator, style: ModalityStyle, pose: Pose, size_range: tuple[int, int],
                        max_slices: int, view: View) -> Geometry:
    """The render grid of a coronal or sagittal series: square pixels over the head's height (rows
    along z) and width or depth (columns), slices over a slab that holds every aneurysm location."""
    columns, rows, pixel = _image_size(rng, size_range, NON_AXIAL_FIELD_OF_VIEW_MM)
    through, across = 2 - view.axes[0], 2 - view.axes[2]  # patient axes of the slices and of the columns
    ranges = (anatomy.REQUIRED_X_RANGE, anatomy.REQUIRED_Y_RANGE, anatomy.REQUIRED_Z_RANGE)
    along = pose.to_patient(np.array(list(itertools.product(*ranges))))[:, through]  # the required box's corners
    counts, spacing, origin = [0, 0, 0], [pixel] * 3, [0.0, 0.0, 0.0]  # patient x, y, z
    counts[through], spacing[through], origin[through] = _slab(rng, style, float(along.min()), float(along.max()), max_slices)
    head = pose.to_patient(np.array(anatomy.HEAD_CENTRE))
    for axis, n in ((across, columns), (2, rows)):
        counts[axis] = n
        origin[axis] = head[axis] + rng.uniform(-6, 6) - (n - 1) / 2 * pixel
    return Geometry((counts[2], counts[1], counts[0]), tuple(round(float(v), 4) for v in origin), tuple(spacing))


def _smooth_warp(rng: np.random.Generator) -> Callable[[np.ndarray], np.ndarray]:
    """A smooth random displacement of anatomical points: kinks and asymmetry, same at shared points."""
    amplitude = rng.uniform(*WARP_MM)
    directions = rng.normal(size=(3, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    wave = rng.normal(size=(3, 3))
    wave *= (2 * np.pi / rng.uniform(25, 60, size=(3, 1))) / np.linalg.norm(wave, axis=1, keepdims=True)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    return lambda points: points + amplitude / np.sqrt(3) * np.sin(points @ wave.T + phase) @ directions


def _place_vessels(
    vessels: dict[str, anatomy.Vessel], warp: Callable[[np.ndarray], np.ndarray], pose: Pose, radius_scale: float
) -> dict[str, Tube]:
    return {
        name: Tube(
            pose.to_patient(warp(np.asarray(v.points, dtype=float))), tuple(r * radius_scale * pose.scale for r in v.radius)
        )
        for name, v in vessels.items()
    }


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-9)


def _draw_aneurysm(rng: np.random.Generator, location: str, arteries: dict[str, Tube], pose: Pose) -> Aneurysm:
    region = anatomy.REGIONS[location]
    vessel, index = region.anchors[int(rng.integers(len(region.anchors)))]
    anchor = arteries[vessel].points[index]
    dome = pose.rotate(_unit(np.asarray(region.dome_direction) + 0.5 * rng.normal(size=3)))
    radius = float(rng.uniform(*ANEURYSM_RADIUS_MM)) * pose.scale
    centre = anchor + ANEURYSM_NECK_SHIFT * radius * dome
    bleb = None
    if rng.random() < 0.3:
        bleb_radius = radius * rng.uniform(0.3, 0.45)
        bleb_direction = _unit(dome + 0.6 * rng.normal(size=3))
        bleb = Sphere(centre + (radius + 0.3 * bleb_radius) * bleb_direction, float(bleb_radius))
    return Aneurysm(location, Sphere(centre, radius), bleb)


def _draw_bulges(rng: np.random.Generator, arteries: dict[str, Tube]) -> tuple[Sphere, ...]:
    count = int(rng.choice(len(DISTRACTOR_COUNT_P), p=DISTRACTOR_COUNT_P))
    sites = rng.choice(len(anatomy.DISTRACTOR_SITES), size=count, replace=False)
    bulges = []
    for site in sites:
        vessel, index = anatomy.DISTRACTOR_SITES[site]
        tube = arteries[vessel]
        radius = float(np.clip(tube.radius_at(index) * rng.uniform(1.25, 1.6), *BULGE_RADIUS_MM))
        shift = 0.5 * radius * _unit(rng.normal(size=3))
        bulges.append(Sphere(tube.points[index] + shift, radius))
    return tuple(bulges)


def _draw_appearance(rng: np.random.Generator, style: ModalityStyle) -> Appearance:
    gain = rng.uniform(*style.gain)
    artery = rng.uniform(*style.artery)
    tissues = {name: getattr(style, name) * gain for name in ("air", "scalp", "bone", "csf", "brain", "vein")}
    bias = tuple(rng.uniform(-style.bias, style.bias, size=4)) if style.bias else (0.0,) * 4
    return Appearance(
        **tissues,
        artery=artery * gain,
        aneurysm=artery * gain * rng.uniform(*style.aneurysm_ratio),
        texture=style.texture,
        noise_sd=rng.uniform(*style.noise_sd) * gain,
        bias=tuple(float(b) for b in bias),
    )


def plan_series(seed: int, index: int, size_range: tuple[int, int] = SIZE_RANGE, locations: str = "real",
                positive_share: float | None = None, max_slices: int = SLICES_RANGE[1], *,
                modality: str | None = None, multi_share: float | None = None) -> SeriesPlan:
    """Draw every choice for series `index` of the dataset made with `seed`.

    `locations` names the aneurysm location shares (`frequencies.LOCATION_WEIGHTS`: real or
    uniform); `positive_share` sets the share of positive series in every modality (None: the real
    per-modality shares); `max_slices` caps the slices per series (the slab still covers every
    aneurysm location, with thicker slices when needed). `modality` forces one modality and
    `multi_share` the share of positives with a second location (None: the real shares; both take
    part in the UIDs only when set, so existing datasets keep theirs).
    """
    if not SLICES_RANGE[0] <= max_slices <= SLICES_RANGE[1]:
        raise ValueError(f"max_slices must be in {list(SLICES_RANGE)}, got {max_slices}")
    if locations not in frequencies.LOCATION_WEIGHTS:
        raise ValueError(f"locations must be one of {sorted(frequencies.LOCATION_WEIGHTS)}, got {locations!r}")
    if positive_share is not None and not 0.0 <= positive_share <= 1.0:
        raise ValueError(f"positive_share must be in [0, 1] or None, got {positive_share}")
    if modality is not None and modality not in MODALITIES:
        raise ValueError(f"modality must be one of {list(MODALITIES)} or None, got {modality!r}")
    overrides = tuple(f"{k}={v}" for k, v in (("modality", modality), ("multi_share", multi_share)) if v is not None)
    variant = (tuple(size_range), locations, positive_share, max_slices, *overrides)
    rng = _series_rng(seed, index)
    u, v, w = _weyl_draws(seed, index)
    drawn_modality, positive = _modality_and_label(u, v, positive_share)
    modality = modality or drawn_modality
    style = STYLES[modality]
    pose = _draw_pose(rng)
    geometry = _draw_geometry(rng, style, pose, size_range, max_slices)
    view = draw_view(seed, index)
    if view != AXIAL:  # the axial draw above still runs, so every later draw stays the same
        geometry = _draw_view_geometry(_view_rng(seed, index), style, pose, size_range, max_slices, VIEWS[view])
    warp = _smooth_warp(rng)
    radius_scale = rng.uniform(0.9, 1.1)
    arteries = _place_vessels(anatomy.ARTERIES, warp, pose, radius_scale)
    veins = _place_vessels(anatomy.VEINS, warp, pose, 1.0)
    drawn = _draw_locations(w, rng, frequencies.LOCATION_WEIGHTS[locations], multi_share) if positive else []
    aneurysms = tuple(_draw_aneurysm(rng, location, arteries, pose) for location in drawn)
    bulges = _draw_bulges(rng, arteries)
    n_files = 1 if style.multi_frame else VIEWS[view].shape(geometry.shape)[0]
    codec_draw = rng.random()
    codec = "RLE" if codec_draw < CODEC_SHARES["RLE"] else "J2K" if codec_draw < sum(CODEC_SHARES.values()) else None
    female = rng.random() < frequencies.FEMALE_SERIES / frequencies.TOTAL_SERIES
    age = int(np.clip(round(rng.normal(frequencies.AGE_MEAN, frequencies.AGE_SD)), frequencies.AGE_MIN, frequencies.AGE_MAX))
    plane = () if view == AXIAL else (view,)  # a non-axial series is other data than the axial one it replaced
    return SeriesPlan(
        seed=seed,
        index=index,
        modality=modality,
        age=age,
        sex="Female" if female else "Male",
        study_uid=_uid(seed, index, variant, *plane, "study"),
        series_uid=_uid(seed, index, variant, *plane, "series"),
        frame_of_reference_uid=_uid(seed, index, variant, *plane, "frame-of-reference"),
        sop_uids=tuple(_uid(seed, index, variant, *plane, "sop", i) for i in range(n_files)),
        file_names=tuple(rng.bytes(16).hex() + ".dcm" for _ in range(n_files)),
        geometry=geometry,
        view=view,
        pose=pose,
        descending=bool(rng.random() < DESCENDING_SHARE),
        codec=codec,
        arteries=arteries,
        veins=veins,
        aneurysms=aneurysms,
        bulges=bulges,
        appearance=_draw_appearance(rng, style),
    )


def localizer(plan: SeriesPlan, aneurysm: Aneurysm) -> tuple[UID, dict[str, float | int]]:
    """SOPInstanceUID and coordinates dict ({'x', 'y'} and 'f' for multi-frame) of an aneurysm's centre."""
    k, row, column = plan.stored_voxel(aneurysm.sac.centre)
    slice_index = int(np.clip(round(k), 0, plan.stored_shape[0] - 1))
    position = int(np.flatnonzero(plan.slice_order == slice_index)[0])
    coordinates: dict[str, float | int] = {"x": round(float(column), 2), "y": round(float(row), 2)}
    if plan.style.multi_frame:
        coordinates["f"] = position
        return plan.sop_uids[0], coordinates
    return plan.sop_uids[position], coordinates
