"""Synthetic RSNA-like DICOM series (CTA, TOF-MRA, T2, T1post) with labelled aneurysms; no torch.

`make_dataset(out_dir, n_series, seed)` writes the competition layout: `series/<uid>/*.dcm`,
train.csv, train_localizers.csv and train_kfold.csv, plus `boxes/` in the layout of the reference's
box archive (LabelImg aneurysm and brain boxes). A few series are coronal or sagittal. Left/right
follow DICOM LPS: +x is the patient's left, which lies on the image's right in axial images.
"""

from iad.synthetic.dataset import (
    HIDDEN_POSITIVES_CSV,
    DatasetSummary,
    dataset_settings,
    is_current,
    make_dataset,
    read_settings,
)

__all__ = ["HIDDEN_POSITIVES_CSV", "DatasetSummary", "dataset_settings", "is_current", "make_dataset", "read_settings"]
