"""Inference: trained runs, sweeps and ensembles → per-series probabilities, submissions, bundles.

Imports no Lightning, Hydra, scikit-learn or W&B (the Kaggle adapter loads only this).
"""

from iad.inference.bundle import export_bundle
from iad.inference.loading import LoadedModel, UnsafeModelFile, load_model
from iad.inference.predictor import LoadedMember, Prediction, Predictor, SeriesTimeout
from iad.inference.submission import predict_folder

__all__ = ["LoadedMember", "LoadedModel", "Prediction", "Predictor", "SeriesTimeout", "UnsafeModelFile", "export_bundle",
           "load_model", "predict_folder"]
