"""Data: cached volumes → 2.5D slice datasets and LightningDataModules."""

from iad.data.dataset import MaskSpec, SliceDataset
from iad.data.inputs import SliceInput
from iad.data.rsna import RSNASliceDataModule

__all__ = ["MaskSpec", "RSNASliceDataModule", "SliceDataset", "SliceInput"]
