"""LabelImg (Pascal VOC XML) boxes of the reference solution: aneurysm and brain boxes (no torch).

The box archive (`seed_box_annotations.tar.gz`, or the folder it extracts to) holds
`annotations/<SeriesInstanceUID>/<SOPInstanceUID>[_<frame>].xml` (aneurysm boxes on single slices;
`_<frame>` is the 0-based frame of a multi-frame file, as the localizers' `f`) and
`brain_det/annotations/<SeriesInstanceUID>.xml` (one brain box on the series' mean image) with
`brain_det/train.txt` / `val.txt` listing that detector's split as image paths ending in
`<SeriesInstanceUID>.png`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
import os
from pathlib import Path, PurePosixPath
import re
import tarfile
import xml.etree.ElementTree as ET

import pandas as pd

from iad.labels import SOP_COL, UID_COL, CacheMapping, SeriesGeometry, locate_slices

ANEURYSM_CLASSES: tuple[str, ...] = ("aneurysm", "aneurysm_mri_t2")
BRAIN_CLASSES: tuple[str, ...] = ("brain", "abnormal")  # brain: axial mean image; abnormal: other views
BOX_COLS: tuple[str, ...] = ("xmin", "ymin", "xmax", "ymax")  # LabelImg's names, as in the annotation files
XYXY_COLS: tuple[str, ...] = ("x0", "y0", "x1", "y1")  # the project's box columns: crop tables, detections, findings
BRAIN_SPLITS: tuple[str, ...] = ("train", "val")
# One aneurysm box per row (`read_aneurysm_boxes`, and box CSVs such as the label-cleaning stage's boxes.csv).
ANEURYSM_BOX_COLS: tuple[str, ...] = (UID_COL, SOP_COL, "frame", "cls", *BOX_COLS, "width", "height")

_ANEURYSM_NAME = re.compile(r"annotations/(?P<uid>[0-9.]+)/(?P<sop>[0-9.]+?)(?:_(?P<frame>\d+))?\.xml")
_BRAIN_NAME = re.compile(r"brain_det/annotations/(?P<uid>[0-9.]+)\.xml")


@dataclass(frozen=True)
class Box:
    """One labelled box in pixel coordinates of an image of `width` x `height`."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float
    cls: str
    width: int
    height: int


def parse_labelimg_xml(content: str | bytes, source: str = "<xml>") -> list[Box]:
    """Boxes of one LabelImg XML document; ValueError naming `source` when it is malformed."""
    try:
        root = ET.fromstring(content)
    except ET.ParseError as err:
        raise ValueError(f"{source}: malformed XML ({err})") from None
    width = _number(root, "size/width", source, int)
    height = _number(root, "size/height", source, int)
    boxes = []
    for obj in root.iterfind("object"):
        cls = (obj.findtext("name") or "").strip()
        if not cls:
            raise ValueError(f"{source}: <object> without a <name>")
        coords = [_number(obj, f"bndbox/{key}", source, float) for key in BOX_COLS]
        boxes.append(Box(*coords, cls=cls, width=width, height=height))
    return boxes


def labelimg_xml(filename: str, width: int, height: int, boxes: Sequence[Box] = ()) -> str:
    """One LabelImg XML document (the layout of the reference archive) for an image of `width` x `height`.

    Integral coordinates are written as integers, as LabelImg does; `parse_labelimg_xml` reads it back.
    """
    root = ET.Element("annotation")
    for tag, text in (("folder", "unknown"), ("filename", filename)):
        ET.SubElement(root, tag).text = text
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(int(value))
    ET.SubElement(root, "segmented").text = "0"
    for box in boxes:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = box.cls
        ET.SubElement(obj, "difficult").text = "0"
        bndbox = ET.SubElement(obj, "bndbox")
        for key in BOX_COLS:
            value = float(getattr(box, key))
            ET.SubElement(bndbox, key).text = str(int(value)) if value.is_integer() else repr(value)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def read_aneurysm_boxes(archive_or_dir: str | os.PathLike) -> pd.DataFrame:
    """All aneurysm boxes, one row per box.

    Columns: SeriesInstanceUID, SOPInstanceUID, frame (Int64, NA for single-frame files), cls,
    xmin, ymin, xmax, ymax, width, height. A file without <object> contributes no row.
    """
    rows = []
    for name, content in _iter_members(archive_or_dir, "annotations/"):
        if not name.endswith(".xml"):
            continue
        match = _ANEURYSM_NAME.fullmatch(name)
        if match is None:
            raise ValueError(f"{archive_or_dir}: unexpected aneurysm annotation name {name!r}")
        frame = None if match["frame"] is None else int(match["frame"])
        for box in parse_labelimg_xml(content, source=name):
            rows.append({UID_COL: match["uid"], SOP_COL: match["sop"], "frame": frame, **asdict(box)})
    df = pd.DataFrame(rows, columns=list(ANEURYSM_BOX_COLS))
    df["frame"] = df["frame"].astype("Int64")
    return df


def read_aneurysm_box_table(path: str | os.PathLike) -> pd.DataFrame:
    """Aneurysm boxes from a CSV with `ANEURYSM_BOX_COLS` (original pixels), typed as `read_aneurysm_boxes`.

    `width` / `height` may be empty (unknown image size); a missing column or a box whose corners are
    not ordered is a ValueError naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"aneurysm box table {path} does not exist")
    df = pd.read_csv(path, dtype={UID_COL: str, SOP_COL: str, "cls": str})
    missing = [col for col in ANEURYSM_BOX_COLS if col not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    df = df[list(ANEURYSM_BOX_COLS)].copy()
    df["frame"] = df["frame"].astype("Int64")
    bad = df.loc[~((df["xmin"] < df["xmax"]) & (df["ymin"] < df["ymax"])), UID_COL]
    if len(bad):
        raise ValueError(f"{path}: {len(bad)} boxes without xmin < xmax and ymin < ymax, e.g. series {bad.iloc[0]}")
    return df


def map_boxes(boxes: pd.DataFrame, geometry: Mapping[str, SeriesGeometry]) -> CacheMapping:
    """Place aneurysm boxes (from `read_aneurysm_boxes`) in cached volumes; see `iad.labels.locate_slices`.

    In `mapped`, `slice_index` is the cached slice, box edges are scaled (x' = x * scale_x) and
    width, height become the cached image size. Boxes are in original image pixels, the localizers'
    space: in the reference archive every localizer lies inside a box drawn on its own slice.
    """
    located = locate_slices(boxes, geometry)
    return located._replace(mapped=_scaled(located.mapped))


def map_brain_boxes(boxes: pd.DataFrame, geometry: Mapping[str, SeriesGeometry]) -> CacheMapping:
    """Place brain boxes (from `read_brain_boxes`) on the cached mean images, scaled as `map_boxes` does.

    Brain boxes are drawn on the mean-over-slices image at the original size; the cache keeps that
    image at its own size. Series absent from `geometry` go to `missing` with a `reason`.
    """
    known = boxes[UID_COL].isin(list(geometry)).to_numpy()
    hits = boxes[known]
    series = [geometry[uid] for uid in hits[UID_COL]]
    mapped = hits.assign(scale_x=[g.scale_x for g in series], scale_y=[g.scale_y for g in series])
    missing = boxes[~known].assign(reason="series not in the cache")
    return CacheMapping(mapped=_scaled(mapped).reset_index(drop=True), missing=missing.reset_index(drop=True))


def _scaled(rows: pd.DataFrame) -> pd.DataFrame:
    """Box edges and image size multiplied by the rows' scale_x / scale_y (which are dropped)."""
    scaled = {
        col: rows[col] * rows["scale_x" if col in ("xmin", "xmax", "width") else "scale_y"]
        for col in (*BOX_COLS, "width", "height")
    }
    return rows.assign(**scaled).drop(columns=["scale_x", "scale_y"])


def read_brain_boxes(archive_or_dir: str | os.PathLike) -> pd.DataFrame:
    """All brain boxes, one row per box (one per series in the reference data).

    Columns: SeriesInstanceUID, cls, xmin, ymin, xmax, ymax, width, height, split ("train"/"val"
    from brain_det/train.txt and val.txt; missing where a series is in neither list).
    """
    rows, split_of = [], {}
    for name, content in _iter_members(archive_or_dir, "brain_det/"):
        split = name.removeprefix("brain_det/").removesuffix(".txt")
        if split in BRAIN_SPLITS:
            split_of.update(dict.fromkeys(_listed_series(content), split))
        elif name.endswith(".xml"):
            match = _BRAIN_NAME.fullmatch(name)
            if match is None:
                raise ValueError(f"{archive_or_dir}: unexpected brain annotation name {name!r}")
            boxes = parse_labelimg_xml(content, source=name)
            rows.extend({UID_COL: match["uid"], **asdict(box)} for box in boxes)
    df = pd.DataFrame(rows, columns=[UID_COL, "cls", *BOX_COLS, "width", "height"])
    df["split"] = df[UID_COL].map(split_of)
    return df


def _listed_series(split_list: bytes) -> list[str]:
    """Series uids of a brain_det split list, whose lines are image paths ending in `<uid>.png`."""
    return [PurePosixPath(line.strip()).stem for line in split_list.decode().splitlines() if line.strip()]


def _iter_members(archive_or_dir: str | os.PathLike, prefix: str) -> Iterator[tuple[str, bytes]]:
    """(relative posix name, bytes) of every file whose name starts with `prefix`.

    Streams a tar archive member by member (nothing is extracted to disk) or walks a folder.
    """
    root = Path(archive_or_dir)
    if root.is_dir():
        for path in sorted(root.rglob("*")):
            name = path.relative_to(root).as_posix()
            if name.startswith(prefix) and path.is_file():
                yield name, path.read_bytes()
        return
    if not root.exists():
        raise FileNotFoundError(f"box annotations not found: {root}")
    with tarfile.open(root, "r|*") as archive:  # forward-only stream
        for member in archive:
            name = member.name.removeprefix("./")
            if name.startswith(prefix) and member.isfile():
                yield name, archive.extractfile(member).read()


def _number(element: ET.Element, path: str, source: str, kind: type) -> float | int:
    text = element.findtext(path)
    if text is None:
        raise ValueError(f"{source}: missing <{path}>")
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{source}: <{path}> is not a number: {text!r}") from None
