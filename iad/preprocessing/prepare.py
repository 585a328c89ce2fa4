"""Make a dataset's series cache ready: generate the synthetic data if asked, then cache every series."""

from __future__ import annotations

from dataclasses import dataclass
import logging
from pathlib import Path

from iad.dicom import ReadLimits
from iad.labels import UID_COL, read_series_labels
from iad.preprocessing.cache import BuildReport, SeriesCache
from iad.preprocessing.normalize import PreprocessConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetSource:
    """Where a competition-layout dataset lives; `synthetic` settings generate it on first use."""

    root: str
    series_dir: str
    train_csv: str
    localizers_csv: str
    folds_csv: str
    name: str = "rsna"
    boxes: str | None = None
    synthetic: dict | None = None


def series_folders(series_dir: str | Path) -> dict[str, Path]:
    """SeriesInstanceUID → folder for every sub-folder of the competition's `series/` directory."""
    series_dir = Path(series_dir)
    if not series_dir.is_dir():
        raise FileNotFoundError(f"series folder {series_dir} does not exist")
    return {p.name: p for p in sorted(series_dir.iterdir()) if p.is_dir() and not p.name.startswith(".")}


def ensure_dataset(source: DatasetSource, workers: int = 0) -> None:
    """Generate the synthetic dataset when configured and missing or made with other settings (only the
    missing series are rendered); otherwise check the tables exist."""
    if source.synthetic is not None:
        from iad.synthetic import dataset_settings, make_dataset, read_settings

        wanted = dataset_settings(**dict(source.synthetic))
        if read_settings(source.root) != wanted:
            log.info("generating synthetic dataset in %s (%s)", source.root, wanted)
            make_dataset(source.root, **wanted, workers=workers)
    for path in (source.train_csv, source.series_dir):
        if not Path(path).exists():
            raise FileNotFoundError(f"dataset '{source.name}': {path} not found (set dataset.root or paths.data_dir)")


def prepare_dataset(source: DatasetSource, cache_root: str | Path, config: PreprocessConfig,
                    workers: int = 0, progress: bool = True,
                    max_series_mb: float | None = None) -> tuple[SeriesCache, BuildReport]:
    """Generate (if synthetic) and cache every series of a dataset; returns the cache and a report.

    `max_series_mb` caps the decoded pixels of one series (default `iad.dicom.MAX_SERIES_BYTES`).
    """
    ensure_dataset(source, workers=workers)
    cache = SeriesCache(cache_root, config)
    folders = series_folders(source.series_dir)
    listed = set(read_series_labels(source.train_csv)[UID_COL])
    unlisted = len(folders.keys() - listed)
    if unlisted:
        log.info("%d series folders are not in %s and are not cached", unlisted, source.train_csv)
    limits = None if max_series_mb is None else ReadLimits(max_series_bytes=int(max_series_mb * 2**20))
    report = cache.build({uid: path for uid, path in folders.items() if uid in listed}, workers=workers,
                         progress=progress, limits=limits)
    log.info("cache %s: %s", cache.dir, report)
    return cache, report
