"""The phantom's anatomy: vessel centrelines, aneurysm regions, tissue shapes and label frequencies.

Everything here is in an *anatomical* frame in millimetres with the DICOM LPS axes: +x = patient
left, +y = posterior, +z = superior, origin at the centre of the circle of Willis. Paired structures
are written once for the left side (x > 0) and mirrored to the right (x -> -x), so every left
location has a right twin at the mirror position and a horizontal image flip is a left/right swap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from iad.labels import LOCATION_COLS

Point = tuple[float, float, float]


@dataclass(frozen=True)
class Vessel:
    """A tube along a Catmull-Rom curve through `points`; radius interpolated from first to last."""

    points: tuple[Point, ...]
    radius: tuple[float, float]


@dataclass(frozen=True)
class Region:
    """Where a location's aneurysms sit: anchor points on vessels and the direction the dome points."""

    anchors: tuple[tuple[str, int], ...]  # (vessel name, index of a control point)
    dome_direction: Point


@dataclass(frozen=True)
class Ellipsoid:
    """An ellipsoid turned by `angle_deg` about the superior axis (positive: +x towards +y)."""

    centre: Point
    semi_axes: Point
    angle_deg: float = 0.0


# Left-side and midline arteries (a rough circle of Willis with its feeders and first branches).
_LEFT_ARTERIES: dict[str, Vessel] = {
    # Petrous/cavernous ICA rising, bending forwards (carotid siphon), then up and back to the terminus.
    "ICA": Vessel(
        ((17, 16, -52), (18, 10, -34), (20, 2, -20), (18, -7, -13), (16, -7, -6), (14, -2, -1), (14, 1, 2)), (2.3, 2.0)
    ),
    "M1": Vessel(((14, 1, 2), (24, -1, 3), (34, -1, 4), (42, 1, 5)), (1.6, 1.5)),
    "M2_superior": Vessel(((42, 1, 5), (50, -4, 10), (57, 0, 18), (61, 8, 27)), (1.2, 1.0)),
    "M2_inferior": Vessel(((42, 1, 5), (50, 7, 2), (56, 17, 4), (59, 28, 9)), (1.2, 1.0)),
    "A1": Vessel(((14, 1, 2), (10, -6, 4), (5, -12, 6), (1.5, -16, 7)), (1.3, 1.2)),
    "A2": Vessel(((1.5, -16, 7), (2.5, -22, 16), (3, -31, 26), (3, -42, 35)), (1.2, 1.0)),
    "PComm": Vessel(((14, -2, -1), (13.5, 4, -1.5), (11.5, 12, -1.5), (9, 19, -1)), (0.8, 0.8)),
    "PCA": Vessel(((0, 18, -2), (5, 18, -1.5), (9, 19, -1), (18, 26, 1), (26, 34, 3), (31, 46, 6)), (1.3, 1.0)),
    "SCA": Vessel(((0, 19.5, -6), (8, 20, -7), (16, 26, -6), (22, 36, -4)), (0.9, 0.8)),
    "vertebral": Vessel(((12, 36, -78), (9, 32, -64), (4, 28, -54), (0, 26, -46)), (1.6, 1.5)),
}
_MIDLINE_ARTERIES: dict[str, Vessel] = {
    "basilar": Vessel(((0, 26, -46), (0, 24, -34), (0, 21, -20), (0, 19, -9), (0, 18, -2)), (1.7, 1.6)),
    "AComm": Vessel(((-1.5, -16, 7), (0, -16.5, 7), (1.5, -16, 7)), (0.8, 0.8)),
}
# Transverse and sigmoid sinuses along the inside of the posterior skull (left half).
_LEFT_VEINS: dict[str, Vessel] = {
    "transverse_sinus": Vessel(
        ((0, 78, -6), (22, 72, -7), (38, 60, -9), (48, 42, -12), (50, 26, -22), (46, 18, -38)), (3.0, 3.0)
    ),
}

# Left and midline regions; a right region mirrors its left twin ("L_"/"R_" vessel prefixes).
_LEFT_REGIONS: dict[str, Region] = {
    "Infraclinoid Internal Carotid Artery": Region((("L_ICA", 2),), (1.0, -0.5, 0.0)),
    "Supraclinoid Internal Carotid Artery": Region((("L_ICA", 4),), (0.5, -1.0, 0.2)),
    "Middle Cerebral Artery": Region((("L_M1", 3),), (1.0, 0.0, 0.3)),
    "Anterior Cerebral Artery": Region((("L_A1", 2),), (0.7, -0.7, 0.2)),
    "Posterior Communicating Artery": Region((("L_PComm", 1),), (0.5, 1.0, -0.3)),
}
_MIDLINE_REGIONS: dict[str, Region] = {
    "Anterior Communicating Artery": Region((("AComm", 1),), (0.0, -1.0, 0.3)),
    "Basilar Tip": Region((("basilar", 4),), (0.0, 0.2, 1.0)),
    # PCA (P2), superior cerebellar artery or basilar trunk, either side; the dome points anywhere.
    "Other Posterior Circulation": Region(
        (("L_PCA", 4), ("R_PCA", 4), ("L_SCA", 2), ("R_SCA", 2), ("basilar", 2)), (0.0, 0.0, 0.0)
    ),
}

HEAD_CENTRE: Point = (0.0, 6.0, -5.0)
HEAD_SEMI_AXES: Point = (72.0, 92.0, 110.0)  # outer surface of the scalp
SCALP_MM = 5.0
SKULL_MM = 6.0
SUBARACHNOID_MM = 1.5  # CSF between the inner skull and the brain
# Sub-structures painted over the brain, in this order.
CSF_SPACES: tuple[Ellipsoid, ...] = (
    Ellipsoid((0, 0, 1), (22, 20, 7)),  # suprasellar cistern around the circle of Willis
    Ellipsoid((0, 22, -18), (9, 6, 16)),  # prepontine cistern around the basilar artery
    Ellipsoid((36, 0, 4), (18, 4, 7), -8),  # Sylvian fissures along M1
    Ellipsoid((-36, 0, 4), (18, 4, 7), 8),
    Ellipsoid((9, 6, 26), (5, 24, 9), 8),  # lateral ventricles
    Ellipsoid((-9, 6, 26), (5, 24, 9), -8),
    Ellipsoid((0, 6, 10), (2, 9, 7)),  # third ventricle
    Ellipsoid((0, 42, -18), (6, 4, 6)),  # fourth ventricle
    Ellipsoid((32, -60, -8), (11, 11, 11)),  # eyes (vitreous: fluid like CSF)
    Ellipsoid((-32, -60, -8), (11, 11, 11)),
)
BONES: tuple[Ellipsoid, ...] = (
    Ellipsoid((31, 22, -27), (22, 6, 6), 40),  # petrous ridges
    Ellipsoid((-31, 22, -27), (22, 6, 6), -40),
    Ellipsoid((0, 13, -34), (7, 4, 14)),  # clivus
)
AIR_SPACES: tuple[Ellipsoid, ...] = (Ellipsoid((0, -12, -28), (11, 9, 7)),)  # sphenoid sinus

# The slab the images must cover (anatomical z, mm): every region, plus dome offset and radius.
REQUIRED_Z_RANGE: tuple[float, float] = (-35.0, 22.0)
# The same along x and y, for the slabs of coronal (y) and sagittal (x) series.
REQUIRED_X_RANGE: tuple[float, float] = (-58.0, 58.0)
REQUIRED_Y_RANGE: tuple[float, float] = (-32.0, 50.0)


def mirror(point: Point) -> Point:
    """The point's mirror image across the mid-sagittal plane (x = 0)."""
    return (-point[0], point[1], point[2])


def _mirror_name(name: str) -> str:
    return "R_" + name[2:] if name.startswith("L_") else name


def _paired(left: dict[str, Vessel]) -> dict[str, Vessel]:
    vessels = {}
    for name, vessel in left.items():
        vessels["L_" + name] = vessel
        vessels["R_" + name] = Vessel(tuple(mirror(p) for p in vessel.points), vessel.radius)
    return vessels


ARTERIES: dict[str, Vessel] = {**_paired(_LEFT_ARTERIES), **_MIDLINE_ARTERIES}
VEINS: dict[str, Vessel] = _paired(_LEFT_VEINS)


def _all_regions() -> dict[str, Region]:
    regions: dict[str, Region] = dict(_MIDLINE_REGIONS)
    for name, region in _LEFT_REGIONS.items():
        regions["Left " + name] = region
        regions["Right " + name] = Region(
            tuple((_mirror_name(vessel), index) for vessel, index in region.anchors), mirror(region.dome_direction)
        )
    return {location: regions[location] for location in LOCATION_COLS}


REGIONS: dict[str, Region] = _all_regions()

# Places where a vessel branches or bends: look-alike bulges (never as large as an aneurysm) go here.
DISTRACTOR_SITES: tuple[tuple[str, int], ...] = tuple(
    (side + name, index)
    for side in ("L_", "R_")
    for name, index in (("ICA", 6), ("ICA", 3), ("M1", 3), ("PComm", 0), ("PCA", 2), ("A1", 3), ("M2_superior", 2))
) + (("basilar", 4), ("basilar", 1))


def region_anchor(location: str) -> np.ndarray:
    """The nominal (unperturbed) anatomical anchor of a location's first anchor point."""
    vessel, index = REGIONS[location].anchors[0]
    return np.asarray(ARTERIES[vessel].points[index], dtype=float)
