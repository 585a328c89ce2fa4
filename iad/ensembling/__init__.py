"""Ensembling: blend members' OOF predictions, optimise and honestly score weights, write the spec (no torch).

A predictor loads the spec with `read_spec` (format in iad.ensembling.spec).
"""

from iad.ensembling.blend import BLEND_METHODS, blend_predictions, normalised_ranks
from iad.ensembling.members import AlignedPredictions, Member, align_members, parse_members, read_predictions
from iad.ensembling.optimize import BlendObjective, mean_fold_auc, nested_cv, optimize_weights
from iad.ensembling.report import format_report, score_predictions
from iad.ensembling.run import REPORT_FILE, SPEC_FILE, run_ensemble
from iad.ensembling.spec import SPEC_FORMAT, SpecError, make_spec, read_spec, validate_spec, write_spec

__all__ = [
    "BLEND_METHODS",
    "REPORT_FILE",
    "SPEC_FILE",
    "SPEC_FORMAT",
    "AlignedPredictions",
    "BlendObjective",
    "Member",
    "SpecError",
    "align_members",
    "blend_predictions",
    "format_report",
    "make_spec",
    "mean_fold_auc",
    "nested_cv",
    "normalised_ranks",
    "optimize_weights",
    "parse_members",
    "read_predictions",
    "read_spec",
    "run_ensemble",
    "score_predictions",
    "validate_spec",
    "write_spec",
]
