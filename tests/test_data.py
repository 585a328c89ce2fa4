"""Slice tables, crops, masks, the 2.5D input, the flip label swap, samplers and the loop metric."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pandas as pd
import pytest
import torch

from iad.data import MaskSpec, SliceDataset, SliceInput
from iad.data.crops import center_crop, head_box
from iad.data.masks import box_mask, sphere_mask
from iad.data.samplers import NegativeSubsampler
from iad.data.slices import eval_items, holdout_split, positive_slices, train_items
from iad.labels import FLIP_PERM, LABEL_COLS, LOCATION_COLS, PRESENT_COL, UID_COL
from iad.metrics import weighted_auc
from iad.models.aggregation import aggregate_series
from iad.models.metric import SeriesWeightedAUROC


def series_table(n_slices=(10, 12, 8), positive=(0, 1, 0)) -> pd.DataFrame:
    rows = []
    for i, (n, pos) in enumerate(zip(n_slices, positive)):
        labels = dict.fromkeys(LABEL_COLS, 0)
        if pos:
            labels[LOCATION_COLS[4]] = labels[PRESENT_COL] = 1  # Left MCA
        rows.append({UID_COL: f"1.{i}", "Modality": "CTA", "fold": i % 2, "n_slices": n, **labels})
    return pd.DataFrame(rows)


def test_train_items_use_localizer_window_or_boxes():
    series = series_table()
    localizers = pd.DataFrame({UID_COL: ["1.1"], "slice_index": [5], "x": [3.0], "y": [4.0]})
    items = train_items(series, localizers, None, window=2)
    assert sorted(items.loc[items["series"] == 1, "z"]) == [3, 4, 5, 6, 7]
    assert len(items[items["series"] == 0]) == 10 and not items.loc[items["series"] == 0, "positive"].any()
    boxes = pd.DataFrame({UID_COL: ["1.1", "1.1"], "slice_index": [9, 11]})
    with_boxes = train_items(series, localizers, boxes, window=2)
    assert sorted(with_boxes.loc[with_boxes["series"] == 1, "z"]) == [9, 11]
    assert positive_slices(localizers.iloc[:0], None, 12, 2).size == 0


def test_background_slices_of_positive_series_are_far_negatives():
    series = series_table().assign(slice_mm=[1.0, 2.0, 1.0])
    localizers = pd.DataFrame({UID_COL: ["1.1"], "slice_index": [5], "x": [3.0], "y": [4.0]})
    items = train_items(series, localizers, None, window=1, background_mm=6.0)
    positive_series = items[items["series"] == 1]
    assert sorted(positive_series.loc[positive_series["positive"], "z"]) == [4, 5, 6]
    # 2 mm slices: 3 slices (6 mm) from the nearest aneurysm slice 4 or 6
    background = positive_series.loc[positive_series["background"], "z"]
    assert sorted(background) == [0, 1, 9, 10, 11]
    assert not positive_series.loc[positive_series["background"], "positive"].any()
    assert not items.loc[items["series"] != 1, "background"].any()
    assert not train_items(series, localizers, None, window=1)["background"].any()


def test_eval_items_stride_keeps_last_slice():
    items = eval_items(series_table(), stride=4)
    assert sorted(items.loc[items["series"] == 1, "z"]) == [0, 4, 8, 11]


def test_holdout_split_is_disjoint_and_stratified():
    series = pd.concat([series_table((5,) * 10, (0, 1) * 5)] * 3, ignore_index=True)
    train, held = holdout_split(series, 6, seed=0)
    assert len(held) == 6 and not set(train) & set(held) and len(train) + len(held) == len(series)
    assert series.loc[held, PRESENT_COL].sum() == 3


def test_head_box_finds_the_bright_region():
    image = np.zeros((100, 80), np.uint8)
    image[20:70, 10:50] = 200
    x0, y0, x1, y1 = head_box(image, margin=0.0)
    assert (x0, y0) == pytest.approx((10 / 80, 20 / 100), abs=0.02) and (x1, y1) == pytest.approx((50 / 80, 70 / 100), abs=0.02)
    assert center_crop((0, 0, 1, 1), 0.5) == pytest.approx((0.25, 0.25, 0.75, 0.75))


def test_masks():
    assert box_mask([[2, 3, 5, 7]], 10, 10).sum() == 3 * 4
    disk = sphere_mask([[4, 10, 12]], 4, 30, 30, (1.0, 1.0, 1.0), radius_mm=3)
    assert disk[12, 10] == 1 and disk[12, 14] == 0 and disk.sum() == pytest.approx(np.pi * 9, rel=0.2)
    smaller = sphere_mask([[4, 10, 12]], 6, 30, 30, (1.0, 1.0, 1.0), radius_mm=3)
    assert 0 < smaller.sum() < disk.sum()
    assert sphere_mask([[4, 10, 12]], 8, 30, 30, (1.0, 1.0, 1.0), radius_mm=3).sum() == 0


def test_slice_input_stacks_neighbours_with_edge_replication():
    volume = np.stack([np.full((6, 6), 10 * z, np.uint8) for z in range(5)])
    stack = SliceInput(img_size=6, offsets=(-1, 0, 1)).image(volume, 0, (0, 0, 1, 1))
    assert stack.shape == (6, 6, 3) and list(stack[0, 0]) == [0, 0, 10]
    slice_input = SliceInput(img_size=4, mean=(0, 0, 0.5), std=(1, 1, 0.5))
    tensor = slice_input(volume, 4, (0, 0, 1, 1))
    assert tensor.dtype == torch.uint8 and tensor.shape == (3, 4, 4) and int(tensor[1, 0, 0]) == 40
    normalised = slice_input.normalize(tensor[None])[0]
    assert torch.allclose(normalised[1], torch.full((4, 4), 40 / 255))
    assert torch.allclose(normalised[2], torch.full((4, 4), (40 / 255 - 0.5) / 0.5))


def test_slice_input_crops_the_box_before_resizing():
    volume = np.zeros((3, 20, 20), np.uint8)
    volume[:, 10:20, 0:10] = 200  # bottom-left quadrant
    image = SliceInput(img_size=10).image(volume, 1, (0.0, 0.5, 0.5, 1.0))
    assert image.shape == (10, 10, 3) and (image == 200).all()


def make_dataset(transform, masks=None, background=False) -> SliceDataset:
    series = series_table((3,), (1,))
    volume = np.zeros((3, 16, 16), np.uint8)
    volume[:, 4:8, 2:6] = 255  # a bright patch on the image's left
    items = pd.DataFrame({"series": [0], "z": [1], "background": [background]})
    labels = series[list(LABEL_COLS)].to_numpy(np.float32)
    points = {0: np.array([[1, 4.0, 6.0]])}
    return SliceDataset(series, items, labels, lambda uid: volume, SliceInput(16, mean=(0, 0, 0), std=(1, 1, 1)),
                        [(0, 0, 1, 1)], transform=transform, masks=masks, localizer_points=points,
                        spacings=[(1.0, 1.0, 1.0)])


def test_background_items_train_with_all_zero_targets():
    assert make_dataset(None)[0]["target"].sum() == 2  # Left MCA + present
    assert make_dataset(None, background=True)[0]["target"].sum() == 0


def test_horizontal_flip_swaps_left_and_right_labels_and_mask():
    plain = make_dataset(None, MaskSpec(radius_mm=2))[0]
    flip = A.Compose([A.HorizontalFlip(p=1.0)], save_applied_params=True)
    flipped = make_dataset(flip, MaskSpec(radius_mm=2))[0]
    assert torch.equal(flipped["target"], plain["target"][list(FLIP_PERM)])
    right_mca = LABEL_COLS.index("Right Middle Cerebral Artery")
    assert flipped["target"][right_mca] == 1 and plain["target"][right_mca] == 0
    assert torch.equal(flipped["image"], plain["image"].flip(-1))
    assert torch.equal(flipped["mask"], plain["mask"].flip(-1)) and plain["mask"][0, 6, 4] == 1
    no_flip = A.Compose([A.HorizontalFlip(p=0.0)], save_applied_params=True)
    assert torch.equal(make_dataset(no_flip)[0]["target"], plain["target"])


def test_negative_subsampler_changes_per_epoch_and_keeps_positives():
    positive = np.array([True] * 3 + [False] * 20)
    sampler = NegativeSubsampler(positive, negative_fraction=0.25, seed=1)
    first = list(sampler)
    assert len(first) == len(sampler) == 3 + 5 and {0, 1, 2} <= set(first)
    sampler.set_epoch(1)
    assert set(list(sampler)) != set(first)
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_negative_subsampler_changes_per_epoch_under_ddp_wrapping():
    from lightning_fabric.utilities.distributed import DistributedSamplerWrapper

    positive = np.array([True] * 3 + [False] * 20)
    epoch = {"now": 0}
    ranks = [DistributedSamplerWrapper(NegativeSubsampler(positive, 0.25, seed=1, epoch_source=lambda: epoch["now"]),
                                       num_replicas=2, rank=rank, shuffle=False) for rank in (0, 1)]
    first = [list(sampler) for sampler in ranks]
    assert not set(first[0]) & set(first[1]) and len(set(first[0]) | set(first[1])) == 8  # one draw, split
    epoch["now"] = 1
    assert set(list(ranks[0]) + list(ranks[1])) != set(first[0] + first[1])


def test_series_metric_matches_numpy_weighted_auc():
    rng = np.random.default_rng(0)
    n_series, per_series = 40, 5
    series = torch.arange(n_series).repeat_interleave(per_series)
    target = torch.from_numpy(rng.integers(0, 2, size=(n_series, 14))).float()
    target[:, 6] = 0  # a one-class column: skipped, weights renormalised
    slice_target = target.repeat_interleave(per_series, dim=0)
    preds = torch.from_numpy(rng.random((n_series * per_series, 14))).float()
    metric = SeriesWeightedAUROC()
    metric.update(preds[:100], slice_target[:100], series[:100])
    metric.update(preds[100:], slice_target[100:], series[100:])
    ids, agg = aggregate_series(series, preds, "max")
    expected = weighted_auc(target.numpy(), agg.numpy())
    assert metric.compute().item() == pytest.approx(expected, abs=1e-5)
    assert torch.equal(ids, torch.arange(n_series))
    assert torch.allclose(agg[3], preds[15:20].max(0).values)
