"""Synthetic RSNA-like DICOM series (CTA, TOF-MRA, T2, T1post) with labelled aneurysms; no torch.

`make_dataset(out_dir, n_series, seed)` writes the competition layout: `series/<uid>/*.dcm`,
train.csv, train_localizers.csv and train_kfold.csv. Left/right follow DICOM LPS: +x is the
patient's left, which lies on the image's right with the axial orientation used here.
"""

from iad.synthetic.dataset import DatasetSummary, dataset_settings, make_dataset, read_settings

__all__ = ["DatasetSummary", "dataset_settings", "make_dataset", "read_settings"]
