"""Make a dataset's series cache ready: generate the synthetic data if asked, then cache every series."""

from __future__ import annotations

import logging
from pathlib import Path

from iad.datasets import DatasetSource, ensure_dataset, series_folders
from iad.dicom import ReadLimits
from iad.dicom.decode_pool import resolve_workers
from iad.dicom.layout import MAX_SERIES_BYTES
from iad.labels import UID_COL, read_series_labels
from iad.preprocessing.cache import BuildReport, SeriesCache
from iad.preprocessing.normalize import PreprocessConfig

log = logging.getLogger(__name__)


def prepare_dataset(source: DatasetSource, cache_root: str | Path, config: PreprocessConfig,
                    workers: int = 0, progress: bool = True,
                    max_series_mb: float | None = None, read_workers: int | None = 1) -> tuple[SeriesCache, BuildReport]:
    """Generate (if synthetic) and cache every series of a dataset; returns the cache and a report.

    `max_series_mb` caps the decoded pixels of one series (default `iad.dicom.MAX_SERIES_BYTES`);
    `read_workers` decode one series' compressed files in parallel (None: every core; 0/1: serial).
    """
    ensure_dataset(source, workers=workers)
    cache = SeriesCache(cache_root, config)
    folders = series_folders(source.series_dir)
    listed = set(read_series_labels(source.train_csv)[UID_COL])
    unlisted = len(folders.keys() - listed)
    if unlisted:
        log.info("%d series folders are not in %s and are not cached", unlisted, source.train_csv)
    limits = ReadLimits(max_series_bytes=MAX_SERIES_BYTES if max_series_mb is None else int(max_series_mb * 2**20),
                        workers=resolve_workers(read_workers))
    report = cache.build({uid: path for uid, path in folders.items() if uid in listed}, workers=workers,
                         progress=progress, limits=limits)
    log.info("cache %s: %s", cache.dir, report)
    return cache, report
