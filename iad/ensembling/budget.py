"""An ensemble under a time budget: which members to run, from measured costs and nested-CV scores.

Costs come from `predict.py mode=cost` (`cost.json`: read + preprocess seconds, paid once per
series, and each member's seconds). Every non-empty subset of members is scored by nested CV (weights
fit on the other folds, pooled over the held-out folds) and costed; the chosen subset is the best
score within `budget_s` seconds per series, and the report keeps the frontier (the subsets no cheaper
subset beats).
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import combinations
import json
import os

import numpy as np

from iad.ensembling.optimize import nested_cv

MAX_BUDGET_MEMBERS = 10  # 2^10 - 1 subsets, each a nested CV: beyond this the search is too slow


def read_costs(path: str | os.PathLike) -> tuple[float, dict[str, float]]:
    """(fixed seconds per series: read + preprocess, {member: seconds}) from a `cost.json`."""
    with open(path, encoding="utf-8") as handle:
        table = json.load(handle)
    return float(sum(table["stages"].values())), {name: float(s) for name, s in table["members"].items()}


def subset_scores(stacked: np.ndarray, truth: np.ndarray, folds: np.ndarray, names: list[str],
                  costs: Mapping[str, float], fixed_s: float, **optimize) -> list[dict]:
    """{"members", "seconds", "nested_auc"} of every non-empty subset of `names`, cheapest first."""
    missing = [name for name in names if name not in costs]
    if missing:
        raise ValueError(f"no measured cost for member(s) {missing}; run predict.py mode=cost on a spec holding them")
    if len(names) > MAX_BUDGET_MEMBERS:
        raise ValueError(f"{len(names)} members: a budget search handles at most {MAX_BUDGET_MEMBERS}")
    rows = []
    for size in range(1, len(names) + 1):
        for subset in combinations(range(len(names)), size):
            chosen = [names[i] for i in subset]
            result = nested_cv(stacked[list(subset)], truth, folds, chosen, **optimize)
            rows.append({"members": chosen, "seconds": fixed_s + sum(costs[name] for name in chosen),
                         "nested_auc": result["pooled_auc"]})
    return sorted(rows, key=lambda row: (row["seconds"], -row["nested_auc"]))


def frontier(rows: list[dict]) -> list[dict]:
    """The subsets that score better than every cheaper one (rows cheapest first)."""
    best, kept = -np.inf, []
    for row in rows:
        if row["nested_auc"] > best:
            kept.append(row)
            best = row["nested_auc"]
    return kept


def within_budget(rows: list[dict], budget_s: float) -> dict:
    """The best-scoring subset costing at most `budget_s` per series (ValueError when none does)."""
    affordable = [row for row in rows if row["seconds"] <= budget_s]
    if not affordable:
        cheapest = rows[0]
        raise ValueError(f"budget_s={budget_s:g}: the cheapest member ({cheapest['members'][0]}) needs "
                         f"{cheapest['seconds']:.3f} s per series")
    return max(affordable, key=lambda row: (row["nested_auc"], -row["seconds"]))
