"""Ensembling: blend members' OOF predictions, optimise and honestly score weights, write the spec (no torch).

A predictor loads the spec with `iad.ensembling.spec.read_spec`; exports resolve lazily, so that needs
neither scipy nor sklearn.
"""

from iad.utils.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    **dict.fromkeys(["BLEND_METHODS", "blend_predictions", "normalised_ranks"], "blend"),
    **dict.fromkeys(["AlignedPredictions", "EnsembleMember", "align_members", "parse_members", "read_predictions"],
                    "members"),
    **dict.fromkeys(["BlendObjective", "mean_fold_auc", "nested_cv", "optimize_weights"], "optimize"),
    **dict.fromkeys(["format_ensemble_report", "score_predictions"], "report"),
    **dict.fromkeys(["REPORT_FILE", "SPEC_FILE", "run_ensemble"], "run"),
    **dict.fromkeys(["SPEC_FORMAT", "SpecError", "make_spec", "read_spec", "validate_spec", "write_spec"], "spec"),
})
