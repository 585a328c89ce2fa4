"""Where the finding is: slice choice, fold fusion, slice → (SOPInstanceUID, frame), cache → original pixels,
findings.csv and PNGs, bundles carrying the aneurysm detector, `predict.py localize=true`, Kaggle unchanged."""

from __future__ import annotations

import json
import os
from pathlib import Path
import subprocess
import sys

import cv2
import numpy as np
import pandas as pd
import pydicom
import pytest

from iad.boxes import ANEURYSM_CLASSES
from iad.contract import DetectorSpec, detector_file
from iad.detection.findings import (
    FINDING_COLUMNS,
    DetectorCost,
    Finding,
    detection_slices,
    findings_frame,
    scale_box,
    strongest_detection,
    write_finding_png,
)
from iad.ensembling.spec import SpecError, make_spec
from iad.inference import Predictor, export_bundle, predict_folder
from iad.inference.localize import AneurysmLocalizer
from iad.inference.predictor import LoadedMember
from iad.labels import LABEL_COLS, LOCATION_COLS, PRESENT_COL, UID_COL
from iad.preprocessing.normalize import PreprocessConfig
from iad.synthetic.dataset import generate_series
from iad.synthetic.plan import plan_series
from iad.utils.env import PROJECT_ROOT
from tests.training_helpers import configuration_dir, run_train, tiny_overrides

SEED, SIZES, MAX_SLICES = 3, (64, 96), 24
DETECTOR_CACHE = PreprocessConfig(image_size=48)  # differs from every original size in SIZES


# ---- pure rules -----------------------------------------------------------------------------------
def test_top_slices_are_the_best_scored_with_their_neighbours_clipped_to_the_volume():
    scores = np.full(30, np.nan)
    scores[::2] = np.linspace(0, 1, 15)  # a stride-2 member scored the even slices; slice 28 scores best
    scores[4] = 0.99
    chosen = detection_slices(30, DetectorCost(slices="top", top_k=2, neighbours=2), scores)
    assert chosen.tolist() == [2, 3, 4, 5, 6, 26, 27, 28, 29]
    assert detection_slices(30, DetectorCost(slices="all", stride=4)).tolist() == list(range(0, 30, 4))
    unscored = detection_slices(10, DetectorCost(slices="top", stride=3), np.full(10, np.nan))
    assert unscored.tolist() == [0, 3, 6, 9]  # no classifier score: every stride-th slice


def test_fold_fusion_prefers_the_slice_the_folds_agree_on():
    def boxes(*rows):
        return np.array(rows, dtype=np.float32).reshape(-1, 6)

    zs = [7, 8, 9]
    fold_a = [boxes([1, 1, 5, 5, 0.9, 0]), boxes([10, 10, 20, 20, 0.6, 1]), boxes()]
    fold_b = [boxes(), boxes([12, 11, 22, 21, 0.7, 0], [0, 0, 2, 2, 0.1, 1]), boxes()]
    best = strongest_detection([fold_a, fold_b], zs)
    # slice 7: (0.9 + 0) / 2 = 0.45; slice 8: (0.6 + 0.7) / 2 = 0.65 -> slice 8, box of fold b (0.7 > 0.6)
    assert best.slice_index == 8 and best.box == (12, 11, 22, 21) and best.cls == 0
    assert best.confidence == pytest.approx(0.65)
    assert strongest_detection([[boxes(), boxes(), boxes()]], zs) is None
    with pytest.raises(ValueError, match="2 results for 3 slices"):
        strongest_detection([fold_a[:2]], zs)


def test_boxes_scale_per_axis():
    assert scale_box((10, 20, 30, 40), (48, 48), (96, 72)) == pytest.approx((15, 40, 45, 80))


def test_detector_cost_and_spec_entries_are_validated():
    assert DetectorCost.from_settings({"slices": "all", "stride": 2, "folds": [0, 2], "path": "x"}).folds == (0, 2)
    for bad, key in (({"slices": "some"}, "slices"), ({"top_k": 0}, "top_k"), ({"conf": 1.5}, "conf"),
                     ({"folds": []}, "folds")):
        with pytest.raises(ValueError, match=key):
            DetectorCost.from_settings(bad)
    member = {"name": "m", "path": "sweep", "weight": 1.0, "hflip_tta": False, "center_crop": 1.0}
    assert make_spec([member], {}, aneurysm_detector={"path": "exp0", "top_k": 3})["aneurysm_detector"]["top_k"] == 3
    with pytest.raises(SpecError, match="aneurysm_detector: neighbours -1"):
        make_spec([member], {}, aneurysm_detector={"path": "exp0", "neighbours": -1})
    with pytest.raises(SpecError, match="aneurysm_detector: path"):
        make_spec([member], {}, aneurysm_detector={"top_k": 3})


def test_finding_location_is_the_most_probable_of_the_13():
    rng = np.random.default_rng(0)
    probabilities = dict(zip(LABEL_COLS, rng.uniform(size=len(LABEL_COLS))))
    finding = Finding.from_probabilities("s", probabilities, "why")
    expected = LOCATION_COLS[int(np.argmax([probabilities[c] for c in LOCATION_COLS]))]
    assert finding.location == expected and finding.location_probability == probabilities[expected]
    assert finding.present == probabilities[PRESENT_COL]
    frame = findings_frame([finding])
    assert list(frame.columns) == list(FINDING_COLUMNS) and frame[["x0", "y0", "x1", "y1"]].isna().all().all()


def test_png_has_the_original_size_and_the_box_drawn(tmp_path):
    image = np.full((90, 70), 40, dtype=np.uint8)
    finding = Finding("s", 0.8, LOCATION_COLS[0], 0.7, box=(20.0, 50.0, 40.0, 70.0), confidence=0.5,
                      class_name="aneurysm", image=image)
    written = cv2.imread(str(write_finding_png(finding, tmp_path / "s.png")))
    assert written.shape == (90, 70, 3)
    assert tuple(written[60, 20]) == (0, 0, 255)  # the box's left edge, red (BGR)
    assert tuple(written[60, 30]) == (40, 40, 40)  # inside the box: the slice untouched
    with pytest.raises(ValueError, match="no detected slice"):
        write_finding_png(Finding("t", 0.1, LOCATION_COLS[0], 0.1, reason="none"), tmp_path / "t.png")


# ---- the Predictor with a detector whose answers are known -----------------------------------------
class FakeDetector:
    """Answers one known box (cache pixels) on one slice, nothing elsewhere; records what it was asked."""

    def __init__(self, z: int, box=(10.0, 12.0, 20.0, 30.0), confidence=0.8, cls=1):
        self.spec = DetectorSpec("aneurysm", ANEURYSM_CLASSES, 64, "slices", DETECTOR_CACHE)
        self.z, self.row, self.asked = z, np.array([[*box, confidence, cls]], dtype=np.float32), []

    def detect_series_slices(self, volume, zs, **kwargs):
        self.asked.append((volume.shape, list(zs), kwargs))
        return [self.row if z == self.z else np.zeros((0, 6), np.float32) for z in zs]


def _plan_index(predicate) -> int:
    return next(i for i in range(200) if predicate(plan_series(SEED, i, SIZES, max_slices=MAX_SLICES)))


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> dict:
    """A descending single-frame series with a non-square image and a multi-frame series, written by the generator."""
    root = tmp_path_factory.mktemp("findings") / "series"
    root.mkdir()
    picks = {
        "descending": _plan_index(lambda p: not p.style.multi_frame and p.descending
                                  and p.geometry.shape[1] != p.geometry.shape[2]),
        "multiframe": _plan_index(lambda p: p.style.multi_frame),
    }
    out = {}
    for name, index in picks.items():
        generate_series(SEED, index, SIZES, root, max_slices=MAX_SLICES)
        plan = plan_series(SEED, index, SIZES, max_slices=MAX_SLICES)
        out[name] = (plan, root / plan.series_uid)
    return out


@pytest.fixture(scope="module")
def classifier():
    """The demo classifier, untrained (its scores only choose slices; where they point does not matter here)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from iad.contract import InputSpec
    from iad.inference.loading import LoadedModel
    from iad.utils.config import CONFIG_DIR

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=demo", "paths.output_dir=.", "model.backbone=test_resnet",
                                          "data.input.img_size=32"])
    module = instantiate(cfg.model).eval()
    spec = InputSpec(preprocess=instantiate(cfg.preprocess), slice_input=instantiate(cfg.data.input).spec())
    return LoadedModel(net=module.net, model_spec=module.spec, input_spec=spec,
                       config=OmegaConf.to_container(cfg, resolve=True))


def _expected_source(plan, z: int) -> tuple[str, int]:
    """(SOPInstanceUID, frame) of ascending slice z, from the generator's own plan (file/frame order)."""
    position = int(np.flatnonzero(plan.slice_order == z)[0])
    return (plan.sop_uids[0], position) if plan.style.multi_frame else (plan.sop_uids[position], 0)


def _original_hw(folder: Path) -> tuple[int, int]:
    ds = pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True)
    return int(ds.Rows), int(ds.Columns)


@pytest.mark.parametrize("name", ["descending", "multiframe"])
def test_finding_maps_the_detected_slice_to_its_dicom_image_and_original_pixels(series, classifier, name):
    plan, folder = series[name]
    z = plan.geometry.shape[0] - 3
    fake = FakeDetector(z)
    predictor = Predictor([LoadedMember("demo", 1.0, [classifier])],
                          localizer=AneurysmLocalizer([fake], DetectorCost(slices="all")))
    finding = predictor.localize(folder)
    assert finding.reason is None, finding.reason
    rows, cols = _original_hw(folder)
    assert fake.asked[0][0] == (plan.geometry.shape[0], 48, 48)  # the detector's own cache, not the classifier's
    assert (finding.sop_uid, finding.frame, finding.slice_index) == (*_expected_source(plan, z), z)
    assert finding.box == pytest.approx((10 * cols / 48, 12 * rows / 48, 20 * cols / 48, 30 * rows / 48))
    assert finding.class_name == ANEURYSM_CLASSES[1] and finding.confidence == pytest.approx(0.8)
    assert finding.image.shape == (rows, cols)
    probabilities = predictor.predict(folder)
    assert finding.present == pytest.approx(probabilities[PRESENT_COL], abs=1e-6)


def test_top_slices_come_from_the_classifier_scores(series, classifier):
    plan, folder = series["descending"]
    fake = FakeDetector(z=-1)  # never answers: the finding has no box, and says why
    predictor = Predictor([LoadedMember("demo", 1.0, [classifier])],
                          localizer=AneurysmLocalizer([fake], DetectorCost(slices="top", top_k=1, neighbours=1)))
    finding = predictor.localize(folder)
    assert finding.box is None and "no box above conf" in finding.reason
    assert len(fake.asked[0][1]) <= 3 and fake.asked[0][2]["conf"] == DetectorCost().conf


def test_a_failing_detector_or_series_never_raises(series, classifier, tmp_path):
    class Broken(FakeDetector):
        def detect_series_slices(self, volume, zs, **kwargs):
            raise RuntimeError("detector exploded")

    predictor = Predictor([LoadedMember("demo", 1.0, [classifier])], localizer=AneurysmLocalizer([Broken(0)]))
    prediction = predictor.predict_safe(series["descending"][1], localize=True)
    assert prediction.fallback_reason is None and "detector exploded" in prediction.finding.reason
    missing = predictor.localize(tmp_path / "nope")
    assert missing.box is None and missing.reason and missing.series_uid == "nope"
    unlocalized = Predictor([LoadedMember("demo", 1.0, [classifier])]).localize(series["descending"][1])
    assert unlocalized.box is None and "no aneurysm detector" in unlocalized.reason


def test_predict_folder_writes_findings_csv_and_pngs(series, classifier, tmp_path):
    plan, folder = series["descending"]
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / folder.name).symlink_to(folder)
    (inputs / "broken").mkdir()  # an unreadable series: a fallback row, a finding row without a box
    (inputs / "broken" / "x.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    z = 5
    predictor = Predictor([LoadedMember("demo", 1.0, [classifier])],
                          localizer=AneurysmLocalizer([FakeDetector(z)], DetectorCost(slices="all")))
    out = tmp_path / "out"
    submission = predict_folder(predictor, inputs, out, progress=False, localize=True, localize_threshold=0.0)
    findings = pd.read_csv(out / "findings.csv").set_index(UID_COL)
    assert list(findings.reset_index().columns) == list(FINDING_COLUMNS)
    assert sorted(findings.index) == sorted(submission[UID_COL])
    mine = findings.loc[plan.series_uid]
    assert (mine["SOPInstanceUID"], mine["frame"]) == _expected_source(plan, z)
    assert mine["present"] == pytest.approx(submission.set_index(UID_COL).loc[plan.series_uid, PRESENT_COL])
    assert findings.loc["broken", ["x0", "y0", "x1", "y1"]].isna().all() and findings.loc["broken", "reason"]
    assert [p.name for p in (out / "findings").iterdir()] == [f"{plan.series_uid}.png"]
    assert cv2.imread(str(out / "findings" / f"{plan.series_uid}.png")).shape[:2] == _original_hw(folder)
    predict_folder(predictor, inputs, tmp_path / "high", progress=False, localize=True, localize_threshold=1.01)
    assert not (tmp_path / "high" / "findings").exists()  # nothing at or above the threshold


# ---- real (tiny, untrained) detector files: bundles, the Hydra entry, the Kaggle adapter ------------
@pytest.fixture(scope="module")
def detector_sweep(tmp_path_factory) -> Path:
    """An exp0-like sweep folder whose two folds hold a tiny untrained yolo11n detector.pt each."""
    from ultralytics.nn.tasks import DetectionModel

    from iad.detection.detector import export_detector

    sweep = tmp_path_factory.mktemp("exp0") / "sweep"
    spec = DetectorSpec("aneurysm", ANEURYSM_CLASSES, 64, "slices", DETECTOR_CACHE)
    for fold in (0, 1):
        net = DetectionModel("yolo11n.yaml", nc=len(ANEURYSM_CLASSES), verbose=False)
        export_detector(net, spec, detector_file(sweep / f"fold_{fold}"))
    return sweep


def test_bundle_carries_the_detectors_with_their_sha256(series, classifier, detector_sweep, tmp_path):
    from iad.contract import ContractError
    from iad.inference.localize import load_localizer

    cost = DetectorCost(slices="top", top_k=2, neighbours=1, conf=0.0)
    predictor = Predictor([LoadedMember("demo", 1.0, [classifier])], localizer=load_localizer(detector_sweep, cost))
    assert len(predictor.localizer.detectors) == 2
    export_bundle(predictor, tmp_path / "bundle")
    entry = json.loads((tmp_path / "bundle" / "bundle.json").read_text())["aneurysm_detector"]
    assert sorted(entry["sha256"]) == ["fold_0.pt", "fold_1.pt"] and entry["top_k"] == 2 and entry["conf"] == 0.0
    assert Predictor.load(tmp_path / "bundle").localizer is None  # not asked to localize: no detector loaded
    reloaded = Predictor.load(tmp_path / "bundle", localize=True)
    assert reloaded.localizer.cost == cost and len(reloaded.localizer.detectors) == 2
    finding = reloaded.localize(series["multiframe"][1])
    assert finding.reason is None and finding.box is not None  # conf 0 keeps the untrained net's best box
    assert finding.image.shape == _original_hw(series["multiframe"][1])
    one_fold = Predictor.load(tmp_path / "bundle", localize=True, aneurysm_cost={"folds": [1], "slices": "all"})
    assert [f.name for f in one_fold.localizer.files] == ["fold_1.pt"] and one_fold.localizer.cost.slices == "all"
    damaged = tmp_path / "bundle" / "detectors" / "aneurysm" / "fold_0.pt"
    content = bytearray(damaged.read_bytes())
    content[-1] ^= 0xFF
    damaged.write_bytes(bytes(content))
    with pytest.raises(ContractError, match="fold_0.pt: sha256 differs"):
        Predictor.load(tmp_path / "bundle", localize=True)
    damaged.unlink()
    with pytest.raises(ContractError, match=r"\['fold_0.pt'\] recorded with their sha256 are missing"):
        Predictor.load(tmp_path / "bundle", localize=True, aneurysm_cost={"folds": [0]})


def test_kaggle_adapter_still_returns_14_columns_from_a_bundle_with_a_detector(series, classifier, detector_sweep,
                                                                            tmp_path, monkeypatch):
    import iad.inference.kaggle as kaggle
    from iad.inference.localize import load_localizer

    predictor = Predictor([LoadedMember("demo", 1.0, [classifier])], localizer=load_localizer(detector_sweep))
    export_bundle(predictor, tmp_path / "bundle")
    monkeypatch.setenv(kaggle.MODEL_ENV, str(tmp_path / "bundle"))
    monkeypatch.setattr(kaggle, "_predictor", None)
    frame = kaggle.predict(str(series["descending"][1]))
    assert frame.shape == (1, 14) and frame.columns == list(LABEL_COLS)
    assert kaggle.warmup().localizer is None  # the adapter never pays for the detector


def test_predict_command_localize_end_to_end(detector_sweep, tmp_path):
    """`predict.py localize=true` on a tiny trained demo run and the tiny exp0 sweep: submission, findings, PNGs."""
    from iad.synthetic import make_dataset

    args = [*tiny_overrides(tmp_path / "data", tmp_path / "logs", n_series=8), "name=findingsdemo", "data.fold=0",
            "data.input.img_size=32"]
    out = run_train(args, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    run = configuration_dir(tmp_path / "logs", "runs", args)
    unseen = tmp_path / "unseen"
    make_dataset(unseen, n_series=3, seed=11, size_range=SIZES, max_slices=MAX_SLICES)
    command = [sys.executable, "predict.py", f"paths.log_dir={tmp_path}/logs", f"model_path={run}",
               f"input={unseen / 'series'}", f"output_dir={tmp_path}/pred", "localize=true", "localize_threshold=0",
               f"aneurysm_detector.path={detector_sweep}", "aneurysm_detector.conf=0", "aneurysm_detector.top_k=2"]
    done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, IAD_OFFLINE="1", YOLO_OFFLINE="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    submission = pd.read_csv(tmp_path / "pred" / "submission.csv")
    findings = pd.read_csv(tmp_path / "pred" / "findings.csv")
    assert list(findings.columns) == list(FINDING_COLUMNS)
    assert sorted(findings[UID_COL]) == sorted(submission[UID_COL]) and len(findings) == 3
    assert findings[["x0", "y0", "x1", "y1", "confidence"]].notna().all().all()  # conf 0: every series has a box
    assert (findings["x1"] >= findings["x0"]).all() and (findings["y1"] >= findings["y0"]).all()
    assert np.allclose(findings.set_index(UID_COL)["present"],
                       submission.set_index(UID_COL).loc[findings[UID_COL], PRESENT_COL], atol=1e-6)
    for uid in findings[UID_COL]:
        png = cv2.imread(str(tmp_path / "pred" / "findings" / f"{uid}.png"))
        assert png.shape[:2] == _original_hw(unseen / "series" / uid)
    timings = pd.read_csv(tmp_path / "pred" / "timings.csv")
    assert (timings["detect_s"] > 0).all()


def test_preflight_checks_the_detector_localize_would_load(detector_sweep, tmp_path):
    from hydra import compose, initialize_config_dir

    from iad.preflight import run_preflight
    from iad.utils.config import CONFIG_DIR

    member = {"name": "m", "path": str(tmp_path), "weight": 1.0, "hflip_tta": False, "center_crop": 1.0}
    spec = make_spec([member], {}, aneurysm_detector={"path": "exp0-missing"})
    (tmp_path / "ensemble.json").write_text(json.dumps(spec))

    def problems(*overrides):
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("predict", overrides=[f"paths.log_dir={tmp_path}/logs", f"output_dir={tmp_path}/out",
                                                f"model_path={tmp_path / 'ensemble.json'}", *overrides])
        return {p.key: p for p in run_preflight(cfg, "predict") if "aneurysm_detector" in p.key}

    missing = problems("localize=true", f"aneurysm_detector.path={tmp_path}/nothing")["aneurysm_detector.path"]
    assert missing.fatal and "no detector in" in missing.message and missing.path == f"{tmp_path}/nothing"
    assert problems("localize=true", f"aneurysm_detector.path={detector_sweep}") == {}
    from_spec = problems("localize=true")["model_path ensemble.json aneurysm_detector"]
    assert from_spec.fatal and from_spec.path == str(tmp_path / "exp0-missing")
    assert problems() == {}  # not localizing: the spec's detector is not loaded, not checked
    assert problems("mode=bundle")["model_path ensemble.json aneurysm_detector"].fatal  # a bundle copies it
    spec.pop("aneurysm_detector")
    (tmp_path / "ensemble.json").write_text(json.dumps(spec))
    note = problems("localize=true")["aneurysm_detector.path"]
    assert not note.fatal and "without an aneurysm detector" in note.message
    assert problems("mode=bundle") == {}
