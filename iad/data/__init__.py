"""Data: cached volumes → 2.5D slice datasets and LightningDataModules.

`slices`, `crops` and `masks` are pure numpy/pandas (no torch); the exports resolve lazily, so
inference's `import iad.data.crops` never pulls in Lightning.
"""

from iad.utils.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "MaskSpec": "dataset", "SliceDataset": "dataset", "SliceInput": "inputs", "RSNASliceDataModule": "rsna",
    "TOFMRADataModule": "tofmra"})
