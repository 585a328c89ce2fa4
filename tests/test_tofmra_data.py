"""TOFMRADataModule: pseudo-labelled external slices as SliceDataset samples (soft targets, box masks, flips)."""

from __future__ import annotations

import json

import albumentations as A
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
import numpy as np
import pandas as pd
import pytest
import torch

from iad.boxes import XYXY_COLS
from iad.data import SliceInput
from iad.data.tofmra import TOFMRADataModule
from iad.external.cache import prepare_external
from iad.external.source import ExternalSource
from iad.external.tables import BOX_SOURCE_COL, CONTROL, POSITIVE, PSEUDO_COLS, SLICE_COL
from iad.labels import FLIP_PERM, LABEL_COLS, LOCATION_COLS, PRESENT_COL, UID_COL
from iad.preprocessing import PreprocessConfig
from iad.synthetic.bids import DATASETS
from iad.utils.env import PROJECT_ROOT

IMG = 32


@pytest.fixture(scope="module")
def external(tmp_path_factory):
    base = tmp_path_factory.mktemp("tofmra")
    source = ExternalSource("synthetic", {d: str(base / "data" / d) for d in DATASETS},
                            synthetic={"n_volumes": 8, "seed": 0}, truth=str(base / "data" / "truth.csv"))
    config = PreprocessConfig(image_size=64)
    tables = prepare_external(source, base / "cache", config, progress=False)
    return base, source, config, tables


def module(external, **kwargs) -> TOFMRADataModule:
    base, source, config, _ = external
    return TOFMRADataModule(source, config, str(base / "cache"), SliceInput(IMG), **kwargs)


def pseudo_table(tables, seed: int = 0) -> pd.DataFrame:
    """Soft-labelled rows on lesion slices (with their mask box, or none) and a few control slices (all zero)."""
    rng = np.random.default_rng(seed)
    boxes = tables.lesion_boxes.drop_duplicates([UID_COL, SLICE_COL]).iloc[::2]
    rows = []
    for i, box in enumerate(boxes.itertuples(index=False)):
        labels = dict(zip(LABEL_COLS, rng.uniform(0, 1, len(LABEL_COLS)).round(3)))
        with_box = i % 3 != 0
        rows.append({UID_COL: getattr(box, UID_COL), SLICE_COL: box.slice_index, **labels,
                     **{c: getattr(box, c) if with_box else np.nan for c in XYXY_COLS},
                     BOX_SOURCE_COL: "mask" if with_box else ""})
    control = tables.series[tables.series["status"] == CONTROL].iloc[0]
    for z in (0, 5):
        rows.append({UID_COL: control[UID_COL], SLICE_COL: z, **dict.fromkeys(LABEL_COLS, 0.0),
                     **dict.fromkeys(XYXY_COLS, np.nan), BOX_SOURCE_COL: ""})
    return pd.DataFrame(rows, columns=PSEUDO_COLS)


def test_samples_carry_the_tables_soft_labels_and_box_masks(external, tmp_path):
    _, _, _, tables = external
    table = pseudo_table(tables)
    path = tmp_path / "pseudo_labels.csv"
    table.to_csv(path, index=False)
    data = module(external, pseudo_labels=str(path), masks={"radius_mm": 4.0})
    data.setup()
    dataset = data.train_dataset()
    assert len(dataset) == len(table)
    by_slice = table.set_index([UID_COL, SLICE_COL])
    keys = list(zip(data.series[UID_COL].to_numpy()[data.items["series"]], data.items["z"]))
    np.testing.assert_array_equal(data.positive, by_slice.loc[keys, PRESENT_COL].to_numpy() >= 0.5)
    for index in range(len(dataset)):
        sample = dataset[index]
        uid = data.series[UID_COL].iat[int(data.items["series"].iat[index])]
        row = by_slice.loc[(uid, int(data.items["z"].iat[index]))]
        assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (3, IMG, IMG)
        assert sample["target"].dtype == torch.float32 and int(sample["series"]) == -1
        np.testing.assert_allclose(sample["target"].numpy(), row[list(LABEL_COLS)].to_numpy(float), atol=1e-6)
        has_box = not np.isnan(row[list(XYXY_COLS)].to_numpy(float)).any()
        assert sample["mask"].shape == (1, IMG, IMG) and bool(sample["mask"].sum() > 0) == has_box


def test_a_flip_swaps_left_and_right_targets_and_flips_image_and_mask(external, tmp_path):
    _, _, _, tables = external
    table = pseudo_table(tables, seed=1)
    path = tmp_path / "pseudo_labels.csv"
    table.to_csv(path, index=False)
    data = module(external, pseudo_labels=str(path), masks={"radius_mm": 4.0})
    data.setup()
    flip = A.Compose([A.HorizontalFlip(p=1.0)], save_applied_params=True)
    plain, flipped = data.train_dataset(), data.train_dataset(flip)
    for index in range(len(plain)):
        a, b = plain[index], flipped[index]
        np.testing.assert_array_equal(b["target"].numpy(), a["target"].numpy()[list(FLIP_PERM)])
        np.testing.assert_array_equal(b["image"].numpy(), a["image"].numpy()[..., ::-1])
        np.testing.assert_array_equal(b["mask"].numpy(), a["mask"].numpy()[..., ::-1])
    left = LOCATION_COLS.index("Left Middle Cerebral Artery")
    assert FLIP_PERM[left] == LOCATION_COLS.index("Right Middle Cerebral Artery")


def test_truth_labels_without_a_pseudo_table(external):
    base, source, _, tables = external
    data = module(external)
    data.setup()
    truth = pd.read_csv(source.truth)
    boxes = tables.lesion_boxes.merge(truth, on=[UID_COL, "lesion"])
    dataset = data.train_dataset()
    positives = data.positive
    assert positives.sum() == boxes.drop_duplicates([UID_COL, SLICE_COL]).shape[0]
    controls = set(tables.series[tables.series["status"] == CONTROL][UID_COL])
    unknown = set(tables.series[~tables.series["status"].isin([CONTROL, POSITIVE])][UID_COL])
    for index in range(len(dataset)):
        uid = data.series[UID_COL].iat[int(data.items["series"].iat[index])]
        z = int(data.items["z"].iat[index])
        target = dataset[index]["target"].numpy()
        assert uid not in unknown
        if uid in controls:
            assert not target.any()
            continue
        on_slice = set(boxes[(boxes[UID_COL] == uid) & (boxes[SLICE_COL] == z)]["location"])
        assert {LABEL_COLS[i] for i in np.flatnonzero(target)} == on_slice | {PRESENT_COL}
    assert (data.cache.dir / "external" / "synthetic" / "truth_labels.csv").exists()


def test_unusable_tables_are_named(external, tmp_path):
    _, _, _, tables = external
    table = pseudo_table(tables)
    cases = {
        "not volumes of": table.assign(**{UID_COL: "ds003949-sub-999-ses-1"}),
        "outside their volume": table.assign(**{SLICE_COL: 10_000}),
        "probabilities": table.assign(**{PRESENT_COL: 2.0}),
    }
    for message, bad in cases.items():
        path = tmp_path / f"{message.split()[0]}.csv"
        bad.to_csv(path, index=False)
        with pytest.raises(ValueError, match=message) as err:
            module(external, pseudo_labels=str(path)).setup()
        assert str(path) in str(err.value)
    other = PreprocessConfig(image_size=48)  # tables exist, but no series is cached under this preprocessing
    data = module(external, pseudo_labels=str(tmp_path / "x.csv"))
    data.preprocess = other
    with pytest.raises(FileNotFoundError, match="not prepared"):
        data.setup()
    no_truth = module(external)
    no_truth.source = ExternalSource("synthetic", external[1].roots)
    with pytest.raises(ValueError, match="pseudo_labels"):
        no_truth.setup()


def test_train_dataloader_and_hydra_entry(external):
    base, *_ = external
    data = module(external, batch_size=4)
    data.setup()
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape == (4, 3, IMG, IMG) and batch["target"].shape == (4, len(LABEL_COLS))
    assert data.on_after_batch_transfer(batch, 0)["image"].dtype == torch.float32
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["~experiment", "name=t", "data=tofmra", "+external=synthetic", f"paths.root_dir={base}",
                                          "paths.output_dir=."])
    built = instantiate(cfg.data)
    assert isinstance(built, TOFMRADataModule) and built.source.roots["ds003949"].endswith("synthetic_tofmra/ds003949")
    assert built.source.synthetic["n_volumes"] == 24 and built.pseudo_labels is None


def test_a_classifier_trains_on_the_external_slices_alone(external):
    import pytorch_lightning as pl

    from iad.utils.config import register_resolvers

    register_resolvers()
    base, source, _, _ = external
    overrides = ["~experiment", "name=t", "data=tofmra", "+external=synthetic", f"paths.root_dir={base}",
                 f"paths.cache_dir={base / 'cache'}", "paths.output_dir=.", "external.synthetic.n_volumes=8",
                 "external.synthetic.seed=0", "preprocess.image_size=64", "model.backbone=test_resnet",
                 "data.input.img_size=32", "data.batch_size=4", "data.num_workers=0", "data.prepare_workers=0",
                 *[f"external.roots.{d}={r}" for d, r in source.roots.items()], f"external.truth={source.truth}"]
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    data, model = instantiate(cfg.data), instantiate(cfg.model)
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=3, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, accelerator="cpu", num_sanity_val_steps=0)
    before = [p.detach().clone() for p in model.parameters()]
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 3
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))


def test_train_py_trains_on_the_external_volumes_alone_into_a_full_run(external, tmp_path):
    from tests.training_helpers import TINY_MODEL, run_train

    base, source, _, _ = external
    args = ["experiment=demo_tofmra", f"paths.root_dir={tmp_path}", f"paths.cache_dir={base / 'cache'}",
            "external.synthetic.n_volumes=8", "external.synthetic.seed=0", "preprocess.image_size=64",
            f"model.backbone={TINY_MODEL}", "data.input.img_size=32", "data.batch_size=8", "trainer.max_epochs=1",
            *[f"external.roots.{d}={r}" for d, r in source.roots.items()], f"external.truth={source.truth}"]
    done = run_train(args)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = next((tmp_path / "logs" / "train" / "runs").glob("demo_tofmra*/full"))
    result = json.loads((run_dir / "result.json").read_text())
    assert (result["fold"], result["weighted_auc"], result["best_epoch"], result["epochs"]) == (None, None, None, 1)
    assert (run_dir / "checkpoints" / "last.ckpt").exists() and "without validation" in done.stdout
    refused = run_train([*args, "data.fold=0"])
    assert refused.returncode != 0 and "external volumes have no folds" in refused.stderr
