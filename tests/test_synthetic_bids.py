"""The synthetic external TOF-MRA generator: both real BIDS layouts, masks where the phantom drew the aneurysms."""

from __future__ import annotations

import re

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from iad.external.bids import discover
from iad.external.orientation import orient
from iad.external.source import ExternalSource, ensure_external
from iad.external.tables import TRUTH_COLS, external_series_uid
from iad.labels import LOCATION_COLS, UID_COL
from iad.synthetic.bids import (
    DATASETS,
    ORIENTATIONS,
    SETTINGS_JSON,
    bids_settings,
    brain_mask,
    is_current_bids,
    lesion_masks,
    make_bids,
    plan_volume,
    read_bids_settings,
    volume_entities,
)
from iad.synthetic.phantom import render_volume
from iad.synthetic.plan import render_rng

N_VOLUMES = 12  # two rounds of ORIENTATIONS; enough for controls, unknowns and two-lesion positives


@pytest.fixture(scope="module")
def bids(tmp_path_factory):
    root = tmp_path_factory.mktemp("bids")
    volumes = make_bids(root, n_volumes=N_VOLUMES, seed=3)
    return root, volumes, bids_settings(N_VOLUMES, seed=3)


def load(path):
    image = nib.load(str(path))
    return orient(np.asanyarray(image.dataobj), image.affine), image


def test_discover_reads_both_layouts_back_without_problems(bids):
    root, volumes, settings = bids
    for dataset in DATASETS:
        table = discover(root / dataset, dataset)
        assert table.attrs["problems"] == []
        made = volumes[volumes["dataset"] == dataset]
        assert sorted(table["volume"]) == sorted(made["volume"])
        n_lesions = dict(zip(made["volume"], made["n_lesions"]))
        assert {v: n for v, n in zip(table["volume"], table["n_lesions"])} == n_lesions
        if dataset == "ds003949":  # participants.tsv's group column: controls are the volumes without lesions
            assert table["control"].tolist() == (table["n_lesions"] == 0).tolist()
        else:  # ds005096 has no control column: volumes without masks are unknown
            assert table["control"].isna().all()
    assert volumes["positive"].any() and (~volumes["positive"]).any()
    assert (volumes["n_lesions"] == 2).any() and (volumes["n_lesions"] == 1).any()
    assert (volumes["n_lesions"] > 0).tolist() == volumes["positive"].tolist()


def test_brisbane_masks_sit_in_folders_with_spaces_next_to_decoys(bids):
    root, volumes, _ = bids
    masks = sorted(p.relative_to(root / "ds005096").as_posix() for p in (root / "ds005096").rglob("*.nii"))
    lesion_masks_ = [m for m in masks if "/Nifti Aneurysm Only/" in m]
    brisbane = volumes[volumes["dataset"] == "ds005096"]
    assert len(lesion_masks_) == brisbane["n_lesions"].sum() > 0
    assert any("/Nifti with Parent Artery/" in m for m in masks) and any("/Mask/" in m for m in masks)
    multi = [m for m in lesion_masks_ if re.search(r"_Aneurysm\d-Only\.nii$", m)]
    assert len(multi) == 2 * (brisbane["n_lesions"] == 2).sum()


@pytest.mark.shared
@pytest.mark.parametrize("dataset", DATASETS)
def test_every_generated_path_has_the_shape_of_a_real_one(bids, external_layouts, dataset):
    root, _, _ = bids

    def shape(path: str) -> str:
        return re.sub(r"\d+", "N", path)

    real = {shape(line.strip()) for line in (external_layouts / f"{dataset}_files.txt").read_text().splitlines()}
    made = [p.relative_to(root / dataset).as_posix() for p in (root / dataset).rglob("*") if p.is_file()]
    assert made and sorted(p for p in made if shape(p) not in real) == []


def test_volumes_are_the_phantom_under_varied_affines(bids):
    root, volumes, settings = bids
    codes = set()
    for row in volumes.itertuples():
        data, image = load(root / row.dataset / row.volume)
        codes.add(("".join(nib.aff2axcodes(image.affine)), row.oblique_deg))
        plan = plan_volume(row.index, settings)
        rendered = render_volume(plan, render_rng(_plan_seed(settings), row.index))
        np.testing.assert_array_equal(data, np.rint(np.clip(rendered, 0, 4095)).astype(np.int16))  # 12-bit MRA
    assert len(codes) == len(ORIENTATIONS)  # RAS, LPS, permuted axes, oblique: each used
    assert any(tilt > 0 for _, tilt in codes)


def _plan_seed(settings):
    from iad.synthetic.bids import _plan_seed

    return _plan_seed(settings["seed"])


def test_masks_lie_on_the_drawn_aneurysms_which_are_visible(bids):
    root, volumes, settings = bids
    for row in volumes[volumes["n_lesions"] > 0].itertuples():
        table = discover(root / row.dataset, row.dataset).set_index("volume")
        plan = plan_volume(row.index, settings)
        volume, _ = load(root / row.dataset / row.volume)
        brain = brain_mask(plan)
        for path, aneurysm in zip(table.loc[row.volume, "lesion_masks"], plan.aneurysms):
            mask, _ = load(root / row.dataset / path)
            mask = mask > 0.5
            assert mask.shape == volume.shape
            drawn = plan.geometry.to_voxel(aneurysm.sac.centre)  # (slice, row, column) of the sac's centre
            assert np.abs(np.array(ndimage.center_of_mass(mask)) - drawn).max() < aneurysm.sac.radius / min(
                plan.geometry.spacing)
            assert mask[tuple(np.rint(drawn).astype(int))]
            # bright flow signal: the aneurysm stands out of the brain around it
            assert volume[mask].mean() > 2 * np.median(volume[brain & ~mask])


def test_truth_names_each_lesion_as_discover_numbers_it(bids):
    root, volumes, settings = bids
    truth = pd.read_csv(root / "truth.csv", dtype={UID_COL: str})
    assert list(truth.columns) == TRUTH_COLS
    assert len(truth) == volumes["n_lesions"].sum()
    assert set(truth["location"]) <= set(LOCATION_COLS)
    for row in volumes[volumes["n_lesions"] > 0].itertuples():
        uid = external_series_uid(row.dataset, row.subject, row.session, None if pd.isna(row.acq) else row.acq)
        plan = plan_volume(row.index, settings)
        listed = truth[truth[UID_COL] == uid].sort_values("lesion")
        assert listed["lesion"].tolist() == list(range(1, len(plan.aneurysms) + 1))
        masks = discover(root / row.dataset, row.dataset).set_index("volume").loc[row.volume, "lesion_masks"]
        for lesion, location in zip(listed["lesion"], listed["location"]):  # the mask the number names holds that aneurysm
            mask, _ = load(root / row.dataset / masks[lesion - 1])
            drawn = next(a for a in plan.aneurysms if a.location == location)
            assert mask[tuple(np.rint(plan.geometry.to_voxel(drawn.sac.centre)).astype(int))] > 0


def test_deterministic_kept_and_regenerated_by_settings(tmp_path, bids):
    root, volumes, settings = bids
    assert is_current_bids(root, settings) and read_bids_settings(root)["complete"] is True
    small = tmp_path / "small"
    first = make_bids(small, n_volumes=2, seed=3)
    made = small / first["dataset"][0] / first["volume"][0]
    same = root / volumes["dataset"][0] / volumes["volume"][0]
    assert made.read_bytes() == same.read_bytes()  # volume i depends on (seed, i) only
    stamp = made.stat().st_mtime_ns
    make_bids(small, n_volumes=2, seed=3)
    assert made.stat().st_mtime_ns == stamp  # a finished volume is kept
    make_bids(small, n_volumes=2, seed=4)
    assert not np.array_equal(load(made)[0], load(same)[0])  # other settings: regenerated
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="foreign"):
        make_bids(foreign, n_volumes=2)


def test_plans_are_mra_and_controls_have_no_aneurysm():
    settings = bids_settings(20, seed=1, positive_share=0.5)
    entities = [volume_entities(i, settings) for i in range(20)]
    assert 8 <= sum(e["positive"] for e in entities) <= 12  # spread evenly over the indices
    for index, e in enumerate(entities):
        plan = plan_volume(index, settings)
        assert plan.modality == "MRA"
        assert bool(plan.aneurysms) == e["positive"] and len(plan.aneurysms) <= 2
        assert len(lesion_masks(plan)) == len(plan.aneurysms)


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="n_volumes"):
        bids_settings(1)
    with pytest.raises(ValueError, match="positive_share"):
        bids_settings(positive_share=1.5)
    with pytest.raises(ValueError, match="max_slices"):
        make_bids(tmp_path / "x", n_volumes=2, max_slices=10)


def test_ensure_external_generates_the_synthetic_source(tmp_path):
    settings = {"n_volumes": 2, "seed": 5}
    source = ExternalSource("synthetic", {d: str(tmp_path / "ext" / d) for d in DATASETS}, synthetic=settings,
                            truth=str(tmp_path / "ext" / "truth.csv"))
    ensure_external(source)
    assert is_current_bids(tmp_path / "ext", bids_settings(**settings))
    assert (tmp_path / "ext" / SETTINGS_JSON).exists() and (tmp_path / "ext" / "truth.csv").exists()
    with pytest.raises(FileNotFoundError, match="ds005096"):
        ensure_external(ExternalSource("real", {"ds005096": str(tmp_path / "missing" / "ds005096")}))
    with pytest.raises(ValueError, match="unknown datasets"):
        ExternalSource("bad", {"ds000000": "x"})
    with pytest.raises(ValueError, match="<folder>/<dataset id>"):
        ensure_external(ExternalSource("bad", {"ds003949": str(tmp_path / "a")}, synthetic=settings))


def test_parallel_jobs_share_one_generation(tmp_path):
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing

    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        tables = [f.result() for f in [pool.submit(make_bids, tmp_path / "shared", 4, 9) for _ in range(2)]]
    pd.testing.assert_frame_equal(tables[0], tables[1])
    assert is_current_bids(tmp_path / "shared", bids_settings(4, 9))
    assert all(discover(tmp_path / "shared" / d, d).attrs["problems"] == [] for d in DATASETS)
