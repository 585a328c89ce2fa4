"""Preprocessing: DICOM series → normalised, memory-mappable uint8 volumes (no torch import)."""

from iad.preprocessing.cache import BuildReport, SeriesCache, SeriesMeta, cache_series
from iad.preprocessing.normalize import PreprocessConfig
from iad.preprocessing.prepare import DatasetSource, ensure_dataset, prepare_dataset, series_folders

__all__ = [
    "BuildReport",
    "DatasetSource",
    "PreprocessConfig",
    "SeriesCache",
    "SeriesMeta",
    "cache_series",
    "ensure_dataset",
    "prepare_dataset",
    "series_folders",
]
