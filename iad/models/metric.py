"""Series-level weighted AUC for the training loop, as a torchmetrics Metric (DDP-safe).

Slices are gathered as tensors (so DDP can concatenate them) and aggregated per series here; the
score itself is `iad.metrics`' official formula, not a second implementation.
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics import Metric

from iad.labels import LABEL_COLS
from iad.metrics import per_label_auc, weighted_mean_auc
from iad.models.aggregation import aggregate_series


def series_scores(target: torch.Tensor, preds: torch.Tensor, label_cols=LABEL_COLS) -> tuple[float, np.ndarray]:
    """(weighted AUC, per-label AUCs) of series-level predictions; one-class columns are NaN and left out."""
    aucs = per_label_auc(target.cpu().numpy(), preds.float().cpu().numpy(), label_cols)
    return weighted_mean_auc(aucs), np.array(list(aucs.values()))


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
        return torch.tensor(series_scores(target, preds, self.label_cols)[0])
