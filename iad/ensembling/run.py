"""The ensembling stage: align members' OOF files, weight and blend them, score, write the spec."""

from __future__ import annotations

from collections.abc import Mapping
import os
from pathlib import Path

import numpy as np
import pandas as pd

from iad.contract import OOF_FILE
from iad.ensembling.blend import BLEND_METHODS, blend_predictions
from iad.ensembling.budget import frontier, read_costs, subset_scores, within_budget
from iad.ensembling.members import AlignedPredictions, EnsembleMember, align_members, member_weights, parse_members
from iad.ensembling.optimize import OPTIMIZER, mean_fold_auc, nested_cv, optimize_weights
from iad.ensembling.report import score_predictions
from iad.ensembling.spec import SPEC_BLEND, make_spec, write_spec
from iad.evaluation.oof import TRUE_COLS, with_predictions
from iad.folds import FOLD_COL
from iad.utils.io import write_csv_atomic, write_json_atomic

SPEC_FILE = "ensemble.json"
REPORT_FILE = "report.json"
WEIGHT_SOURCES = ("fixed", "equal", "optimize")


def run_ensemble(members: Mapping[str, Mapping], output_dir: str | os.PathLike, *, weights: str = "fixed",
                 blend: str = "mean", intersect: bool = False, seed: int = 0, random_starts: int = 4,
                 budget_s: float | None = None, costs: str | os.PathLike | None = None,
                 aneurysm_detector: str | os.PathLike | None = None) -> dict:
    """Blend the members' OOF predictions and write the spec, the report and the blend's OOF file.

    `members`: {name: {path, weight, hflip_tta, center_crop, checkpoints}} (see EnsembleMember).
    `weights`: "fixed" (the members' weights, normalised to sum 1), "equal" or "optimize" (maximise
    the OOF weighted AUC of the `blend`, and estimate the result by nested CV over the folds).
    `blend`: "mean" of probabilities or "rank" (mean of normalised ranks; scored here, but the spec
    always blends probabilities with the same weights).
    `budget_s` (with `costs`, a `cost.json` from `predict.py mode=cost`): keep the subset of members
    with the best nested-CV score whose measured seconds per series fit the budget (see
    `iad.ensembling.budget`); the report's "budget" holds the choice and the frontier.
    `aneurysm_detector` (an exp0 sweep, a run or a detector file) goes into the spec as the detector
    `predict.py localize=true` runs (its default cost controls; absolute path).
    Writes <output_dir>/ensemble.json, report.json and oof.csv (the deployed mean blend, OOF format);
    returns the report (see report.format_ensemble_report).
    """
    if weights not in WEIGHT_SOURCES:
        raise ValueError(f"ensemble.weights={weights!r}; expected one of {WEIGHT_SOURCES}")
    if blend not in BLEND_METHODS:
        raise ValueError(f"ensemble.blend={blend!r}; expected one of {BLEND_METHODS}")
    parsed = parse_members(members)
    aligned = align_members({member.name: member.prediction_file for member in parsed}, intersect=intersect)
    budget = None
    if budget_s is not None:
        budget = _budget_choice(aligned, [member.name for member in parsed], budget_s, costs, method=blend, seed=seed,
                                random_starts=random_starts)
        parsed = [member for member in parsed if member.name in budget["chosen"]["members"]]
        aligned = align_members({member.name: member.prediction_file for member in parsed}, intersect=intersect)
    stacked, truth = aligned.stacked(), aligned.series[list(TRUE_COLS)].to_numpy()
    weight_vector = _weights(weights, parsed, stacked, truth, blend=blend, seed=seed, random_starts=random_starts)
    blends = {method: blend_predictions(stacked, weight_vector, method) for method in dict.fromkeys((SPEC_BLEND, blend))}
    blend_scores = {method: score_predictions(aligned.series, predictions) for method, predictions in blends.items()}
    nested = None
    if weights == "optimize":
        folds = aligned.series[FOLD_COL].to_numpy()
        nested = {"optimizer": OPTIMIZER, "blend": blend, "seed": seed, "random_starts": random_starts,
                  "in_sample_auc": blend_scores[blend]["weighted_auc"],
                  "in_sample_mean_fold_auc": mean_fold_auc(stacked, truth, folds, weight_vector, blend),
                  **nested_cv(stacked, truth, folds, [member.name for member in parsed], method=blend, seed=seed,
                              random_starts=random_starts)}

    output_dir = Path(output_dir)
    detector = None if aneurysm_detector is None else {"path": str(Path(aneurysm_detector).expanduser().resolve())}
    spec = make_spec(_spec_members(parsed, weight_vector), oof=blend_scores[SPEC_BLEND], nested_cv=nested,
                     aneurysm_detector=detector)
    write_spec(spec, output_dir / SPEC_FILE)
    write_csv_atomic(_blend_oof(aligned, blends[SPEC_BLEND]), output_dir / OOF_FILE)
    report = {
        "n_series": len(aligned.series),
        "weights_from": weights,
        "blend": blend,
        "members": [{"name": name, "file": str(member.prediction_file.resolve()), "weight": float(weight),
                     "scores": score_predictions(aligned.series, predictions)}
                    for (name, predictions), member, weight in zip(aligned.predictions.items(), parsed, weight_vector)],
        "blends": blend_scores,
        "nested_cv": nested,
        "budget": budget,
        "spec": str((output_dir / SPEC_FILE).resolve()),
    }
    write_json_atomic(report, output_dir / REPORT_FILE)
    return report


def _budget_choice(aligned: AlignedPredictions, names: list[str], budget_s: float, costs, **optimize) -> dict:
    """The members to keep under `budget_s`, with every subset's cost and nested-CV score and the frontier."""
    if costs is None:
        raise ValueError("ensemble.budget_s needs ensemble.costs=<cost.json from predict.py mode=cost>")
    fixed_s, member_s = read_costs(costs)
    rows = subset_scores(aligned.stacked(), aligned.series[list(TRUE_COLS)].to_numpy(),
                         aligned.series[FOLD_COL].to_numpy(), names, member_s, fixed_s, **optimize)
    return {"budget_s": float(budget_s), "costs": str(costs), "chosen": within_budget(rows, budget_s),
            "frontier": frontier(rows), "subsets": rows}


def _weights(source: str, members: list[EnsembleMember], stacked: np.ndarray, truth: np.ndarray, *, blend: str, seed: int,
             random_starts: int) -> np.ndarray:
    """The members' weights from the config ("fixed"), equal, or optimised on the OOF rows."""
    if source == "optimize":
        return optimize_weights(stacked, truth, method=blend, seed=seed, random_starts=random_starts)
    if source == "equal":
        return np.full(len(members), 1 / len(members))
    return member_weights(members)


def _spec_members(members: list[EnsembleMember], weights: np.ndarray) -> list[dict]:
    """Spec entries of the members with weight > 0 (a predictor need not run the others)."""
    return [
        {"name": member.name, "path": str(member.checkpoint_dir), "weight": float(weight),
         "hflip_tta": member.hflip_tta, "center_crop": float(member.center_crop)}
        for member, weight in zip(members, weights)
        if weight > 0
    ]


def _blend_oof(aligned: AlignedPredictions, predictions: np.ndarray) -> pd.DataFrame:
    """The blend as an OOF file (it can itself be an ensemble member)."""
    return with_predictions(aligned.series, predictions)
