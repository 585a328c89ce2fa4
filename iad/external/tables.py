"""The tables external TOF-MRA data passes between stages (no torch): names, columns, readers.

Every table is a CSV a user can open. Coordinates are cache pixels of the series' cached volume
(`iad.preprocessing.SeriesCache`), slices are cache slice indices, boxes use `iad.boxes.XYXY_COLS`.

- `series.csv` (`SERIES_COLS`), beside the cached volumes in `<cache>/<key>/external/<source>/`:
  one row per angio volume `discover` found, with its status: `positive` (lesion masks), `control`
  (participants.tsv says so) or `unknown` (neither: never trained on), and why a volume was left out.
- `lesion_boxes.csv` (`LESION_BOX_COLS`): per lesion and slice, the box of the mask's connected
  pixels on that slice.
- `lesions.csv` (`LESION_COLS`): per lesion, its centre (slice, x, y) and size.
- `pseudo_labels.csv` (`PSEUDO_COLS`), written by the pseudo-label stage: the external training
  slices with their (soft) 14 labels and, where known, a box for segmentation targets.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from iad.boxes import XYXY_COLS
from iad.labels import LABEL_COLS, UID_COL

EXTERNAL_DIR = "external"  # under a cache key's folder: one sub-folder per external source
SERIES_TABLE = "series.csv"
LESION_BOXES_TABLE = "lesion_boxes.csv"
LESIONS_TABLE = "lesions.csv"
PSEUDO_TABLE = "pseudo_labels.csv"
TRUTH_TABLE = "truth.csv"  # synthetic external data only: each lesion's true location, kept aside

EXTERNAL_MODALITY = "MRA"  # the competition's modality name for TOF-MRA

POSITIVE, CONTROL, UNKNOWN = "positive", "control", "unknown"
STATUS_COL = "status"
LESION_COL = "lesion"  # 1-based position of the mask in `discover`'s lesion_masks list
SLICE_COL = "slice_index"
LOCATION_COL = "location"  # a LOCATION_COLS name
BOX_SOURCE_COL = "box_source"  # pseudo labels: "detector" (exp0 box overlapping the mask's), "mask", or "" (none)

SERIES_COLS = [UID_COL, "dataset", "subject", "session", "acq", "volume", "n_lesions", "control", STATUS_COL,
               "n_slices", "excluded"]
LESION_BOX_COLS = [UID_COL, LESION_COL, SLICE_COL, *XYXY_COLS, "voxels"]
LESION_COLS = [UID_COL, LESION_COL, SLICE_COL, "x", "y", "voxels"]
TRUTH_COLS = [UID_COL, LESION_COL, LOCATION_COL]
PSEUDO_COLS = [UID_COL, SLICE_COL, *LABEL_COLS, *XYXY_COLS, BOX_SOURCE_COL]
# Columns read as text whatever they hold (BIDS labels such as subject "001" keep their zeros).
_TEXT_COLS = {name: str for name in (UID_COL, "dataset", "subject", "session", "acq", "volume", STATUS_COL, "excluded",
                                     LOCATION_COL, BOX_SOURCE_COL)}


def external_series_uid(dataset: str, subject: str, session: str, acq: str | None = None) -> str:
    """The cache id of an external volume, from its BIDS entities: `ds003949-sub-001-ses-20100101[-acq-tra]`.

    Never collides with a DICOM SeriesInstanceUID (those are digits and dots) and is a valid folder name.
    """
    uid = f"{dataset}-sub-{subject}-ses-{session}"
    return f"{uid}-acq-{acq}" if isinstance(acq, str) and acq else uid


def external_dir(cache_dir: str | os.PathLike, source_name: str) -> Path:
    """Where an external source's tables live inside one preprocessing key's cache folder (`SeriesCache.dir`)."""
    return Path(cache_dir) / EXTERNAL_DIR / source_name


def read_table(path: str | os.PathLike, columns: list[str]) -> pd.DataFrame:
    """Read one of these tables, checking its columns (a clear error naming the file and what is missing)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    frame = pd.read_csv(path, keep_default_na=True, dtype=_TEXT_COLS)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    return frame


def excluded(series: pd.DataFrame) -> pd.Series:
    """Per row of `series` (series.csv): whether the volume was left out (its reason given)."""
    return series["excluded"].fillna("").astype(str).str.len() > 0


def usable_series(series: pd.DataFrame, status: str | None = None) -> pd.Series:
    """The uids of `series` (series.csv) with `status` (None: any) that were not excluded."""
    keep = ~excluded(series) if status is None else (series[STATUS_COL] == status) & ~excluded(series)
    return series.loc[keep, UID_COL]


def control_label_rows(uids, slice_indices) -> pd.DataFrame:
    """All-zero PSEUDO_COLS rows (no box) for the given control slices: what a control volume teaches."""
    frame = pd.DataFrame({UID_COL: np.asarray(uids, dtype=object), SLICE_COL: np.asarray(slice_indices, dtype=int)})
    for col in LABEL_COLS:
        frame[col] = 0.0
    for col in XYXY_COLS:
        frame[col] = np.nan
    frame[BOX_SOURCE_COL] = ""
    return frame[PSEUDO_COLS]
