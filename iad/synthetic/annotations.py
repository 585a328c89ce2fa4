"""LabelImg boxes of a synthetic dataset, in the layout of the reference's box archive (see `iad.boxes`).

`<root>/boxes/annotations/<SeriesInstanceUID>/<SOPInstanceUID>[_<frame>].xml`: the aneurysm boxes
of every slice an aneurysm (sac or daughter sac) crosses; `<root>/boxes/brain_det/annotations/
<SeriesInstanceUID>.xml`: the head's box on the mean-over-slices image, class `brain` for axial
series and `abnormal` for the others, with the `train.txt` / `val.txt` split lists. Every box is the
plan's exact geometry projected onto the stored images, never guessed from pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
import hashlib
import json
import math
import os
from pathlib import Path
import shutil

import numpy as np

from iad.boxes import ANEURYSM_CLASSES, BRAIN_CLASSES, BRAIN_SPLITS, Box, labelimg_xml
from iad.synthetic import anatomy
from iad.synthetic.plan import SeriesPlan, Sphere
from iad.synthetic.views import AXIAL

BOXES_DIR = "boxes"
ANEURYSM_DIR = "annotations"
BRAIN_DIR = "brain_det"
BRAIN_IMAGES = "images"  # the split lists name `images/<uid>.png` (the images themselves are not written)
RECORD_FILE = "synthetic_boxes.json"
BOXES_VERSION = 1  # bumped whenever the boxes drawn for a plan change
VAL_SHARE = 0.2  # brain detector's validation share
T2_MODALITY = "MRI T2"  # its aneurysms have their own class, as in the reference


def aneurysm_class(modality: str) -> str:
    return ANEURYSM_CLASSES[1] if modality == T2_MODALITY else ANEURYSM_CLASSES[0]


def brain_class(plan: SeriesPlan) -> str:
    return BRAIN_CLASSES[0] if plan.view == AXIAL else BRAIN_CLASSES[1]


def image_stem(plan: SeriesPlan, slice_index: int) -> str:
    """`<SOPInstanceUID>` of a stored slice's file, `<SOPInstanceUID>_<frame>` for a multi-frame file."""
    position = int(np.flatnonzero(plan.slice_order == slice_index)[0])
    return f"{plan.sop_uids[0]}_{position}" if plan.style.multi_frame else plan.sop_uids[position]


def _cross_section(plan: SeriesPlan, sphere: Sphere, slice_index: int) -> tuple[float, ...] | None:
    """(xmin, ymin, xmax, ymax) in pixel-edge coordinates of a sphere's disc in a stored slice's plane."""
    k, row, column = plan.stored_voxel(sphere.centre)
    step, row_mm, column_mm = plan.stored_spacing
    distance = (slice_index - k) * step
    if abs(distance) >= sphere.radius:
        return None
    radius = math.sqrt(sphere.radius**2 - distance**2)
    # pixel j covers [j, j + 1): a centre at column c lies at edge coordinate c + 0.5
    return (column + 0.5 - radius / column_mm, row + 0.5 - radius / row_mm,
            column + 0.5 + radius / column_mm, row + 0.5 + radius / row_mm)


def _pixel_box(extent: Sequence[float], cls: str, width: int, height: int) -> Box | None:
    """The smallest whole-pixel box holding `extent`, clipped to the image (None when nothing is left)."""
    xmin, ymin = max(0, math.floor(extent[0])), max(0, math.floor(extent[1]))
    xmax, ymax = min(width, math.ceil(extent[2])), min(height, math.ceil(extent[3]))
    return Box(xmin, ymin, xmax, ymax, cls, width, height) if xmin < xmax and ymin < ymax else None


def aneurysm_boxes(plan: SeriesPlan) -> dict[str, list[Box]]:
    """Image stem (see `image_stem`) → boxes, one per aneurysm crossing that slice (sac and daughter sac)."""
    n_slices, rows, columns = plan.stored_shape
    cls = aneurysm_class(plan.modality)
    by_slice: dict[int, list[Box]] = {}
    for aneurysm in plan.aneurysms:
        parts = [part for part in (aneurysm.sac, aneurysm.bleb) if part is not None]
        for z in range(n_slices):
            discs = [disc for disc in (_cross_section(plan, part, z) for part in parts) if disc is not None]
            if not discs:
                continue
            union = (*np.min(discs, axis=0)[:2], *np.max(discs, axis=0)[2:])
            box = _pixel_box(union, cls, columns, rows)
            if box is not None:
                by_slice.setdefault(z, []).append(box)
    return {image_stem(plan, z): boxes for z, boxes in sorted(by_slice.items())}


def head_projection(plan: SeriesPlan) -> np.ndarray:
    """(rows, columns) bool: stored pixels whose line through the slices meets the head (scalp surface).

    A voxel counts when its centre is inside the head ellipsoid: where the phantom paints it more than half.
    """
    xs, ys, zs = plan.geometry.axes()
    ax, ay, az = plan.pose.to_anatomical(xs[None, :], ys[:, None], zs)
    (cx, cy, cz), (a, b, c) = anatomy.HEAD_CENTRE, anatomy.HEAD_SEMI_AXES
    in_plane = ((ax - cx) / a) ** 2 + ((ay - cy) / b) ** 2
    inside = in_plane[None] + (((az - cz) / c) ** 2)[:, None, None] < 1.0
    return plan.image_plane.to_stored(inside).any(axis=0)


def brain_box(plan: SeriesPlan) -> Box:
    """The head's box on the series' mean-over-slices image (original pixels), class by view."""
    _, rows, columns = plan.stored_shape
    head = head_projection(plan)
    if not head.any():
        raise ValueError(f"series {plan.series_uid}: the head misses every image")
    ys, xs = np.flatnonzero(head.any(axis=1)), np.flatnonzero(head.any(axis=0))
    return Box(int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1, brain_class(plan), columns, rows)


def brain_splits(series_uids: Sequence[str]) -> dict[str, str]:
    """SeriesInstanceUID → "train" / "val": VAL_SHARE of the series by a hash of their uid (so a
    series keeps its split when the dataset grows), at least one in each when there are two."""
    score = {uid: int(hashlib.sha256(uid.encode()).hexdigest()[:12], 16) / 16**12 for uid in series_uids}
    train, val = BRAIN_SPLITS
    splits = {uid: val if score[uid] < VAL_SHARE else train for uid in series_uids}
    for wanted, pick in ((val, min), (train, max)):
        if len(splits) >= 2 and wanted not in splits.values():
            splits[pick(score, key=score.get)] = wanted
    return splits


def boxes_record(settings: dict) -> dict:
    """What `RECORD_FILE` holds for a dataset made with `settings` (a `dataset_settings` dict)."""
    return {"version": BOXES_VERSION, "settings": settings}


def read_boxes_record(root: str | os.PathLike) -> dict | None:
    """The record of the box folder under dataset `root` (None when there is none)."""
    path = Path(root) / BOXES_DIR / RECORD_FILE
    return json.loads(path.read_text()) if path.exists() else None


def write_boxes(root: str | os.PathLike, plans: Sequence[SeriesPlan], settings: dict) -> Path:
    """Write the box folder of dataset `root` for `plans`; returns it.

    The files go to a hidden sibling folder that replaces `<root>/boxes` by a rename once complete,
    so a reader sees the old folder or the new one, never half of it. Call under the dataset's lock.
    """
    root = Path(root)
    for stale in root.glob(f".{BOXES_DIR}.*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    partial = root / f".{BOXES_DIR}.partial-{os.getpid()}"
    partial.mkdir(parents=True)
    try:
        _write_tree(partial, plans)
        (partial / RECORD_FILE).write_text(json.dumps(boxes_record(settings), indent=1) + "\n")
        target = root / BOXES_DIR
        old = root / f".{BOXES_DIR}.old-{os.getpid()}"
        if target.exists():
            target.rename(old)
        partial.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return target


def _write_tree(folder: Path, plans: Sequence[SeriesPlan]) -> None:
    brain_dir = folder / BRAIN_DIR / ANEURYSM_DIR
    brain_dir.mkdir(parents=True)
    for plan in plans:
        files = aneurysm_boxes(plan)
        if files:
            series_dir = folder / ANEURYSM_DIR / plan.series_uid
            series_dir.mkdir(parents=True)
        _, rows, columns = plan.stored_shape
        for stem, boxes in files.items():
            (series_dir / f"{stem}.xml").write_text(labelimg_xml(f"{stem}.png", columns, rows, boxes))
        (brain_dir / f"{plan.series_uid}.xml").write_text(
            labelimg_xml(f"{plan.series_uid}.png", columns, rows, [brain_box(plan)]))
    splits = brain_splits([plan.series_uid for plan in plans])
    for split in BRAIN_SPLITS:
        lines = [f"{BRAIN_IMAGES}/{uid}.png\n" for uid in sorted(splits) if splits[uid] == split]
        (folder / BRAIN_DIR / f"{split}.txt").write_text("".join(lines))
