"""ClsSegModel: an smp FPN that segments the aneurysm and classifies the 14 labels per slice (exp3 / exp5)."""

from __future__ import annotations

import segmentation_models_pytorch as smp
from segmentation_models_pytorch.losses import SoftBCEWithLogitsLoss
import torch
from torch import nn

from iad.labels import NUM_LABELS
from iad.models.base import SeriesModule


def create_fpn(encoder_name: str, encoder_weights: str | None, in_chans: int, classes: int,
               decoder: dict | None = None, cls_head: dict | None = None) -> smp.FPN:
    """smp FPN with `classes` mask channels and a 14-logit classification head on the encoder.

    decoder: FPN decoder settings without smp's `decoder_` prefix (pyramid_channels,
        segmentation_channels, merge_policy, dropout, interpolation).
    cls_head: smp `aux_params` besides the class count (pooling "avg"/"max", dropout).
    """
    decoder_kwargs = {f"decoder_{name}": value for name, value in (decoder or {}).items()}
    return smp.FPN(encoder_name=encoder_name, encoder_weights=encoder_weights, in_channels=in_chans,
                   classes=classes, aux_params={"classes": NUM_LABELS, **(cls_head or {})}, **decoder_kwargs)


class ClsSegModel(SeriesModule):
    """smp FPN: per-slice mask logits (C×H×W) and 14 class logits; loss = weighted BCE(cls) + SoftBCE(seg).

    Classification head: smp's `aux_params` head (global pooling of the deepest encoder features →
    dropout → linear), not a custom head on the decoder. The series score needs only the class
    logits, so validation and inference run the encoder alone and skip the decoder; the mask loss
    still shapes the shared encoder, which is what the auxiliary task is for; and smp builds and
    initialises the head, so there is no extra module to maintain.

    Batches must carry `mask` (B×C×H×W in [0, 1], from `data.masks`); mixup mixes it with the
    images' weights (base class). Series prediction uses the classification output only.
    """

    def __init__(self, encoder_name: str, encoder_weights: str | None = None, in_chans: int = 3, classes: int = 1,
                 decoder: dict | None = None, cls_head: dict | None = None, cls_weight: float = 0.6,
                 seg_weight: float = 0.4, **spine):
        net = create_fpn(encoder_name, encoder_weights, in_chans, classes, decoder, cls_head)
        super().__init__(net, **spine)
        self.cls_weight = cls_weight
        self.seg_weight = seg_weight
        self.cls_criterion = nn.BCEWithLogitsLoss()
        self.seg_criterion = SoftBCEWithLogitsLoss()

    def class_logits(self, net: nn.Module, images: torch.Tensor) -> torch.Tensor:
        return net.classification_head(net.encoder(images)[-1])

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
