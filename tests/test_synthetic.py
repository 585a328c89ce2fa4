"""The synthetic dataset: layout, tables, DICOM validity, phantom geometry, determinism, CLI."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path
import subprocess
import sys

import numpy as np
import pandas as pd
import pydicom
from pydicom.pixels.encoders import RLELosslessEncoder
from pydicom.uid import CTImageStorage, EnhancedMRImageStorage, MRImageStorage, RLELossless
import pytest

from iad.labels import LABEL_COLS, LOCATION_COLS, MODALITIES, PRESENT_COL, SOP_COL, UID_COL, parse_coordinates
from iad.synthetic import anatomy, frequencies, make_dataset
from iad.synthetic.dataset import (
    FOLDS_CSV,
    LOCALIZERS_CSV,
    SERIES_DIR,
    SETTINGS_JSON,
    TRAIN_CSV,
    dataset_settings,
    generate_series,
    read_settings,
)
from iad.synthetic.modalities import STYLES, aneurysm_is_bright
from iad.synthetic.plan import FIELD_OF_VIEW_MM, NON_AXIAL_FIELD_OF_VIEW_MM, plan_series
from iad.synthetic.views import AXIAL, VIEWS

SEED = 7  # 12 series with every modality, RLE and J2K files, a head-first MRA, a positive coronal CTA
N_SERIES = 12
SIZE_RANGE = (96, 128)
SOP_CLASS = {"CTA": CTImageStorage, "MRA": EnhancedMRImageStorage, "MRI T2": MRImageStorage, "MRI T1post": MRImageStorage}
DISC_MM = 2.0  # the aneurysm core sampled at the localizer (radii are >= 3.5 mm)
RING_MM = (9.0, 13.0)  # surroundings, beyond the sac


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    make_dataset(root, n_series=N_SERIES, seed=SEED, size_range=SIZE_RANGE)
    return root


@pytest.fixture(scope="session")
def tables(dataset) -> dict[str, pd.DataFrame]:
    return {name: pd.read_csv(dataset / name) for name in (TRAIN_CSV, LOCALIZERS_CSV, FOLDS_CSV)}


@pytest.fixture(scope="session")
def plans():
    return [plan_series(SEED, index, SIZE_RANGE) for index in range(N_SERIES)]


def _series_files(dataset: Path, uid: str) -> list[Path]:
    return sorted((dataset / SERIES_DIR / uid).glob("*.dcm"))


def _localized_image(dataset: Path, row) -> tuple[np.ndarray, float, float, pydicom.Dataset]:
    """The slice/frame a localizer row names (modality units), its x, y and the file's header."""
    x, y, frame = parse_coordinates(row.coordinates)
    path = next(
        p
        for p in _series_files(dataset, row.SeriesInstanceUID)
        if pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID == row.SOPInstanceUID
    )
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array[frame] if frame is not None else ds.pixel_array
    return pixels * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0)), x, y, ds


def _pixel_spacing(ds: pydicom.Dataset) -> float:
    if "PixelSpacing" in ds:
        return float(ds.PixelSpacing[1])
    return float(ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing[1])


def _disc_and_ring(image: np.ndarray, x: float, y: float, pixel_mm: float) -> tuple[float, float]:
    rows, cols = np.mgrid[: image.shape[0], : image.shape[1]]
    distance = np.hypot(cols - x, rows - y) * pixel_mm
    ring = (distance >= RING_MM[0]) & (distance <= RING_MM[1])
    return float(image[distance <= DISC_MM].mean()), float(np.median(image[ring]))


def _head_midline_column(image: np.ndarray) -> float:
    """Column of the head's centroid: everything brighter than halfway from air to the centre."""
    rows, cols = image.shape
    air = np.median(np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]))
    centre = np.median(image[rows // 3 : 2 * rows // 3, cols // 3 : 2 * cols // 3])
    head = image > (air + centre) / 2
    return float(np.nonzero(head)[1].mean())


# --- tables -------------------------------------------------------------------------------------


def test_train_csv_columns_and_labels(dataset, tables):
    train = tables[TRAIN_CSV]
    assert list(train.columns) == [UID_COL, "PatientAge", "PatientSex", "Modality", *LABEL_COLS]
    assert (train[PRESENT_COL] == train[list(LOCATION_COLS)].max(axis=1)).all()
    assert train[UID_COL].is_unique and len(train) == N_SERIES
    assert set(train["Modality"]) <= set(MODALITIES) and {"CTA", "MRA", "MRI T2"} <= set(train["Modality"])
    assert set(train["PatientSex"]) <= {"Female", "Male"} and train["PatientAge"].between(18, 89).all()
    assert 0 < train[PRESENT_COL].sum() < N_SERIES
    assert sorted(p.name for p in (dataset / SERIES_DIR).iterdir()) == sorted(train[UID_COL])


def test_train_csv_header_matches_the_real_table(tables, rsna_tables):
    real = pd.read_csv(rsna_tables / "train.csv", nrows=1)
    assert list(tables[TRAIN_CSV].columns) == list(real.columns)


def test_localizers_one_per_aneurysm_with_real_coordinate_format(tables, plans):
    train, localizers = tables[TRAIN_CSV], tables[LOCALIZERS_CSV]
    assert list(localizers.columns) == [UID_COL, SOP_COL, "coordinates", "location"]
    assert len(localizers) == sum(len(plan.aneurysms) for plan in plans) > 0
    modality = dict(zip(train[UID_COL], train["Modality"]))
    labelled = train.set_index(UID_COL)
    for row in localizers.itertuples():
        coordinates = ast.literal_eval(row.coordinates)
        assert row.coordinates == str(coordinates) and "'x': " in row.coordinates  # single quotes, like the real file
        assert ("f" in coordinates) == STYLES[modality[row.SeriesInstanceUID]].multi_frame
        assert labelled.loc[row.SeriesInstanceUID, row.location] == 1
    positives = set(train.loc[train[PRESENT_COL] == 1, UID_COL])
    assert set(localizers[UID_COL]) == positives


def test_folds_cover_every_series(tables):
    folds = tables[FOLDS_CSV]
    assert sorted(folds[UID_COL]) == sorted(tables[TRAIN_CSV][UID_COL])
    assert set(folds["fold"]) <= set(range(5))


def test_embedded_frequencies_match_the_real_table(rsna_tables):
    real = pd.read_csv(rsna_tables / "train.csv")
    positives = real[real[PRESENT_COL] == 1]
    assert frequencies.LOCATION_COUNTS == {c: int(real[c].sum()) for c in LOCATION_COLS}
    assert frequencies.MODALITY_COUNTS == real["Modality"].value_counts().reindex(MODALITIES).to_dict()
    assert frequencies.POSITIVE_COUNTS == positives["Modality"].value_counts().reindex(MODALITIES).to_dict()
    assert frequencies.POSITIVE_SERIES == len(positives)
    assert frequencies.MULTI_LOCATION_POSITIVES == int((positives[list(LOCATION_COLS)].sum(axis=1) >= 2).sum())
    assert frequencies.FEMALE_SERIES == int((real["PatientSex"] == "Female").sum())


def test_draws_follow_the_real_frequencies():
    plans = [plan_series(0, index) for index in range(500)]
    modality_share = Counter(plan.modality for plan in plans)
    for name in MODALITIES:
        assert modality_share[name] / len(plans) == pytest.approx(
            frequencies.MODALITY_COUNTS[name] / frequencies.TOTAL_SERIES, abs=0.02
        )
    positive_share = np.mean([bool(plan.aneurysms) for plan in plans])
    assert positive_share == pytest.approx(frequencies.POSITIVE_SERIES / frequencies.TOTAL_SERIES, abs=0.03)
    drawn = Counter(a.location for plan in plans for a in plan.aneurysms)
    total = sum(frequencies.LOCATION_COUNTS.values())
    for location, count in frequencies.LOCATION_COUNTS.items():
        assert drawn[location] / sum(drawn.values()) == pytest.approx(count / total, abs=0.06)


def test_uniform_locations_give_every_location_its_share():
    plans = [plan_series(0, index, locations="uniform", positive_share=0.6) for index in range(300)]
    first_locations = Counter(plan.aneurysms[0].location for plan in plans if plan.aneurysms)
    expected = sum(first_locations.values()) / len(LOCATION_COLS)
    # the first location comes from a low-discrepancy sequence: far tighter than independent draws
    assert set(first_locations) == set(LOCATION_COLS)
    assert all(abs(count - expected) <= 0.25 * expected for count in first_locations.values()), first_locations


def test_positive_share_applies_to_every_modality():
    plans = [plan_series(0, index, positive_share=0.6) for index in range(400)]
    for name in MODALITIES:
        flags = [bool(plan.aneurysms) for plan in plans if plan.modality == name]
        assert np.mean(flags) == pytest.approx(0.6, abs=0.1), name
    with pytest.raises(ValueError, match="positive_share"):
        plan_series(0, 0, positive_share=1.5)
    with pytest.raises(ValueError, match="locations"):
        plan_series(0, 0, locations="made-up")


def test_each_variant_has_its_own_uids():
    uids = {plan_series(0, 0, SIZE_RANGE, locations, share).series_uid
            for locations in frequencies.LOCATION_WEIGHTS for share in (None, 0.6)}
    assert len(uids) == 2 * len(frequencies.LOCATION_WEIGHTS)


# --- DICOM files --------------------------------------------------------------------------------


def test_every_file_is_readable_dicom_with_consistent_headers(dataset, tables, plans):
    modality = dict(zip(tables[TRAIN_CSV][UID_COL], tables[TRAIN_CSV]["Modality"]))
    view = {plan.series_uid: plan.view for plan in plans}
    assert set(view.values()) > {AXIAL}, "the test dataset should hold a non-axial series"
    syntaxes = Counter()
    for uid, name in modality.items():
        for path in _series_files(dataset, uid):
            ds = pydicom.dcmread(path)
            assert ds.pixel_array.shape[-2:] == (ds.Rows, ds.Columns)
            assert ds.SOPClassUID == SOP_CLASS[name] == ds.file_meta.MediaStorageSOPClassUID
            assert ds.SeriesInstanceUID == uid and ds.Modality == STYLES[name].dicom_modality
            assert ds.PatientAge.endswith("Y") and len(ds.PatientAge) == 4 and ds.PatientSex in ("F", "M")
            assert ds.BitsAllocated == 16 and ds.HighBit == ds.BitsStored - 1
            for keyword in ("StudyInstanceUID", "FrameOfReferenceUID", "SOPInstanceUID"):
                assert pydicom.uid.UID(ds[keyword].value).is_valid
            if not STYLES[name].multi_frame:
                assert [float(v) for v in ds.ImageOrientationPatient] == list(VIEWS[view[uid]].orientation)
                assert all(len(str(v)) <= 16 for v in (*ds.ImagePositionPatient, *ds.PixelSpacing))
                field_of_view = FIELD_OF_VIEW_MM if view[uid] == AXIAL else NON_AXIAL_FIELD_OF_VIEW_MM
                assert field_of_view[0] <= float(ds.PixelSpacing[1]) * ds.Columns <= field_of_view[1]
            syntaxes[ds.file_meta.TransferSyntaxUID] += 1
    if RLELosslessEncoder.is_available:
        assert syntaxes[RLELossless] > 0
    assert len(syntaxes) >= 2


def test_enhanced_mra_has_per_frame_positions(dataset, tables, plans):
    train = tables[TRAIN_CSV]
    view = {plan.series_uid: plan.view for plan in plans}
    for uid in train.loc[train["Modality"] == "MRA", UID_COL]:
        (path,) = _series_files(dataset, uid)
        ds = pydicom.dcmread(path)
        shared = ds.SharedFunctionalGroupsSequence[0]
        orientation = [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient]
        assert orientation == list(VIEWS[view[uid]].orientation)
        assert len(shared.PixelMeasuresSequence[0].PixelSpacing) == 2
        frames = ds.PerFrameFunctionalGroupsSequence
        assert len(frames) == int(ds.NumberOfFrames) == ds.pixel_array.shape[0]
        positions = np.array([[float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient] for f in frames])
        steps = np.diff(positions @ VIEWS[view[uid]].normal)
        assert np.all(steps > 0) or np.all(steps < 0)
        assert [f.FrameContentSequence[0].InStackPositionNumber for f in frames] == list(range(1, len(frames) + 1))


def test_ct_pixels_are_hounsfield_units(dataset, tables):
    localizers = tables[LOCALIZERS_CSV].merge(tables[TRAIN_CSV][[UID_COL, "Modality"]])
    rows = list(localizers[localizers["Modality"] == "CTA"].itertuples())
    assert rows, "the test dataset should hold a positive CTA"
    for row in rows:
        hu, x, y, ds = _localized_image(dataset, row)
        assert float(ds.RescaleIntercept) == -1024 and float(ds.RescaleSlope) == 1
        assert np.median(hu[:4, :4]) == pytest.approx(-1000, abs=30)  # air in the corner
        aneurysm, _ = _disc_and_ring(hu, x, y, _pixel_spacing(ds))
        assert 200 <= aneurysm <= 500


def test_descending_series_number_instances_from_the_top(tmp_path):
    size_range = (64, 64)
    plan = next(p for p in (plan_series(SEED, i, size_range) for i in range(100)) if p.descending and p.modality == "CTA")
    (tmp_path / "series").mkdir()
    generate_series(SEED, plan.index, size_range, tmp_path / "series")
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in (tmp_path / "series" / plan.series_uid).iterdir()]
    z_by_instance = [float(h.ImagePositionPatient[2]) for h in sorted(headers, key=lambda h: h.InstanceNumber)]
    assert np.all(np.diff(z_by_instance) < 0)


# --- phantom ------------------------------------------------------------------------------------


def test_aneurysm_stands_out_at_the_localizer(dataset, tables):
    localizers = tables[LOCALIZERS_CSV].merge(tables[TRAIN_CSV][[UID_COL, "Modality"]])
    for row in localizers.itertuples():
        image, x, y, ds = _localized_image(dataset, row)
        disc, ring = _disc_and_ring(image, x, y, _pixel_spacing(ds))
        style = STYLES[row.Modality]
        contrast = (disc - ring) if aneurysm_is_bright(row.Modality) else (ring - disc)
        assert contrast > 0.3 * abs(style.artery[0] - style.brain), (row.Modality, row.location, disc, ring)


def test_lateral_locations_lie_on_their_patient_side(dataset, tables, plans):
    across = {plan.series_uid for plan in plans if VIEWS[plan.view].orientation[:3] == (1, 0, 0)}  # axial, coronal
    lateral = tables[LOCALIZERS_CSV][tables[LOCALIZERS_CSV]["location"].str.match("Left|Right")]
    lateral = lateral[lateral[UID_COL].isin(across)]
    assert len(lateral) > 0
    for row in lateral.itertuples():
        image, x, _, _ = _localized_image(dataset, row)
        # +x (patient left) grows with the column index: left aneurysms sit right of the midline.
        offset = x - _head_midline_column(image)
        assert offset > 0 if row.location.startswith("Left") else offset < 0, (row.location, offset)


def test_left_and_right_regions_are_mirror_images():
    for location in LOCATION_COLS:
        if not location.startswith("Left"):
            continue
        twin = location.replace("Left", "Right", 1)
        left, right = anatomy.REGIONS[location], anatomy.REGIONS[twin]
        assert anatomy.region_anchor(location)[0] > 0
        assert np.allclose(anatomy.region_anchor(twin), anatomy.mirror(anatomy.region_anchor(location)))
        assert right.dome_direction == anatomy.mirror(left.dome_direction)
    for location in ("Anterior Communicating Artery", "Basilar Tip"):
        assert anatomy.region_anchor(location)[0] == 0


# --- determinism, reruns, round trip, CLI -------------------------------------------------------


def test_same_seed_same_series_regardless_of_count(dataset, tables, tmp_path):
    summary = make_dataset(tmp_path, n_series=2, seed=SEED, size_range=SIZE_RANGE)
    assert summary.n_generated == 2
    small = pd.read_csv(tmp_path / TRAIN_CSV)
    full = tables[TRAIN_CSV].set_index(UID_COL).loc[small[UID_COL]].reset_index()
    pd.testing.assert_frame_equal(small, full)
    uid = small[UID_COL].iloc[0]
    files = _series_files(tmp_path, uid)
    assert [p.name for p in files] == [p.name for p in _series_files(dataset, uid)]
    assert all(p.read_bytes() == (dataset / SERIES_DIR / uid / p.name).read_bytes() for p in files)


def test_settings_change_regenerates_tables_and_keeps_series(tmp_path):
    from iad.datasets import DatasetSource, ensure_dataset

    def source(**synthetic) -> DatasetSource:
        return DatasetSource(root=str(tmp_path), series_dir=str(tmp_path / SERIES_DIR), train_csv=str(tmp_path / TRAIN_CSV),
                             localizers_csv=str(tmp_path / LOCALIZERS_CSV), folds_csv=str(tmp_path / FOLDS_CSV),
                             synthetic={"seed": 3, "size_range": [64, 64], **synthetic})

    ensure_dataset(source(n_series=2))
    first = set(pd.read_csv(tmp_path / TRAIN_CSV)[UID_COL])
    mtimes = {p.name: p.stat().st_mtime_ns for p in (tmp_path / SERIES_DIR).iterdir()}
    assert read_settings(tmp_path) == dataset_settings(n_series=2, seed=3, size_range=(64, 64))
    with pytest.raises(ValueError, match="dataset.synthetic.generator=1: this code generates version"):
        dataset_settings(n_series=2, generator=1)

    written = (tmp_path / SETTINGS_JSON).stat().st_mtime_ns
    ensure_dataset(source(n_series=2))  # same settings: nothing is rewritten
    assert (tmp_path / SETTINGS_JSON).stat().st_mtime_ns == written
    ensure_dataset(source(n_series=3))
    grown = set(pd.read_csv(tmp_path / TRAIN_CSV)[UID_COL])
    assert first < grown and len(grown) == 3
    assert all((tmp_path / SERIES_DIR / name).stat().st_mtime_ns == t for name, t in mtimes.items())

    ensure_dataset(source(n_series=3, locations="uniform", positive_share=1.0))
    uniform = pd.read_csv(tmp_path / TRAIN_CSV)
    assert not set(uniform[UID_COL]) & grown and uniform[PRESENT_COL].all()
    assert read_settings(tmp_path)["locations"] == "uniform"


def test_other_seed_other_data(plans):
    other = plan_series(SEED + 1, 0, SIZE_RANGE)
    assert other.series_uid != plans[0].series_uid
    assert other.geometry != plans[0].geometry or other.modality != plans[0].modality


def test_rerun_keeps_complete_series_and_replaces_partial_ones(tmp_path, capsys):
    make_dataset(tmp_path, n_series=2, seed=3, size_range=(64, 64))
    assert "generating synthetic series: 100%" in capsys.readouterr().err  # the progress bar
    uids = sorted(p.name for p in (tmp_path / SERIES_DIR).iterdir())
    kept, broken = (tmp_path / SERIES_DIR / uid for uid in uids)
    before = {p.name: p.read_bytes() for p in broken.iterdir()}
    kept_mtimes = {p.name: p.stat().st_mtime_ns for p in kept.iterdir()}
    partial = tmp_path / SERIES_DIR / f".{broken.name}.partial"
    broken.rename(partial)
    (partial / "truncated.dcm").write_bytes(b"\0" * 10)

    summary = make_dataset(tmp_path, n_series=2, seed=3, size_range=(64, 64))

    assert summary.n_generated == 1 and not partial.exists()
    assert "1/1" in capsys.readouterr().err  # the bar counts the series rendered, not the ones kept
    assert {p.name: p.read_bytes() for p in broken.iterdir()} == before
    assert {p.name: p.stat().st_mtime_ns for p in kept.iterdir()} == kept_mtimes


def test_load_series_round_trip(dataset, tables, plans):
    dicom = pytest.importorskip("iad.dicom", reason="iad.dicom.load_series is not built yet")
    loaded = {plan.series_uid: dicom.load_series(dataset / SERIES_DIR / plan.series_uid) for plan in plans}
    plans_by_uid = {plan.series_uid: plan for plan in plans}
    for plan in plans:
        assert loaded[plan.series_uid].pixels.shape == plan.stored_shape
    for row in tables[LOCALIZERS_CSV].itertuples():
        series = loaded[row.SeriesInstanceUID]
        x, y, frame = parse_coordinates(row.coordinates)
        image = series.pixels[series.index_of(row.SOPInstanceUID, frame)]
        expected, _, _, _ = _localized_image(dataset, row)
        np.testing.assert_array_equal(image, expected.astype(np.float32))
        assert np.all(np.diff(series.positions @ VIEWS[plans_by_uid[row.SeriesInstanceUID].view].normal) > 0)


def test_cli_writes_a_dataset_without_importing_torch(tmp_path):
    out = tmp_path / "cli"
    code = (
        "import sys; from iad.synthetic.cli import main; "
        f"main([{str(out)!r}, '--n-series', '2', '--seed', '1', '--size-range', '64', '80']); "
        "assert 'torch' not in sys.modules, 'iad.synthetic imported torch'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "2 series" in result.stdout and "compressed" in result.stdout and "MiB" in result.stdout
    assert len(pd.read_csv(out / TRAIN_CSV)) == 2 and len(list((out / SERIES_DIR).iterdir())) == 2
