"""ClsSegModel (smp FPN, mask + class heads): configs, forward/loss/mixup, masks from the data, real runs."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import albumentations as A
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
import numpy as np
import pandas as pd
import pytest
import torch

from iad.contract import INPUT_KEY, MODEL_KEY, best_checkpoint
from iad.data.crops import box_pixels
from iad.data.slices import SERIES_COL, SLICE_COL
from iad.evaluation import read_oof
from iad.inference.loading import read_model_file
from iad.labels import LABEL_COLS, UID_COL
from iad.models import ClsSegModel
from iad.utils.config import CONFIG_DIR
from tests.training_helpers import configuration_dir, run_train, tiny_overrides

NEW_EXPERIMENTS = ("exp3_mit_b4_fpn_384", "demo_clsseg")
TINY_ENCODER = "tu-test_resnet"  # a timm test ResNet through smp's universal encoder
TINY_DECODER = {"pyramid_channels": 32, "segmentation_channels": 32}  # GroupNorm(32)
IMG = 32
MASK_IMG = 64
MASK_RADIUS_MM = 3.0
CENTRE_TOLERANCE_PX = 1.0


def compose_train(overrides: list[str]):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=False)


def tiny_model(**kwargs) -> ClsSegModel:
    torch.manual_seed(0)
    return ClsSegModel(TINY_ENCODER, decoder=TINY_DECODER, optimizer=functools.partial(torch.optim.Adam, lr=1e-3),
                       **kwargs)


def tiny_batch(batch_size: int = 4) -> dict:
    generator = torch.Generator().manual_seed(0)
    mask = torch.zeros(batch_size, 1, IMG, IMG)
    mask[:, :, 8:16, 10:20] = 1.0
    return {"image": torch.randn(batch_size, 3, IMG, IMG, generator=generator),
            "target": (torch.rand(batch_size, len(LABEL_COLS), generator=generator) > 0.5).float(),
            "series": torch.arange(batch_size), "mask": mask}


# ---- configs -------------------------------------------------------------------------------------
@pytest.mark.parametrize("experiment", NEW_EXPERIMENTS)
def test_new_experiments_compose_with_masks(experiment, tmp_path):
    cfg = compose_train([f"experiment={experiment}", f"paths.output_dir={tmp_path}"])
    assert cfg.name == experiment and cfg.model._target_ == "iad.models.ClsSegModel"
    assert cfg.data.masks.kind == "disk" and cfg.data.masks.radius_mm > 0
    assert cfg.data.input.img_size % 32 == 0  # the FPN's output stride


def test_exp3_carries_the_reference_settings(tmp_path):
    cfg = compose_train(["experiment=exp3_mit_b4_fpn_384", f"paths.output_dir={tmp_path}"])
    model = cfg.model
    assert model.encoder_name == "mit_b4" and model.pretrained is True and model.classes == 1
    assert (model.cls_weight, model.seg_weight) == (0.6, 0.4)
    assert model.optimizer._target_ == "torch.optim.Adam" and model.optimizer.lr == 1e-4
    assert "Cosine" in model.scheduler._target_ and model.mixup == {"prob": 0.5, "alpha": 0.5}
    assert model.ema_decay == 0.995 and model.aggregation == "max"
    assert cfg.data.batch_size == 128 and cfg.data.input.img_size == 384 and cfg.trainer.max_epochs == 15
    assert cfg.dataset.name == "rsna" and cfg.trainer.accelerator == "gpu" and set(cfg.logger) == {"csv", "wandb"}
    assert any(t._target_.endswith("RandomResizedCrop") for t in cfg.augment.transforms)


@pytest.mark.slow
def test_mit_b4_constructs_offline(tmp_path):
    cfg = compose_train(["experiment=exp3_mit_b4_fpn_384", "model.pretrained=false", f"paths.output_dir={tmp_path}"])
    model = instantiate(cfg.model).eval()
    with torch.no_grad():
        logits = model.class_logits(model.net, torch.zeros(1, 3, 384, 384))
        masks = model.segment(torch.zeros(1, 3, 384, 384))
    assert logits.shape == (1, len(LABEL_COLS)) and masks.shape == (1, 1, 384, 384)


# ---- the module ----------------------------------------------------------------------------------
def test_forward_shapes_and_loss_parts():
    model = tiny_model(cls_weight=0.6, seg_weight=0.4).eval()
    batch = tiny_batch()
    with torch.no_grad():
        probs = model(batch["image"])
        masks = model.segment(batch["image"])
        loss, parts = model.training_loss(batch)
    assert probs.shape == (4, len(LABEL_COLS)) and masks.shape == (4, 1, IMG, IMG)
    assert ((masks >= 0) & (masks <= 1)).all()
    assert set(parts) == {"cls_loss", "seg_loss"}
    assert torch.isclose(loss, 0.6 * parts["cls_loss"] + 0.4 * parts["seg_loss"])
    mask_logits, class_logits = model.net(batch["image"])
    expected_seg = torch.nn.functional.binary_cross_entropy_with_logits(mask_logits, batch["mask"])
    assert torch.isclose(parts["seg_loss"], expected_seg) and torch.allclose(torch.sigmoid(class_logits), probs)


def test_gradient_reaches_both_heads():
    model = tiny_model()
    loss, _ = model.training_loss(tiny_batch())
    loss.backward()
    for part in ("encoder", "decoder", "segmentation_head", "classification_head"):
        grads = [p.grad for p in getattr(model.net, part).parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads), part
        assert sum(float(g.abs().sum()) for g in grads) > 0, part


def test_training_without_masks_says_what_to_set():
    batch = tiny_batch()
    del batch["mask"]
    with pytest.raises(KeyError, match="data.masks"):
        tiny_model().training_loss(batch)


def test_mixup_mixes_masks_with_the_images_weights():
    model = tiny_model(mixup={"prob": 1.0, "alpha": 0.5})
    batch = tiny_batch()
    batch["target"][:, 0] = torch.tensor([1.0, 1.0, 0.0, 0.0])  # row 0 is mixed with row 3 (batch flip)
    batch["mask"] = torch.rand(4, 1, IMG, IMG, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(3)
    np.random.seed(3)  # timm draws lambda with numpy
    mixed = model.mix(batch)
    lam = float(mixed["target"][0, 0])
    assert 0.0 < lam < 1.0
    for key in ("image", "mask"):
        assert torch.allclose(mixed[key], lam * batch[key] + (1 - lam) * batch[key].flip(0), atol=1e-5), key


# ---- masks from the real DataModule --------------------------------------------------------------
@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("clsseg")


def data_overrides(workspace: Path) -> list[str]:
    """tiny_overrides for this model: the classifier's backbone swapped for a tiny FPN."""
    tiny = [o for o in tiny_overrides(workspace / "data", workspace / "logs") if not o.startswith("model.backbone=")]
    decoder = [f"model.decoder.{k}={v}" for k, v in TINY_DECODER.items()]
    return ["experiment=demo_clsseg", *tiny, f"model.encoder_name={TINY_ENCODER}", *decoder]


def mask_datamodule(workspace: Path, transform):
    cfg = compose_train([*data_overrides(workspace), f"paths.output_dir={workspace / 'out'}",
                         f"data.input.img_size={MASK_IMG}", f"data.masks.radius_mm={MASK_RADIUS_MM}"])
    datamodule = instantiate(cfg.data, train_transform=transform)
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule


def expected_centre(datamodule, row: int, x: float, y: float) -> tuple[float, float]:
    """A cache-pixel point mapped through the series crop box and the resize to MASK_IMG."""
    uid = datamodule.series[UID_COL].iloc[row]
    height, width = datamodule.cache.meta(uid).shape[1:]
    x0, y0, x1, y1 = box_pixels(datamodule.crop_boxes[row], height, width)
    scale_x, scale_y = MASK_IMG / (x1 - x0), MASK_IMG / (y1 - y0)
    return (x - x0 + 0.5) * scale_x - 0.5, (y - y0 + 0.5) * scale_y - 0.5


def centre_of_mass(mask: torch.Tensor) -> tuple[float, float]:
    weights = mask[0].double()
    rows, cols = torch.meshgrid(torch.arange(weights.shape[0]), torch.arange(weights.shape[1]), indexing="ij")
    return float((weights * cols).sum() / weights.sum()), float((weights * rows).sum() / weights.sum())


def localizer_samples(datamodule) -> list[tuple[int, int, float, float]]:
    """(dataset index, series row, x, y) of training samples at the slice of a series' only localizer."""
    row_of = {uid: row for row, uid in enumerate(datamodule.series[UID_COL])}
    single = datamodule.localizers.groupby(UID_COL).filter(lambda grp: len(grp) == 1)
    located = single[single[UID_COL].isin(row_of)].assign(row=lambda df: df[UID_COL].map(row_of))
    items = datamodule.train_items.reset_index(drop=True).reset_index(names="index")
    hits = items.merge(located, left_on=[SERIES_COL, SLICE_COL], right_on=["row", "slice_index"])
    return list(zip(hits["index"], hits[SERIES_COL], hits["x"], hits["y"]))


@pytest.mark.parametrize("flip", [False, True], ids=["plain", "flipped"])
def test_masks_land_on_the_localizer(workspace, flip):
    transform = A.Compose([A.HorizontalFlip(p=1.0)], save_applied_params=True) if flip else None
    datamodule = mask_datamodule(workspace, transform)
    dataset = datamodule.train_dataloader().dataset
    samples = localizer_samples(datamodule)
    assert len(samples) >= 2, "the synthetic data should give positive training slices at localizers"
    for index, row, x, y in samples:
        mask = dataset[index]["mask"]
        assert mask.shape == (1, MASK_IMG, MASK_IMG) and mask.sum() > 0
        want_x, want_y = expected_centre(datamodule, row, x, y)
        if flip:
            want_x = MASK_IMG - 1 - want_x
        got_x, got_y = centre_of_mass(mask)
        assert abs(got_x - want_x) <= CENTRE_TOLERANCE_PX and abs(got_y - want_y) <= CENTRE_TOLERANCE_PX, \
            (index, (got_x, got_y), (want_x, want_y))


# ---- the real entry point ------------------------------------------------------------------------
def test_fast_dev_run(workspace):
    args = [*data_overrides(workspace), "debug=fast_dev_run", "name=clsseg_fdr"]
    out = run_train(args)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (configuration_dir(workspace / "logs", "runs", args, task="debug") / "fold_0").is_dir()
    assert not (workspace / "logs" / "train" / "runs").exists()


def test_two_fold_sweep_outputs(workspace):
    args = ["-m", *data_overrides(workspace), "logger=csv", "data.fold=0,1", "name=clsseg_sweep"]
    out = run_train(args)
    assert out.returncode == 0, out.stderr[-3000:]
    sweep_dir = configuration_dir(workspace / "logs", "sweeps", args)
    for fold in (0, 1):
        run = sweep_dir / f"fold_{fold}"
        assert (run / "checkpoints" / "best.ckpt").exists() and (run / "checkpoints" / "last.ckpt").exists()
        assert set(read_oof(run / "oof.csv")["fold"]) == {fold}
        logged = pd.read_csv(run / "csv" / "metrics.csv").columns
        assert {"train/cls_loss", "train/seg_loss", "val/weighted_auc"} <= set(logged)
    ckpt = read_model_file(best_checkpoint(sweep_dir / "fold_0"))
    assert any(k.startswith("net.segmentation_head.") for k in ckpt["state_dict"])
    assert ckpt[INPUT_KEY]["masks"]["kind"] == "disk" and ckpt[MODEL_KEY]["family"] == "smp_fpn"
    merged = read_oof(sweep_dir / "oof.csv")
    assert set(merged["fold"]) == {0, 1}
    cv = json.loads((sweep_dir / "cv.json").read_text())
    assert set(cv["folds"]) == {"fold_0", "fold_1"} and set(cv["per_label"]) == set(LABEL_COLS)
