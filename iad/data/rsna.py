"""RSNASliceDataModule: competition-layout series → cached volumes → 2.5D slice batches."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl
from torch.utils.data import ConcatDataset, DataLoader

from iad.boxes import BOX_COLS, map_boxes, read_aneurysm_box_table, read_aneurysm_boxes
from iad.contract import InputSpec
from iad.data.crops import read_crop_table, series_crop_boxes
from iad.data.dataset import MaskSpec, SliceDataset
from iad.data.inputs import SliceInput
from iad.data.loaders import loader_options
from iad.data.samplers import NegativeSubsampler
from iad.data.slices import SERIES_COL, SLICE_MM_COL, eval_items, holdout_split, series_labels, train_items
from iad.datasets import DatasetSource
from iad.detection.crops import read_sidecar, sidecar_path
from iad.folds import FOLD_COL, series_with_folds
from iad.labels import LABEL_COLS, MODALITY_COL, UID_COL, map_localizers, read_localizers, read_series_labels
from iad.preprocessing import PreprocessConfig, SeriesCache, prepare_dataset

log = logging.getLogger(__name__)


class RSNASliceDataModule(pl.LightningDataModule):
    """2.5D slice samples of one fold of a competition-layout dataset.

    fold: validation fold (an int), or None to train on every series (keeping `holdout_series`
        series, stratified by modality and presence, to monitor).
    positive_window: slices either side of a localizer used from positive series when the series
        has no drawn boxes (boxes, when `use_boxes` and the dataset has them, take precedence).
    background_mm: also train, as negatives, the slices of positive series at least this far (mm)
        from every aneurysm slice (None: positive series give only their aneurysm slices, as the
        reference).
    negative_fraction: share of negative slices drawn afresh each epoch.
    val_stride: every n-th slice of a validation series is scored.
    crop_table: CSV of per-series normalised crop boxes (from the brain detector); without it a
        head box found on the mean-over-slices image is used when `head_crop`. Its sidecar JSON
        (`python -m iad.detection.crop_table` writes one) names the detector, which the checkpoints
        record (`InputSpec.brain_crop`) so that inference crops with it; without one, inference
        uses the head box.
    val_center_crop: centred crop ratio applied after the series box at validation (0.75 in the
        reference's test-time setting).
    masks: segmentation targets for models that ask for them (None for classifiers).
    train_labels: a table in train.csv format (e.g. the label-cleaning stage's train_labels.csv):
        training series take their labels from it and a series absent from it is left out of
        training; validation (and so the OOF file) keeps the dataset's labels, fold for fold the
        same series, so scores compare with runs trained without it.
    extra_boxes: a CSV of aneurysm boxes (`iad.boxes.ANEURYSM_BOX_COLS`, original pixels, e.g. the
        cleaning stage's boxes.csv) drawn in addition to the dataset's (needs `use_boxes`).
    external: a data module of external series (`iad.data.tofmra.TOFMRADataModule`) whose
        `train_dataset(transform)` joins the training set (never validation); the negative
        subsampler draws from both.
    """

    def __init__(self, dataset: DatasetSource, preprocess: PreprocessConfig, cache_dir: str,
                 input: SliceInput, fold: int | None = 0, holdout_series: int = 0, seed: int = 42,
                 positive_window: int = 2, background_mm: float | None = None, negative_fraction: float = 1.0,
                 val_stride: int = 1,
                 head_crop: bool = True, crop_table: str | None = None, val_center_crop: float = 1.0,
                 train_transform=None, masks: MaskSpec | dict | None = None, use_boxes: bool = True,
                 batch_size: int = 32, eval_batch_size: int | None = None, num_workers: int = 0,
                 pin_memory: bool = False, prepare_workers: int = 0, series_limit: int | None = None,
                 train_labels: str | None = None, extra_boxes: str | None = None, external=None):
        super().__init__()
        self.source = dataset
        self.preprocess = preprocess
        self.cache_dir = cache_dir
        self.input = input
        self.fold = fold
        self.holdout_series = holdout_series
        self.seed = seed
        self.positive_window = positive_window
        self.background_mm = background_mm
        self.negative_fraction = negative_fraction
        self.val_stride = val_stride
        self.head_crop = head_crop
        self.crop_table = crop_table
        self.brain_crop = read_sidecar(crop_table) if crop_table else None
        if crop_table and self.brain_crop is None:
            log.warning("crop table %s has no sidecar %s naming its detector: the checkpoints record none, and "
                        "inference will crop with the head box, not this table's boxes", crop_table,
                        sidecar_path(crop_table))
        self.val_center_crop = val_center_crop
        self.train_transform = train_transform
        self.masks = MaskSpec(**masks) if isinstance(masks, Mapping) else masks
        self.use_boxes = use_boxes
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.prepare_workers = prepare_workers
        self.series_limit = series_limit
        self.train_labels = train_labels
        self.extra_boxes = extra_boxes
        self.external = external
        self.series: pd.DataFrame | None = None

    # ---- preparation -------------------------------------------------------------------------
    def prepare_data(self) -> None:
        _, report = prepare_dataset(self.source, self.cache_dir, self.preprocess, workers=self.prepare_workers)
        if report.failed:
            log.warning("%d series could not be cached and are left out: %s", len(report.failed),
                        ", ".join(sorted(report.failed)[:5]))
        if self.external is not None:
            self.external.prepare_data()

    @property
    def cache(self) -> SeriesCache:
        return SeriesCache(self.cache_dir, self.preprocess)

    def setup(self, stage: str | None = None) -> None:
        if self.series is not None:
            return
        cache = self.cache
        series = self._series_with_folds()
        cached = series[UID_COL].map(cache.has)
        if not cached.all():
            log.warning("%d series are not in the cache and are left out", int((~cached).sum()))
        series = series[cached].reset_index(drop=True)
        if self.series_limit:
            series = series.groupby(FOLD_COL, group_keys=False).head(self.series_limit).reset_index(drop=True)
        metas = [cache.meta(uid) for uid in series[UID_COL]]
        series["n_slices"] = [m.shape[0] for m in metas]
        series[SLICE_MM_COL] = [m.spacing[0] for m in metas]
        self.spacings = [tuple(m.spacing) for m in metas]
        self.crop_boxes = self._crop_boxes(series, cache)
        geometry = {m.series_uid: m.geometry for m in metas}
        self.localizers = self._localizers(series, geometry)
        self.boxes = self._drawn_boxes(series, geometry)
        self.series = series
        self.labels = series_labels(series)
        self.train_targets, self.trainable = self._training_labels(series)
        self._split()
        if self.external is not None:
            self._check_external()
            self.external.setup(stage)

    def _series_with_folds(self) -> pd.DataFrame:
        return series_with_folds(self.source.train_csv, self.source.folds_csv, self.seed,
                                 require_folds=self.fold is not None)

    def _crop_boxes(self, series: pd.DataFrame, cache: SeriesCache) -> list:
        table = read_crop_table(self.crop_table) if self.crop_table else {}
        return series_crop_boxes(series[UID_COL], table, self.head_crop, cache.mean_image)

    def _localizers(self, series: pd.DataFrame, geometry: dict) -> pd.DataFrame:
        path = Path(self.source.localizers_csv)
        if not path.exists():
            return pd.DataFrame(columns=[UID_COL, "slice_index", "x", "y", "label_index"])
        mapping = map_localizers(read_localizers(path), geometry)
        if len(mapping.missing):
            log.warning("%d localizers could not be placed in the cache (e.g. %s)", len(mapping.missing),
                        mapping.missing["reason"].iloc[0])
        return mapping.mapped

    def _drawn_boxes(self, series: pd.DataFrame, geometry: dict) -> pd.DataFrame | None:
        if not self.use_boxes:
            return None
        tables = []
        if self.source.boxes and Path(self.source.boxes).exists():
            tables.append(read_aneurysm_boxes(self.source.boxes))
        if self.extra_boxes:
            tables.append(read_aneurysm_box_table(self.extra_boxes))
        if not tables:
            return None
        boxes = pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0]
        mapping = map_boxes(boxes[boxes[UID_COL].isin(series[UID_COL])], geometry)
        if self.extra_boxes and len(mapping.missing):
            log.warning("%d boxes could not be placed in the cache (e.g. %s)", len(mapping.missing),
                        mapping.missing["reason"].iloc[0])
        return mapping.mapped

    def _training_labels(self, series: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(N×14 training targets, N bools: may train) from `train_labels`, or the dataset's labels."""
        if not self.train_labels:
            return self.labels, np.ones(len(series), dtype=bool)
        table = read_series_labels(self.train_labels).set_index(UID_COL)
        known = series[UID_COL].isin(table.index).to_numpy()
        targets = self.labels.copy()
        targets[known] = table.loc[series.loc[known, UID_COL], list(LABEL_COLS)].to_numpy(dtype=np.float32)
        changed = int((targets[known] != self.labels[known]).any(axis=1).sum())
        log.info("training labels from %s: %d series relabelled, %d not in it left out of training",
                 self.train_labels, changed, int((~known).sum()))
        return targets, known

    def _split(self) -> None:
        series = self.series
        if self.fold is None:
            train_rows, val_rows = holdout_split(series, self.holdout_series, self.seed)
        else:
            if self.fold not in set(series[FOLD_COL]):
                raise ValueError(f"fold {self.fold} not in the fold file (folds: {sorted(set(series[FOLD_COL]))})")
            train_rows = np.flatnonzero(series[FOLD_COL].to_numpy() != self.fold)
            val_rows = np.flatnonzero(series[FOLD_COL].to_numpy() == self.fold)
        train_rows = train_rows[self.trainable[train_rows]]
        training = series.copy()
        training[list(LABEL_COLS)] = self.train_targets.astype(int)
        train = train_items(training.iloc[train_rows], self.localizers, self.boxes, self.positive_window,
                            self.background_mm)
        train[SERIES_COL] = train_rows[train[SERIES_COL].to_numpy()]
        if train.attrs.get("dropped_positive"):
            log.warning("%d positive training series have no localizer/box and give no slice",
                        train.attrs["dropped_positive"])
        val = eval_items(series.iloc[val_rows], self.val_stride)
        val[SERIES_COL] = val_rows[val[SERIES_COL].to_numpy()]
        self.train_items, self.val_items = train, val
        self.train_rows, self.val_rows = train_rows, val_rows

    # ---- datasets ----------------------------------------------------------------------------
    def _dataset(self, items: pd.DataFrame, train: bool) -> SliceDataset:
        points = {row: grp[["slice_index", "x", "y"]].to_numpy(float)
                  for row, grp in self._localizers_by_row().items()} if self.masks else None
        drawn = self._boxes_by_slice() if self.masks else None
        return SliceDataset(
            self.series, items, self.train_targets if train else self.labels, self.cache.volume, self.input,
            self.crop_boxes,
            center_crop_ratio=1.0 if train else self.val_center_crop,
            transform=self.train_transform if train else None,
            masks=self.masks, localizer_points=points, box_pixels_by_slice=drawn, spacings=self.spacings,
        )

    def _localizers_by_row(self) -> dict[int, pd.DataFrame]:
        row_of = {uid: row for row, uid in enumerate(self.series[UID_COL])}
        located = self.localizers[self.localizers[UID_COL].isin(row_of)]
        return {row_of[uid]: grp for uid, grp in located.groupby(UID_COL)}

    def _boxes_by_slice(self) -> dict[tuple[int, int], np.ndarray]:
        if self.boxes is None or not len(self.boxes):
            return {}
        row_of = {uid: row for row, uid in enumerate(self.series[UID_COL])}
        return {(row_of[uid], int(z)): grp[list(BOX_COLS)].to_numpy(float)
                for (uid, z), grp in self.boxes.groupby([UID_COL, "slice_index"])}

    def _check_external(self) -> None:
        """External samples must batch with RSNA ones: same preprocessing, slice input and mask targets."""
        problems = []
        if getattr(self.external, "preprocess", self.preprocess) != self.preprocess:
            problems.append("preprocess differs (the caches' keys differ)")
        theirs = getattr(self.external, "input", None)
        if theirs is not None and theirs.spec() != self.input.spec():
            problems.append(f"slice input differs ({theirs.spec()} vs {self.input.spec()})")
        if bool(getattr(self.external, "masks", self.masks)) != bool(self.masks):
            problems.append(f"masks differ (data.masks={self.masks}, external masks={self.external.masks})")
        if problems:
            raise ValueError("data.external cannot train with this data module: " + "; ".join(problems))

    def training_set(self):
        """(training dataset, per-item positive flags): RSNA items, then the external's when configured."""
        dataset = self._dataset(self.train_items, train=True)
        positive = self.train_items["positive"].to_numpy(bool)
        if self.external is None:
            return dataset, positive
        extra = self.external.train_dataset(self.train_transform)
        extra_positive = np.asarray(self.external.positive, dtype=bool)
        if len(extra_positive) != len(extra):
            raise ValueError(f"data.external: {len(extra_positive)} positive flags for {len(extra)} samples")
        return ConcatDataset([dataset, extra]), np.concatenate([positive, extra_positive])

    def train_dataloader(self) -> DataLoader:
        dataset, positive = self.training_set()
        trainer = self.trainer  # under DDP the sampler is wrapped and only the wrapper gets set_epoch
        sampler = NegativeSubsampler(positive, self.negative_fraction, self.seed,
                                     epoch_source=(lambda: trainer.current_epoch) if trainer is not None else None)
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, drop_last=True,
                          **loader_options(self.num_workers, self.pin_memory))

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._dataset(self.val_items, train=False), batch_size=self.eval_batch_size,
                          shuffle=False, **loader_options(self.num_workers, self.pin_memory))

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Normalise uint8 images on the device (cheaper than float samples through the loader)."""
        return {**batch, "image": self.input.normalize(batch["image"])}

    # ---- what the rest of the pipeline reads -------------------------------------------------
    def series_info(self, rows) -> pd.DataFrame:
        """SeriesInstanceUID, fold, Modality and the 14 true labels of the given series rows."""
        return self.series.iloc[np.asarray(rows)][[UID_COL, FOLD_COL, MODALITY_COL, *LABEL_COLS]].reset_index(drop=True)

    def input_spec(self) -> InputSpec:
        """What inference needs to rebuild this input (stored in every checkpoint)."""
        return InputSpec(preprocess=self.preprocess, slice_input=self.input.spec(), head_crop=self.head_crop,
                         val_center_crop=float(self.val_center_crop),
                         masks=asdict(self.masks) if self.masks else None, label_cols=tuple(LABEL_COLS),
                         label_prevalence=tuple(self.train_targets[self.train_rows].mean(axis=0).round(6).tolist()),
                         brain_crop=self.brain_crop)
