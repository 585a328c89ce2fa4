"""SliceClassifier: a timm backbone with 14 logits per 2.5D slice (exp2 / exp4)."""

from __future__ import annotations

import torch
from torch import nn

from iad.models.base import SeriesModule


class SliceClassifier(SeriesModule):
    """timm backbone → 14 logits, BCE; series prediction = aggregation over slices (base class).

    The network is `iad.models.nets.timm_classifier` (family "timm_classifier"); backbone_kwargs go
    to `timm.create_model` (e.g. img_size=384 for a ViT pretrained at 336, drop_path_rate).
    """

    def __init__(self, backbone: str, pretrained: bool = False, pretrained_file: str | None = None,
                 in_chans: int = 3, backbone_kwargs: dict | None = None, **spine):
        net_args = {"backbone": backbone, "in_chans": in_chans, "pretrained": pretrained,
                    "pretrained_file": pretrained_file, "backbone_kwargs": backbone_kwargs or {}}
        super().__init__("timm_classifier", net_args, **spine)
        self.criterion = nn.BCEWithLogitsLoss()

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.criterion(self.net(batch["image"]), batch["target"]), {}
