"""Pseudo-labels for external volumes: the rule on constructed tables, the predictor's per-slice helper, and the
stage end to end on tiny trained models with a stand-in external source (synthetic RSNA series cached as
external ones, their tables built from the generator's own boxes and localizers)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from iad.boxes import XYXY_COLS
from iad.external.tables import (
    BOX_SOURCE_COL,
    CONTROL,
    LESION_BOX_COLS,
    LESION_COL,
    LESION_COLS,
    LOCATION_COL,
    POSITIVE,
    PSEUDO_COLS,
    PSEUDO_TABLE,
    SERIES_COLS,
    SLICE_COL,
    STATUS_COL,
    TRUTH_COLS,
    UNKNOWN,
)
from iad.labelling.pseudo_labels import (
    CONFIDENCE_COL,
    DETECTION_COLS,
    DETECTOR,
    MASK,
    ON_LESION_COL,
    PseudoRule,
    box_iou,
    on_lesion,
    pseudo_report,
    select_pseudo_labels,
    slice_accuracy,
)
from iad.labels import LABEL_COLS, LOCATION_COLS, PRESENT_COL, UID_COL
from tests.training_helpers import configuration_dir, run_train, tiny_overrides

TINY_CLSSEG = ["model.encoder_name=tu-test_resnet", "model.decoder.pyramid_channels=32",
               "model.decoder.segmentation_channels=32"]


# ---- the rule on constructed tables ----------------------------------------------------------------
def _series(rows) -> pd.DataFrame:
    frame = pd.DataFrame([{UID_COL: uid, "dataset": "ds", "subject": uid, "session": "1", "acq": "", "volume": "",
                           "n_lesions": int(status == POSITIVE), "control": status == CONTROL, STATUS_COL: status,
                           "n_slices": 10, "excluded": excluded} for uid, status, excluded in rows])
    return frame[SERIES_COLS]


def _slices(rows) -> pd.DataFrame:
    """(uid, slice, present, {location: p}) → scored slices."""
    out = []
    for uid, z, present, locations in rows:
        probs = {col: locations.get(col, 0.01) for col in LOCATION_COLS}
        out.append({UID_COL: uid, SLICE_COL: z, **probs, PRESENT_COL: present})
    return pd.DataFrame(out)[[UID_COL, SLICE_COL, *LABEL_COLS]]


def _lesion_boxes(rows) -> pd.DataFrame:
    return pd.DataFrame([{UID_COL: uid, LESION_COL: lesion, SLICE_COL: z, **dict(zip(XYXY_COLS, box)), "voxels": voxels}
                         for uid, lesion, z, box, voxels in rows])[LESION_BOX_COLS]


def _detections(rows) -> pd.DataFrame:
    return pd.DataFrame([{UID_COL: uid, SLICE_COL: z, "fold": 0, **dict(zip(XYXY_COLS, box)), CONFIDENCE_COL: conf,
                          "class": "aneurysm"} for uid, z, box, conf in rows], columns=DETECTION_COLS)


A, B = LOCATION_COLS[4], LOCATION_COLS[11]
RULE = PseudoRule(control_stride=2)
MASK_BOX = (10.0, 10.0, 20.0, 20.0)


@pytest.fixture()
def tables():
    series = _series([("pos", POSITIVE, ""), ("ctl", CONTROL, ""), ("unk", UNKNOWN, ""), ("gone", POSITIVE, "MRV")])
    eps = 1e-3
    slices = _slices([
        ("pos", 0, 0.9, {A: 0.9}),                    # off the lesion: never kept
        ("pos", 1, 0.5 + eps, {A: 0.5 + eps}),       # just above both thresholds: kept
        ("pos", 2, 0.5, {A: 0.9}),                   # present at the threshold: dropped
        ("pos", 3, 0.9, {A: 0.5}),                   # location at the threshold: dropped
        ("pos", 4, 0.8, {A: 0.3, B: 0.7}),           # kept, two lesion boxes on it
        ("pos", 5, 0.8, {B: 0.9}),                   # kept, only a low-confidence overlapping detection
        *[("ctl", z, 0.9, {A: 0.9}) for z in range(5)],
        ("unk", 1, 0.9, {A: 0.9}),
        ("gone", 1, 0.9, {A: 0.9}),
    ])
    lesion_boxes = _lesion_boxes([
        ("pos", 1, 1, MASK_BOX, 30), ("pos", 1, 2, MASK_BOX, 30), ("pos", 1, 3, MASK_BOX, 30),
        ("pos", 1, 4, MASK_BOX, 10), ("pos", 2, 4, (40.0, 40.0, 60.0, 60.0), 50), ("pos", 2, 5, MASK_BOX, 20),
        ("unk", 1, 1, MASK_BOX, 5), ("gone", 1, 1, MASK_BOX, 5),
    ])
    detections = _detections([
        ("pos", 1, (11.0, 11.0, 21.0, 21.0), 0.9),   # overlaps the mask box: the detector's box
        ("pos", 1, (70.0, 70.0, 80.0, 80.0), 0.95),  # more confident, elsewhere: not chosen
        ("pos", 4, (12.0, 12.0, 19.0, 19.0), 0.3),   # overlaps the smaller mask box of slice 4
        ("pos", 5, (10.0, 10.0, 20.0, 20.0), 0.1),   # below detector_confidence
    ])
    slices[ON_LESION_COL] = on_lesion(slices, series, lesion_boxes)
    return series, slices, lesion_boxes, detections


def test_rule_keeps_lesion_slices_above_both_thresholds_with_their_boxes(tables):
    series, slices, lesion_boxes, detections = tables
    assert slices.loc[slices[UID_COL] == "pos", ON_LESION_COL].tolist() == [False, True, True, True, True, True]
    assert not slices.loc[slices[UID_COL].isin(["unk", "gone", "ctl"]), ON_LESION_COL].any()
    pseudo = select_pseudo_labels(slices, series, lesion_boxes, detections, RULE)
    assert list(pseudo.columns) == PSEUDO_COLS
    kept = pseudo[pseudo[PRESENT_COL] > 0].set_index(SLICE_COL)
    assert set(kept[UID_COL]) == {"pos"} and sorted(kept.index) == [1, 4, 5]
    assert (kept[PRESENT_COL] == 1.0).all()
    scored = slices[slices[UID_COL] == "pos"].set_index(SLICE_COL)
    np.testing.assert_allclose(kept[list(LOCATION_COLS)], scored.loc[kept.index, list(LOCATION_COLS)])  # soft
    assert kept.loc[1, BOX_SOURCE_COL] == DETECTOR and tuple(kept.loc[1, list(XYXY_COLS)]) == (11.0, 11.0, 21.0, 21.0)
    assert kept.loc[4, BOX_SOURCE_COL] == DETECTOR and tuple(kept.loc[4, list(XYXY_COLS)]) == (12.0, 12.0, 19.0, 19.0)
    assert kept.loc[5, BOX_SOURCE_COL] == MASK and tuple(kept.loc[5, list(XYXY_COLS)]) == MASK_BOX
    controls = pseudo[pseudo[UID_COL] == "ctl"]
    assert sorted(controls[SLICE_COL]) == [0, 2, 4]  # every control_stride-th slice
    assert (controls[list(LABEL_COLS)] == 0).all().all() and controls[list(XYXY_COLS)].isna().all().all()
    without = select_pseudo_labels(slices, series, lesion_boxes, detections, PseudoRule(controls=False))
    assert set(without[UID_COL]) == {"pos"}


def test_rule_falls_back_to_the_largest_mask_box_below_the_iou_threshold(tables):
    series, slices, lesion_boxes, _ = tables
    # IoU of (10,10,20,20) with (18,10,28,20) is 20/180 = 0.111: above 0.1, below 0.2
    shifted = _detections([("pos", 4, (18.0, 10.0, 28.0, 20.0), 0.9)])
    assert box_iou(np.array([(18.0, 10.0, 28.0, 20.0)]), np.array([MASK_BOX]))[0, 0] == pytest.approx(20 / 180)
    for threshold, source in ((0.1, DETECTOR), (0.2, MASK)):
        pseudo = select_pseudo_labels(slices, series, lesion_boxes, shifted, PseudoRule(iou_threshold=threshold))
        row = pseudo[(pseudo[UID_COL] == "pos") & (pseudo[SLICE_COL] == 4)].iloc[0]
        assert row[BOX_SOURCE_COL] == source
        if source == MASK:  # the larger of the slice's two mask boxes
            assert tuple(row[list(XYXY_COLS)]) == (40.0, 40.0, 60.0, 60.0)


def test_rule_rejects_thresholds_outside_0_1():
    with pytest.raises(ValueError, match="present_threshold"):
        PseudoRule(present_threshold=1.5)
    with pytest.raises(ValueError, match="control_stride"):
        PseudoRule(control_stride=0)


def test_report_counts_and_top_location_accuracy_against_truth(tables):
    series, slices, lesion_boxes, detections = tables
    pseudo = select_pseudo_labels(slices, series, lesion_boxes, detections, RULE)
    truth = pd.DataFrame({UID_COL: ["pos", "pos"], LESION_COL: [1, 2], LOCATION_COL: [A, B]})[TRUTH_COLS]
    report = pseudo_report(series, slices, pseudo, RULE, truth, lesion_boxes)
    assert report["volumes"]["ds"] == {POSITIVE: 1, CONTROL: 1, UNKNOWN: 1, "excluded": 1}
    assert report["slices"]["kept"] == 3 and report["slices"]["control_rows"] == 3
    assert report["box_source"] == {DETECTOR: 2, MASK: 1}
    # slice 1: (11,11,21,21) vs (10,10,20,20): 81/119; slice 4: (12,12,19,19) inside (10,10,20,20): 49/100
    assert report["detector_box_iou"] == pytest.approx((81 / 119 + 49 / 100) / 2)
    assert report["control_slices_passing"] == 1.0
    # kept slices: 1 (lesion 1 = A, top A: right), 4 (lesions 1, 2 = A, B; top B: right), 5 (lesion 2 = B, top B: right)
    kept = report["truth"]["kept_slices"]
    assert kept["n"] == 3 and kept["accuracy"] == 1.0
    assert kept["chance"] == pytest.approx((1 + 2 + 1) / 3 / len(LOCATION_COLS))
    # a wrong top location counts as wrong
    wrong = pseudo.assign(**{A: 0.0, B: 0.0, LOCATION_COLS[0]: 0.99})
    assert slice_accuracy(wrong[wrong[PRESENT_COL] > 0], truth, lesion_boxes)["accuracy"] == 0.0
    assert report["truth"]["series"]["n"] == 1 and report["truth"]["series"]["accuracy"] == 1.0
    assert report["truth"]["on_lesion_slices"]["n"] == 5


# ---- tiny trained models and a stand-in external source ---------------------------------------------
@pytest.fixture(scope="session")
def models(tmp_path_factory) -> SimpleNamespace:
    """Tiny demo_exp2_vit (2 folds) and demo_exp3 (1 fold) sweeps and a 1-epoch exp0 detector, one dataset."""
    workspace = tmp_path_factory.mktemp("pseudo")
    tiny = tiny_overrides(workspace / "data", workspace / "logs", n_series=40)
    runs = {
        "vit": ["-m", "experiment=demo_exp2_vit", *tiny, "data.fold=0,1", "name=vit"],
        "exp3": ["-m", "experiment=demo_exp3", *[o for o in tiny if not o.startswith("model.backbone")],
                 *TINY_CLSSEG, "data.fold=0", "name=exp3"],
        "exp0": ["-m", "experiment=demo_yolo_aneurysm", f"paths.data_dir={workspace / 'data'}",
                 f"paths.log_dir={workspace / 'logs'}", "dataset.synthetic.n_series=40", "dataset.synthetic.seed=7",
                 "data.prepare_workers=0", "data.imgsz=64", "trainer.epochs=1", "trainer.batch=8", "data.fold=0",
                 "name=exp0"],
    }
    sweeps = {}
    for key, args in runs.items():
        out = run_train(args)
        assert out.returncode == 0, out.stderr[-4000:]
        sweeps[key] = configuration_dir(workspace / "logs", "sweeps", args)
    return SimpleNamespace(workspace=workspace, cache_root=workspace / "data" / "cache", **sweeps)


def standin_source(root: Path):
    """Another synthetic RSNA dataset (its own seed) that plays the external source."""
    from iad.datasets import DatasetSource

    return DatasetSource(root=str(root), series_dir=str(root / "series"), train_csv=str(root / "train.csv"),
                         localizers_csv=str(root / "train_localizers.csv"), folds_csv=str(root / "train_kfold.csv"),
                         name="standin", boxes=str(root / "boxes"),
                         synthetic={"n_series": 16, "seed": 11, "size_range": [64, 96], "locations": "uniform",
                                    "positive_share": 0.6, "max_slices": 32})


def standin_tables(source, cache_root: Path, config, truth_path: Path, unknown: str | None = None):
    """Cache the stand-in source like prepare_external would and build its tables: series.csv (positives,
    controls, one `unknown`), lesion boxes from the generator's boxes (each assigned to its nearest
    localizer: one lesion per localizer), lesions from the localizers, truth.csv from their locations."""
    from iad.boxes import map_boxes, read_aneurysm_boxes
    from iad.labels import map_localizers, read_localizers, read_series_labels
    from iad.preprocessing import prepare_dataset

    cache, report = prepare_dataset(source, cache_root, config, progress=False)
    assert not report.failed
    labels = read_series_labels(source.train_csv)
    geometry = {uid: cache.meta(uid).geometry for uid in labels[UID_COL]}
    lesions = map_localizers(read_localizers(source.localizers_csv), geometry).mapped
    lesions[LESION_COL] = lesions.groupby(UID_COL).cumcount() + 1
    boxes = map_boxes(read_aneurysm_boxes(source.boxes), geometry).mapped
    rows = []
    for box in boxes.itertuples(index=False):
        own = lesions[lesions[UID_COL] == getattr(box, UID_COL)]
        centre = np.array([(box.xmin + box.xmax) / 2, (box.ymin + box.ymax) / 2, box.slice_index])
        distance = np.linalg.norm(own[["x", "y", SLICE_COL]].to_numpy(float) - centre, axis=1)
        rows.append({UID_COL: getattr(box, UID_COL), LESION_COL: int(own[LESION_COL].iloc[int(np.argmin(distance))]),
                     SLICE_COL: int(box.slice_index), "x0": box.xmin, "y0": box.ymin, "x1": box.xmax, "y1": box.ymax,
                     "voxels": int((box.xmax - box.xmin) * (box.ymax - box.ymin))})
    lesion_boxes = pd.DataFrame(rows, columns=LESION_BOX_COLS)
    positive = labels[PRESENT_COL] == 1
    series = pd.DataFrame({UID_COL: labels[UID_COL], "dataset": "standin", "subject": labels[UID_COL], "session": "1",
                           "acq": "", "volume": "", "n_lesions": lesions.groupby(UID_COL).size().reindex(labels[UID_COL])
                           .fillna(0).astype(int).to_numpy(), "control": ~positive,
                           STATUS_COL: np.where(positive, POSITIVE, CONTROL),
                           "n_slices": [cache.meta(uid).shape[0] for uid in labels[UID_COL]], "excluded": ""})
    if unknown is not None:
        series.loc[series[UID_COL] == unknown, STATUS_COL] = UNKNOWN
    lesions[[UID_COL, LESION_COL, "location"]].rename(columns={"location": LOCATION_COL}).to_csv(truth_path, index=False)
    return SimpleNamespace(series=series[SERIES_COLS], lesion_boxes=lesion_boxes,
                           lesions=lesions.assign(voxels=1)[LESION_COLS], dir=cache.dir)


@pytest.fixture(scope="session")
def loaded(models):
    from iad.contract import detectors_in
    from iad.detection.detector import load_detector
    from iad.inference.predictor import Predictor
    from iad.labelling.pseudo import load_members

    members = {"vit": {"path": str(models.vit), "weight": 0.5}, "exp3": {"path": str(models.exp3), "weight": 0.5}}
    predictor = Predictor(load_members(members), batch_size=64)
    detectors = [load_detector(path) for path in detectors_in(models.exp0)]
    return predictor, detectors


def test_predictor_slice_probabilities_blend_the_members_folds_and_match_the_series_prediction(models, loaded):
    from dataclasses import replace

    import torch

    from iad.inference.predictor import Predictor
    from iad.models.aggregation import aggregate_series
    from iad.preprocessing import SeriesCache

    predictor, _ = loaded
    assert [len(m.models) for m in predictor.members] == [2, 1]
    config = predictor.members[0].models[0].input_spec.preprocess
    cache = SeriesCache(models.cache_root, config)
    uid = sorted(p.name for p in cache.dir.iterdir() if p.is_dir())[0]
    volumes = {config.key: (cache.volume(uid), cache.mean_image(uid))}
    blended = predictor.predict_volume_slices(volumes)
    assert blended.shape == (cache.meta(uid).shape[0], len(LABEL_COLS)) and np.isfinite(blended).all()
    per_member = []
    for member in predictor.members:  # each member alone, each fold alone: the blend is their weighted mean
        folds = [Predictor([replace(member, models=[model])]).predict_volume_slices(volumes) for model in member.models]
        per_member.append(np.mean(folds, axis=0))
        single = Predictor([member]).predict_volume_slices(volumes)
        np.testing.assert_allclose(single, per_member[-1], atol=1e-6)
        # the series prediction is these slices aggregated as the model does
        if len(member.models) == 1:
            spec = member.models[0].model_spec
            _, series = aggregate_series(torch.zeros(len(single), dtype=torch.long), torch.from_numpy(single).float(),
                                         spec.aggregation, spec.topk)
            probs = Predictor([member]).predict_volume(*volumes[config.key], config.key)
            np.testing.assert_allclose(series[0].numpy(), [probs[c] for c in LABEL_COLS], atol=1e-5)
    np.testing.assert_allclose(blended, 0.5 * per_member[0] + 0.5 * per_member[1], atol=1e-6)
    with pytest.raises(ValueError, match="no cached volume for preprocessing"):
        predictor.predict_volume_slices({"other-key": volumes[config.key]})


@pytest.fixture(scope="session")
def stage(models, loaded, tmp_path_factory):
    from iad.labelling.pseudo import pseudo_label

    predictor, detectors = loaded
    root = tmp_path_factory.mktemp("standin")
    source = standin_source(root / "data")
    truth = root / "truth.csv"
    built = {}

    def tables_for(config):
        if config.key not in built:
            built[config.key] = standin_tables(source, models.cache_root, config, truth, unknown=_first_control(source))
        return built[config.key]

    out = root / "out"
    rule = PseudoRule(present_threshold=0.0, location_threshold=0.0, iou_threshold=0.1, detector_confidence=0.001)
    report = pseudo_label(tables_for, models.cache_root, predictor, detectors, out, rule, truth)
    return SimpleNamespace(out=out, report=report, tables=next(iter(built.values())), rule=rule, truth=truth,
                           tables_for=tables_for, predictor=predictor, detectors=detectors, cache_root=models.cache_root)


def _first_control(source) -> str:
    from iad.datasets import ensure_dataset
    from iad.labels import read_series_labels

    ensure_dataset(source)
    labels = read_series_labels(source.train_csv)
    return str(labels.loc[labels[PRESENT_COL] == 0, UID_COL].iloc[0])


def test_stage_writes_every_table_from_the_models_outputs(stage):
    from iad.labelling.pseudo import DETECTIONS_FILE, REPORT_FILE, SLICE_PREDICTIONS_FILE
    from iad.preprocessing import SeriesCache

    series, lesion_boxes = stage.tables.series, stage.tables.lesion_boxes
    slices = pd.read_csv(stage.out / SLICE_PREDICTIONS_FILE)
    scored = series.loc[series[STATUS_COL] != UNKNOWN, UID_COL]
    assert set(slices[UID_COL]) == set(series[UID_COL])  # unknown volumes are scored too, never labelled
    assert len(slices) == series["n_slices"].sum()
    # the slice probabilities are the predictor's for that cached volume
    uid = scored.iloc[0]
    config = stage.predictor.members[0].models[0].input_spec.preprocess
    cache = SeriesCache(stage.cache_root, config)
    expected = stage.predictor.predict_volume_slices({config.key: (cache.volume(uid), cache.mean_image(uid))})
    np.testing.assert_allclose(slices.loc[slices[UID_COL] == uid, list(LABEL_COLS)], expected, atol=1e-5)
    lesion_keys = set(zip(lesion_boxes[UID_COL], lesion_boxes[SLICE_COL]))
    unknown = set(series.loc[series[STATUS_COL] == UNKNOWN, UID_COL])
    expected_on = [(u, z) in lesion_keys and u not in unknown for u, z in zip(slices[UID_COL], slices[SLICE_COL])]
    assert slices[ON_LESION_COL].tolist() == expected_on and any(expected_on)
    pseudo = pd.read_csv(stage.out / PSEUDO_TABLE, keep_default_na=False, na_values=[""])
    assert list(pseudo.columns) == PSEUDO_COLS
    labelled = pseudo[pseudo[PRESENT_COL] > 0]
    # thresholds at 0: every lesion slice of a positive volume is kept, with its soft locations
    assert len(labelled) == sum(expected_on)
    detections = pd.read_csv(stage.out / DETECTIONS_FILE)
    assert set(zip(detections[UID_COL], detections[SLICE_COL])) <= lesion_keys
    for row in labelled.itertuples(index=False):
        uid, z = getattr(row, UID_COL), int(getattr(row, SLICE_COL))
        box = np.array([getattr(row, c) for c in XYXY_COLS])
        masks = lesion_boxes[(lesion_boxes[UID_COL] == uid) & (lesion_boxes[SLICE_COL] == z)]
        if getattr(row, BOX_SOURCE_COL) == MASK:
            assert any(np.allclose(box, m) for m in masks[list(XYXY_COLS)].to_numpy(float))
        else:  # one of the detector's boxes on that slice, overlapping a mask box
            found = detections[(detections[UID_COL] == uid) & (detections[SLICE_COL] == z)]
            assert any(np.allclose(box, d, atol=1e-3) for d in found[list(XYXY_COLS)].to_numpy(float))
            assert box_iou(box[None], masks[list(XYXY_COLS)].to_numpy(float)).max() > stage.rule.iou_threshold
    controls = set(series.loc[series[STATUS_COL] == CONTROL, UID_COL])
    assert set(pseudo.loc[pseudo[PRESENT_COL] == 0, UID_COL]) == controls
    report = json.loads((stage.out / REPORT_FILE).read_text())
    assert report["slices"]["kept"] == len(labelled) and report["truth"]["kept_slices"]["n"] == len(labelled)
    assert 0.0 <= report["truth"]["kept_slices"]["accuracy"] <= 1.0
    assert report["truth"]["kept_slices"]["chance"] == pytest.approx(1 / len(LOCATION_COLS), rel=0.5)


def test_stage_is_skipped_when_finished_and_reruns_on_overwrite(stage, tmp_path):
    import shutil

    from iad.labelling.pseudo import REPORT_FILE, pseudo_label

    out = shutil.copytree(stage.out, tmp_path / "out")
    calls = []

    def counting(config):
        calls.append(config.key)
        return stage.tables_for(config)

    before = (out / REPORT_FILE).stat().st_mtime_ns
    pseudo_label(counting, stage.cache_root, stage.predictor, stage.detectors, out, stage.rule, stage.truth)
    assert calls == [] and (out / REPORT_FILE).stat().st_mtime_ns == before
    strict = PseudoRule(present_threshold=0.999, location_threshold=0.999, controls=False)
    report = pseudo_label(counting, stage.cache_root, stage.predictor, stage.detectors, out, strict, stage.truth,
                          overwrite=True)
    assert calls and report["rule"]["present_threshold"] == 0.999
    assert report["slices"]["kept"] <= stage.report["slices"]["kept"]
    pseudo = pd.read_csv(out / PSEUDO_TABLE)
    assert len(pseudo) == report["slices"]["kept"]


# ---- the command (needs iad.external.cache and conf/external: skipped without them) ------------------
def _external_ready() -> bool:
    from iad.utils.config import CONFIG_DIR

    try:
        import iad.external.cache  # noqa: F401
    except ImportError:
        return False
    return (Path(CONFIG_DIR) / "external" / "synthetic.yaml").exists()


needs_external = pytest.mark.skipif(not _external_ready(), reason="iad.external.cache / conf/external not here yet")


@needs_external
def test_config_resolves_with_the_reference_members():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from iad.utils.config import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("pseudo", overrides=["external=synthetic", "paths.root_dir=/r"])
    plain = {key: cfg[key] for key in ("detector", "present_threshold", "location_threshold", "iou_threshold",
                                       "detector_confidence")}
    plain.update(members=OmegaConf.to_container(cfg.members, resolve=True),
                 external=OmegaConf.to_container(cfg.external, resolve=True))
    assert plain["members"]["exp2_vit"] == {"path": "/r/logs/train/sweeps/exp2_vit_large_384", "weight": 0.5}
    assert plain["detector"] == "/r/logs/train/sweeps/exp0_yolo11x_aneurysm"
    assert (plain["present_threshold"], plain["location_threshold"], plain["iou_threshold"],
            plain["detector_confidence"]) == (0.5, 0.5, 0.1, 0.2)
    assert plain["external"]["_target_"].endswith("ExternalSource")


@needs_external
def test_command_labels_the_synthetic_external_source_and_skips_when_finished(models, tmp_path):
    import subprocess
    import sys

    from iad.labelling.pseudo import REPORT_FILE, SLICE_PREDICTIONS_FILE
    from iad.utils.env import PROJECT_ROOT

    out = tmp_path / "out"
    args = [sys.executable, "-m", "iad.labelling.pseudo", "external=synthetic", "external.synthetic.n_volumes=6",
            f"members.exp2_vit.path={models.vit}", f"members.exp3.path={models.exp3}", f"detector={models.exp0}",
            f"paths.data_dir={tmp_path / 'data'}", f"paths.cache_dir={models.cache_root}",
            f"paths.log_dir={tmp_path / 'logs'}", f"hydra.run.dir={out}", "present_threshold=0", "location_threshold=0"]
    done = subprocess.run(args, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "top location on kept_slices" in done.stdout
    report = json.loads((out / REPORT_FILE).read_text())
    assert sum(n for counts in report["volumes"].values() for n in counts.values()) == 6
    assert report["truth"]["kept_slices"]["n"] == report["slices"]["kept"]
    pseudo = pd.read_csv(out / PSEUDO_TABLE)
    slices = pd.read_csv(out / SLICE_PREDICTIONS_FILE)
    assert set(pseudo[UID_COL]) <= set(slices[UID_COL]) and len(pseudo) == report["slices"]["kept"] + \
        report["slices"]["control_rows"]
    before = (out / REPORT_FILE).stat().st_mtime_ns
    again = subprocess.run(args, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and (out / REPORT_FILE).stat().st_mtime_ns == before


def test_members_need_a_path_and_null_members_are_left_out():
    from iad.labelling.pseudo import load_members

    with pytest.raises(ValueError, match="at least one member"):
        load_members({"exp3": None})
    with pytest.raises(ValueError, match="member 'vit': no path"):
        load_members({"vit": {"weight": 1.0}, "exp3": None})
