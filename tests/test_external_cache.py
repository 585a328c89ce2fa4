"""External TOF-MRA volumes into the series cache; lesion masks into per-slice boxes and centres."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from iad.external.cache import ExternalTables, lesion_tables, prepare_external, read_external
from iad.external.source import ExternalSource
from iad.external.tables import CONTROL, POSITIVE, SERIES_COLS, UNKNOWN, external_series_uid
from iad.labels import UID_COL
from iad.preprocessing import PreprocessConfig, SeriesCache, SeriesMeta
from iad.preprocessing.cache import FAILED_FILE
from iad.synthetic.bids import DATASETS, bids_settings, lesion_masks, plan_volume
from iad.synthetic.phantom import render_volume
from iad.synthetic.plan import render_rng

SETTINGS = {"n_volumes": 10, "seed": 7}
SIZE = 64


def synthetic_source(root, **settings) -> ExternalSource:
    return ExternalSource("synthetic", {d: str(root / d) for d in DATASETS}, synthetic={**SETTINGS, **settings},
                          truth=str(root / "truth.csv"))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    base = tmp_path_factory.mktemp("external")
    source = synthetic_source(base / "data")
    config = PreprocessConfig(image_size=SIZE)
    cache = SeriesCache(base / "cache", config)
    cache.dir.mkdir(parents=True)
    (cache.dir / FAILED_FILE).write_text('{"1.2.3": "an RSNA series"}')
    tables = prepare_external(source, base / "cache", config, progress=False)
    volumes = pd.read_csv(base / "data" / "volumes.csv", dtype={"subject": str, "session": str, "acq": str})
    volumes[UID_COL] = [external_series_uid(r.dataset, r.subject, r.session, None if pd.isna(r.acq) else r.acq)
                        for r in volumes.itertuples()]
    return source, config, cache, tables, volumes.set_index(UID_COL)


def scale(meta: SeriesMeta) -> tuple[float, float]:
    return meta.shape[1] / meta.original_shape[1], meta.shape[2] / meta.original_shape[2]


def test_every_volume_cached_as_an_mr_series(prepared):
    source, config, cache, tables, volumes = prepared
    series = tables.series
    assert list(series.columns) == SERIES_COLS and sorted(series[UID_COL]) == sorted(volumes.index)
    assert series["excluded"].isna().all()
    settings = bids_settings(**SETTINGS)
    for row in series.itertuples():
        made = volumes.loc[getattr(row, UID_COL)]
        expected = POSITIVE if made.n_lesions else CONTROL if made.dataset == "ds003949" else UNKNOWN
        assert row.status == expected
        meta = cache.meta(row.SeriesInstanceUID)
        plan = plan_volume(int(made["index"]), settings)
        assert meta.modality == "MR" and meta.original_shape == plan.geometry.shape
        assert meta.shape == (plan.geometry.shape[0], SIZE, SIZE) and row.n_slices == meta.shape[0]
        assert meta.sop_uids == [row.SeriesInstanceUID] * meta.shape[0] and meta.frames == list(range(meta.shape[0]))
        assert meta.index_of(row.SeriesInstanceUID, 3) == 3
        dx, dy, dz = plan.geometry.spacing
        sy, sx = scale(meta)
        np.testing.assert_allclose(meta.spacing, (dz, dy / sy, dx / sx), rtol=1e-4)
        assert np.all(np.diff(meta.slice_positions) > 0)
        # the cached slices are the phantom's axial slices (oriented from any affine), normalised
        volume = cache.volume(row.SeriesInstanceUID)
        rendered = render_volume(plan, render_rng(_plan_seed(), int(made["index"])))
        z = meta.shape[0] // 2
        import cv2

        expected_slice = cv2.resize(rendered[z], (SIZE, SIZE), interpolation=cv2.INTER_AREA)
        assert np.corrcoef(volume[z].ravel().astype(float), expected_slice.ravel())[0, 1] > 0.95
        assert cache.mean_image(row.SeriesInstanceUID).shape == (SIZE, SIZE)


def _plan_seed():
    from iad.synthetic.bids import _plan_seed

    return _plan_seed(SETTINGS["seed"])


def test_lesion_centres_and_boxes_match_the_drawn_aneurysms(prepared):
    source, config, cache, tables, volumes = prepared
    settings = bids_settings(**SETTINGS)
    truth = pd.read_csv(source.truth)
    assert len(tables.lesions) == len(truth) == volumes["n_lesions"].sum() > 0
    for (uid, lesion), centre in tables.lesions.set_index([UID_COL, "lesion"]).iterrows():
        meta = cache.meta(uid)
        sy, sx = scale(meta)
        plan = plan_volume(int(volumes.loc[uid, "index"]), settings)
        location = truth[(truth[UID_COL] == uid) & (truth["lesion"] == lesion)]["location"].item()
        k = [a.location for a in plan.aneurysms].index(location)
        mask = lesion_masks(plan)[k]
        z, r, c = plan.geometry.to_voxel(plan.aneurysms[k].sac.centre)
        radius = plan.aneurysms[k].sac.radius
        # centre (cache pixels, pixel centres at integers) near the drawn sac centre; voxels as drawn
        assert abs(centre["x"] - ((c + 0.5) * sx - 0.5)) < radius / plan.geometry.spacing[0] * sx
        assert abs(centre["y"] - ((r + 0.5) * sy - 0.5)) < radius / plan.geometry.spacing[1] * sy
        assert abs(centre["slice_index"] - z) <= radius / plan.geometry.spacing[2] + 0.5
        assert centre["voxels"] == mask.sum()
        boxes = tables.lesion_boxes[(tables.lesion_boxes[UID_COL] == uid) & (tables.lesion_boxes["lesion"] == lesion)]
        assert sorted(set(boxes["slice_index"])) == np.flatnonzero(mask.any(axis=(1, 2))).tolist()
        per_slice = boxes.groupby("slice_index")["voxels"].sum()
        assert per_slice.tolist() == [int(mask[s].sum()) for s in per_slice.index]
        for box in boxes.itertuples():  # every drawn voxel of the slice lies in one of its boxes (cache pixels)
            rows, cols = np.nonzero(mask[box.slice_index])
            inside = ((cols * sx >= box.x0 - 1e-6) & ((cols + 1) * sx <= box.x1 + 1e-6)
                      & (rows * sy >= box.y0 - 1e-6) & ((rows + 1) * sy <= box.y1 + 1e-6))
            assert inside.any()
        on_centre = boxes[boxes["slice_index"] == int(round(z))]
        cx, cy = (c + 0.5) * sx, (r + 0.5) * sy
        assert ((on_centre.x0 <= cx) & (cx <= on_centre.x1) & (on_centre.y0 <= cy) & (cy <= on_centre.y1)).any()


def test_rsna_failed_json_untouched_and_rerun_skips(prepared):
    source, config, cache, tables, volumes = prepared
    assert json.loads((cache.dir / FAILED_FILE).read_text()) == {"1.2.3": "an RSNA series"}
    uid = tables.series[UID_COL].iloc[0]
    stamp = (cache.series_dir(uid) / "volume.npy").stat().st_mtime_ns
    again = prepare_external(source, cache.root, config, progress=False)
    assert (cache.series_dir(uid) / "volume.npy").stat().st_mtime_ns == stamp
    pd.testing.assert_frame_equal(again.series, tables.series)
    pd.testing.assert_frame_equal(again.lesion_boxes, tables.lesion_boxes)
    read = read_external(cache.root, config, "synthetic")
    assert isinstance(read, ExternalTables) and read.dir == tables.dir
    assert read.series["subject"].str.len().eq(3).all()  # BIDS labels keep their zeros


def test_damaged_entry_rebuilt_bad_volume_and_mask_reported(tmp_path):
    data = tmp_path / "data"
    source = synthetic_source(data, n_volumes=6)
    config = PreprocessConfig(image_size=32)
    tables = prepare_external(source, tmp_path / "cache", config, progress=False)
    cache = SeriesCache(tmp_path / "cache", config)
    victim = tables.series[UID_COL].iloc[0]
    with open(cache.series_dir(victim) / "volume.npy", "r+b") as handle:
        handle.truncate(200)
    assert not cache.has(victim)
    prepare_external(source, tmp_path / "cache", config, progress=False)
    assert cache.has(victim)
    # a volume that cannot be read, and a mask on another grid: left out with the reason, the others kept
    positive = tables.series[tables.series["status"] == POSITIVE].iloc[0]
    broken = tables.series[tables.series[UID_COL] != positive[UID_COL]].iloc[-1]
    root = data / broken["dataset"]
    (root / broken["volume"]).write_bytes(b"not a nifti")
    from iad.external.bids import discover

    mask_path = root.parent / positive["dataset"] / discover(root.parent / positive["dataset"]).set_index("volume").loc[
        positive["volume"], "lesion_masks"][0]
    image = nib.load(str(mask_path))
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[:-2], image.affine), str(mask_path))
    shutil.rmtree(cache.series_dir(broken[UID_COL]))
    again = prepare_external(source, tmp_path / "cache", config, progress=False).series.set_index(UID_COL)
    assert str(root / broken["volume"]) in again.loc[broken[UID_COL], "excluded"]
    reason = again.loc[positive[UID_COL], "excluded"]
    assert "differs from its volume" in reason and mask_path.name in reason
    assert again["excluded"].notna().sum() == 2
    report = json.loads((read_external(tmp_path / "cache", config, "synthetic").dir / "report.json").read_text())
    assert set(report["failed"]) == {broken[UID_COL], positive[UID_COL]}


def test_excluded_acquisition_is_recorded_not_cached(tmp_path):
    data = tmp_path / "data"
    source = synthetic_source(data, n_volumes=4)
    first = prepare_external(source, tmp_path / "cache", PreprocessConfig(image_size=32), workers=2, progress=False)
    assert first.series["excluded"].isna().all() and len(first.lesions) == first.series["n_lesions"].sum()
    volume = next((data / "ds005096").rglob("*_acq-tra_angio.nii.gz"))
    mrv = volume.parent / volume.name.replace("_acq-tra_", "_acq-MRV_")
    shutil.copy(volume, mrv)
    tables = prepare_external(source, tmp_path / "cache", PreprocessConfig(image_size=32), progress=False)
    row = tables.series[tables.series["acq"] == "MRV"].iloc[0]
    assert "excluded" in row["excluded"] and "MRV" in row["excluded"] and pd.isna(row["n_slices"])
    assert not SeriesCache(tmp_path / "cache", PreprocessConfig(image_size=32)).series_dir(row[UID_COL]).exists()


def test_several_components_on_a_slice_stay_one_lesion(tmp_path):
    mask = np.zeros((4, 10, 20), dtype=np.uint8)  # (slice, row, column) once oriented
    mask[1, 2:4, 2:5] = 1
    mask[1, 6:9, 12:18] = 1
    mask[2, 5, 5] = 1
    stored = mask.transpose(2, 1, 0)[::-1, ::-1]  # x towards R, y towards A, z towards S: RAS voxel axes
    path = tmp_path / "lesion.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(stored), np.diag([1.0, 1.0, 2.0, 1.0])), str(path))
    meta = SeriesMeta("u", "MR", (4, 5, 10), (4, 10, 20), ["u"] * 4, list(range(4)), [0.0] * 4, (2, 2, 2), {}, "k")
    boxes, centres = lesion_tables("u", [path], meta)
    assert [(b["slice_index"], b["x0"], b["y0"], b["x1"], b["y1"], b["voxels"]) for b in boxes] == [
        (1, 1.0, 1.0, 2.5, 2.0, 6), (1, 6.0, 3.0, 9.0, 4.5, 18), (2, 2.5, 2.5, 3.0, 3.0, 1)]
    assert {b["lesion"] for b in boxes} == {1} and len(centres) == 1 and centres[0]["voxels"] == 25


def test_read_external_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="not prepared"):
        read_external(tmp_path, PreprocessConfig(), "tofmra")


def test_scaled_nifti_caches_like_its_stored_integers(prepared, tmp_path):
    source, config, cache, tables, volumes = prepared
    from iad.external.cache import cache_volume

    row = tables.series.iloc[0]
    original = nib.load(str(Path(source.roots[row["dataset"]]) / row["volume"]))
    stored = np.asanyarray(original.dataobj).astype(np.int16)
    scaled = nib.Nifti1Image(stored, original.affine)
    scaled.header.set_slope_inter(0.5, 10.0)  # modality units = stored / 2 + 10: the same image, other units
    path = tmp_path / "scaled.nii.gz"
    nib.save(scaled, str(path))
    assert nib.load(str(path)).dataobj.slope == 0.5
    meta = cache_volume(path, tmp_path / "entry", config)
    again = np.load(tmp_path / "entry" / "volume.npy")
    expected = cache.volume(row[UID_COL])
    assert meta.shape == expected.shape
    assert np.abs(again.astype(int) - expected.astype(int)).max() <= 1


NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"  # real NIfTI files nibabel ships for its own tests


def test_real_nifti_files_cache_in_the_dicom_layout_and_a_4d_one_is_refused(tmp_path):
    """nibabel's anatomical.nii (big-endian int16, stored L-A-S: radiological x) through discover and the cache."""
    anatomical, four_d = NIBABEL_DATA / "anatomical.nii", NIBABEL_DATA / "example4d.nii.gz"
    if not (anatomical.exists() and four_d.exists()):
        pytest.skip(f"nibabel's test images are not installed ({NIBABEL_DATA})")
    image = nib.load(str(anatomical))
    assert nib.aff2axcodes(image.affine) == ("L", "A", "S") and image.get_data_dtype().byteorder == ">"
    root = tmp_path / "ds003949"
    anat = root / "sub-001" / "ses-1" / "anat"
    anat.mkdir(parents=True)
    (anat / "sub-001_ses-1_angio.nii.gz").write_bytes(gzip.compress(anatomical.read_bytes()))  # the file's own bytes
    other = root / "sub-002" / "ses-1" / "anat"
    other.mkdir(parents=True)
    shutil.copy(four_d, other / "sub-002_ses-1_angio.nii.gz")
    voxel = (5, 30, 17)  # (i, j, k) of the stored grid: x towards L, y towards A, z towards S
    mask = np.zeros(image.shape, np.uint8)
    mask[voxel] = 1
    masks = root / "derivatives" / "manual_masks" / "sub-001" / "ses-1" / "anat"
    masks.mkdir(parents=True)
    nib.save(nib.Nifti1Image(mask, image.affine), str(masks / "sub-001_ses-1_desc-Lesion_1_mask.nii.gz"))

    config = PreprocessConfig(image_size=None)  # native grid: cache pixels are voxels
    tables = prepare_external(ExternalSource("tofmra", {"ds003949": str(root)}), tmp_path / "cache", config,
                              progress=False)
    series = tables.series.set_index(UID_COL)
    uid, four_d_uid = external_series_uid("ds003949", "001", "1"), external_series_uid("ds003949", "002", "1")
    assert pd.isna(series.at[uid, "excluded"]) and series.at[uid, "status"] == POSITIVE
    reason = series.at[four_d_uid, "excluded"]
    assert "sub-002_ses-1_angio.nii.gz" in reason and "3-D" in reason
    # expected layout, derived through nibabel's canonical (RAS) reorientation: (S, P, L) = RAS axes reversed, y and x flipped
    canonical = nib.as_closest_canonical(image)
    expected = np.asarray(canonical.dataobj).transpose(2, 1, 0)[:, ::-1, ::-1]
    cached = SeriesCache(tmp_path / "cache", config).volume(uid)
    assert cached.shape == expected.shape == (25, 41, 33)
    assert np.corrcoef(cached.astype(float).ravel(), expected.astype(float).ravel())[0, 1] > 0.99
    marked = np.asarray(nib.as_closest_canonical(nib.Nifti1Image(mask, image.affine)).dataobj).transpose(2, 1, 0)[:, ::-1, ::-1]
    z, y, x = np.argwhere(marked)[0]
    lesion = tables.lesions.iloc[0]
    assert (lesion["slice_index"], lesion["y"], lesion["x"]) == (z, y, x)
    box = tables.lesion_boxes.iloc[0]
    assert (box["slice_index"], box["x0"], box["y0"], box["x1"], box["y1"]) == (z, x, y, x + 1, y + 1)
    # the slice positions ascend superior-wards by the voxel size along z, as DICOM's do
    meta = SeriesCache(tmp_path / "cache", config).meta(uid)
    steps = np.diff(meta.slice_positions)
    assert np.allclose(steps, abs(image.affine[2, 2])) and np.allclose(meta.spacing[0], abs(image.affine[2, 2]))
