"""Kaggle evaluation-API adapter: `predict(series_path)` → one-row polars DataFrame, 14 columns, no ID.

The model comes from `$IAD_MODEL` (a bundle folder, an ensemble spec, a sweep or a run folder). Call
`warmup()` right after the import so a bad `IAD_MODEL` fails before the first series (otherwise the
first `predict` loads it). Usage in a Kaggle notebook:

    os.environ["IAD_MODEL"] = "/kaggle/input/iad-bundle"
    from iad.inference.kaggle import predict, warmup
    warmup()
    server = kaggle_evaluation.rsna_inference_server.RSNAInferenceServer(predict)

After each series the gateway's share folder (`$IAD_KAGGLE_SHARED`, default /kaggle/shared) is
removed, as the competition's own notebook does to stay within the disk; only when the series came
from inside it, and `IAD_KAGGLE_CLEAN_SHARED=0` turns that off. Imports only inference code: no
Lightning, Hydra, scikit-learn or W&B.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
import shutil
import warnings

import polars as pl
import torch

from iad.inference.predictor import Predictor
from iad.labels import LABEL_COLS

MODEL_ENV = "IAD_MODEL"
TIME_BUDGET_ENV = "IAD_TIME_BUDGET_S"
SHARED_DIR_ENV = "IAD_KAGGLE_SHARED"
CLEAN_SHARED_ENV = "IAD_KAGGLE_CLEAN_SHARED"
DEFAULT_SHARED_DIR = "/kaggle/shared"
DEFAULT_TIME_BUDGET_S = 1500.0  # of the 30 minutes a series may take, leaving room for the gateway

log = logging.getLogger(__name__)
_predictor: Predictor | None = None


def warmup() -> Predictor:
    """Load the model from `$IAD_MODEL` and start the decode pool now (raises naming the path when it is
    missing or unreadable)."""
    global _predictor
    if _predictor is None:
        path = os.environ.get(MODEL_ENV)
        if not path:
            raise RuntimeError(f"set ${MODEL_ENV} to a bundle, ensemble spec, sweep or run folder")
        if not Path(path).exists():
            raise FileNotFoundError(f"${MODEL_ENV}={path} does not exist")
        device = "cuda" if torch.cuda.is_available() else "cpu"
        budget = float(os.environ.get(TIME_BUDGET_ENV, DEFAULT_TIME_BUDGET_S))
        _predictor = Predictor.load(path, device=device, time_budget_s=budget)
        _predictor.warm_read_pool()
    return _predictor


def predict(series_path: str) -> pl.DataFrame:
    """The competition's contract: never raises for a bad series (prevalence row and one warning line)."""
    predictor = warmup()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prediction = predictor.predict_safe(series_path, log_fallback=False)
    if prediction.fallback_reason or caught:
        first = f"; first warning: {str(caught[0].message).splitlines()[0]}" if caught else ""
        what = f"fallback row ({prediction.fallback_reason})" if prediction.fallback_reason else "predicted"
        log.warning("series %s: %s, %d warning(s)%s", Path(series_path).name, what, len(caught), first)
    _clean_shared(series_path)
    return pl.DataFrame({label: [float(prediction.probabilities[label])] for label in LABEL_COLS})


def _clean_shared(series_path: str) -> None:
    if os.environ.get(CLEAN_SHARED_ENV, "1") == "0":
        return
    shared = Path(os.environ.get(SHARED_DIR_ENV, DEFAULT_SHARED_DIR)).resolve()
    if shared != Path(shared.anchor) and shared in Path(series_path).resolve().parents:
        shutil.rmtree(shared, ignore_errors=True)
