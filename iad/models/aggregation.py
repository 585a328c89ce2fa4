"""Slice → series aggregation, shared by the training metric and the predictor (torch only: no torchmetrics)."""

from __future__ import annotations

import torch

AGGREGATIONS = ("max", "topk_mean")


def aggregate_series(series: torch.Tensor, values: torch.Tensor, how: str = "max", topk: int = 3):
    """Per-series rows (sorted unique ids, S×C) from per-slice rows: max, or mean of the top-k."""
    ids, inverse = torch.unique(series, return_inverse=True)
    if how == "max":
        out = torch.full((len(ids), values.shape[1]), -torch.inf, dtype=values.dtype, device=values.device)
        return ids, out.scatter_reduce(0, inverse[:, None].expand_as(values), values, reduce="amax")
    if how == "topk_mean":
        rows = [values[inverse == i].topk(min(topk, int((inverse == i).sum())), dim=0).values.mean(0)
                for i in range(len(ids))]
        return ids, torch.stack(rows)
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {how!r}")
