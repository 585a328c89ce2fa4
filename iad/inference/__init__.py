"""Inference: trained runs, sweeps and ensembles → per-series probabilities, submissions, bundles."""

from iad.inference.bundle import export_bundle
from iad.inference.models import LoadedModel, load_model
from iad.inference.predictor import Member, Prediction, Predictor, SeriesTimeout
from iad.inference.submission import predict_folder

__all__ = ["LoadedModel", "Member", "Prediction", "Predictor", "SeriesTimeout", "export_bundle", "load_model",
           "predict_folder"]
