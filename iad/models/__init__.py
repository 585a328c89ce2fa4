"""Models: LightningModules sharing one training spine (`SeriesModule`), and their networks (`nets`).

Exports resolve lazily, so inference can use `iad.models.nets` and `iad.models.metric` without Lightning.
"""

from iad.utils.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "MONITOR": "base", "SeriesModule": "base", "SliceClassifier": "classifier", "ClsSegModel": "clsseg"})
