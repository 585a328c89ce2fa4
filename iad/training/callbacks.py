"""Lightning callbacks that make a run's outputs: config in checkpoints, the OOF file, W&B extras."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.loggers import WandbLogger

from iad.contract import CONFIG_KEY, INPUT_KEY, OOF_FILE
from iad.evaluation.oof import TRUE_COLS, make_oof, score_oof
from iad.labels import LABEL_COLS
from iad.models.base import MONITOR
from iad.utils.io import write_csv_atomic

log = logging.getLogger(__name__)


class StoreRunConfig(pl.Callback):
    """Put the resolved run config into every checkpoint, so inference never re-types a setting."""

    def __init__(self, config: dict):
        self.config = config

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[CONFIG_KEY] = self.config
        datamodule = trainer.datamodule
        if hasattr(datamodule, "input_spec"):
            checkpoint[INPUT_KEY] = datamodule.input_spec().to_dict()


class OOFWriter(pl.Callback):
    """Write `<run>/oof.csv` from the best validation epoch (the one ModelCheckpoint keeps as best).

    Also logs each epoch's weighted AUC per modality (`val_modality/<name>`), which needs the series
    table the model does not have.
    """

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / OOF_FILE
        self.best = -math.inf
        self.best_epoch = -1
        self.best_variant: str | None = None  # the weights (raw/ema) of the best epoch, as best.ckpt holds

    def on_validation_end(self, trainer, pl_module) -> None:
        outputs = getattr(pl_module, "val_outputs", None)
        if trainer.sanity_checking or outputs is None or trainer.fast_dev_run:
            return
        oof = make_oof(trainer.datamodule.series_info(outputs["series"]), outputs["preds"])
        by_modality = {f"val_modality/{name}": sub["weighted_auc"] for name, sub in score_oof(oof)["by_group"].items()
                       if not math.isnan(sub["weighted_auc"])}
        for logger in trainer.loggers:
            logger.log_metrics(by_modality, step=trainer.global_step)
        score = float(trainer.callback_metrics.get(MONITOR, float("nan")))
        if not score > self.best:
            return
        self.best, self.best_epoch, self.best_variant = score, trainer.current_epoch, pl_module.best_variant
        if trainer.is_global_zero:
            write_csv_atomic(oof, self.path, index=False)

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "best_variant": self.best_variant}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best = state_dict.get("best", -math.inf)
        self.best_epoch = state_dict.get("best_epoch", -1)
        self.best_variant = state_dict.get("best_variant")


class WandbReport(pl.Callback):
    """At the end of a run, log to W&B: the OOF table, per-label ROC curves and a few input samples."""

    def __init__(self, run_dir: str | Path, n_samples: int = 8):
        self.oof_path = Path(run_dir) / OOF_FILE
        self.n_samples = n_samples

    def on_fit_end(self, trainer, pl_module) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers or not trainer.is_global_zero:
            return
        import pandas as pd
        import wandb

        run = loggers[0].experiment
        if self.oof_path.exists():
            oof = pd.read_csv(self.oof_path)
            run.log({"oof/table": wandb.Table(dataframe=oof)})
            for label, true in zip(LABEL_COLS, TRUE_COLS):
                if oof[true].nunique() == 2:
                    probs = np.stack([1 - oof[label], oof[label]], axis=1)
                    run.log({f"oof_roc/{label}": wandb.plot.roc_curve(oof[true].to_numpy(), probs, labels=["no", "yes"],
                                                                      classes_to_plot=[1], title=label)})
        self._log_samples(run, trainer, wandb)

    def _log_samples(self, run, trainer, wandb) -> None:
        datamodule = trainer.datamodule
        if not hasattr(datamodule, "train_dataloader"):
            return
        dataset = datamodule.train_dataloader().dataset
        if len(dataset) == 0:
            return
        picks = np.linspace(0, len(dataset) - 1, num=min(self.n_samples, len(dataset))).astype(int)
        images = []
        for i in picks:
            sample = dataset[int(i)]
            image = sample["image"].numpy().astype(np.float32) / 255.0
            present = [c for c, v in zip(LABEL_COLS, sample["target"].tolist()) if v > 0.5]
            images.append(wandb.Image(np.moveaxis(image, 0, -1), caption=", ".join(present) or "negative"))
        run.log({"samples/train": images})
