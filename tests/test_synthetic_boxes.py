"""The synthetic dataset's boxes: the reference archive's layout, read by `iad.boxes`, exact against
the geometry the DICOM headers state, mapped into the cache; coronal and sagittal series."""

from __future__ import annotations

import math
from pathlib import Path
import re

import numpy as np
import pandas as pd
import pydicom
import pytest

from iad.boxes import (
    ANEURYSM_CLASSES,
    BRAIN_CLASSES,
    BRAIN_SPLITS,
    map_boxes,
    map_brain_boxes,
    parse_labelimg_xml,
    read_aneurysm_boxes,
    read_brain_boxes,
)
from iad.dicom import load_series
from iad.dicom.layout import AXIAL as AXIAL_COSINES
from iad.labels import UID_COL, map_localizers, read_localizers
from iad.preprocessing import PreprocessConfig, SeriesCache
from iad.synthetic import make_dataset
from iad.synthetic.annotations import BOXES_DIR, RECORD_FILE, T2_MODALITY, brain_splits
from iad.synthetic.dataset import FOLDS_CSV, LOCALIZERS_CSV, SERIES_DIR, SETTINGS_JSON, TRAIN_CSV
from iad.synthetic.plan import draw_view, plan_series
from iad.synthetic.views import AXIAL, NON_AXIAL_SHARES, VIEWS

# 24 series: a positive sagittal T2 (head-first), a positive coronal CTA, a positive head-first MRA
SETTINGS = {"n_series": 24, "seed": 48, "size_range": (64, 96), "locations": "uniform", "positive_share": 0.6,
            "max_slices": 24}
PREPROCESS = PreprocessConfig(image_size=48)  # cache pixels differ from the originals: mapping must scale
EDGE_TOLERANCE_MM = 1e-3  # slices this close to a sphere's surface may go either way (positions have 4 decimals)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic_boxes")
    make_dataset(root, **SETTINGS, progress=False)
    return root


@pytest.fixture(scope="module")
def plans() -> dict:
    options = {k: v for k, v in SETTINGS.items() if k not in ("n_series", "seed", "size_range")}
    listed = [plan_series(SETTINGS["seed"], i, SETTINGS["size_range"], **options) for i in range(SETTINGS["n_series"])]
    return {plan.series_uid: plan for plan in listed}


@pytest.fixture(scope="module")
def series(dataset, plans) -> dict:
    """What iad.dicom reads from each series folder (pixels, positions, orientation, spacing)."""
    return {uid: load_series(dataset / SERIES_DIR / uid) for uid in plans}


@pytest.fixture(scope="module")
def boxes(dataset) -> pd.DataFrame:
    return read_aneurysm_boxes(dataset / BOXES_DIR)


@pytest.fixture(scope="module")
def brain(dataset) -> pd.DataFrame:
    return read_brain_boxes(dataset / BOXES_DIR).set_index(UID_COL)


@pytest.fixture(scope="module")
def cache(dataset, plans, tmp_path_factory) -> SeriesCache:
    cache = SeriesCache(tmp_path_factory.mktemp("cache"), PREPROCESS)
    report = cache.build({uid: dataset / SERIES_DIR / uid for uid in plans}, progress=False)
    assert not report.failed, report.failed
    return cache


def _is_axial(loaded) -> bool:
    return bool(np.allclose(loaded.orientation, AXIAL_COSINES))


def _slice_frame(loaded, z: int) -> tuple[str, int | None]:
    """(SOPInstanceUID, frame or None) of slice z as a box file names it."""
    multi = len(set(loaded.sop_uids)) == 1 and len(loaded.sop_uids) > 1
    return loaded.sop_uids[z], int(loaded.frames[z]) if multi else None


def _expected_boxes(plan, loaded) -> tuple[dict[int, list[tuple[int, ...]]], set[int]]:
    """Slice → whole-pixel boxes of each aneurysm crossing it, from the DICOM geometry alone; plus the
    slices too close to a sphere's surface to call."""
    row_dir, col_dir = loaded.orientation[:3], loaded.orientation[3:]
    normal = np.cross(row_dir, col_dir)
    _, row_mm, col_mm = loaded.spacing
    rows, cols = loaded.pixels.shape[1:]
    expected, ambiguous = {}, set()
    for aneurysm in plan.aneurysms:
        parts = [p for p in (aneurysm.sac, aneurysm.bleb) if p is not None]
        for z, position in enumerate(loaded.positions):
            discs = []
            for part in parts:
                offset = np.asarray(part.centre) - position
                distance = float(offset @ normal)
                if abs(abs(distance) - part.radius) < EDGE_TOLERANCE_MM:
                    ambiguous.add(z)
                if abs(distance) < part.radius:
                    rho = math.sqrt(part.radius**2 - distance**2)
                    x, y = float(offset @ row_dir) / col_mm + 0.5, float(offset @ col_dir) / row_mm + 0.5
                    discs.append((x - rho / col_mm, y - rho / row_mm, x + rho / col_mm, y + rho / row_mm))
            if discs:
                lo, hi = np.min(discs, axis=0), np.max(discs, axis=0)
                box = (max(0, math.floor(lo[0])), max(0, math.floor(lo[1])),
                       min(cols, math.ceil(hi[2])), min(rows, math.ceil(hi[3])))
                expected.setdefault(z, []).append(box)
    return expected, ambiguous


# --- layout and classes --------------------------------------------------------------------------


def test_the_dataset_has_what_these_tests_need(plans):
    views = {plan.view for plan in plans.values() if plan.aneurysms}
    assert views == {AXIAL, "coronal", "sagittal"}
    assert any(p.modality == "MRA" and p.descending and p.aneurysms for p in plans.values())
    assert any(p.modality == T2_MODALITY and p.aneurysms for p in plans.values())


def test_files_follow_the_archive_layout(dataset, plans, series):
    names = sorted(p.relative_to(dataset / BOXES_DIR).as_posix() for p in (dataset / BOXES_DIR).rglob("*") if p.is_file())
    brain_names = {f"brain_det/annotations/{uid}.xml" for uid in plans}
    split_names = {f"brain_det/{split}.txt" for split in BRAIN_SPLITS}
    aneurysm_names = set(names) - brain_names - split_names - {RECORD_FILE}
    assert brain_names | split_names <= set(names)
    assert aneurysm_names and all(name.startswith("annotations/") for name in aneurysm_names)
    for name in aneurysm_names:
        _, uid, stem = name.removesuffix(".xml").split("/")
        loaded = series[uid]
        images = {(sop if frame is None else f"{sop}_{frame}") for sop, frame in
                  (_slice_frame(loaded, z) for z in range(len(loaded.sop_uids)))}
        assert stem in images, name
        assert ("_" in stem) == plans[uid].style.multi_frame, name
        content = (dataset / BOXES_DIR / name).read_text()
        assert re.search(rf"<filename>{re.escape(stem)}\.png</filename>", content)
        for box in parse_labelimg_xml(content, source=name):
            assert (box.width, box.height) == (loaded.pixels.shape[2], loaded.pixels.shape[1])  # Columns, Rows


def test_aneurysm_classes_follow_the_modality(boxes, plans):
    modality = boxes[UID_COL].map({uid: plan.modality for uid, plan in plans.items()})
    assert set(boxes["cls"]) == set(ANEURYSM_CLASSES)
    assert (boxes["cls"] == np.where(modality == T2_MODALITY, "aneurysm_mri_t2", "aneurysm")).all()


def test_abnormal_exactly_for_the_non_axial_series(brain, series):
    assert set(brain.index) == set(series)
    assert set(brain["cls"]) == set(BRAIN_CLASSES)
    for uid, loaded in series.items():
        assert brain.at[uid, "cls"] == ("brain" if _is_axial(loaded) else "abnormal"), uid


def test_split_lists_cover_every_series_once(dataset, brain, plans):
    listed = {split: (dataset / BOXES_DIR / "brain_det" / f"{split}.txt").read_text().split() for split in BRAIN_SPLITS}
    assert all(line.endswith(".png") for lines in listed.values() for line in lines)
    uids = {split: [Path(line).stem for line in lines] for split, lines in listed.items()}
    assert all(uids.values()), "both splits must hold series"
    assert sorted(uids["train"] + uids["val"]) == sorted(plans)
    assert brain["split"].notna().all()


def test_brain_split_is_stable_and_near_its_share():
    uids = [f"1.2.3.{i}" for i in range(2000)]
    splits = brain_splits(uids)
    assert 0.17 < sum(split == "val" for split in splits.values()) / len(uids) < 0.23
    assert brain_splits(uids[:100]) == {uid: splits[uid] for uid in uids[:100]}  # growing keeps a series' split
    assert set(brain_splits(uids[:2]).values()) == set(BRAIN_SPLITS)  # two series: one each


# --- exact geometry -------------------------------------------------------------------------------


def test_boxes_on_exactly_the_slices_each_aneurysm_crosses(boxes, plans, series):
    checked = 0
    for uid, plan in plans.items():
        loaded = series[uid]
        expected, ambiguous = _expected_boxes(plan, loaded)
        written: dict[int, list[tuple[int, ...]]] = {}
        for row in boxes[boxes[UID_COL] == uid].itertuples():
            frame = None if pd.isna(row.frame) else int(row.frame)
            z = loaded.index_of(row.SOPInstanceUID, frame)
            written.setdefault(z, []).append(tuple(int(v) for v in (row.xmin, row.ymin, row.xmax, row.ymax)))
        assert set(written) - ambiguous == set(expected) - ambiguous, uid
        for z in set(expected) - ambiguous:
            assert len(written[z]) == len(expected[z])
            for got, want in zip(sorted(written[z]), sorted(expected[z]), strict=True):
                assert np.abs(np.subtract(got, want)).max() <= 1, (uid, z, got, want)
                checked += 1
    assert checked > 50


def test_localizers_lie_inside_a_box_on_their_own_slice_in_the_cache(dataset, boxes, cache, plans):
    geometry = {uid: cache.meta(uid).geometry for uid in plans}
    localizers = map_localizers(read_localizers(dataset / LOCALIZERS_CSV), geometry)
    mapped = map_boxes(boxes, geometry)
    assert localizers.missing.empty and mapped.missing.empty
    pairs = localizers.mapped.reset_index(names="localizer").merge(mapped.mapped, on=[UID_COL, "slice_index"],
                                                                   suffixes=("", "_box"))
    inside = pairs["x"].add(0.5).between(pairs["xmin"], pairs["xmax"]) & pairs["y"].add(0.5).between(pairs["ymin"], pairs["ymax"])
    assert inside.groupby(pairs["localizer"]).any().reindex(range(len(localizers.mapped)), fill_value=False).all()
    size = {uid: cache.meta(uid).shape for uid in plans}
    assert (mapped.mapped["width"] == mapped.mapped[UID_COL].map(lambda u: size[u][2])).all()
    assert (mapped.mapped["xmax"] <= mapped.mapped["width"] + 1e-9).all()


def test_multi_frame_boxes_land_on_their_frames_in_the_cache(boxes, cache, plans):
    framed = boxes[boxes["frame"].notna()]
    assert set(framed[UID_COL]) == {uid for uid, p in plans.items() if p.style.multi_frame and p.aneurysms}
    assert boxes.loc[boxes["frame"].isna(), UID_COL].map(lambda u: not plans[u].style.multi_frame).all()
    mapped = map_boxes(framed, {uid: cache.meta(uid).geometry for uid in plans}).mapped
    assert len(mapped) == len(framed)
    for row in mapped.itertuples():
        plan, meta = plans[row.SeriesInstanceUID], cache.meta(row.SeriesInstanceUID)
        normal = VIEWS[plan.view].normal
        distance = [abs(meta.slice_positions[row.slice_index] - float(np.asarray(part.centre) @ normal)) - part.radius
                    for a in plan.aneurysms for part in (a.sac, a.bleb) if part is not None]
        assert min(distance) < EDGE_TOLERANCE_MM, (row.SeriesInstanceUID, row.frame, row.slice_index)
    descending = [uid for uid in set(framed[UID_COL]) if plans[uid].descending]
    assert descending, "a head-first MRA checks that `_<frame>` is the file's frame, not the sorted slice"


def test_brain_boxes_cover_the_head_on_the_mean_image(brain, series):
    for uid, loaded in series.items():
        box = brain.loc[uid]
        mean = loaded.pixels.mean(axis=0)
        rows, cols = mean.shape
        assert (box.width, box.height) == (cols, rows)
        air = np.median(np.concatenate([mean[0], mean[-1], mean[:, 0], mean[:, -1]]))
        head = mean > air + 0.25 * (np.percentile(mean, 99) - air)
        ys, xs = np.nonzero(head)
        inside = (xs + 0.5 >= box.xmin - 1) & (xs + 0.5 <= box.xmax + 1) & (ys + 0.5 >= box.ymin - 1) & (ys + 0.5 <= box.ymax + 1)
        assert inside.mean() > 0.995, uid
        assert (box.xmax - box.xmin) * (box.ymax - box.ymin) < 0.95 * rows * cols, uid  # not the whole image
        assert xs.max() - xs.min() + 1 >= 0.8 * (box.xmax - box.xmin) and ys.max() - ys.min() + 1 >= 0.8 * (box.ymax - box.ymin)


def test_brain_boxes_map_onto_the_cached_mean_images(brain, cache, plans):
    mapped = map_brain_boxes(brain.reset_index(), {uid: cache.meta(uid).geometry for uid in plans})
    assert mapped.missing.empty and len(mapped.mapped) == len(plans)
    for box in mapped.mapped.itertuples():
        mean = cache.mean_image(box.SeriesInstanceUID).astype(float)
        assert (box.width, box.height) == (mean.shape[1], mean.shape[0])
        head = mean > mean.min() + 0.25 * (np.percentile(mean, 99) - mean.min())
        ys, xs = np.nonzero(head)
        inside = (xs + 0.5 >= box.xmin - 1) & (xs + 0.5 <= box.xmax + 1) & (ys + 0.5 >= box.ymin - 1) & (ys + 0.5 <= box.ymax + 1)
        assert inside.mean() > 0.99, box.SeriesInstanceUID


# --- views ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VIEWS))
def test_views_store_slices_ascending_along_their_normal(name):
    view = VIEWS[name]
    rng = np.random.default_rng(0)
    render = rng.random((3, 4, 5))
    stored = view.to_stored(render)
    assert stored.shape == view.shape(render.shape)
    origin, spacing = np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.7, 1.3])  # patient x, y, z

    def patient(stored_index):
        k, i, j = view.render_index(render.shape, stored_index)
        assert stored[stored_index] == render[k, i, j]
        return origin + spacing * np.array([j, i, k])

    first = patient((0, 0, 0))
    row_dir, col_dir = np.array(view.orientation[:3]), np.array(view.orientation[3:])
    step, row_mm, col_mm = view.spacing(tuple(spacing))
    np.testing.assert_allclose(patient((0, 0, 1)) - first, row_dir * col_mm)
    np.testing.assert_allclose(patient((0, 1, 0)) - first, col_dir * row_mm)
    np.testing.assert_allclose(patient((1, 0, 0)) - first, view.normal * step)
    voxel = view.stored_voxel(render.shape, np.array([2.0, 1.0, 4.0]))
    assert tuple(voxel) in {tuple(map(float, s)) for s in np.ndindex(stored.shape)}
    assert stored[tuple(int(v) for v in voxel)] == render[2, 1, 4]


def test_non_axial_share():
    views = [draw_view(0, i) for i in range(3000)]
    for view, share in NON_AXIAL_SHARES.items():
        assert abs(views.count(view) / len(views) - share) < 0.005
    assert 10 <= sum(draw_view(0, i) != AXIAL for i in range(300)) <= 20  # the demo's 300 series: a handful


def test_dicom_reads_non_axial_series_as_what_they_are(dataset, plans, series):
    for uid, plan in plans.items():
        loaded = series[uid]
        np.testing.assert_allclose(loaded.orientation, VIEWS[plan.view].orientation)
        assert loaded.pixels.shape == plan.stored_shape
        header = pydicom.dcmread(next((dataset / SERIES_DIR / uid).iterdir()), stop_before_pixels=True)
        assert ("AXIAL" in header.ImageType) == (plan.view == AXIAL and plan.modality == "CTA")


def test_localizers_point_at_the_aneurysm_in_patient_space(dataset, plans, series):
    """The localizer's pixel, placed in the patient by the DICOM headers, is the aneurysm's centre."""
    localizers = read_localizers(dataset / LOCALIZERS_CSV)
    for row in localizers.itertuples():
        loaded, plan = series[row.SeriesInstanceUID], plans[row.SeriesInstanceUID]
        z = loaded.index_of(row.SOPInstanceUID, None if pd.isna(row.frame) else int(row.frame))
        _, row_mm, col_mm = loaded.spacing
        point = loaded.positions[z] + row.x * col_mm * loaded.orientation[:3] + row.y * row_mm * loaded.orientation[3:]
        centres = [a.sac for a in plan.aneurysms if a.location == row.location]
        step = loaded.spacing[0]
        assert min(np.linalg.norm(point - c.centre) for c in centres) < step / 2 + 0.05, (plan.view, row.location)


# --- reruns --------------------------------------------------------------------------------------


def test_boxes_are_added_to_a_dataset_made_before_them_and_are_deterministic(tmp_path):
    from iad.datasets import DatasetSource, ensure_dataset

    settings = {"seed": 48, "size_range": [64, 64], "n_series": 5, "max_slices": 24}
    source = DatasetSource(root=str(tmp_path), series_dir=str(tmp_path / SERIES_DIR), train_csv=str(tmp_path / TRAIN_CSV),
                           localizers_csv=str(tmp_path / LOCALIZERS_CSV), folds_csv=str(tmp_path / FOLDS_CSV),
                           boxes=str(tmp_path / BOXES_DIR), synthetic=settings)
    ensure_dataset(source)
    first = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / BOXES_DIR).rglob("*") if p.is_file()}
    series_mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / SERIES_DIR).rglob("*.dcm")}
    written = (tmp_path / SETTINGS_JSON).stat().st_mtime_ns

    ensure_dataset(source)  # complete: nothing is rewritten
    assert (tmp_path / SETTINGS_JSON).stat().st_mtime_ns == written

    import shutil

    shutil.rmtree(tmp_path / BOXES_DIR)  # a dataset generated before boxes existed
    ensure_dataset(source)
    again = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / BOXES_DIR).rglob("*") if p.is_file()}
    assert again == first
    assert {p: p.stat().st_mtime_ns for p in series_mtimes} == series_mtimes
    assert not list(tmp_path.glob(f".{BOXES_DIR}.*"))
    assert len(read_brain_boxes(tmp_path / BOXES_DIR)) == 5
