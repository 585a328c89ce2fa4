"""Preprocessing: DICOM series → normalised, memory-mappable uint8 volumes (no torch import)."""

from iad.preprocessing.cache import BuildReport, SeriesCache, SeriesMeta, cache_series
from iad.preprocessing.normalize import PreprocessConfig
from iad.preprocessing.prepare import prepare_dataset

__all__ = ["BuildReport", "PreprocessConfig", "SeriesCache", "SeriesMeta", "cache_series", "prepare_dataset"]
