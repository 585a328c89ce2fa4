"""TOFMRADataModule: external TOF-MRA volumes (cached like RSNA series) → 2.5D training slices with soft labels.

The training slices and their 14 (soft) labels come from a pseudo-label table (`PSEUDO_COLS`, written by
the pseudo-label stage; boxes in cache pixels give segmentation masks). Without one, a synthetic source's
truth gives oracle labels (`iad.external.truth`). Samples are exactly `SliceDataset`'s, with per-item
targets and "series" = -1, so they join the RSNA training set through a ConcatDataset; external series
never validate. It also trains alone (`train_dataloader`, no validation).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl
from torch.utils.data import DataLoader

from iad.boxes import XYXY_COLS
from iad.contract import InputSpec
from iad.data.crops import read_crop_table, series_crop_boxes
from iad.data.dataset import MaskSpec, SliceDataset
from iad.data.inputs import SliceInput
from iad.data.loaders import loader_options
from iad.data.samplers import NegativeSubsampler
from iad.data.slices import SERIES_COL, SLICE_COL
from iad.detection.crops import read_sidecar
from iad.external.cache import ExternalTables, prepare_external, read_external
from iad.external.source import ExternalSource
from iad.external.tables import PSEUDO_COLS, SLICE_COL as TABLE_SLICE_COL, read_table
from iad.external.truth import truth_labels
from iad.labels import LABEL_COLS, PRESENT_COL, UID_COL
from iad.preprocessing import PreprocessConfig, SeriesCache
from iad.utils.io import write_csv_atomic

log = logging.getLogger(__name__)

TRUTH_LABELS_TABLE = "truth_labels.csv"  # the oracle labels used when no pseudo-label table is given (synthetic)
_PRESENT = LABEL_COLS.index(PRESENT_COL)


class TOFMRADataModule(pl.LightningDataModule):
    """Training slices of an external TOF-MRA source.

    pseudo_labels: the pseudo-label stage's `pseudo_labels.csv` (PSEUDO_COLS: slice, 14 soft labels, a box in
        cache pixels or none); None = the synthetic source's truth (`ExternalSource.truth`).
    head_crop: crop every slice to the head box of the volume's mean image (volumes the crop table lacks).
    crop_table: the brain detector's crops of this source's volumes (`python -m iad.detection.crop_table
        external=<source>`), as RSNA series take theirs (data.crop_table); None = head box / full image.
    masks: segmentation targets (cls+seg models): each slice's boxes from the table; slices without a box
        get an empty mask.
    negative_fraction: share of the negative slices (control rows) drawn each epoch when it trains alone.
    fold: always None (the run folder of `train.py data=tofmra` is named by it); external volumes never validate.
    """

    def __init__(self, source: ExternalSource, preprocess: PreprocessConfig, cache_dir: str, input: SliceInput,
                 pseudo_labels: str | None = None, head_crop: bool = True, crop_table: str | None = None,
                 masks: MaskSpec | dict | None = None, train_transform=None, negative_fraction: float = 1.0,
                 batch_size: int = 32, num_workers: int = 0, pin_memory: bool = False, prepare_workers: int = 0,
                 seed: int = 42, fold: int | None = None):
        super().__init__()
        if fold is not None:
            raise ValueError(f"external source '{source.name}': data.fold={fold}, but external volumes have no folds "
                             "(they never validate); train them alone with data.fold=null, or join them to the RSNA "
                             "folds through data.external")
        self.source = source
        self.preprocess = preprocess
        self.cache_dir = cache_dir
        self.input = input
        self.pseudo_labels = pseudo_labels
        self.head_crop = head_crop
        self.crop_table = crop_table
        self.masks = MaskSpec(**masks) if isinstance(masks, Mapping) else masks
        self.train_transform = train_transform
        self.negative_fraction = negative_fraction
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.prepare_workers = prepare_workers
        self.seed = seed
        self.series: pd.DataFrame | None = None

    @property
    def cache(self) -> SeriesCache:
        return SeriesCache(self.cache_dir, self.preprocess)

    def prepare_data(self) -> None:
        prepare_external(self.source, self.cache_dir, self.preprocess, workers=self.prepare_workers)

    def setup(self, stage: str | None = None) -> None:
        if self.series is not None:
            return
        tables = read_external(self.cache_dir, self.preprocess, self.source.name)
        table, path = self._label_table(tables)
        slices = self._checked(table, tables, path)
        grouped = slices.groupby([UID_COL, TABLE_SLICE_COL], sort=True)
        keys = grouped.size().index
        uids = list(dict.fromkeys(keys.get_level_values(0)))
        row_of = {uid: row for row, uid in enumerate(uids)}
        self.series = pd.DataFrame({UID_COL: uids})
        self.items = pd.DataFrame({SERIES_COL: [row_of[u] for u in keys.get_level_values(0)],
                                   SLICE_COL: keys.get_level_values(1).astype(np.int64)})
        self.targets = grouped[list(LABEL_COLS)].max().to_numpy(np.float32)
        boxed = slices.dropna(subset=list(XYXY_COLS))
        self.boxes = {(row_of[uid], int(z)): group[list(XYXY_COLS)].to_numpy(float)
                      for (uid, z), group in boxed.groupby([UID_COL, TABLE_SLICE_COL])}
        cache = self.cache
        metas = [cache.meta(uid) for uid in uids]
        self.spacings = [tuple(m.spacing) for m in metas]
        crops = read_crop_table(self.crop_table) if self.crop_table else {}
        self.crop_boxes = series_crop_boxes(uids, crops, self.head_crop, cache.mean_image)
        uncropped = set(uids) - crops.keys() if self.crop_table else set()
        if uncropped:
            log.warning("external source %s: %d of %d volumes are not in the crop table %s (cropped to the %s)",
                        self.source.name, len(uncropped), len(uids), self.crop_table,
                        "head box" if self.head_crop else "full image")
        log.info("external source %s: %d training slices (%d positive) from %d volumes (%s)", self.source.name,
                 len(self.items), int(self.positive.sum()), len(uids), path)

    def _label_table(self, tables: ExternalTables) -> tuple[pd.DataFrame, Path]:
        if self.pseudo_labels is not None:
            return read_table(self.pseudo_labels, PSEUDO_COLS), Path(self.pseudo_labels)
        if self.source.truth is None:
            raise ValueError(f"external source '{self.source.name}': no pseudo-label table (data.pseudo_labels) and no "
                             "truth to label the slices with; run the pseudo-label stage and set pseudo_labels")
        path = tables.dir / TRUTH_LABELS_TABLE
        table = truth_labels(tables.series, tables.lesion_boxes, self.source.truth)
        write_csv_atomic(table, path)
        return table, path

    def _checked(self, table: pd.DataFrame, tables: ExternalTables, path: Path) -> pd.DataFrame:
        """The table's rows, after checking every series is cached and usable and every slice exists."""
        series = tables.series.set_index(UID_COL)
        named = pd.unique(table[UID_COL])
        unknown = [uid for uid in named if uid not in series.index]
        if unknown:
            raise ValueError(f"{path}: {len(unknown)} series are not volumes of external source '{self.source.name}' "
                             f"(e.g. {unknown[:3]})")
        cache = self.cache
        reasons = {uid: series.at[uid, "excluded"] if pd.notna(series.at[uid, "excluded"]) else cache.problem(uid)
                   for uid in named}
        unusable = [f"{uid} ({reason})" for uid, reason in reasons.items() if reason is not None]
        if unusable:
            raise ValueError(f"{path}: {len(unusable)} series are not cached under {cache.dir} (e.g. {unusable[:3]}); "
                             "run prepare_data / prepare_external for this preprocessing")
        n_slices = table[UID_COL].map(series["n_slices"]).astype(int)
        bad = table[(table[TABLE_SLICE_COL] < 0) | (table[TABLE_SLICE_COL] >= n_slices)]
        if len(bad):
            raise ValueError(f"{path}: {len(bad)} rows name a slice outside their volume "
                             f"(e.g. {bad[UID_COL].iloc[0]} slice {bad[TABLE_SLICE_COL].iloc[0]})")
        labels = table[list(LABEL_COLS)].to_numpy(float)
        if not np.isfinite(labels).all() or (labels < 0).any() or (labels > 1).any():
            raise ValueError(f"{path}: labels must be probabilities in [0, 1]")
        return table

    @property
    def positive(self) -> np.ndarray:
        """Per training item: its (soft) present label is at least 0.5 (for the negative subsampler)."""
        return self.targets[:, _PRESENT] >= 0.5

    def train_dataset(self, transform=None) -> SliceDataset:
        """The training samples, as SliceDataset gives them (per-item soft targets, "series" = -1)."""
        return SliceDataset(
            self.series, self.items, np.zeros((len(self.series), len(LABEL_COLS)), np.float32), self.cache.volume,
            self.input, self.crop_boxes, transform=transform if transform is not None else self.train_transform,
            masks=self.masks, box_pixels_by_slice=self.boxes if self.masks else None, spacings=self.spacings,
            item_targets=self.targets, series_ids=False)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        sampler = NegativeSubsampler(self.positive, self.negative_fraction, self.seed,
                                     epoch_source=(lambda: trainer.current_epoch) if trainer is not None else None)
        return DataLoader(self.train_dataset(), batch_size=self.batch_size, sampler=sampler,
                          drop_last=len(self.items) >= self.batch_size,
                          **loader_options(self.num_workers, self.pin_memory))

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Normalise uint8 images on the device, as the RSNA DataModule does."""
        return {**batch, "image": self.input.normalize(batch["image"])}

    def input_spec(self) -> InputSpec:
        """What inference needs to rebuild this input (stored in checkpoints of a run trained on it alone)."""
        return InputSpec(preprocess=self.preprocess, slice_input=self.input.spec(), head_crop=self.head_crop,
                         val_center_crop=1.0, masks=asdict(self.masks) if self.masks else None,
                         label_cols=tuple(LABEL_COLS), label_prevalence=tuple(self.targets.mean(axis=0).round(6).tolist()),
                         brain_crop=read_sidecar(self.crop_table) if self.crop_table else None)
