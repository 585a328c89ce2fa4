"""Models: LightningModules sharing one training spine (`SeriesModule`)."""

from iad.models.base import MONITOR, SeriesModule
from iad.models.classifier import SliceClassifier
from iad.models.clsseg import ClsSegModel

__all__ = ["MONITOR", "ClsSegModel", "SeriesModule", "SliceClassifier"]
