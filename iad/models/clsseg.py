"""ClsSegModel: an smp FPN that segments the aneurysm and classifies the 14 labels per slice (exp3 / exp5)."""

from __future__ import annotations

from segmentation_models_pytorch.losses import SoftBCEWithLogitsLoss
import torch
from torch import nn

from iad.models.base import SeriesModule


class ClsSegModel(SeriesModule):
    """smp FPN: per-slice mask logits (C×H×W) and 14 class logits; loss = weighted BCE(cls) + SoftBCE(seg).

    The network is `iad.models.nets.smp_fpn` (family "smp_fpn"); `pretrained` is False, True
    (ImageNet encoder weights) or an smp weights name, `pretrained_file` local encoder weights.

    Classification head: smp's `aux_params` head (global pooling of the deepest encoder features →
    dropout → linear), not a custom head on the decoder. The series score needs only the class
    logits, so validation and inference run the encoder alone and skip the decoder; the mask loss
    still shapes the shared encoder, which is what the auxiliary task is for; and smp builds and
    initialises the head, so there is no extra module to maintain.

    Batches must carry `mask` (B×C×H×W in [0, 1], from `data.masks`); mixup mixes it with the
    images' weights (base class). Series prediction uses the classification output only.
    """

    def __init__(self, encoder_name: str, pretrained: bool | str = False, pretrained_file: str | None = None,
                 in_chans: int = 3, classes: int = 1, decoder: dict | None = None, cls_head: dict | None = None,
                 cls_weight: float = 0.6, seg_weight: float = 0.4, **spine):
        net_args = {"encoder_name": encoder_name, "in_chans": in_chans, "classes": classes, "decoder": decoder or {},
                    "cls_head": cls_head or {}, "pretrained": pretrained, "pretrained_file": pretrained_file}
        super().__init__("smp_fpn", net_args, **spine)
        self.cls_weight = cls_weight
        self.seg_weight = seg_weight
        self.cls_criterion = nn.BCEWithLogitsLoss()
        self.seg_criterion = SoftBCEWithLogitsLoss()

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if "mask" not in batch:
            raise KeyError("ClsSegModel trains on masks: set data.masks (an iad.data.MaskSpec, see demo_clsseg)")
        mask_logits, class_logits = self.net(batch["image"])
        cls_loss = self.cls_criterion(class_logits, batch["target"])
        seg_loss = self.seg_criterion(mask_logits, batch["mask"])
        loss = self.cls_weight * cls_loss + self.seg_weight * seg_loss
        return loss, {"cls_loss": cls_loss, "seg_loss": seg_loss}

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """Per-slice mask probabilities (B×C×H×W) from the inference weights (call `.eval()` first)."""
        mask_logits, _ = self.inference_net()(images)
        return torch.sigmoid(mask_logits)
