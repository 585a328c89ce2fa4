"""The training spine every model shares: mixup, EMA, series-level validation of raw and EMA weights.

Subclasses name their network family and its arguments (`iad.models.nets`) and define the loss;
everything else (optimisation, schedules, metrics, which weights are best, what the checkpoint says
about the model) lives here once.
"""

from __future__ import annotations

import inspect
import math

import pytorch_lightning as pl
from timm.data import Mixup
from timm.utils import ModelEmaV3
import torch
from torch import nn

from iad.contract import MODEL_KEY, VARIANT_KEY, WEIGHTS_KEY, ModelSpec
from iad.labels import LABEL_COLS
from iad.models.metric import SeriesWeightedAUROC, series_scores
from iad.models.nets import build_net, net_family
from iad.utils.config import plain

MONITOR = "val/weighted_auc"
TOTAL_STEP_ARGS = ("T_max", "total_steps", "total_iters")


class SeriesModule(pl.LightningModule):
    """Base LightningModule for slice models scored per series.

    family / net_args: the network (`iad.models.nets.NET_FAMILIES[family]` built with net_args); the
        checkpoint records both (`ModelSpec`), so inference rebuilds it without this class.
    optimizer / scheduler: Hydra `_partial_` factories; a scheduler argument named T_max,
        total_steps or total_iters that the config leaves out is set to the run's total steps.
    mixup: {"prob": 0.5, "alpha": 0.5} for multilabel mixup (timm), None to disable. Masks, when
        the batch has them, are mixed with the same weights (they ride along as extra channels).
    ema_decay: keep an EMA copy of the weights (timm ModelEmaV3); validation scores both raw and
        EMA weights and the better one is what the checkpoint marks for inference.
    aggregation: how slice probabilities become a series prediction ("max" or "topk_mean").
    """

    def __init__(self, family: str, net_args: dict, optimizer, scheduler=None, mixup: dict | None = None,
                 ema_decay: float | None = None, ema_warmup: bool = False, aggregation: str = "max",
                 topk: int = 3, scheduler_interval: str = "step"):
        super().__init__()
        self.spec = ModelSpec(family, plain(net_args), aggregation, topk)
        self._class_logits = net_family(family).class_logits
        self.net = build_net(self.spec)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.mixup = (Mixup(mixup_alpha=mixup.get("alpha", 0.5), cutmix_alpha=0.0, prob=mixup.get("prob", 0.5),
                            mode="batch", label_smoothing=0.0, num_classes=len(LABEL_COLS), multi_label=True)
                      if mixup else None)
        self.ema = ModelEmaV3(self.net, decay=ema_decay, use_warmup=ema_warmup) if ema_decay else None
        variants = ["raw", "ema"] if self.ema is not None else ["raw"]
        self.val_metrics = nn.ModuleDict({v: SeriesWeightedAUROC(aggregation, topk) for v in variants})
        self.best_variant = "raw"
        self.val_outputs: dict | None = None

    # ---- what subclasses define --------------------------------------------------------------
    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of `self.net` on a (mixed) batch, and named parts to log."""
        raise NotImplementedError

    # ---- the spine ---------------------------------------------------------------------------
    def class_logits(self, net: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """B×14 logits of a network (raw or EMA copy), as its family defines them."""
        return self._class_logits(net, images)

    def inference_weights_prefix(self) -> str:
        """Where the inference weights (EMA or raw, as validation chose) sit in the state dict."""
        return "ema.module." if self.best_variant == "ema" and self.ema is not None else "net."

    def inference_net(self) -> nn.Module:
        """The weights validation found better (EMA or raw)."""
        return self.ema.module if self.best_variant == "ema" and self.ema is not None else self.net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Slice probabilities (B×14) from the inference weights."""
        return torch.sigmoid(self.class_logits(self.inference_net(), images))

    def mix(self, batch: dict) -> dict:
        if self.mixup is None:
            return batch
        images, target = batch["image"], batch["target"]
        n_image = images.shape[1]
        stacked = torch.cat([images, batch["mask"]], dim=1) if "mask" in batch else images
        mixed, target = self.mixup(stacked, target)
        out = dict(batch, image=mixed[:, :n_image], target=target)
        if "mask" in batch:
            out["mask"] = mixed[:, n_image:]
        return out

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, parts = self.training_loss(self.mix(batch))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["image"]))
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=len(batch["image"]))
        for name, value in parts.items():
            self.log(f"train/{name}", value, batch_size=len(batch["image"]))
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update(self.net, step=self.global_step)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        images = batch["image"]
        for variant, metric in self.val_metrics.items():
            net = self.net if variant == "raw" else self.ema.module
            logits = self.class_logits(net, images)
            if variant == "raw":
                loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), batch["target"])
                self.log("val/loss", loss, batch_size=len(images), sync_dist=True)
            metric.update(torch.sigmoid(logits.float()), batch["target"], batch["series"])

    def on_validation_epoch_end(self) -> None:
        results = {}
        for variant, metric in self.val_metrics.items():
            with metric.sync_context():
                series, preds, target = metric.series_outputs()
            metric.reset()
            score, per_label = series_scores(target, preds)
            results[variant] = (score, per_label, series, preds)
        best = max(results, key=lambda v: -math.inf if math.isnan(results[v][0]) else results[v][0])
        score, per_label, series, preds = results[best]
        self.best_variant = best
        for variant, (variant_score, *_ ) in results.items():
            self.log(f"val/weighted_auc_{variant}", variant_score, sync_dist=False)
        # NaN (no column with both classes, e.g. a tiny debug split) must not look like progress.
        self.log(MONITOR, 0.0 if math.isnan(score) else score, prog_bar=True, sync_dist=False)
        for col, auc in zip(LABEL_COLS, per_label):
            if not math.isnan(auc):
                self.log(f"val_auc/{col}", float(auc), sync_dist=False)
        self.val_outputs = {"series": series.numpy(), "preds": preds.numpy()}

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=[p for p in self.net.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        factory = self.scheduler_factory
        accepted = inspect.signature(factory.func if hasattr(factory, "func") else factory).parameters
        given = getattr(factory, "keywords", {})
        totals = {k: int(self.trainer.estimated_stepping_batches) for k in TOTAL_STEP_ARGS
                  if k in accepted and given.get(k) is None}
        scheduler = factory(optimizer=optimizer, **totals)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[MODEL_KEY] = self.spec.to_dict()
        checkpoint[WEIGHTS_KEY] = self.inference_weights_prefix()
        checkpoint[VARIANT_KEY] = self.best_variant

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.best_variant = checkpoint.get(VARIANT_KEY, "raw")
