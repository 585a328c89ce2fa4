"""Series-level weighted AUC for the training loop, as a torchmetrics Metric (DDP-safe)."""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_auroc

from iad.labels import LABEL_COLS
from iad.metrics import label_weights


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
    raise ValueError(f"aggregation must be 'max' or 'topk_mean', got {how!r}")


def weighted_auroc(target: torch.Tensor, preds: torch.Tensor, label_cols=LABEL_COLS) -> tuple[torch.Tensor, torch.Tensor]:
    """(weighted AUC, per-label AUCs); one-class columns get NaN and are left out of the weights."""
    aucs = torch.full((len(label_cols),), torch.nan)
    for j in range(len(label_cols)):
        column = target[:, j]
        if 0 < column.sum() < len(column):
            aucs[j] = binary_auroc(preds[:, j].float(), column.long())
    weights = torch.as_tensor(label_weights(label_cols), dtype=torch.float32)
    valid = ~torch.isnan(aucs)
    if not valid.any():
        return torch.tensor(torch.nan), aucs
    return (aucs[valid] * weights[valid]).sum() / weights[valid].sum(), aucs


class SeriesWeightedAUROC(Metric):
    """Collects slice probabilities, aggregates them per series, scores the official weighted AUC."""

    full_state_update = False

    def __init__(self, aggregation: str = "max", topk: int = 3, label_cols=LABEL_COLS, **kwargs):
        super().__init__(**kwargs)
        self.aggregation, self.topk, self.label_cols = aggregation, topk, tuple(label_cols)
        self.add_state("series", default=[], dist_reduce_fx="cat")
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")

    def update(self, preds: torch.Tensor, target: torch.Tensor, series: torch.Tensor) -> None:
        self.series.append(series.detach())
        self.preds.append(preds.detach().float())
        self.target.append(target.detach().float())

    def series_outputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(series ids, aggregated predictions, series targets), on CPU."""
        cat = lambda x: torch.cat(x) if isinstance(x, list) else x  # noqa: E731 - list before sync, tensor after
        series, preds, target = cat(self.series).cpu(), cat(self.preds).cpu(), cat(self.target).cpu()
        ids, series_preds = aggregate_series(series, preds, self.aggregation, self.topk)
        _, series_target = aggregate_series(series, target, "max")
        return ids, series_preds, series_target

    def compute(self) -> torch.Tensor:
        _, preds, target = self.series_outputs()
        return weighted_auroc(target, preds, self.label_cols)[0]
