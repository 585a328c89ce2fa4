"""A detector run: ultralytics' own trainer on cached images, inside the classifiers' run contract.

`python train.py experiment=exp0_yolo11x_aneurysm data.fold=k` lands here through `engine: ultralytics`
(`iad.training.run` keeps the identity check, the skip of a finished run and error.txt). A run folder:

    identity.json, result.json (mAP50, mAP50-95, per class), detections.csv (out-of-fold detections)
    checkpoints/last.pt, best.pt  ultralytics' checkpoints (resume), detector.pt (weights-only export)
    yolo/  data.yaml, items/{train,val}.csv, args.yaml, results.csv (ultralytics' per-epoch log), plots

Each step is resumable: training resumes from last.pt; once `yolo/metrics.json` exists training is
done and only the export, the out-of-fold detections and result.json are (re)made.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf
import pandas as pd
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.utils import colorstr
from ultralytics.utils.torch_utils import unwrap_model

from iad.boxes import XYXY_COLS
from iad.contract import CHECKPOINT_DIR, DETECTIONS_FILE, RESULT_FILE, YOLO_DIR, detector_file, fold_name
from iad.detection.data import DetectorData, YoloModel
from iad.detection.dataset import CachedSliceDataset
from iad.detection.findings import scale_box
from iad.detection.labels import MEAN_IMAGE, SLICE_COL
from iad.labels import SOP_COL, UID_COL
from iad.utils.io import atomic_write, write_csv_atomic, write_json_atomic

log = logging.getLogger(__name__)

YOLO_LAST, YOLO_BEST = "last.pt", "best.pt"
METRICS_FILE = "metrics.json"  # in yolo/: the best weights' final validation; marks training done
DETECTIONS_FILE_COLS = (UID_COL, SOP_COL, "frame", SLICE_COL, "cls", "confidence", *XYXY_COLS,
                        *(f"orig_{col}" for col in XYXY_COLS))  # cache pixels, then the original image's
OOF_MAX_DET = 5  # detections per image kept in detections.csv


def ensure_offline_font() -> None:
    """Give ultralytics the Arial.ttf it checks for on every dataset, from matplotlib's DejaVuSans, when offline.

    Online, ultralytics downloads the font itself; offline the check would retry and fail.
    """
    if os.environ.get("YOLO_OFFLINE") != "1":
        return
    from ultralytics.utils import USER_CONFIG_DIR

    target = Path(USER_CONFIG_DIR) / "Arial.ttf"
    if target.exists():
        return
    import matplotlib

    source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(target, "wb") as fh:
        fh.write(source.read_bytes())


class CacheDetectionTrainer(DetectionTrainer):
    """ultralytics' DetectionTrainer with datasets read from the series cache and checkpoints in the run's
    `checkpoints/` (module-level, so ultralytics' multi-GPU launcher can import it)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.wdir = Path(self.save_dir).parent / CHECKPOINT_DIR
        self.wdir.mkdir(parents=True, exist_ok=True)
        self.last, self.best = self.wdir / YOLO_LAST, self.wdir / YOLO_BEST

    def build_dataset(self, img_path: str, mode: str = "train", batch: int | None = None):
        stride = max(int(unwrap_model(self.model).stride.max()), 32)
        return CachedSliceDataset(
            img_path=img_path, imgsz=self.args.imgsz, batch_size=batch, augment=mode == "train", hyp=self.args,
            rect=mode == "val", cache=None, single_cls=self.args.single_cls or False, stride=stride,
            pad=0.0 if mode == "train" else 0.5, prefix=colorstr(f"{mode}: "), task=self.args.task,
            classes=self.args.classes, data=self.data, fraction=1.0, cache_source=self.data["iad_cache"])


def fit_detector(cfg: DictConfig, run_dir: Path, config_hash: str) -> dict:
    """Train (or resume, or finish) one detector run; returns its result record."""
    from hydra.utils import instantiate

    ensure_offline_font()
    data: DetectorData = instantiate(cfg.data)
    model: YoloModel = instantiate(cfg.model)
    yolo_dir = run_dir / YOLO_DIR
    data_yaml = data.prepare(yolo_dir)
    metrics_path = yolo_dir / METRICS_FILE
    if not metrics_path.exists():
        metrics = _train(cfg, run_dir, data_yaml, data, model)
        write_json_atomic(metrics, metrics_path)
    metrics = json.loads(metrics_path.read_text())
    weights = _best_weights(run_dir)
    exported = _export(weights, data, detector_file(run_dir), metrics)
    detections = detect_held_out(exported, data)
    write_csv_atomic(detections, run_dir / DETECTIONS_FILE, index=False)
    result = {"run_dir": str(run_dir), "fold": cfg.data.fold, "task": data.task, **metrics,
              "items": data.report, "oof_series": int(detections[UID_COL].nunique()) if len(detections) else 0,
              "oof_detections": len(detections), "detector": str(exported), "config_hash": config_hash}
    write_json_atomic(result, run_dir / RESULT_FILE)
    print(f"{fold_name(cfg.data.fold)}: {data.task} detector mAP50 {metrics['map50']:.4f}, mAP50-95 "
          f"{metrics['map50_95']:.4f} (best epoch {metrics['best_epoch']}); {len(detections)} out-of-fold detections")
    return result


def _train(cfg: DictConfig, run_dir: Path, data_yaml: Path, data: DetectorData, model: YoloModel) -> dict:
    """ultralytics' training loop with the run's settings; resumes from checkpoints/last.pt."""
    args = OmegaConf.to_container(cfg.trainer, resolve=True)
    overrides = {**args, "model": model.arch, "pretrained": model.pretrained_weights(), "data": str(data_yaml),
                 "imgsz": data.imgsz, "seed": cfg.seed, "save_dir": str(run_dir / YOLO_DIR), "exist_ok": True,
                 "name": run_dir.name, "val": True}
    last = _resumable(run_dir / CHECKPOINT_DIR / YOLO_LAST)
    if last is not None:
        overrides["resume"] = str(last)
        print(f"{fold_name(cfg.data.fold)}: resuming the detector from {last}")
    trainer = CacheDetectionTrainer(overrides=overrides)
    _attach_wandb(cfg, trainer, run_dir)
    trainer.train()
    return _final_metrics(trainer)


def _resumable(last: Path) -> Path | None:
    """last.pt when it loads and is mid-training; a damaged one is moved aside (`.damaged`) with a warning."""
    if not last.exists():
        return None
    import torch

    try:  # our own run's checkpoint (ultralytics pickles whole modules): trusted, unlike others' model files
        epoch = torch.load(last, map_location="cpu", weights_only=False).get("epoch", -1)
    except Exception as err:  # noqa: BLE001 - any damage means: do not resume from this file
        damaged = last.with_name(f"{last.name}.damaged")
        last.replace(damaged)
        print(f"warning: {last} is damaged ({type(err).__name__}); moved to {damaged.name}")
        return None
    return last if epoch is not None and epoch >= 0 else None


def _final_metrics(trainer) -> dict:
    """mAP50 and mAP50-95 of the best weights, overall and per class (ultralytics' final validation)."""
    box = trainer.validator.metrics.box
    names = trainer.data["names"]
    per_class = {}
    for k, cls_index in enumerate(box.ap_class_index):
        per_class[names[int(cls_index)]] = {"map50": round(float(box.ap50[k]), 6), "map50_95": round(float(box.ap[k]), 6)}
    return {"map50": round(float(box.map50), 6), "map50_95": round(float(box.map), 6), "per_class": per_class,
            "best_epoch": int(trainer.stopper.best_epoch), "epochs": int(trainer.epoch) + 1}  # stopper counts from 1


def _best_weights(run_dir: Path) -> Path:
    for name in (YOLO_BEST, YOLO_LAST):
        path = run_dir / CHECKPOINT_DIR / name
        if path.exists():
            return path
    raise FileNotFoundError(f"{run_dir / CHECKPOINT_DIR}: no {YOLO_BEST} after training")


def _export(weights: Path, data: DetectorData, target: Path, metrics: dict) -> Path:
    """The weights-only detector file of the run's best weights."""
    from ultralytics.nn.tasks import load_checkpoint

    from iad.detection.detector import export_detector

    net, _ = load_checkpoint(weights)
    return export_detector(net.float(), data.spec(), target, metrics)


def detect_held_out(detector_path: Path, data: DetectorData) -> pd.DataFrame:
    """Detections of the fold's detector on its held-out series: cache and original pixel boxes."""
    from iad.detection.detector import load_detector

    detector = load_detector(detector_path)
    items = data.held_out()
    cache = data.cache
    frames = []
    for uid, group in items.groupby(UID_COL, sort=False):
        meta = cache.meta(uid)
        zs = group[SLICE_COL].to_numpy()
        if zs[0] == MEAN_IMAGE:
            found = [detector.detect_mean(cache.mean_image(uid), conf=data.oof_confidence, max_det=OOF_MAX_DET)]
        else:
            found = detector.detect_series_slices(cache.volume(uid), zs, conf=data.oof_confidence, max_det=OOF_MAX_DET)
        frames.append(_detection_rows(uid, zs, found, meta, detector.spec.classes))
    rows = [f for f in frames if len(f)]
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=list(DETECTIONS_FILE_COLS))


def _detection_rows(uid: str, zs: np.ndarray, found: list[np.ndarray], meta, classes) -> pd.DataFrame:
    rows = []
    for z, boxes in zip(zs, found):
        sop, frame = (None, None) if z == MEAN_IMAGE else (meta.sop_uids[z], meta.frames[z])
        for x0, y0, x1, y1, confidence, k in boxes:
            original = scale_box((x0, y0, x1, y1), meta.shape[1:], meta.original_shape[1:])
            rows.append((uid, sop, frame, int(z), classes[int(k)], round(float(confidence), 5),
                         *(round(float(v), 2) for v in (x0, y0, x1, y1)), *(round(float(v), 2) for v in original)))
    frame = pd.DataFrame(rows, columns=list(DETECTIONS_FILE_COLS))
    frame["frame"] = frame["frame"].astype("Int64")
    return frame


def _attach_wandb(cfg: DictConfig, trainer, run_dir: Path) -> None:
    """With `logger=wandb` (or `many`), one W&B run per fold logs ultralytics' per-epoch losses and mAP."""
    loggers = cfg.get("logger") or {}
    wandb_cfg = next((c for c in loggers.values() if c is not None and str(c.get("_target_", "")).endswith("WandbLogger")),
                     None)
    if wandb_cfg is None:
        return
    import wandb

    settings = OmegaConf.to_container(wandb_cfg, resolve=True)
    run = wandb.init(project=settings.get("project"), group=settings.get("group"), job_type=settings.get("job_type"),
                     name=settings.get("name"), tags=settings.get("tags"), dir=str(run_dir),
                     config=OmegaConf.to_container(cfg, resolve=True), reinit="finish_previous")

    def log_epoch(trainer) -> None:
        run.log({**trainer.label_loss_items(trainer.tloss, prefix="train"), **trainer.metrics, **trainer.lr},
                step=trainer.epoch + 1)

    trainer.add_callback("on_fit_epoch_end", log_epoch)

