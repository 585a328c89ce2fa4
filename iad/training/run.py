"""One fold run: instantiate the config groups, fit, keep checkpoints and the OOF file; resumable."""

from __future__ import annotations

import hashlib
from importlib import import_module
import json
import logging
from pathlib import Path
import shutil
import traceback

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from iad.contract import (
    BEST_CKPT,
    CHECKPOINT_DIR,
    ERROR_FILE,
    IDENTITY_FILE,
    RESULT_FILE,
    RUN_OUTPUTS,
    best_checkpoint,
    fold_name,
    last_checkpoint,
)
from iad.utils.config import identity_settings
from iad.utils.io import atomic_write, write_json_atomic

log = logging.getLogger(__name__)


def _clear_run(run_dir: Path) -> None:
    for name in RUN_OUTPUTS:
        target = run_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def _build_callbacks(cfg: DictConfig, run_dir: Path, has_validation: bool, oof_writer) -> list:
    from pytorch_lightning.callbacks import ModelCheckpoint

    from iad.models.base import MONITOR
    from iad.training.callbacks import StoreRunConfig, WandbReport

    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    callbacks += [
        StoreRunConfig(OmegaConf.to_container(cfg, resolve=True)),
        oof_writer,
        WandbReport(run_dir),
        ModelCheckpoint(dirpath=run_dir / CHECKPOINT_DIR, filename=Path(BEST_CKPT).stem,
                        monitor=MONITOR if has_validation else None, mode="max", save_top_k=1,
                        save_last=True, enable_version_counter=False, auto_insert_metric_name=False,
                        # without validation, save at the end of each training epoch whatever the validation interval
                        save_on_train_epoch_end=None if has_validation else True),
    ]
    return callbacks


# How a run learns (the config's `engine`): Lightning for the classifiers, ultralytics' trainer for detectors.
ENGINES = {"lightning": "iad.training.run:fit_lightning", "ultralytics": "iad.detection.training:fit_detector"}


def train(cfg: DictConfig) -> dict:
    """Train one fold (or the full data) as configured; returns the run's result record.

    A run whose result.json exists is skipped (set `overwrite=true` to retrain); a run with a
    last.ckpt resumes from it. Failures leave error.txt in the run folder and re-raise.
    """
    from pytorch_lightning.utilities import rank_zero_only

    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    result_path = run_dir / RESULT_FILE
    if cfg.get("overwrite") and rank_zero_only.rank == 0:  # DDP ranks > 0 start after rank 0 cleared the folder
        _clear_run(run_dir)
    config_hash = _claim_run_dir(run_dir, identity_settings(cfg))
    if result_path.exists():
        result = json.loads(result_path.read_text())
        log.info("%s is finished (%s); skipping. Pass overwrite=true to retrain.", run_dir, headline(result))
        print(f"{fold_name(cfg.data.fold)}: already finished, {headline(result)}")
        return result
    (run_dir / ERROR_FILE).unlink(missing_ok=True)
    engine = cfg.get("engine", "lightning")
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}: expected one of {sorted(ENGINES)}")
    try:
        module, name = ENGINES[engine].split(":")
        return getattr(import_module(module), name)(cfg, run_dir, config_hash)
    except Exception:
        with atomic_write(run_dir / ERROR_FILE) as fh:
            fh.write(traceback.format_exc())
        raise
    finally:
        _finish_wandb()


def fit_lightning(cfg: DictConfig, run_dir: Path, config_hash: str) -> dict:
    """Fit a LightningModule on its DataModule; checkpoints, the OOF file and result.json in `run_dir`."""
    import pytorch_lightning as pl

    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    has_validation = cfg.data.fold is not None or cfg.data.get("holdout_series", 0) > 0
    loggers = [instantiate(lg) for lg in (cfg.get("logger") or {}).values() if lg is not None]
    hyperparameters = _run_record(cfg, run_dir, config_hash, datamodule)
    for logger in loggers:
        logger.log_hyperparams(hyperparameters)
    from iad.training.callbacks import OOFWriter

    oof_writer = OOFWriter(run_dir)  # restored from last.ckpt on resume, so `best` spans the whole run
    callbacks = _build_callbacks(cfg, run_dir, has_validation, oof_writer)
    trainer = instantiate(_validated_trainer(cfg.trainer, has_validation), callbacks=callbacks,
                          logger=loggers or False, default_root_dir=str(run_dir))
    resume, resumed_from = (None, None) if trainer.fast_dev_run else _resume_point(run_dir)
    if resume:
        log.info("resuming %s from %s (epoch %d)", run_dir, resume, resumed_from)
        if trainer.is_global_zero:
            print(f"{fold_name(cfg.data.fold)}: resuming from {resume} (epoch {resumed_from})")
    trainer.fit(model, datamodule=datamodule, ckpt_path=resume)
    result = {
        "run_dir": str(run_dir),
        "fold": cfg.data.fold,
        "weighted_auc": oof_writer.best if oof_writer.best > float("-inf") else None,
        "best_epoch": oof_writer.best_epoch if has_validation else None,
        "best_variant": oof_writer.best_variant or model.best_variant,
        "epochs": trainer.current_epoch,
        "resumed_from_epoch": resumed_from,
        "best_checkpoint": str(best_checkpoint(run_dir)),
    }
    if not trainer.is_global_zero:  # under DDP, rank 0 writes and reports the result
        return result
    if trainer.fast_dev_run:
        log.info("fast_dev_run: no result.json written")
        return result
    write_json_atomic(result, run_dir / RESULT_FILE)
    score = result["weighted_auc"]
    if not has_validation:
        print(f"{fold_name(cfg.data.fold)}: trained {result['epochs']} epochs without validation; "
              f"{result['best_checkpoint']} holds the last epoch's weights")
    else:
        print(f"{fold_name(cfg.data.fold)}: validation weighted AUC {'n/a' if score is None else f'{score:.4f}'} "
              f"({result['best_variant']} weights, epoch {result['best_epoch']})")
    return result


def headline(result: dict) -> str:
    """A finished run's score in words: a classifier's weighted AUC, a detector's mAP50."""
    if "map50" in result:
        return f"mAP50 {result['map50']}"
    return f"weighted AUC {result.get('weighted_auc')}"


def objective(result: dict) -> float | None:
    """The number a sweeper maximises: weighted AUC for classifiers, mAP50 for detectors."""
    return result.get("weighted_auc", result.get("map50"))


class RunFolderTaken(RuntimeError):
    """A run folder holds another configuration's run."""


def _claim_run_dir(run_dir: Path, settings: dict) -> str:
    """Record what this run learns from, or check that the run already in the folder learned from the same.

    Folder names carry only the command-line overrides; this also catches an experiment file edited
    between two runs, so two configurations never share (resume, or skip as finished) one run.
    """
    blob = json.dumps(settings, sort_keys=True, default=str)
    identity = {"config_hash": hashlib.sha1(blob.encode()).hexdigest()[:16], "settings": json.loads(blob)}
    path = run_dir / IDENTITY_FILE
    if path.exists():
        recorded = json.loads(path.read_text())
        if recorded.get("config_hash") != identity["config_hash"]:
            before, now = recorded.get("settings", {}), identity["settings"]
            changed = sorted(k for k in before.keys() | now.keys() if before.get(k, "<unset>") != now.get(k, "<unset>"))
            shown = ", ".join(f"{k}: {before.get(k, '<unset>')!r} → {now.get(k, '<unset>')!r}" for k in changed[:5])
            raise RunFolderTaken(f"{run_dir} holds a run of another configuration ({shown}"
                                 f"{', ...' if len(changed) > 5 else ''}); pass overwrite=true to replace it, "
                                 "or name=<new name> to keep both")
        return identity["config_hash"]
    if any((run_dir / name).exists() for name in RUN_OUTPUTS):
        log.warning("%s has outputs but no %s (made by an older version): adopting them", run_dir, IDENTITY_FILE)
    write_json_atomic(identity, path)
    return identity["config_hash"]


def _run_record(cfg: DictConfig, run_dir: Path, config_hash: str, datamodule) -> dict:
    """What the loggers get as the run's config: the resolved config, plus where and what it ran from."""
    preprocess = getattr(datamodule, "preprocess", None)
    return {**OmegaConf.to_container(cfg, resolve=True),
            "run": {"configuration": run_dir.parent.name, "fold": fold_name(cfg.data.fold), "config_hash": config_hash,
                    "git_commit": _git_commit(), "preprocess_key": getattr(preprocess, "key", None)}}


def _git_commit() -> str | None:
    """The checkout's commit (with `+dirty` for uncommitted changes); None outside a git checkout."""
    import subprocess

    from iad.utils.env import PROJECT_ROOT

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        return f"{commit}+dirty" if commit and git("status", "--porcelain", "--untracked-files=no") else commit or None
    except (OSError, subprocess.SubprocessError):
        return None


def _resume_point(run_dir: Path) -> tuple[Path | None, int | None]:
    """The checkpoint to resume from (last.ckpt, else best.ckpt) and its epoch, or (None, None) to start clean.

    A checkpoint that does not load (e.g. truncated by a kill) is renamed `<name>.damaged` with a warning.
    """
    import torch

    for path in (last_checkpoint(run_dir), best_checkpoint(run_dir)):
        if not path.exists():
            continue
        try:
            return path, int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"])
        except Exception as err:  # noqa: BLE001 - any damage means: do not resume from this file
            damaged = path.with_name(f"{path.name}.damaged")
            path.replace(damaged)
            log.warning("%s cannot be loaded (%s: %s); moved to %s", path, type(err).__name__, err, damaged.name)
            print(f"warning: {path} is damaged ({type(err).__name__}); moved to {damaged.name}")
    return None, None


def _validated_trainer(trainer_cfg: DictConfig, has_validation: bool) -> DictConfig:
    """The trainer config, validating at the last epoch when `check_val_every_n_epoch` would skip every
    epoch (e.g. `trainer.max_epochs=1` on an experiment that validates every 2nd epoch)."""
    every, epochs = trainer_cfg.get("check_val_every_n_epoch"), trainer_cfg.get("max_epochs")
    if not (has_validation and every and epochs and 0 < epochs < every):
        return trainer_cfg
    log.warning("trainer.check_val_every_n_epoch=%d > trainer.max_epochs=%d: validating at epoch %d instead",
                every, epochs, epochs)
    return OmegaConf.merge(trainer_cfg, {"check_val_every_n_epoch": epochs})


def _finish_wandb() -> None:
    """Close the W&B run so the next job of a multirun starts its own."""
    import sys

    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()
