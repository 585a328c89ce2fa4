"""LabelImg XML parsing and the reference solution's box archive."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pandas as pd
import pytest

from iad.boxes import (
    ANEURYSM_CLASSES,
    BRAIN_CLASSES,
    Box,
    labelimg_xml,
    map_boxes,
    map_brain_boxes,
    parse_labelimg_xml,
    read_aneurysm_boxes,
    read_brain_boxes,
)
from iad.labels import PRESENT_COL, SOP_COL, UID_COL, SeriesGeometry, read_localizers, read_series_labels

ARCHIVE = "seed_box_annotations.tar.gz"
# The one positive series without aneurysm boxes; it has no brain box either.
UNBOXED_POSITIVE = "1.2.826.0.1.3680043.8.498.75294325392457179365040684378207706807"
NO_BRAIN_BOX = {UNBOXED_POSITIVE, "1.2.826.0.1.3680043.8.498.29050558547611562715350366539567758590"}


def _xml(objects: list[tuple[str, int, int, int, int]], width: int = 512, height: int = 480) -> str:
    body = "".join(
        f"<object><name>{cls}</name><difficult>0</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for cls, x0, y0, x1, y1 in objects
    )
    return (
        f"<annotation><folder>unknown</folder><filename>img.png</filename><size><width>{width}</width>"
        f"<height>{height}</height><depth>3</depth></size><segmented>0</segmented>{body}</annotation>"
    )


def test_parse_labelimg_xml_reads_every_object():
    text = _xml([("aneurysm", 131, 186, 142, 198), ("aneurysm_mri_t2", 1, 2, 3, 4)])
    expected = [
        Box(131.0, 186.0, 142.0, 198.0, cls="aneurysm", width=512, height=480),
        Box(1.0, 2.0, 3.0, 4.0, cls="aneurysm_mri_t2", width=512, height=480),
    ]
    assert parse_labelimg_xml(text) == expected
    assert parse_labelimg_xml(text.encode()) == expected


def test_parse_labelimg_xml_without_objects_is_empty():
    assert parse_labelimg_xml(_xml([])) == []


@pytest.mark.parametrize(
    "content, problem",
    [
        ("<annotation><size>", "malformed XML"),
        (_xml([("brain", 1, 2, 3, 4)]).replace("<ymax>4</ymax>", ""), "bndbox/ymax"),
        (_xml([("brain", 1, 2, 3, 4)]).replace("<xmin>1</xmin>", "<xmin>one</xmin>"), "not a number"),
        (_xml([("brain", 1, 2, 3, 4)]).replace("<width>512</width>", ""), "size/width"),
        (_xml([("", 1, 2, 3, 4)]), "without a <name>"),
    ],
)
def test_parse_labelimg_xml_errors_name_the_source(content, problem):
    with pytest.raises(ValueError, match=f"some/file.xml.*{problem}"):
        parse_labelimg_xml(content, source="some/file.xml")


def _small_archive_files() -> dict[str, bytes]:
    return {
        "annotations/1.2.3/1.2.3.4.xml": _xml([("aneurysm", 10, 10, 20, 20), ("aneurysm", 30, 30, 40, 44)]).encode(),
        "annotations/1.2.3/1.2.3.5_12.xml": _xml([("aneurysm_mri_t2", 1, 2, 3, 4)], 256, 256).encode(),
        "brain_det/annotations/1.2.3.xml": _xml([("brain", 5, 6, 500, 470)]).encode(),
        "brain_det/annotations/1.2.9.xml": _xml([("abnormal", 0, 0, 512, 480)]).encode(),
        "brain_det/train.txt": b"../../dataset/brain_det/images/1.2.3.png\n",
        "brain_det/val.txt": b"",
    }


@pytest.fixture(params=["directory", "tar.gz"])
def small_archive(request, tmp_path):
    files = _small_archive_files()
    if request.param == "directory":
        for name, content in files.items():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_bytes(content)
        return tmp_path
    path = tmp_path / "boxes.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for name, content in files.items():
            member = tarfile.TarInfo(name)
            member.size = len(content)
            archive.addfile(member, io.BytesIO(content))
    return path


def test_read_aneurysm_boxes_from_directory_and_archive(small_archive):
    boxes = read_aneurysm_boxes(small_archive).sort_values([SOP_COL, "ymax"]).reset_index(drop=True)
    assert boxes[[UID_COL, SOP_COL, "cls"]].values.tolist() == [
        ["1.2.3", "1.2.3.4", "aneurysm"],
        ["1.2.3", "1.2.3.4", "aneurysm"],
        ["1.2.3", "1.2.3.5", "aneurysm_mri_t2"],
    ]
    assert str(boxes["frame"].dtype) == "Int64"
    assert boxes["frame"].isna().tolist() == [True, True, False] and boxes["frame"].iloc[2] == 12
    assert boxes[["xmin", "ymin", "xmax", "ymax", "width", "height"]].iloc[1].tolist() == [30, 30, 40, 44, 512, 480]


def test_read_brain_boxes_from_directory_and_archive(small_archive):
    boxes = read_brain_boxes(small_archive).set_index(UID_COL)
    assert boxes["cls"].to_dict() == {"1.2.3": "brain", "1.2.9": "abnormal"}
    assert boxes.loc["1.2.3", "split"] == "train"
    assert pd.isna(boxes.loc["1.2.9", "split"])
    assert boxes.loc["1.2.3", ["xmin", "ymin", "xmax", "ymax"]].tolist() == [5, 6, 500, 470]


def test_map_boxes_scales_edges_and_reports_missing():
    boxes = pd.DataFrame(
        {
            UID_COL: ["a", "a", "b"],
            SOP_COL: ["a1", "a-gone", "b1"],
            "frame": pd.array([pd.NA, pd.NA, 2], dtype="Int64"),
            "cls": ["aneurysm"] * 3,
            "xmin": [100.0, 1.0, 10.0],
            "ymin": [200.0, 1.0, 20.0],
            "xmax": [110.0, 2.0, 30.0],
            "ymax": [220.0, 2.0, 40.0],
            "width": [512, 512, 256],
            "height": [400, 400, 256],
        }
    )
    geometry = {
        "a": SeriesGeometry(lambda sop, frame: {"a1": 7}[sop], scale_x=0.5, scale_y=0.25),
        "b": SeriesGeometry(lambda sop, frame: frame),
    }
    result = map_boxes(boxes, geometry)
    mapped = result.mapped.set_index(SOP_COL)
    assert mapped["slice_index"].to_dict() == {"a1": 7, "b1": 2}
    assert mapped.loc["a1", ["xmin", "ymin", "xmax", "ymax", "width", "height"]].tolist() == [50, 50, 55, 55, 256, 100]
    assert mapped.loc["b1", ["xmin", "ymin", "xmax", "ymax"]].tolist() == [10, 20, 30, 40]
    assert result.missing[SOP_COL].tolist() == ["a-gone"]


def test_map_brain_boxes_scales_to_the_cached_mean_image():
    boxes = pd.DataFrame({UID_COL: ["a", "b"], "cls": ["brain", "abnormal"], "xmin": [10.0, 0.0], "ymin": [20.0, 0.0],
                          "xmax": [110.0, 5.0], "ymax": [220.0, 5.0], "width": [512, 64], "height": [400, 64],
                          "split": ["train", "val"]})
    result = map_brain_boxes(boxes, {"a": SeriesGeometry(lambda sop, frame: 0, scale_x=0.25, scale_y=0.5)})
    assert result.mapped[["xmin", "ymin", "xmax", "ymax", "width", "height"]].values.tolist() == [[2.5, 10, 27.5, 110, 128, 200]]
    assert result.mapped[["cls", "split"]].values.tolist() == [["brain", "train"]]
    assert result.missing[UID_COL].tolist() == ["b"] and result.missing["reason"].tolist() == ["series not in the cache"]


def test_labelimg_xml_round_trips():
    boxes = [Box(1, 2, 30.5, 40, "aneurysm", 700, 500), Box(0, 0, 700, 500, "aneurysm_mri_t2", 700, 500)]
    content = labelimg_xml("img_3.png", 700, 500, boxes)
    assert parse_labelimg_xml(content) == boxes
    assert "<xmin>1</xmin>" in content and "<xmax>30.5</xmax>" in content  # whole pixels as integers, as LabelImg
    assert parse_labelimg_xml(labelimg_xml("empty.png", 64, 32)) == []


def test_missing_archive_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing\.tar\.gz"):
        read_aneurysm_boxes(tmp_path / "nothing.tar.gz")


# --- the real archive --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def archive_members(rsna_tables) -> dict[str, bytes]:
    """Every file of the real archive, read independently of iad.boxes."""
    with tarfile.open(rsna_tables / ARCHIVE) as archive:
        return {m.name: archive.extractfile(m).read() for m in archive if m.isfile()}


@pytest.fixture(scope="module")
def aneurysm_boxes(rsna_tables) -> pd.DataFrame:
    return read_aneurysm_boxes(rsna_tables / ARCHIVE)


@pytest.fixture(scope="module")
def brain_boxes(rsna_tables) -> pd.DataFrame:
    return read_brain_boxes(rsna_tables / ARCHIVE)


def _assert_boxes_inside_images(boxes: pd.DataFrame) -> None:
    assert (boxes["xmin"] >= 0).all() and (boxes["ymin"] >= 0).all()
    assert (boxes["xmin"] < boxes["xmax"]).all() and (boxes["ymin"] < boxes["ymax"]).all()
    assert (boxes["xmax"] <= boxes["width"]).all() and (boxes["ymax"] <= boxes["height"]).all()


@pytest.mark.shared
def test_real_aneurysm_boxes_parse_completely(aneurysm_boxes, archive_members):
    xml_files = {n: c for n, c in archive_members.items() if n.startswith("annotations/") and n.endswith(".xml")}
    assert len(xml_files) == 14571
    assert len(aneurysm_boxes) == sum(c.count(b"<object>") for c in xml_files.values())
    files_with_boxes = aneurysm_boxes.groupby([UID_COL, SOP_COL, "frame"], dropna=False).ngroups
    assert files_with_boxes == len(xml_files)
    assert set(aneurysm_boxes["cls"]) == set(ANEURYSM_CLASSES)
    _assert_boxes_inside_images(aneurysm_boxes)


@pytest.mark.shared
def test_real_aneurysm_boxes_belong_to_positive_series(aneurysm_boxes, rsna_tables):
    labels = read_series_labels(rsna_tables / "train.csv")
    positive = set(labels.loc[labels[PRESENT_COL] == 1, UID_COL])
    boxed = set(aneurysm_boxes[UID_COL])
    assert boxed <= positive
    assert positive - boxed == {UNBOXED_POSITIVE}


@pytest.mark.shared
def test_real_frame_suffix_is_the_localizer_frame(aneurysm_boxes, rsna_tables):
    """`<sop>_<n>.xml` uses the localizers' 0-based `f`: every localizer has a box file at its (sop, f)."""
    localizers = read_localizers(rsna_tables / "train_localizers.csv")
    keys = [UID_COL, SOP_COL, "frame"]
    boxed = aneurysm_boxes[keys].drop_duplicates()
    joined = localizers.merge(boxed, on=keys, how="left", indicator=True)
    unmatched = joined.loc[joined["_merge"] == "left_only", UID_COL]
    assert set(unmatched) == {UNBOXED_POSITIVE}
    assert len(unmatched) == 2
    framed = localizers["frame"].notna()
    assert set(localizers.loc[framed, UID_COL]) == set(aneurysm_boxes.loc[aneurysm_boxes["frame"].notna(), UID_COL])


@pytest.mark.shared
def test_real_localizers_lie_inside_their_slice_boxes(aneurysm_boxes, rsna_tables):
    """Boxes share the localizers' pixel space (no rescaling between the two tables)."""
    localizers = read_localizers(rsna_tables / "train_localizers.csv").drop_duplicates()
    localizers["localizer"] = range(len(localizers))
    pairs = localizers.merge(aneurysm_boxes, on=[UID_COL, SOP_COL, "frame"])
    margin = 2.0  # pixels
    inside = pairs["x"].between(pairs["xmin"] - margin, pairs["xmax"] + margin) & pairs["y"].between(
        pairs["ymin"] - margin, pairs["ymax"] + margin
    )
    inside_some_box = inside.groupby(pairs["localizer"]).any()
    assert len(inside_some_box) == 2254 - 3 - 2  # all but 3 repeated rows and the unboxed series' 2
    assert inside_some_box.all()


@pytest.mark.shared
def test_real_brain_boxes(brain_boxes, archive_members, rsna_tables):
    assert len(brain_boxes) == 4346
    assert brain_boxes[UID_COL].is_unique
    assert set(brain_boxes["cls"]) == set(BRAIN_CLASSES)
    _assert_boxes_inside_images(brain_boxes)
    listed = {s: archive_members[f"brain_det/{s}.txt"].decode().split() for s in ("train", "val")}
    assert brain_boxes["split"].value_counts().to_dict() == {s: len(lines) for s, lines in listed.items()}
    labels = read_series_labels(rsna_tables / "train.csv")
    assert set(labels[UID_COL]) - set(brain_boxes[UID_COL]) == NO_BRAIN_BOX
    assert set(brain_boxes[UID_COL]) <= set(labels[UID_COL])


@pytest.mark.shared
def test_real_wide_and_multi_frame_boxes_map_into_a_square_cache(aneurysm_boxes):
    """Images wider than 512 (up to 1024 here) and `_<frame>` files map like any other: nothing assumes 512."""
    wide = aneurysm_boxes["width"] > 512
    assert wide.sum() > 0 and aneurysm_boxes.loc[wide, "xmax"].max() > 512
    assert aneurysm_boxes["frame"].notna().sum() > 0
    sizes = aneurysm_boxes.groupby(UID_COL)[["width", "height"]].agg(["min", "max"])
    assert (sizes[("width", "min")] == sizes[("width", "max")]).all()  # one image size per series
    size = 384  # a square cache, as PreprocessConfig(image_size=384)
    geometry = {uid: SeriesGeometry(lambda sop, frame: 0 if frame is None else int(frame), scale_x=size / w, scale_y=size / h)
                for uid, w, h in zip(sizes.index, sizes[("width", "min")], sizes[("height", "min")])}
    mapped = map_boxes(aneurysm_boxes, geometry).mapped
    assert len(mapped) == len(aneurysm_boxes)
    assert np.allclose(mapped["width"], size) and np.allclose(mapped["height"], size)
    assert (mapped["xmin"] >= 0).all() and (mapped["xmax"] <= size + 1e-9).all() and (mapped["ymax"] <= size + 1e-9).all()
    pd.testing.assert_series_equal(mapped["xmax"], aneurysm_boxes["xmax"] * size / aneurysm_boxes["width"], check_names=False)
    framed = mapped["frame"].notna()
    assert (mapped.loc[framed, "slice_index"] == mapped.loc[framed, "frame"]).all()
