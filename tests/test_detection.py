"""The detectors (exp0 aneurysm, exp1 brain): item tables, cache-fed ultralytics samples, and real runs
through `train.py` with the run contract (result.json, weights-only export, out-of-fold detections,
sweep merge, skip, resume, W&B)."""

from __future__ import annotations

import json
import os
from pathlib import Path
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from iad.contract import CV_FILE, DETECTIONS_FILE, RESULT_FILE, YOLO_DIR, detector_file
from iad.detection.labels import (
    LABELS_COL,
    MEAN_IMAGE,
    SLICE_COL,
    SPLIT_COL,
    aneurysm_items,
    brain_items,
    parse_lines,
    yolo_lines,
)
from iad.evaluation.detections import format_detection_report, merge_detection_sweep, read_detections
from iad.folds import FOLD_COL
from iad.labels import PRESENT_COL, UID_COL
from iad.utils.env import PROJECT_ROOT
from tests.training_helpers import configuration_dir, run_train

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# ---- item tables -------------------------------------------------------------------------------
def _boxes(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=[UID_COL, SLICE_COL, "cls", "xmin", "ymin", "xmax", "ymax", "width", "height"])


def test_yolo_lines_round_trip_and_clip():
    boxes = _boxes([("s", 3, "aneurysm_mri_t2", 10, 20, 30, 60, 100, 200), ("s", 3, "aneurysm", -5, 0, 10, 10, 100, 200)])
    text = yolo_lines(boxes, ("aneurysm", "aneurysm_mri_t2"), "s/3")
    cls, xywh = parse_lines(text)
    assert cls[:, 0].tolist() == [1, 0]
    np.testing.assert_allclose(xywh[0], [0.2, 0.2, 0.2, 0.2], atol=1e-6)
    np.testing.assert_allclose(xywh[1], [0.05, 0.025, 0.1, 0.05], atol=1e-6)  # clipped at the left edge
    with pytest.raises(ValueError, match="s/3: box classes \\['tumour'\\]"):
        yolo_lines(boxes.assign(cls="tumour"), ("aneurysm",), "s/3")


def _series() -> pd.DataFrame:
    return pd.DataFrame({UID_COL: ["p0", "p1", "n0", "n1", "p2"], PRESENT_COL: [1, 1, 0, 0, 1], FOLD_COL: [0, 1, 0, 1, 1]})


def test_aneurysm_items_boxed_slices_and_background_share():
    boxes = _boxes([("p0", 4, "aneurysm", 1, 1, 5, 5, 10, 10), ("p0", 5, "aneurysm", 1, 1, 5, 5, 10, 10),
                    ("p1", 2, "aneurysm", 2, 2, 4, 4, 10, 10)])
    n_slices = {"p0": 8, "p1": 6, "n0": 200, "n1": 200, "p2": 5}
    items, report = aneurysm_items(_series(), boxes, n_slices, fold=1, classes=("aneurysm",),
                                   negative_fraction=0.25, seed=0)
    labelled = items[items[LABELS_COL] != ""]
    assert set(zip(labelled[UID_COL], labelled[SLICE_COL])) == {("p0", 4), ("p0", 5), ("p1", 2)}
    background = items[items[LABELS_COL] == ""]
    assert set(background[UID_COL]) == {"n0", "n1"}  # never a slice of a positive series
    assert 0.15 < len(background) / 400 < 0.35
    assert report["positive_series_without_boxes"] == 1  # p2
    split = dict(zip(items[UID_COL], items[SPLIT_COL]))
    assert split["p1"] == split["n1"] == "val" and split["p0"] == split["n0"] == "train"


def test_brain_items_follow_the_split_lists_or_the_fold():
    brain = pd.DataFrame({UID_COL: ["p0", "p1", "n0"], "cls": ["brain", "abnormal", "brain"], "xmin": 10, "ymin": 10,
                          "xmax": 90, "ymax": 80, "width": 100, "height": 100, "split": ["train", "val", "train"]})
    items, _ = brain_items(_series(), brain, ("brain", "abnormal"), None, {"p0", "p1", "n0"})
    assert (items[SLICE_COL] == MEAN_IMAGE).all()
    assert dict(zip(items[UID_COL], items[SPLIT_COL])) == {"p0": "train", "p1": "val", "n0": "train"}
    assert parse_lines(items.set_index(UID_COL).loc["p1", LABELS_COL])[0][0, 0] == 1  # abnormal
    by_fold, _ = brain_items(_series(), brain, ("brain", "abnormal"), 0, {"p0", "p1", "n0"})
    assert dict(zip(by_fold[UID_COL], by_fold[SPLIT_COL])) == {"p0": "val", "p1": "train", "n0": "val"}
    with pytest.raises(ValueError, match="neither brain_det/train.txt nor val.txt"):
        brain_items(_series(), brain.assign(split=[None, "val", "train"]), ("brain", "abnormal"), None, {"p0", "p1"})


# ---- cache-fed ultralytics samples ---------------------------------------------------------------
def test_cached_dataset_gives_ultralytics_the_slice_stack_in_order(tmp_path):
    """The sample ultralytics trains on: channel c is slice z + offsets[c] of the cache, boxes as labelled."""
    from ultralytics.cfg import get_cfg

    from iad.detection.dataset import CachedSliceDataset
    from iad.preprocessing import PreprocessConfig, SeriesCache
    from iad.synthetic.writer import write_ct_phantom

    cache = SeriesCache(tmp_path / "cache", PreprocessConfig())
    write_ct_phantom(tmp_path / "dicom", 6, 64)
    cache.build({"s": tmp_path / "dicom"}, progress=False)
    volume = np.array(cache.volume("s"))
    volume[:, :4, :4] = np.arange(6, dtype=np.uint8)[:, None, None] * 40  # a slice-number stamp in the corner
    np.save(cache.series_dir("s") / "volume.npy", volume)
    items = pd.DataFrame({UID_COL: "s", SLICE_COL: [2, 5], SPLIT_COL: "val", LABELS_COL: ["0 0.5 0.5 0.25 0.25", ""]})
    items.to_csv(tmp_path / "val.csv", index=False)
    source = {"root": str(cache.root), "preprocess": cache.config.to_dict(), "image": "slices", "offsets": [-1, 0, 1]}
    data = {"names": {0: "aneurysm"}, "nc": 1, "channels": 3}
    dataset = CachedSliceDataset(img_path=str(tmp_path / "val.csv"), imgsz=64, batch_size=1, augment=False,
                                 hyp=get_cfg(), rect=False, cache=None, stride=32, pad=0.0, task="detect",
                                 classes=None, data=data, fraction=1.0, cache_source=source)
    sample = dataset[0]
    image = sample["img"].numpy()  # C×H×W after ultralytics' BGR→RGB flip
    assert [int(image[c, 1, 1]) for c in range(3)] == [40, 80, 120]  # slices 1, 2, 3
    np.testing.assert_allclose(sample["bboxes"].numpy(), [[0.5, 0.5, 0.25, 0.25]], atol=1e-6)
    edge = dataset[1]["img"].numpy()
    assert [int(edge[c, 1, 1]) for c in range(3)] == [160, 200, 200]  # slice 5 is the last: replicated
    assert len(dataset[1]["bboxes"]) == 0


def test_detector_experiments_keep_the_reference_settings(tmp_path):
    from hydra import compose, initialize_config_dir

    from iad.utils.config import CONFIG_DIR

    def cfg(experiment):
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            return compose("train", overrides=[f"experiment={experiment}", f"paths.output_dir={tmp_path}"])

    exp0, exp1 = cfg("exp0_yolo11x_aneurysm"), cfg("exp1_yolo_brain")
    assert exp0.engine == exp1.engine == "ultralytics"
    assert (exp0.model.arch, exp0.data.imgsz, exp0.trainer.epochs, exp0.trainer.batch) == ("yolo11x.yaml", 1280, 100, 16)
    assert (exp0.trainer.fliplr, exp0.trainer.mosaic, exp0.trainer.mixup, exp0.data.task) == (0.5, 0.0, 0.0, "aneurysm")
    assert (exp1.model.arch, exp1.data.imgsz, exp1.trainer.epochs, exp1.data.task) == ("yolov5n.yaml", 640, 150, "brain")
    assert exp1.data.fold is None and exp0.dataset.name == exp1.dataset.name == "rsna"


def test_preflight_names_what_a_detector_run_lacks_here(tmp_path, monkeypatch):
    """exp0 offline on a CPU machine: no COCO weights to download, no GPU "0"; the demo has neither problem."""
    from hydra import compose, initialize_config_dir

    from iad.preflight import run_preflight
    from iad.utils.config import CONFIG_DIR

    monkeypatch.setenv("YOLO_OFFLINE", "1")
    overrides = [f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path / 'run'}"]
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        exp0 = compose("train", overrides=["experiment=exp0_yolo11x_aneurysm", *overrides])
        demo = compose("train", overrides=["experiment=demo_yolo_aneurysm", *overrides])
    keys = {p.key for p in run_preflight(exp0, "train") if p.fatal}
    assert "model.pretrained_file" in keys
    import torch

    assert ("trainer.device" in keys) == (not torch.cuda.is_available())
    assert not [p for p in run_preflight(demo, "train") if p.fatal and p.key.startswith(("model.", "trainer."))]


def test_validation_batches_keep_each_image_with_its_labels(tmp_path):
    """ultralytics sorts validation items by aspect ratio (rect batches): pixels must follow their labels."""
    import json as _json

    from ultralytics.cfg import get_cfg

    from iad.detection.dataset import CachedSliceDataset
    from iad.preprocessing import PreprocessConfig, SeriesCache
    from iad.synthetic.writer import write_ct_phantom

    cache = SeriesCache(tmp_path / "cache", PreprocessConfig())
    for uid, stamp in (("tall", 50), ("square", 200)):
        write_ct_phantom(tmp_path / uid, 4, 64)
        cache.build({uid: tmp_path / uid}, progress=False)
        volume = np.array(cache.volume(uid))
        volume[:, :4, :4] = stamp
        if uid == "tall":  # 64 rows × 40 columns: a different aspect ratio, sorted after the square one
            mean = np.ascontiguousarray(cache.mean_image(uid)[:, :40])
            volume = np.ascontiguousarray(volume[:, :, :40])
            meta_path = cache.series_dir(uid) / "meta.json"
            meta = _json.loads(meta_path.read_text())
            meta["shape"] = list(volume.shape)
            meta_path.write_text(_json.dumps(meta))
            np.save(cache.series_dir(uid) / "mean.npy", mean)
        np.save(cache.series_dir(uid) / "volume.npy", volume)
    items = pd.DataFrame({UID_COL: ["tall", "square"], SLICE_COL: [1, 2], SPLIT_COL: "val",
                          LABELS_COL: ["0 0.25 0.25 0.1 0.1", "0 0.75 0.75 0.2 0.2"]})
    items.to_csv(tmp_path / "val.csv", index=False)
    source = {"root": str(cache.root), "preprocess": cache.config.to_dict(), "image": "slices", "offsets": [-1, 0, 1]}
    dataset = CachedSliceDataset(img_path=str(tmp_path / "val.csv"), imgsz=64, batch_size=2, augment=False,
                                 hyp=get_cfg(), rect=True, cache=None, stride=32, pad=0.5, task="detect",
                                 classes=None, data={"names": {0: "aneurysm"}, "nc": 1, "channels": 3}, fraction=1.0,
                                 cache_source=source)
    assert [f.split("/")[0] for f in dataset.im_files] == ["square", "tall"]  # reordered by ultralytics
    for i in range(2):
        sample = dataset[i]
        uid = sample["im_file"].split("/")[0]
        stamp, box_x = {"tall": (50, 0.25), "square": (200, 0.75)}[uid]
        image = sample["img"].numpy()
        assert tuple(sample["ori_shape"]) == tuple(cache.meta(uid).shape[1:])
        assert abs(float(sample["bboxes"][0, 0]) - box_x) < 0.2  # the labels of this image
        assert (image[1] == stamp).any()  # and its pixels


# ---- real runs -------------------------------------------------------------------------------------
def detector_overrides(workspace: Path, experiment: str, name: str) -> list[str]:
    return [f"experiment={experiment}", f"name={name}", f"paths.data_dir={workspace / 'data'}",
            f"paths.log_dir={workspace / 'logs'}", "dataset.synthetic.n_series=30", "dataset.synthetic.seed=7",
            "data.prepare_workers=0", "data.imgsz=64", "trainer.epochs=1", "trainer.batch=8"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("detection")


@pytest.fixture(scope="module")
def aneurysm_sweep(workspace):
    args = ["-m", *detector_overrides(workspace, "demo_yolo_aneurysm", "yolo_a"), "data.fold=0,1",
            "data.oof_confidence=0.0001"]  # a one-epoch detector is unsure of everything: keep its boxes
    out = run_train(args)
    assert out.returncode == 0, out.stderr[-4000:]
    return configuration_dir(workspace / "logs", "sweeps", args), args, out


def test_aneurysm_sweep_keeps_the_run_contract(aneurysm_sweep, workspace):
    from iad.detection.detector import load_detector

    sweep, _, out = aneurysm_sweep
    folds = pd.read_csv(workspace / "data" / "synthetic" / "uniform" / "train_kfold.csv")
    for k in (0, 1):
        run = sweep / f"fold_{k}"
        result = json.loads((run / RESULT_FILE).read_text())
        assert result["task"] == "aneurysm" and result["fold"] == k
        assert 0.0 <= result["map50"] <= 1.0 and 0.0 <= result["map50_95"] <= result["map50"] + 1e-9
        assert set(result["per_class"]) <= {"aneurysm", "aneurysm_mri_t2"} and result["per_class"]
        assert result["items"]["boxed_slices"] > 0 and result["items"]["val"] > 0
        assert (run / "checkpoints" / "last.pt").exists() and (run / YOLO_DIR / "results.csv").exists()
        detector = load_detector(detector_file(run))  # weights-only
        assert detector.spec.task == "aneurysm" and detector.spec.imgsz == 64
        detections = read_detections(run / DETECTIONS_FILE)
        held_out = set(folds.loc[folds[FOLD_COL] == k, UID_COL])
        assert set(detections[UID_COL]) <= held_out  # out of fold only
        train_items = pd.read_csv(run / YOLO_DIR / "items" / "train.csv")
        assert not set(train_items[UID_COL]) & held_out
    merged = read_detections(sweep / DETECTIONS_FILE)
    per_fold = [len(read_detections(sweep / f"fold_{k}" / DETECTIONS_FILE)) for k in (0, 1)]
    assert len(merged) == sum(per_fold)
    report = json.loads((sweep / CV_FILE).read_text())
    assert report["kind"] == "detector" and set(report["folds"]) == {"fold_0", "fold_1"}
    assert "mAP50" in out.stdout and "mean of folds" in out.stdout


def test_detections_place_boxes_on_slices_in_cache_and_original_pixels(aneurysm_sweep):
    sweep, _, _ = aneurysm_sweep
    merged = read_detections(sweep / DETECTIONS_FILE)
    assert len(merged)
    from iad.preprocessing import PreprocessConfig, SeriesCache

    cache = SeriesCache(_cache_root(sweep), PreprocessConfig())
    for row in merged.head(20).itertuples():
        meta = cache.meta(row.SeriesInstanceUID)
        z = int(row.slice_index)
        assert row.SOPInstanceUID == meta.sop_uids[z] and int(row.frame) == meta.frames[z]
        scale_x, scale_y = meta.scale_xy
        np.testing.assert_allclose([row.orig_x0 * scale_x, row.orig_y1 * scale_y], [row.x0, row.y1], atol=0.05)
        assert 0 <= row.x0 < row.x1 <= meta.shape[2] + 1e-3 and 0 <= row.y0 < row.y1 <= meta.shape[1] + 1e-3


def _cache_root(sweep: Path) -> str:
    import yaml

    return yaml.safe_load((sweep / "fold_0" / YOLO_DIR / "data.yaml").read_text())["iad_cache"]["root"]


def test_aneurysm_rerun_skips_finished_folds(aneurysm_sweep):
    _, args, _ = aneurysm_sweep
    out = run_train(args)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("already finished, mAP50") == 2
    assert "Starting training" not in out.stdout + out.stderr


def test_brain_detector_uses_split_lists_and_logs_to_wandb(workspace):
    args = [*detector_overrides(workspace, "demo_yolo_brain", "yolo_b"), "logger=wandb"]
    out = run_train(args)
    assert out.returncode == 0, out.stderr[-4000:]
    run = configuration_dir(workspace / "logs", "runs", args) / "full"
    result = json.loads((run / RESULT_FILE).read_text())
    assert result["task"] == "brain" and result["items"]["split"] == "brain_det/train.txt and val.txt"
    val = pd.read_csv(run / YOLO_DIR / "items" / "val.csv")
    lists = (workspace / "data" / "synthetic" / "uniform" / "boxes" / "brain_det" / "val.txt").read_text()
    assert len(val) and set(val[UID_COL]) <= {Path(line).stem for line in lists.split()}
    detections = read_detections(run / DETECTIONS_FILE)
    assert set(detections[UID_COL]) <= set(val[UID_COL]) and (detections[SLICE_COL] == MEAN_IMAGE).all()
    runs = list((run / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    data = next(runs[0].glob("run-*.wandb")).read_bytes()
    assert b"metrics/mAP50(B)" in data and b'"arch":"yolov5n.yaml"' in data


def test_interrupted_detector_resumes_from_last_checkpoint(workspace):
    args = [*detector_overrides(workspace, "demo_yolo_aneurysm", "yolo_resume"), "trainer.epochs=3",
            "data.series_limit=3"]
    run = configuration_dir(workspace / "logs", "runs", args) / "fold_0"
    last = run / "checkpoints" / "last.pt"
    process = subprocess.Popen([sys.executable, str(PROJECT_ROOT / "train.py"), *args], cwd=PROJECT_ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "IAD_OFFLINE": "1", "WANDB_MODE": "offline"})
    try:
        deadline, size = time.monotonic() + 300, -1
        while time.monotonic() < deadline and process.poll() is None:
            if last.exists() and last.stat().st_size == size > 0:  # written and stable: epoch 1 saved
                break
            size = last.stat().st_size if last.exists() else -1
            time.sleep(0.3)
        assert process.poll() is None, "the run ended before it could be interrupted"
        process.kill()
    finally:
        process.wait()
    assert not (run / RESULT_FILE).exists()
    out = run_train(args)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "resuming the detector from" in out.stdout
    result = json.loads((run / RESULT_FILE).read_text())
    assert result["epochs"] == 3


def test_merge_detection_sweep_reports_failed_and_missing_folds(tmp_path):
    sweep = tmp_path / "sweep"
    for k, map50 in ((0, 0.5), (1, None)):
        run = sweep / f"fold_{k}"
        run.mkdir(parents=True)
        pd.DataFrame({UID_COL: [f"s{k}"], "SOPInstanceUID": ["1.2"], "frame": [0], SLICE_COL: [3], "cls": ["aneurysm"],
                      "confidence": [0.9]}).to_csv(run / DETECTIONS_FILE, index=False)
        if map50 is not None:
            (run / RESULT_FILE).write_text(json.dumps({"map50": map50, "map50_95": 0.25}))
        else:
            (run / "error.txt").write_text("boom")
    report = merge_detection_sweep(sweep)
    assert report["map50"] == 0.5 and report["folds"]["fold_1"]["failed"] and not report["folds"]["fold_1"]["complete"]
    assert len(read_detections(sweep / DETECTIONS_FILE)) == 2
    text = format_detection_report(report)
    assert "(failed)" in text and "0.500" in text
