"""What a detector run trains on (the `data` group of exp0 / exp1) and which network (the `model` group).

`DetectorData.prepare` caches the dataset, maps the boxes into cache pixels and writes the item
tables and an ultralytics data.yaml into the run folder; no image is written. No torch import.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
import logging
import os
from pathlib import Path

import pandas as pd

from iad.boxes import ANEURYSM_CLASSES, BRAIN_CLASSES, map_boxes, read_aneurysm_boxes, read_brain_boxes
from iad.contract import DetectorSpec
from iad.datasets import DatasetSource
from iad.detection.labels import MEAN_IMAGE, SLICE_COL, SPLIT_COL, aneurysm_items, brain_items, oof_slices
from iad.folds import FOLD_COL, series_with_folds
from iad.labels import UID_COL
from iad.preprocessing import PreprocessConfig, SeriesCache, prepare_dataset
from iad.utils.io import atomic_write, write_csv_atomic

log = logging.getLogger(__name__)

ITEMS_DIR = "items"
DATA_YAML = "data.yaml"
SPLITS = ("train", "val")


@dataclass(frozen=True)
class DetectorTask:
    """One kind of detector: its classes and the image it looks at."""

    classes: tuple[str, ...]
    image: str


DETECTOR_TASKS = {
    "aneurysm": DetectorTask(ANEURYSM_CLASSES, "slices"),  # exp0: 2.5D slice stacks
    "brain": DetectorTask(BRAIN_CLASSES, "mean"),          # exp1: the series' mean image
}


@dataclass
class DetectorData:
    """The images and boxes of one detector run.

    fold: validation fold; None for the brain detector means the archive's own split lists.
    negative_fraction: share of the slices of negative series trained as background (exp0).
    oof_stride: every n-th slice of a held-out series is scored for the out-of-fold detections.
    oof_confidence: detections kept in them (label cleaning uses 0.2; keep lower ones for other rules).
    series_limit: debug: at most this many series per fold.
    """

    dataset: DatasetSource
    preprocess: PreprocessConfig
    cache_dir: str
    task: str = "aneurysm"
    fold: int | None = 0
    imgsz: int = 640
    offsets: Sequence[int] = (-1, 0, 1)
    negative_fraction: float = 0.05
    oof_stride: int = 1
    oof_confidence: float = 0.05
    seed: int = 42
    prepare_workers: int = 0
    series_limit: int | None = None
    report: dict = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        if self.task not in DETECTOR_TASKS:
            raise ValueError(f"data.task={self.task!r}: expected one of {sorted(DETECTOR_TASKS)}")
        self.offsets = tuple(int(o) for o in self.offsets)

    @property
    def classes(self) -> tuple[str, ...]:
        return DETECTOR_TASKS[self.task].classes

    @property
    def cache(self) -> SeriesCache:
        return SeriesCache(self.cache_dir, self.preprocess)

    def spec(self) -> DetectorSpec:
        """The record inference needs to show this detector the same images."""
        return DetectorSpec(task=self.task, classes=self.classes, imgsz=self.imgsz,
                            image=DETECTOR_TASKS[self.task].image, preprocess=self.preprocess, offsets=self.offsets)

    def prepare(self, out_dir: str | os.PathLike) -> Path:
        """Cache the dataset, write `items/{train,val}.csv` and `data.yaml` under `out_dir`; returns the yaml."""
        cache, build = prepare_dataset(self.dataset, self.cache_dir, self.preprocess, workers=self.prepare_workers)
        if not self.dataset.boxes or not Path(self.dataset.boxes).exists():
            raise FileNotFoundError(f"dataset '{self.dataset.name}' has no box annotations "
                                    f"(dataset.boxes={self.dataset.boxes}); detectors train on drawn boxes")
        if build.failed:
            log.warning("%d series could not be cached and are left out", len(build.failed))
        self.series = self._series(cache)
        items = self._items(cache)
        out = Path(out_dir)
        for split in SPLITS:
            write_csv_atomic(items[items[SPLIT_COL] == split].reset_index(drop=True), out / ITEMS_DIR / f"{split}.csv",
                             index=False)
        counts = items[SPLIT_COL].value_counts().to_dict()
        self.report.update({split: int(counts.get(split, 0)) for split in SPLITS})
        log.info("detector items: %s", self.report)
        return self._write_yaml(out)

    def held_out(self) -> pd.DataFrame:
        """The slices (or mean images) the fold's detector scores out of fold."""
        uids = self.series.loc[self._is_validation(self.series), UID_COL].tolist()
        if DETECTOR_TASKS[self.task].image == "mean":
            return pd.DataFrame({UID_COL: uids, SLICE_COL: MEAN_IMAGE})
        n_slices = {uid: self.cache.meta(uid).shape[0] for uid in uids}
        return oof_slices(uids, n_slices, self.oof_stride)

    def _is_validation(self, series: pd.DataFrame) -> pd.Series:
        if self.fold is None:
            return series[UID_COL].isin(self._val_uids)
        return series[FOLD_COL] == self.fold

    def _series(self, cache: SeriesCache) -> pd.DataFrame:
        series = series_with_folds(self.dataset.train_csv, self.dataset.folds_csv, self.seed,
                                   require_folds=self.fold is not None)
        series = series[series[UID_COL].map(cache.has)].reset_index(drop=True)
        if self.series_limit:
            series = series.groupby(FOLD_COL, group_keys=False).head(self.series_limit).reset_index(drop=True)
        return series

    def _items(self, cache: SeriesCache) -> pd.DataFrame:
        uids = set(self.series[UID_COL])
        if self.task == "brain":
            items, report = brain_items(self.series, read_brain_boxes(self.dataset.boxes), self.classes, self.fold, uids)
            self._val_uids = set(items.loc[items[SPLIT_COL] == "val", UID_COL])
        else:
            if self.fold is None:
                raise ValueError("the aneurysm detector validates on a fold: set data.fold (its OOF detections feed "
                                 "label cleaning)")
            metas = {uid: cache.meta(uid) for uid in sorted(uids)}
            boxes = read_aneurysm_boxes(self.dataset.boxes)
            mapping = map_boxes(boxes[boxes[UID_COL].isin(uids)], {uid: m.geometry for uid, m in metas.items()})
            if len(mapping.missing):
                log.warning("%d boxes could not be placed in the cache (e.g. %s)", len(mapping.missing),
                            mapping.missing["reason"].iloc[0])
            n_slices = {uid: m.shape[0] for uid, m in metas.items()}
            items, report = aneurysm_items(self.series, mapping.mapped, n_slices, self.fold, self.classes,
                                           self.negative_fraction, self.seed)
            report["unplaced_boxes"] = len(mapping.missing)
        self.report.update(report)
        return items

    def _write_yaml(self, out: Path) -> Path:
        import yaml

        blob = {"path": str(out.resolve()), **{split: f"{ITEMS_DIR}/{split}.csv" for split in SPLITS},
                "names": dict(enumerate(self.classes)), "channels": 3,
                "iad_cache": {"root": str(Path(self.cache_dir).resolve()), "preprocess": self.preprocess.to_dict(),
                              "image": DETECTOR_TASKS[self.task].image, "offsets": list(self.offsets)}}
        path = out / DATA_YAML
        with atomic_write(path) as fh:
            yaml.safe_dump(blob, fh, sort_keys=False)
        return path


@dataclass(frozen=True)
class YoloModel:
    """An ultralytics detection network: `arch` is a model yaml it ships (yolo11x.yaml, yolov5n.yaml, ...).

    pretrained: start from COCO weights: `pretrained_file` (a local .pt), else ultralytics downloads
    `<arch stem>.pt` (needs the network; offline it is an error naming `model.pretrained_file`).
    """

    arch: str = "yolo11n.yaml"
    pretrained: bool = False
    pretrained_file: str | None = None

    def pretrained_weights(self) -> str | bool:
        """ultralytics' `pretrained` argument: a weights file, or False to start from scratch."""
        if not self.pretrained:
            return False
        if self.pretrained_file:
            if not Path(self.pretrained_file).is_file():
                raise FileNotFoundError(f"model.pretrained_file={self.pretrained_file} does not exist")
            return str(self.pretrained_file)
        if os.environ.get("YOLO_OFFLINE") == "1" or os.environ.get("IAD_OFFLINE") == "1":
            raise FileNotFoundError(f"model.pretrained=true needs {Path(self.arch).stem}.pt, which cannot be downloaded "
                                    "offline: set model.pretrained_file=<local .pt> or model.pretrained=false")
        return f"{Path(self.arch).stem}.pt"
