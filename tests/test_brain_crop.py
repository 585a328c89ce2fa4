"""The learned brain crop end to end: the fallback rule, the crop-table command, a classifier trained on
its crops, and a Predictor / bundle that crops with the same detector (moved elsewhere, checked by SHA-256).

The brain detector here is an untrained yolo11n whose head is set so that it calls every image `brain`
(never `abnormal`) with scores that vary with the image (BatchNorm statistics set, so no near-ties),
and boxes 2 strides around their anchor: arbitrary but deterministic, which is all these tests need
(that the crop used is the detector's, not the head box). No test says it finds a brain.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from iad.boxes import BRAIN_CLASSES
from iad.contract import DETECTOR_KEY, INPUT_KEY, ContractError, DetectorSpec, detector_file
from iad.data.crops import CROP_COLS, head_box, read_crop_table
from iad.detection.crops import CROP_TABLE_COLS, brain_crop, read_sidecar, sidecar_path
from iad.labels import LABEL_COLS, UID_COL
from iad.preprocessing.normalize import PreprocessConfig
from iad.utils.env import PROJECT_ROOT
from tests.training_helpers import run_train, tiny_overrides

pytest.importorskip("ultralytics")


def blob_image(height=80, width=120) -> np.ndarray:
    image = np.zeros((height, width), dtype=np.uint8)
    image[20:60, 30:90] = 200  # the head box: columns 30-90, rows 20-60 (+ margin)
    return image


@pytest.mark.parametrize(("rows", "reason"), [
    (np.zeros((0, 6)), "no detection"),
    ([[10, 10, 50, 50, 0.2, 0]], "low confidence"),
    ([[10, 10, 50, 50, 0.9, 1], [0, 0, 60, 60, 0.8, 0]], "abnormal"),  # the strongest box says: not axial
])
def test_head_box_is_the_fallback_and_says_why(rows, reason):
    image = blob_image()
    decision = brain_crop(np.asarray(rows, dtype=np.float32), BRAIN_CLASSES, image, min_confidence=0.25)
    assert decision.source == "head_box" and decision.reason == reason
    assert decision.box == head_box(image)


def test_strongest_confident_brain_box_is_the_crop():
    image = blob_image(height=80, width=120)
    rows = np.array([[12, 8, 96, 72, 0.7, 0], [0, 0, 30, 30, 0.5, 1], [24, 16, 60, 40, 0.3, 0]], dtype=np.float32)
    decision = brain_crop(rows, BRAIN_CLASSES, image, min_confidence=0.25)
    assert decision.source == "detector" and decision.reason is None and decision.cls == "brain"
    np.testing.assert_allclose(decision.box, [12 / 120, 8 / 80, 96 / 120, 72 / 80])
    assert decision.confidence == pytest.approx(0.7)


def confident_brain_detector(path: Path, preprocess: PreprocessConfig, mean_images: list[np.ndarray]) -> Path:
    """An untrained yolo11n made to call every image `brain` with distinct, unsaturated scores (see the module doc)."""
    import cv2
    from ultralytics.nn.tasks import DetectionModel

    from iad.detection.detector import export_detector

    torch.manual_seed(1)
    net = DetectionModel("yolo11n.yaml", nc=2, verbose=False)
    for module in net.modules():  # untrained features vanish: set every BatchNorm's statistics on the mean images
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
    images = np.stack([cv2.resize(image, (64, 64)) for image in mean_images])
    with torch.no_grad():
        net.train()(torch.from_numpy(images).float().div(255)[:, None].repeat(1, 3, 1, 1))
    net.eval()
    head = net.model[-1]
    with torch.no_grad():
        for branch in head.cv3:  # class logits: brain a random function of the image (about ±1), abnormal -20
            branch[-1].weight.normal_(0.0, 0.1)
            branch[-1].weight[1].zero_()
            branch[-1].bias.copy_(torch.tensor([0.0, -20.0]))
        for branch in head.cv2:  # box sides: all on distribution bin 2, i.e. 2 strides from the anchor
            branch[-1].weight.zero_()
            branch[-1].bias.copy_(torch.tensor([-10.0] * 2 + [10.0] + [-10.0] * (head.reg_max - 3)).repeat(4))
    spec = DetectorSpec(task="brain", classes=BRAIN_CLASSES, imgsz=64, image="mean", preprocess=preprocess)
    return export_detector(net, spec, path)


def crop_table_command(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "iad.detection.crop_table", *args, "workers=0"],
                         cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.fixture(scope="module")
def cropped(tmp_path_factory) -> dict:
    """A brain detector run, its crop table of the synthetic data, and a classifier trained on those crops."""
    from iad.preprocessing import SeriesCache

    root = tmp_path_factory.mktemp("braincrop")
    run = root / "brain_run"
    # the detector looks at another cache (48 px) than the classifier (native size): crops are normalised
    preprocess = PreprocessConfig(image_size=48)
    data = [f"paths.data_dir={root / 'data'}", f"paths.log_dir={root / 'logs'}", "dataset.synthetic.n_series=16",
            "dataset.synthetic.seed=7"]
    noise = [np.random.default_rng(0).integers(0, 255, (48, 48), dtype=np.uint8)]
    confident_brain_detector(detector_file(run), preprocess, noise)
    crop_table_command(f"detector={run}", *data)  # generates the data and the detector's cache
    cache = SeriesCache(root / "data" / "cache", preprocess)
    means = [cache.mean_image(p.name) for p in sorted(cache.dir.iterdir()) if p.is_dir() and cache.has(p.name)]
    detector = confident_brain_detector(detector_file(run), preprocess, means)
    stdout = crop_table_command(f"detector={run}", *data, "min_confidence=0.25")
    table = run / "crops" / "synthetic.csv"
    assert str(table) in stdout
    args = [*tiny_overrides(root / "data", root / "logs"), f"data.crop_table={table}", "name=cropped", "data.fold=0",
            "data.val_stride=1"]  # the OOF then scores every slice, as the predictor does
    trained = run_train(args, timeout=900)
    assert trained.returncode == 0, trained.stderr[-3000:]
    runs = sorted((root / "logs").rglob("fold_0"))
    assert len(runs) == 1
    return {"root": root, "run": runs[0], "detector": detector, "table": table, "stdout": stdout}


def test_crop_table_command_writes_the_table_and_its_sidecar(cropped):
    table = pd.read_csv(cropped["table"])
    assert list(table.columns) == list(CROP_TABLE_COLS) and len(table) == 16
    assert (table["source"] == "detector").all()  # the detector calls every image `brain`
    assert table["confidence"].between(0.25, 0.999).all()  # and with unsaturated scores: no ties
    # the detector's boxes, not a full-image fallback (an untrained detector may itself box the whole image once)
    assert (table[list(CROP_COLS)].to_numpy() != [0, 0, 1, 1]).any(axis=1).mean() >= 0.75
    assert "detector 16" in cropped["stdout"]
    assert read_crop_table(cropped["table"]).keys() == set(table[UID_COL])
    sidecar = json.loads(sidecar_path(cropped["table"]).read_text())
    from iad.utils.weights import file_sha256

    assert sidecar["detector"] == str(cropped["detector"].resolve())
    assert sidecar["sha256"] == file_sha256(cropped["detector"]) and sidecar["min_confidence"] == 0.25
    assert "head box" in sidecar["rule"]


def test_crop_table_falls_back_to_the_head_box_below_min_confidence(cropped, tmp_path):
    from iad.preprocessing import SeriesCache

    root, out = cropped["root"], tmp_path / "strict.csv"
    stdout = crop_table_command(f"detector={cropped['detector']}", f"paths.data_dir={root / 'data'}",
                                f"paths.log_dir={root / 'logs'}", "dataset.synthetic.n_series=16",
                                "dataset.synthetic.seed=7", "min_confidence=0.9999", f"out={out}")
    assert f"crop table {out}" in stdout and "head_box: low confidence 16" in stdout
    table = pd.read_csv(out).fillna("")
    assert (table["source"] == "head_box").all() and (table["reason"] == "low confidence").all()
    cache = SeriesCache(root / "data" / "cache", load_detector_spec(cropped["detector"]).preprocess)
    for row in table.itertuples():
        assert (row.x0, row.y0, row.x1, row.y1) == pytest.approx(head_box(cache.mean_image(row.SeriesInstanceUID)))
    assert read_sidecar(out)["min_confidence"] == 0.9999


def load_detector_spec(path: Path) -> DetectorSpec:
    from iad.detection.detector import read_detector_file

    return DetectorSpec.from_dict(read_detector_file(path)[DETECTOR_KEY])


def series_mean_image(folder: Path, preprocess: PreprocessConfig) -> np.ndarray:
    from iad.dicom import scan_series
    from iad.preprocessing.cache import normalised_volume, read_stored

    return normalised_volume(read_stored(scan_series(folder)), preprocess)[1]


def test_predictor_and_moved_bundle_crop_with_the_training_detector(cropped, tmp_path):
    from iad.detection.detector import load_detector
    from iad.inference import Predictor, export_bundle
    from iad.inference.loading import read_model_file

    predictor = Predictor.load(cropped["run"])
    model = predictor.members[0].models[0]
    assert model.input_spec.brain_crop == read_sidecar(cropped["table"])  # recorded at training
    assert read_model_file(cropped["run"] / "checkpoints" / "best.ckpt")[INPUT_KEY]["brain_crop"]["sha256"]
    bundle = export_bundle(predictor, tmp_path / "bundle")
    moved = tmp_path / "elsewhere"
    shutil.move(str(bundle), moved)
    hidden = cropped["detector"].with_name("hidden.pt")
    cropped["detector"].rename(hidden)  # the bundle must not need the training machine's detector file
    try:
        reloaded = Predictor.load(moved)
        detector = load_detector(hidden)
        series_dir = Path(model.config["dataset"]["series_dir"])
        for folder in sorted(series_dir.iterdir())[:3]:
            a, b = predictor.predict_with_timings(folder), reloaded.predict_with_timings(folder)
            assert np.allclose([a.probabilities[c] for c in LABEL_COLS], [b.probabilities[c] for c in LABEL_COLS],
                               atol=1e-6)
            mean = series_mean_image(folder, detector.spec.preprocess)
            expected = brain_crop(detector.detect_mean(mean), BRAIN_CLASSES, mean, 0.25)
            for prediction in (a, b):
                used = next(iter(prediction.crops.values()))
                assert used.source == "detector" and used.box == expected.box
                assert used.box != head_box(mean)
    finally:
        hidden.rename(cropped["detector"])


def test_inference_rebuilds_the_validation_crops_exactly(cropped):
    """Re-scoring the held-out series from the caches (the classifier's and the detector's) reproduces the
    training OOF: inference's detector crops are the crop table's boxes training used."""
    from iad.evaluation import read_oof
    from iad.inference import Predictor
    from iad.inference.rescore import rescore_sweep
    from iad.preprocessing import SeriesCache

    rescored, _, _ = rescore_sweep(cropped["run"].parent)
    original = read_oof(cropped["run"] / "oof.csv").set_index(UID_COL).sort_index()
    rescored = rescored.set_index(UID_COL).sort_index()
    assert list(rescored.index) == list(original.index)
    assert np.allclose(rescored[list(LABEL_COLS)].to_numpy(), original[list(LABEL_COLS)].to_numpy(), atol=1e-4)
    predictor = Predictor.load(cropped["run"])
    model = predictor.members[0].models[0]
    key = model.input_spec.preprocess.key
    cache = SeriesCache(model.config["paths"]["cache_dir"], model.input_spec.preprocess)
    uid = original.index[0]
    with pytest.raises(ValueError, match="brain detector expects"):  # the detector's cache is another one
        predictor.predict_volume(cache.volume(uid), cache.mean_image(uid), key)


def test_changed_detector_file_is_a_clear_error(cropped, tmp_path):
    from iad.detection.detector import export_detector, load_detector
    from iad.inference import Predictor

    original = cropped["detector"].read_bytes()
    detector = load_detector(cropped["detector"])
    try:
        from ultralytics.nn.tasks import DetectionModel

        export_detector(DetectionModel("yolo11n.yaml", nc=2, verbose=False), detector.spec, cropped["detector"])
        with pytest.raises(ContractError, match=f"{cropped['detector']}.*SHA-256.*changed"):
            Predictor.load(cropped["run"])
    finally:
        cropped["detector"].write_bytes(original)


def test_crop_table_without_sidecar_records_no_detector(cropped, tmp_path, caplog):
    from iad.data.rsna import RSNASliceDataModule

    bare = tmp_path / "bare.csv"
    shutil.copy(cropped["table"], bare)
    with caplog.at_level(logging.WARNING, logger="iad.data.rsna"):
        module = RSNASliceDataModule(dataset=None, preprocess=PreprocessConfig(), cache_dir=str(tmp_path), input=None,
                                     crop_table=str(bare))
    assert module.brain_crop is None
    assert "no sidecar" in caplog.text and "head box" in caplog.text and str(bare) in caplog.text
    with_sidecar = RSNASliceDataModule(dataset=None, preprocess=PreprocessConfig(), cache_dir=str(tmp_path), input=None,
                                       crop_table=str(cropped["table"]))
    assert with_sidecar.brain_crop == read_sidecar(cropped["table"])
    assert set(CROP_COLS) <= set(pd.read_csv(bare).columns)


def test_external_volumes_get_the_same_detectors_crops(cropped, tmp_path):
    """`crop_table external=<source>` crops the external volumes; TOFMRADataModule trains on those boxes."""
    from iad.data import SliceInput
    from iad.data.tofmra import TOFMRADataModule
    from iad.external.source import ExternalSource
    from iad.synthetic.bids import DATASETS

    data = tmp_path / "data"
    stdout = crop_table_command(f"detector={cropped['detector']}", f"paths.data_dir={data}", "external=synthetic",
                                "external.synthetic.n_volumes=6", "external.synthetic.seed=3")
    out = cropped["detector"].parent.parent / "crops" / "external-synthetic.csv"
    assert f"crop table {out}" in stdout
    table = pd.read_csv(out)
    series = pd.read_csv(next((data / "cache").glob("*/external/synthetic/series.csv")))
    assert sorted(table[UID_COL]) == sorted(series.loc[series["excluded"].isna(), UID_COL])
    assert (table["source"] == "detector").any() and read_sidecar(out)["sha256"]
    source = ExternalSource("synthetic", {d: str(data / "synthetic_tofmra" / d) for d in DATASETS},
                            synthetic={"n_volumes": 6, "seed": 3}, truth=str(data / "synthetic_tofmra" / "truth.csv"))
    module = TOFMRADataModule(source, PreprocessConfig(image_size=64), str(data / "cache"), SliceInput(32),
                              crop_table=str(out))
    module.prepare_data()
    module.setup()
    boxes = read_crop_table(out)
    assert module.crop_boxes == [boxes[uid] for uid in module.series[UID_COL]]
    assert any(box != pytest.approx(head_box(module.cache.mean_image(uid)))
               for uid, box in zip(module.series[UID_COL], module.crop_boxes))
    assert module.input_spec().brain_crop == read_sidecar(out)
