"""Make a dataset's series cache ready: generate the synthetic data if asked, then cache every series."""

from __future__ import annotations

from dataclasses import dataclass
import logging
from pathlib import Path

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
    """Generate the synthetic dataset when configured and missing; otherwise check the tables exist."""
    if source.synthetic is not None and not Path(source.train_csv).exists():
        from iad.synthetic import make_dataset

        log.info("generating synthetic dataset in %s (%s)", source.root, source.synthetic)
        make_dataset(source.root, **dict(source.synthetic), workers=workers)
    for path in (source.train_csv, source.series_dir):
        if not Path(path).exists():
            raise FileNotFoundError(f"dataset '{source.name}': {path} not found (set dataset.root or paths.data_dir)")


def prepare_dataset(source: DatasetSource, cache_root: str | Path, config: PreprocessConfig,
                    workers: int = 0, progress: bool = True) -> tuple[SeriesCache, BuildReport]:
    """Generate (if synthetic) and cache every series of a dataset; returns the cache and a report."""
    ensure_dataset(source, workers=workers)
    cache = SeriesCache(cache_root, config)
    report = cache.build(series_folders(source.series_dir), workers=workers, progress=progress)
    log.info("cache %s: %s", cache.dir, report)
    return cache, report
