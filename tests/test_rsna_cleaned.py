"""Synthetic hidden positives, and RSNASliceDataModule with cleaned training labels, extra boxes and an
external training set: validation (and so the OOF file) unchanged, fold for fold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import Dataset

from iad.boxes import ANEURYSM_BOX_COLS, read_aneurysm_box_table, read_aneurysm_boxes
from iad.data import RSNASliceDataModule, SliceInput
from iad.data.slices import SERIES_COL
from iad.datasets import DatasetSource
from iad.folds import read_folds
from iad.labels import LABEL_COLS, PRESENT_COL, UID_COL, read_localizers, read_series_labels
from iad.preprocessing import PreprocessConfig
from iad.synthetic import HIDDEN_POSITIVES_CSV, dataset_settings, make_dataset
from iad.synthetic.dataset import FOLDS_CSV, LOCALIZERS_CSV, TRAIN_CSV

SETTINGS = {"n_series": 14, "seed": 5, "size_range": (64, 64), "locations": "uniform", "positive_share": 0.7,
            "max_slices": 24}
HIDDEN_SHARE = 0.4
PREPROCESS = PreprocessConfig(image_size=48)


def source(root: Path) -> DatasetSource:
    return DatasetSource(root=str(root), series_dir=str(root / "series"), train_csv=str(root / TRAIN_CSV),
                         localizers_csv=str(root / LOCALIZERS_CSV), folds_csv=str(root / FOLDS_CSV),
                         boxes=str(root / "boxes"))


@pytest.fixture(scope="module")
def noisy(tmp_path_factory) -> dict:
    """The same series twice: clean, and with HIDDEN_SHARE of the positives written as negative."""
    base = tmp_path_factory.mktemp("hidden")
    make_dataset(base / "clean", **SETTINGS, progress=False)
    make_dataset(base / "noisy", **SETTINGS, hidden_positive_share=HIDDEN_SHARE, progress=False)
    return {"clean": base / "clean", "noisy": base / "noisy", "cache": base / "cache"}


def test_hidden_positives_are_written_as_negatives_and_kept_aside(noisy):
    clean = read_series_labels(noisy["clean"] / TRAIN_CSV).set_index(UID_COL)
    written = read_series_labels(noisy["noisy"] / TRAIN_CSV).set_index(UID_COL)
    hidden = pd.read_csv(noisy["noisy"] / HIDDEN_POSITIVES_CSV).set_index(UID_COL)
    n_positive = int(clean[PRESENT_COL].sum())
    assert len(hidden) == round(HIDDEN_SHARE * n_positive) > 0
    assert list(hidden.columns) == list(LABEL_COLS)
    # the hidden series' true labels are the clean dataset's; train.csv says negative; the others are untouched
    pd.testing.assert_frame_equal(hidden, clean.loc[hidden.index, list(LABEL_COLS)], check_dtype=False)
    assert (written.loc[hidden.index, list(LABEL_COLS)] == 0).all().all()
    others = clean.index.difference(hidden.index)
    pd.testing.assert_frame_equal(written.loc[others], clean.loc[others])
    # no localizer and no aneurysm box betrays them
    assert not read_localizers(noisy["noisy"] / LOCALIZERS_CSV)[UID_COL].isin(hidden.index).any()
    assert read_aneurysm_boxes(noisy["clean"] / "boxes")[UID_COL].isin(hidden.index).any()
    assert not read_aneurysm_boxes(noisy["noisy"] / "boxes")[UID_COL].isin(hidden.index).any()
    assert set(read_folds(noisy["noisy"] / FOLDS_CSV)[UID_COL]) == set(written.index)
    # the images are the same series (the aneurysm is still there to be found)
    def files(root: Path) -> list[bytes]:
        return [p.read_bytes() for p in sorted((root / "series" / hidden.index[0]).iterdir())]

    assert files(noisy["noisy"]) == files(noisy["clean"])


def test_hidden_share_is_recorded_only_when_set():
    assert "hidden_positive_share" not in dataset_settings()
    assert dataset_settings(hidden_positive_share=0.2)["hidden_positive_share"] == 0.2
    with pytest.raises(ValueError, match="hidden_positive_share"):
        dataset_settings(hidden_positive_share=1.0)


def module(noisy, fold=0, **kwargs) -> RSNASliceDataModule:
    dm = RSNASliceDataModule(dataset=source(noisy["noisy"]), preprocess=PREPROCESS, cache_dir=str(noisy["cache"]),
                             input=SliceInput(img_size=32), fold=fold, batch_size=4, **kwargs)
    dm.prepare_data()
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def cleaned(noisy) -> dict:
    """A train_labels table (hidden positives restored, one other series left out) and the hidden series' boxes."""
    hidden = pd.read_csv(noisy["noisy"] / HIDDEN_POSITIVES_CSV)
    labels = read_series_labels(noisy["noisy"] / TRAIN_CSV).set_index(UID_COL)
    labels.loc[hidden[UID_COL], list(LABEL_COLS)] = hidden.set_index(UID_COL)[list(LABEL_COLS)].to_numpy()
    dropped = labels.index.difference(hidden[UID_COL])[0]
    path = noisy["cache"].parent / "train_labels.csv"
    labels.drop(index=dropped).reset_index().to_csv(path, index=False)
    boxes = read_aneurysm_boxes(noisy["clean"] / "boxes")
    boxes_path = noisy["cache"].parent / "boxes.csv"
    boxes[boxes[UID_COL].isin(hidden[UID_COL])].to_csv(boxes_path, index=False)
    return {"labels": str(path), "boxes": str(boxes_path), "hidden": hidden, "dropped": dropped}


def train_uids(dm: RSNASliceDataModule) -> set[str]:
    return set(dm.series[UID_COL].iloc[np.unique(dm.train_items[SERIES_COL])])


@pytest.mark.parametrize("fold", [0, 1])
def test_train_labels_and_extra_boxes_change_training_only(noisy, cleaned, fold):
    plain = module(noisy, fold)
    dm = module(noisy, fold, train_labels=cleaned["labels"], extra_boxes=cleaned["boxes"])
    # validation: the same series with the dataset's labels, so OOF files compare fold for fold
    np.testing.assert_array_equal(dm.val_rows, plain.val_rows)
    pd.testing.assert_frame_equal(dm.series_info(dm.val_rows), plain.series_info(plain.val_rows))
    pd.testing.assert_frame_equal(dm.val_items, plain.val_items)
    val = dm._dataset(dm.val_items, train=False)
    assert torch.equal(torch.stack([val[i]["target"] for i in range(len(val))]),
                       torch.stack([plain._dataset(plain.val_items, train=False)[i]["target"] for i in range(len(val))]))
    # training: the left-out series gives no slice; hidden positives in the training folds train as positives
    row_of = {uid: row for row, uid in enumerate(dm.series[UID_COL])}
    train_fold = {uid for uid in dm.series[UID_COL] if row_of[uid] not in set(dm.val_rows)}
    assert cleaned["dropped"] not in train_uids(dm)
    assert train_uids(dm) == train_uids(plain) - {cleaned["dropped"]}
    restored = [uid for uid in cleaned["hidden"][UID_COL] if uid in train_fold]
    assert restored  # the settings put hidden positives in every training fold
    train_set, positive = dm.training_set()
    truth = cleaned["hidden"].set_index(UID_COL)[list(LABEL_COLS)]
    for uid in restored:
        items = np.flatnonzero(dm.train_items[SERIES_COL].to_numpy() == row_of[uid])
        assert len(items) and positive[items].all()  # only its boxed slices, all positive
        assert plain.train_items.loc[plain.train_items[SERIES_COL] == row_of[uid], "positive"].eq(False).all()
        np.testing.assert_array_equal(train_set[int(items[0])]["target"].numpy(), truth.loc[uid].to_numpy(float))
    assert dm.input_spec().label_prevalence != plain.input_spec().label_prevalence


def test_cleaned_positives_without_boxes_give_no_slice(noisy, cleaned):
    dm = module(noisy, None, train_labels=cleaned["labels"])  # fold=None: every series trains
    rows = set(np.unique(dm.train_items[SERIES_COL]))
    hidden_rows = {row for row, uid in enumerate(dm.series[UID_COL]) if uid in set(cleaned["hidden"][UID_COL])}
    assert hidden_rows and not hidden_rows & rows
    assert dm.train_items.attrs["dropped_positive"] == len(hidden_rows)


def test_box_table_errors_name_the_file(tmp_path):
    path = tmp_path / "boxes.csv"
    pd.DataFrame({UID_COL: ["1.2"], "xmin": [1.0]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="boxes.csv: missing columns"):
        read_aneurysm_box_table(path)
    row = {UID_COL: "1.2", "SOPInstanceUID": "1.3", "frame": None, "cls": "aneurysm", "xmin": 5, "ymin": 1,
           "xmax": 4, "ymax": 3, "width": None, "height": None}
    pd.DataFrame([row], columns=list(ANEURYSM_BOX_COLS)).to_csv(path, index=False)
    with pytest.raises(ValueError, match="boxes.csv: 1 boxes without"):
        read_aneurysm_box_table(path)
    with pytest.raises(FileNotFoundError, match="nothing.csv"):
        read_aneurysm_box_table(tmp_path / "nothing.csv")


class ExternalSamples(Dataset):
    def __init__(self, n: int, transform, size: int):
        self.n, self.transform, self.size = n, transform, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        target = np.zeros(len(LABEL_COLS), np.float32)
        target[[4, -1]] = index % 2  # odd items: a soft-labelled Left MCA slice
        return {"image": torch.full((3, self.size, self.size), index, dtype=torch.uint8),
                "target": torch.from_numpy(target), "series": torch.tensor(-1)}


class StandInExternal:
    """What RSNASliceDataModule needs of TOFMRADataModule (its interface in the issue 10 design)."""

    def __init__(self, n: int = 6, input: SliceInput | None = None, masks=None, preprocess=PREPROCESS):
        self.n, self.input, self.masks, self.preprocess = n, input or SliceInput(img_size=32), masks, preprocess
        self.calls: list[str] = []

    def prepare_data(self) -> None:
        self.calls.append("prepare")

    def setup(self, stage=None) -> None:
        self.calls.append("setup")

    def train_dataset(self, transform=None) -> Dataset:
        self.calls.append(f"train_dataset({transform!r})")
        return ExternalSamples(self.n, transform, self.input.img_size)

    @property
    def positive(self) -> np.ndarray:
        return np.arange(self.n) % 2 == 1


def test_external_samples_only_train(noisy):
    plain = module(noisy, 0)
    external = StandInExternal()
    dm = module(noisy, 0, external=external, train_transform="the transform")
    assert external.calls == ["prepare", "setup"]
    dataset, positive = dm.training_set()
    assert external.calls[-1] == "train_dataset('the transform')"  # the RSNA training transform is shared
    n_rsna = len(plain.train_items)
    assert len(dataset) == len(positive) == n_rsna + external.n
    np.testing.assert_array_equal(positive[n_rsna:], external.positive)
    np.testing.assert_array_equal(positive[:n_rsna], plain.train_items["positive"].to_numpy(bool))
    assert int(dataset[n_rsna + 1]["series"]) == -1 and dataset[n_rsna + 1]["target"][4] == 1
    # the sampler draws every positive, external ones included; validation is RSNA only
    sampler = dm.train_dataloader().sampler
    assert set(np.flatnonzero(positive)) <= set(sampler)
    assert len(dm.val_dataloader().dataset) == len(plain.val_items)
    pd.testing.assert_frame_equal(dm.series_info(dm.val_rows), plain.series_info(plain.val_rows))


@pytest.mark.parametrize("mismatch, message", [({"input": SliceInput(img_size=48)}, "slice input differs"),
                                               ({"masks": {"radius_mm": 3}}, "masks differ"),
                                               ({"preprocess": PreprocessConfig(image_size=64)}, "preprocess differs")])
def test_external_that_cannot_batch_with_rsna_is_refused(noisy, mismatch, message):
    with pytest.raises(ValueError, match=message):
        module(noisy, 0, external=StandInExternal(**mismatch))
