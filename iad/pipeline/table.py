"""The reference's results table for one pipeline run: each member's OOF weighted AUC, plain and with the
test-time centre crop, and the ensemble's blend of both, beside the reference's published figures (no torch)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from iad.contract import OOF_FILE
from iad.ensembling.blend import blend_predictions
from iad.ensembling.members import align_members
from iad.ensembling.report import score_predictions
from iad.evaluation.oof import read_oof, score_oof
from iad.metrics import format_auc
from iad.pipeline.stages import CLASSIFIER_MEMBERS, Planner, crop_oof_file

BLEND_ROW = "blend"
TABLE_COLS = ["member", "experiment", "weight", "oof", "oof_crop", "reference_oof", "reference_oof_crop"]


def _score(path: Path) -> float | None:
    return score_oof(read_oof(path))["weighted_auc"] if path.exists() else None


def _blend_score(files: Mapping[str, Path], weights: Mapping[str, float]) -> float | None:
    if not files or not all(p.exists() for p in files.values()):
        return None
    aligned = align_members(dict(files))
    w = np.array([weights[name] for name in aligned.predictions], dtype=float)
    return score_predictions(aligned.series, blend_predictions(aligned.stacked(), w / w.sum()))["weighted_auc"]


def results_table(planner: Planner, weights: Mapping[str, float], reference: Mapping[str, Mapping]) -> pd.DataFrame:
    """One row per classifier member and one for the blend (`weights`: the ensemble recipe's, by member).

    `reference`: {member or "blend": {oof, oof_crop}} published figures (None where unpublished).
    Scores are None where a file is not there yet (a stage not run).
    """
    crop_file = crop_oof_file(planner.recipe.center_crop)
    rows, plain, cropped = [], {}, {}
    for member in CLASSIFIER_MEMBERS:
        sweep = planner.sweep_dir(member)
        plain[member], cropped[member] = sweep / OOF_FILE, sweep / crop_file
        published = reference.get(member, {})
        rows.append({"member": member, "experiment": planner.recipe.experiments[member],
                     "weight": weights.get(member, 0.0), "oof": _score(plain[member]), "oof_crop": _score(cropped[member]),
                     "reference_oof": published.get("oof"), "reference_oof_crop": published.get("oof_crop")})
    used = [m for m in CLASSIFIER_MEMBERS if weights.get(m, 0.0) > 0]
    published = reference.get(BLEND_ROW, {})
    rows.append({"member": BLEND_ROW, "experiment": planner.recipe.ensemble, "weight": sum(weights.get(m, 0.0) for m in used),
                 "oof": _blend_score({m: plain[m] for m in used}, weights),
                 "oof_crop": _blend_score({m: cropped[m] for m in used}, weights),
                 "reference_oof": published.get("oof"), "reference_oof_crop": published.get("oof_crop")})
    return pd.DataFrame(rows, columns=TABLE_COLS)


def format_results_table(table: pd.DataFrame, center_crop: float) -> str:
    """The table as text: this run's figures beside the reference's."""
    crop = f"+crop {center_crop:g}"
    header = f"{'member':<10}{'experiment':<34}{'weight':>7}{'OOF':>9}{crop:>11}{'ref OOF':>10}{'ref ' + crop:>15}"
    lines = [header, "-" * len(header)]
    for row in table.itertuples(index=False):
        lines.append(f"{row.member:<10}{row.experiment:<34}{row.weight:>7.3f}{_auc(row.oof):>9}"
                     f"{_auc(row.oof_crop):>11}{_auc(row.reference_oof):>10}{_auc(row.reference_oof_crop):>15}")
    return "\n".join(lines)


def _auc(value) -> str:
    """A score, or "-" where there is none (a stage not run, a figure not published)."""
    return "-" if value is None or pd.isna(value) else format_auc(float(value))
