"""Where a competition-layout dataset lives (the `dataset` config group's target), and making it exist.

No torch import; the synthetic generator is imported only when a dataset asks for it.
"""

from __future__ import annotations

from dataclasses import dataclass
import logging
from pathlib import Path

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
