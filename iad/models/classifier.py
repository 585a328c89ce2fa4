"""SliceClassifier: a timm backbone with 14 logits per 2.5D slice (exp2 / exp4)."""

from __future__ import annotations

import timm
import torch
from torch import nn

from iad.labels import NUM_LABELS
from iad.models.base import SeriesModule


def create_backbone(name: str, num_classes: int, in_chans: int = 3, pretrained: bool = False,
                    pretrained_file: str | None = None, **kwargs) -> nn.Module:
    """timm model by name; `pretrained_file` loads local weights (no download) when given."""
    overlay = {"file": pretrained_file} if pretrained_file else None
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    return timm.create_model(name, pretrained=pretrained or bool(pretrained_file), num_classes=num_classes,
                             in_chans=in_chans, pretrained_cfg_overlay=overlay, **kwargs)


class SliceClassifier(SeriesModule):
    """timm backbone → 14 logits, BCE; series prediction = aggregation over slices (base class).

    backbone_kwargs go to `timm.create_model` (e.g. img_size=384 for a ViT pretrained at 336,
    drop_path_rate).
    """

    def __init__(self, backbone: str, pretrained: bool = False, pretrained_file: str | None = None,
                 in_chans: int = 3, backbone_kwargs: dict | None = None, **spine):
        net = create_backbone(backbone, NUM_LABELS, in_chans, pretrained, pretrained_file, **(backbone_kwargs or {}))
        super().__init__(net, **spine)
        self.criterion = nn.BCEWithLogitsLoss()

    def class_logits(self, net: nn.Module, images: torch.Tensor) -> torch.Tensor:
        return net(images)

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.criterion(self.net(batch["image"]), batch["target"]), {}
