"""Segmentation targets for the cls+seg model: boxes where drawn, else spheres around localizers.

No torch import. Coordinates are cache pixels; radii are millimetres converted with the cached
spacing, so a 4 mm aneurysm covers the same anatomy at any cache size.
"""

from __future__ import annotations

import numpy as np


def box_mask(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """H×W float32 mask, 1 inside any (x0, y0, x1, y1) pixel box."""
    mask = np.zeros((height, width), dtype=np.float32)
    for x0, y0, x1, y1 in np.asarray(boxes, dtype=float).reshape(-1, 4):
        c0, r0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
        c1, r1 = min(int(np.ceil(x1)), width), min(int(np.ceil(y1)), height)
        mask[r0:r1, c0:c1] = 1.0
    return mask


def sphere_mask(points: np.ndarray, z: int, height: int, width: int, spacing: tuple[float, float, float],
                radius_mm: float, kind: str = "disk") -> np.ndarray:
    """H×W float32 cross-section at slice `z` of spheres around localizer points (z, x, y).

    `kind="disk"` gives a hard disk whose radius shrinks with the distance to the point's slice
    (a sphere's cross-section); `kind="gaussian"` a Gaussian with sigma = radius / 2 in 3-D.
    """
    if kind not in ("disk", "gaussian"):
        raise ValueError(f"mask kind must be 'disk' or 'gaussian', got {kind!r}")
    dz_mm, dy_mm, dx_mm = spacing
    mask = np.zeros((height, width), dtype=np.float32)
    rows = (np.arange(height, dtype=np.float32) * dy_mm)[:, None]
    cols = (np.arange(width, dtype=np.float32) * dx_mm)[None, :]
    for pz, px, py in np.asarray(points, dtype=float).reshape(-1, 3):
        depth = (z - pz) * dz_mm
        if abs(depth) > radius_mm * (1.0 if kind == "disk" else 2.0):
            continue
        dist2 = (rows - py * dy_mm) ** 2 + (cols - px * dx_mm) ** 2 + depth ** 2
        if kind == "disk":
            mask = np.maximum(mask, (dist2 <= radius_mm ** 2).astype(np.float32))
        else:
            sigma = radius_mm / 2
            mask = np.maximum(mask, np.exp(-dist2 / (2 * sigma ** 2)).astype(np.float32))
    return mask
