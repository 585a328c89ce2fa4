"""Kaggle evaluation-API adapter: `predict(series_path)` → one-row polars DataFrame, 14 columns, no ID.

The model is loaded once, on first call, from `$IAD_MODEL` (a bundle folder, an ensemble spec, a sweep
or a run folder). Usage in a Kaggle notebook:

    os.environ["IAD_MODEL"] = "/kaggle/input/iad-bundle"
    from iad.inference.kaggle import predict
    server = kaggle_evaluation.rsna_inference_server.RSNAInferenceServer(predict)
"""

from __future__ import annotations

import os

import polars as pl
import torch

from iad.inference.predictor import Predictor
from iad.labels import LABEL_COLS

MODEL_ENV = "IAD_MODEL"
_predictor: Predictor | None = None


def get_predictor() -> Predictor:
    global _predictor
    if _predictor is None:
        path = os.environ.get(MODEL_ENV)
        if not path:
            raise RuntimeError(f"set ${MODEL_ENV} to a bundle, ensemble spec, sweep or run folder")
        device = "cuda" if torch.cuda.is_available() else "cpu"
        _predictor = Predictor.load(path, device=device, time_budget_s=float(os.environ.get("IAD_TIME_BUDGET_S", 1500)))
    return _predictor


def predict(series_path: str) -> pl.DataFrame:
    """The competition's contract: never raises for a bad series (prevalence row instead)."""
    probabilities = get_predictor().predict_safe(series_path).probabilities
    return pl.DataFrame({label: [float(probabilities[label])] for label in LABEL_COLS})
