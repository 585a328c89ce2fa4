"""OOF re-scoring: predict each fold's held-out series with its own fold model under new test-time settings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from iad.contract import fold_runs
from iad.datasets import DatasetSource
from iad.evaluation.oof import make_oof, score_oof
from iad.folds import FOLD_COL, attach_folds, read_folds
from iad.inference.loading import checkpoints_in, load_model
from iad.inference.predictor import CostControls, LoadedMember, Predictor
from iad.labels import LABEL_COLS, UID_COL, read_series_labels
from iad.preprocessing import SeriesCache
from iad.utils.io import write_csv_atomic

OOF_COST_KEYS = ("slice_stride", "precision")  # the controls that can change a score (batch size, layout cannot)


def oof_tag(hflip: bool, center_crop: float | None, cost: CostControls | None = None) -> str:
    """The file tag of a re-scoring: crop, flip, and the cost controls that differ from the defaults."""
    crop = "val" if center_crop is None else f"{center_crop:g}"
    changed = {k: v for k, v in asdict(cost or CostControls()).items()
               if v != getattr(CostControls(), k) and k in OOF_COST_KEYS}
    return f"crop{crop}{'_hflip' if hflip else ''}" + "".join(f"_{k}{v}" for k, v in changed.items())


def _held_out(config: dict) -> tuple[DatasetSource, pd.DataFrame]:
    source = DatasetSource(**{k: v for k, v in config["dataset"].items() if k != "_target_"})
    labels = attach_folds(read_series_labels(source.train_csv), read_folds(source.folds_csv))
    return source, labels[labels[FOLD_COL] == config["data"]["fold"]].reset_index(drop=True)


def rescore_sweep(sweep_dir: str | Path, hflip: bool = False, center_crop: float | None = None,
                  batch_size: int = 64, device: str = "cpu", cost: Mapping | None = None) -> tuple[pd.DataFrame, dict, Path]:
    """New `<sweep>/oof_<tag>.csv` from every fold's best checkpoint; returns (oof, report, path).

    `cost` holds the cost controls to measure (slice_stride, precision, ...; null entries keep the
    defaults); the report's `model_s_per_series` is the mean model time per held-out series.
    Held-out volumes come from the training cache when it is there (same preprocessing key; for a
    model trained on brain crops, the brain detector's cache too), else from the DICOM folders.
    """
    controls = CostControls.from_settings({k: v for k, v in (cost or {}).items() if v is not None})
    model_seconds = 0.0
    sweep_dir = Path(sweep_dir)
    frames = []
    for run in fold_runs(sweep_dir):
        try:
            (checkpoint,) = checkpoints_in(run)
        except FileNotFoundError:
            continue
        model = load_model(checkpoint, device)
        source, held = _held_out(model.config)
        preprocess = model.input_spec.preprocess
        cache = SeriesCache(model.config["paths"]["cache_dir"], preprocess)
        predictor = Predictor([LoadedMember(run.name, 1.0, [model], hflip, center_crop, controls)],
                              batch_size=batch_size, device=device)
        detector_caches = [SeriesCache(model.config["paths"]["cache_dir"], config)
                           for key, config in predictor.brain_detector_configs().items() if key != preprocess.key]
        preds = []
        for uid in held[UID_COL]:
            if cache.has(uid) and all(other.has(uid) for other in detector_caches):
                means = {other.config.key: other.mean_image(uid) for other in detector_caches}
                timed = predictor.predict_volume_with_timings(cache.volume(uid), cache.mean_image(uid), preprocess.key,
                                                              means)
            else:
                timed = predictor.predict_with_timings(Path(source.series_dir) / uid)
            probs = timed.probabilities
            model_seconds += timed.timings.model + timed.timings.aggregate
            preds.append([probs[c] for c in LABEL_COLS])
        frames.append(make_oof(held, np.asarray(preds)))
    if not frames:
        raise FileNotFoundError(f"no fold checkpoint under {sweep_dir}")
    oof = pd.concat(frames, ignore_index=True)
    path = sweep_dir / f"oof_{oof_tag(hflip, center_crop, controls)}.csv"
    write_csv_atomic(oof, path, index=False)
    return oof, {**score_oof(oof), "model_s_per_series": model_seconds / len(oof)}, path
