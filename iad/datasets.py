"""Where a competition-layout dataset lives (the `dataset` config group's target), and making it exist.

No torch import; the synthetic generator is imported only when a dataset asks for it.
"""

from __future__ import annotations

from dataclasses import dataclass
import logging
from pathlib import Path

log = logging.getLogger(__name__)

# In a dataset's root, when its labels are known to be noisy (synthetic data with hidden positives): the
# true labels of the positive series written as negative, which label cleaning is scored against.
HIDDEN_POSITIVES_CSV = "hidden_positives.csv"


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


class NoSeriesError(ValueError):
    """The input holds no series to predict (or is ambiguous); the message says what was found."""


def series_folders_in(path: str | Path) -> list[Path]:
    """The series of an input folder: the folder itself when it holds DICOM files, else its sub-folders.

    Hidden entries and files without the DICOM preamble are ignored (and logged). Every visible
    sub-folder of a folder of series is a series, readable or not, so it gets a (fallback) row.
    """
    from pydicom.misc import is_dicom

    path = Path(path)
    if not path.is_dir():
        raise NoSeriesError(f"input {path} is not a folder")
    visible = [p for p in sorted(path.iterdir()) if not p.name.startswith(".")]
    files = [p for p in visible if p.is_file()]
    dicom_files = [p for p in files if is_dicom(p)]
    folders = list(series_folders(path).values())
    ignored = len(files) - len(dicom_files) + sum(1 for p in path.iterdir() if p.name.startswith("."))
    if dicom_files and folders:
        raise NoSeriesError(f"input {path} is ambiguous: {len(dicom_files)} DICOM files (e.g. {dicom_files[0].name}) "
                            f"next to {len(folders)} sub-folders (e.g. {folders[0].name}); give one series or a "
                            "folder of series folders")
    if dicom_files:
        log.info("input %s: one series of %d DICOM files (%d hidden or non-DICOM entries ignored)", path,
                 len(dicom_files), ignored)
        return [path]
    if not folders:
        raise NoSeriesError(f"input {path} holds no series: no DICOM file and no sub-folder "
                            f"({ignored} hidden or non-DICOM entries ignored)")
    log.info("input %s: a folder of %d series (%d hidden or non-DICOM entries ignored)", path, len(folders), ignored)
    return folders


def ensure_dataset(source: DatasetSource, workers: int = 0) -> None:
    """Generate the synthetic dataset when configured and missing or made with other settings (only the
    missing series are rendered); otherwise check the tables exist."""
    if source.synthetic is not None:
        from iad.synthetic import dataset_settings, is_current, make_dataset

        wanted = dataset_settings(**dict(source.synthetic))
        if not is_current(source.root, wanted):
            log.info("generating synthetic dataset in %s (%s)", source.root, wanted)
            make_dataset(source.root, **wanted, workers=workers)
    for path in (source.train_csv, source.series_dir):
        if not Path(path).exists():
            raise FileNotFoundError(f"dataset '{source.name}': {path} not found (set dataset.root or paths.data_dir)")
