"""Trained models as inference sees them: weights, the input they expect, how they aggregate."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import OmegaConf
import torch
from torch import nn

from iad.data.inputs import SliceInput
from iad.evaluation.cv import fold_runs
from iad.labels import LABEL_COLS
from iad.preprocessing import PreprocessConfig
from iad.training.run import BEST_CKPT, CHECKPOINT_DIR

MODEL_FORMAT = "iad-model/1"
# Settings that would fetch weights at construction; inference loads its own.
NO_DOWNLOAD = {"pretrained": False, "pretrained_file": None, "encoder_weights": None}
TRAINING_ONLY = {"mixup": None, "ema_decay": None}


@dataclass
class LoadedModel:
    """One trained network (one fold) with the exact input settings it was trained with."""

    net: nn.Module
    class_logits: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    slice_input: SliceInput
    preprocess: PreprocessConfig
    head_crop: bool
    val_center_crop: float
    aggregation: str
    topk: int
    label_prevalence: list[float]
    config: dict = field(repr=False)
    source: str = ""

    @torch.no_grad()
    def slice_probabilities(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.class_logits(self.net, images).float())


def _model_config(config: dict) -> dict:
    model_cfg = dict(config["model"])
    for key, value in {**NO_DOWNLOAD, **TRAINING_ONLY}.items():
        if key in model_cfg:
            model_cfg[key] = value
    return model_cfg


def net_state_dict(checkpoint: dict) -> dict:
    """The inference weights of a checkpoint: the EMA copy when validation preferred it, else raw."""
    if checkpoint.get("format") == MODEL_FORMAT:
        return checkpoint["net_state_dict"]
    prefix = "ema.module." if checkpoint.get("iad_best_variant") == "ema" else "net."
    weights = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    if not weights:
        raise ValueError(f"checkpoint has no weights under '{prefix}'")
    return weights


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild a model from a Lightning checkpoint or an exported model file (bundle)."""
    path = Path(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if "iad_config" not in checkpoint or "iad_data" not in checkpoint:
        raise ValueError(f"{path}: not an iad checkpoint (no iad_config / iad_data)")
    config, data = checkpoint["iad_config"], checkpoint["iad_data"]
    if checkpoint.get("iad_label_cols", list(LABEL_COLS)) != list(LABEL_COLS):
        raise ValueError(f"{path}: trained with another label order")
    module = instantiate(OmegaConf.create(_model_config(config)))
    module.net.load_state_dict(net_state_dict(checkpoint))
    net = module.net.to(device).eval()
    return LoadedModel(
        net=net,
        class_logits=module.class_logits,
        slice_input=SliceInput(**data["input"]),
        preprocess=PreprocessConfig(**data["preprocess"]),
        head_crop=bool(data.get("head_crop", True)),
        val_center_crop=float(data.get("val_center_crop", 1.0)),
        aggregation=config["model"].get("aggregation", "max"),
        topk=int(config["model"].get("topk", 3)),
        label_prevalence=list(data.get("label_prevalence") or [0.5] * len(LABEL_COLS)),
        config=config,
        source=str(path),
    )


def export_model(model: LoadedModel, path: str | Path) -> None:
    """Write the weights-only model file a bundle holds (no optimiser state, no raw/EMA duplicate)."""
    from iad.utils.io import atomic_write

    blob = {
        "format": MODEL_FORMAT,
        "net_state_dict": model.net.state_dict(),
        "iad_config": model.config,
        "iad_data": {"input": model.slice_input.describe(), "preprocess": model.preprocess.to_dict(),
                     "head_crop": model.head_crop, "val_center_crop": model.val_center_crop,
                     "label_prevalence": model.label_prevalence},
        "iad_label_cols": list(LABEL_COLS),
    }
    with atomic_write(path, "wb") as fh:
        torch.save(blob, fh)


def checkpoints_in(path: str | Path) -> list[Path]:
    """Fold checkpoints a path stands for: a .ckpt/.pt file, a run folder, or a sweep folder."""
    path = Path(path)
    if path.is_file():
        return [path]
    run_ckpt = path / CHECKPOINT_DIR / BEST_CKPT
    if run_ckpt.exists():
        return [run_ckpt]
    folds = [ckpt for run in fold_runs(path) if (ckpt := run / CHECKPOINT_DIR / BEST_CKPT).exists()]
    if folds:
        return folds
    exported = sorted(path.glob("*.pt"))
    if exported:
        return exported
    raise FileNotFoundError(f"no checkpoint in {path} (expected a .ckpt, {CHECKPOINT_DIR}/{BEST_CKPT} or fold_*/)")
