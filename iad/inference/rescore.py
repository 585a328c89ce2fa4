"""OOF re-scoring: predict each fold's held-out series with its own fold model under new test-time settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from iad.contract import fold_runs
from iad.datasets import DatasetSource
from iad.evaluation.oof import make_oof, score_oof
from iad.folds import FOLD_COL, attach_folds, read_folds
from iad.inference.loading import checkpoints_in, load_model
from iad.inference.predictor import LoadedMember, Predictor
from iad.labels import LABEL_COLS, UID_COL, read_series_labels
from iad.preprocessing import SeriesCache
from iad.utils.io import write_csv_atomic


def oof_tag(hflip: bool, center_crop: float | None) -> str:
    crop = "val" if center_crop is None else f"{center_crop:g}"
    return f"crop{crop}{'_hflip' if hflip else ''}"


def _held_out(config: dict) -> tuple[DatasetSource, pd.DataFrame]:
    source = DatasetSource(**{k: v for k, v in config["dataset"].items() if k != "_target_"})
    labels = attach_folds(read_series_labels(source.train_csv), read_folds(source.folds_csv))
    return source, labels[labels[FOLD_COL] == config["data"]["fold"]].reset_index(drop=True)


def rescore_sweep(sweep_dir: str | Path, hflip: bool = False, center_crop: float | None = None,
                  batch_size: int = 64, device: str = "cpu") -> tuple[pd.DataFrame, dict, Path]:
    """New `<sweep>/oof_<tag>.csv` from every fold's best checkpoint; returns (oof, report, path).

    Held-out volumes come from the training cache when it is there (same preprocessing key), else
    from the DICOM folders.
    """
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
        predictor = Predictor([LoadedMember(run.name, 1.0, [model], hflip, center_crop)], batch_size=batch_size,
                              device=device)
        preds = []
        for uid in held[UID_COL]:
            if cache.has(uid):
                probs = predictor.predict_volume(cache.volume(uid), cache.mean_image(uid), preprocess.key)
            else:
                probs = predictor.predict(Path(source.series_dir) / uid)
            preds.append([probs[c] for c in LABEL_COLS])
        frames.append(make_oof(held, np.asarray(preds)))
    if not frames:
        raise FileNotFoundError(f"no fold checkpoint under {sweep_dir}")
    oof = pd.concat(frames, ignore_index=True)
    path = sweep_dir / f"oof_{oof_tag(hflip, center_crop)}.csv"
    write_csv_atomic(oof, path, index=False)
    return oof, score_oof(oof), path
