"""Scoring members and blends (overall, per label, per modality) and the plain-text ensemble report."""

from __future__ import annotations

import numpy as np
import pandas as pd

from iad.evaluation.oof import score_oof, with_predictions
from iad.labels import LABEL_COLS
from iad.metrics import format_auc

_LABEL_WIDTH = 44


def score_predictions(series: pd.DataFrame, predictions: np.ndarray) -> dict:
    """iad.evaluation.score_oof of N x 14 predictions for `series` (ID_COLS + TRUE_COLS rows)."""
    return score_oof(with_predictions(series, predictions))


def format_ensemble_report(report: dict) -> str:
    """Tables of each member's and each blend's weighted AUC per modality and per label, then the nested CV."""
    rows = {member["name"]: (member["weight"], member["scores"]) for member in report["members"]}
    rows.update({f"blend ({method})": (1.0, scores) for method, scores in report["blends"].items()})
    width = max(len(name) for name in rows) + 2
    groups = list(next(iter(report["blends"].values())).get("by_group", {}))
    lines = [
        f"ensemble of {len(report['members'])} members over {report['n_series']} series "
        f"(weights: {report['weights_from']}, blend: {report['blend']})",
        f"{'':<{width}}{'weight':>8}{'all':>9}" + "".join(f"{group:>12}" for group in groups),
    ]
    for name, (weight, scores) in rows.items():
        by_group = scores.get("by_group", {})
        lines.append(f"{name:<{width}}{weight:>8.4f}{format_auc(scores['weighted_auc']):>9}"
                     + "".join(f"{format_auc(by_group.get(group, {}).get('weighted_auc')):>12}" for group in groups))
    column = max(width, 10)
    lines.append(f"{'per label':<{_LABEL_WIDTH}}" + "".join(f"{name:>{column}}" for name in rows))
    for label in LABEL_COLS:
        aucs = "".join(f"{format_auc(scores['per_label'][label]):>{column}}" for _, scores in rows.values())
        lines.append(f"  {label:<{_LABEL_WIDTH - 2}}{aucs}")
    if report.get("nested_cv"):
        lines.extend(_nested_lines(report["nested_cv"]))
    if report.get("budget"):
        lines.extend(_budget_lines(report["budget"]))
    return "\n".join(lines)


def _budget_lines(budget: dict) -> list[str]:
    chosen = budget["chosen"]
    lines = [f"budget {budget['budget_s']:g} s per series: chose {' + '.join(chosen['members'])} "
             f"({chosen['seconds']:.3f} s, nested-CV weighted AUC {format_auc(chosen['nested_auc'])})",
             "  frontier (seconds per series → nested-CV weighted AUC):"]
    lines += [f"  {row['seconds']:>9.3f} s  {format_auc(row['nested_auc'])}  {' + '.join(row['members'])}"
              for row in budget["frontier"]]
    return lines


def _nested_lines(nested: dict) -> list[str]:
    lines = [
        "optimised weights, weighted AUC:  in-sample (optimistic): "
        f"pooled {format_auc(nested['in_sample_auc'])}, mean over folds {format_auc(nested['in_sample_mean_fold_auc'])}"
        f"  |  nested CV: pooled {format_auc(nested['pooled_auc'])}, mean over folds {format_auc(nested['mean_fold_auc'])}"
    ]
    for fold, result in nested["folds"].items():
        weights = "  ".join(f"{name} {weight:.3f}" for name, weight in result["weights"].items())
        score = f"{format_auc(result['weighted_auc'])} ({result['n_series']} series)"
        lines.append(f"  fold {fold}: {score}, weights fit on the other folds: {weights}")
    return lines
