"""Evaluation: out-of-fold prediction files and cross-validation reports (no torch import)."""

from iad.evaluation.cv import merge_sweep
from iad.evaluation.oof import make_oof, read_oof, score_oof

__all__ = ["make_oof", "merge_sweep", "read_oof", "score_oof"]
