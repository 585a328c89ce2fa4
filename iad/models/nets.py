"""Networks by family: one builder per family, the same for training and for offline inference.

Every builder takes `pretrained` and `pretrained_file`; inference rebuilds a trained network with
`build_net(spec, pretrained=False)` and then loads the checkpoint's weights, so no model family can
reach for the network at inference whatever its own weights argument is called. Needs torch, timm
and smp, not Lightning.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from iad.contract import ModelSpec
from iad.labels import NUM_LABELS


class PretrainedWeightsUnavailable(RuntimeError):
    """Pretrained weights were asked for but cannot be had (offline, no local file)."""


def _offline_hint(what: str, err: Exception) -> PretrainedWeightsUnavailable:
    from huggingface_hub.constants import HF_HUB_CACHE

    return PretrainedWeightsUnavailable(
        f"pretrained weights for {what} are not available ({type(err).__name__}: {err}). Offline, they are looked "
        f"up in the Hugging Face cache ({HF_HUB_CACHE}); download them there where you have a network, or set "
        f"model.pretrained_file=<local weights file> (.safetensors / .pth)")


def _check_file(pretrained_file: str | None) -> None:
    if pretrained_file and not Path(pretrained_file).is_file():
        raise FileNotFoundError(f"model.pretrained_file={pretrained_file} does not exist")


def timm_classifier(backbone: str, in_chans: int = 3, num_classes: int = NUM_LABELS, pretrained: bool = False,
                    pretrained_file: str | None = None, backbone_kwargs: dict | None = None) -> nn.Module:
    """timm model by name with `num_classes` logits; `pretrained_file` loads local weights (no download).

    backbone_kwargs go to `timm.create_model` (e.g. img_size=384 for a ViT pretrained at 336).
    """
    import timm

    _check_file(pretrained_file)
    overlay = {"file": pretrained_file} if pretrained_file else None
    kwargs = {k: v for k, v in (backbone_kwargs or {}).items() if v is not None}
    try:
        return timm.create_model(backbone, pretrained=bool(pretrained or pretrained_file), num_classes=num_classes,
                                 in_chans=in_chans, pretrained_cfg_overlay=overlay, **kwargs)
    except (OSError, RuntimeError) as err:
        if pretrained and not pretrained_file and _is_download_failure(err):
            source = timm.models.get_pretrained_cfg(backbone)
            where = f" (Hugging Face repo {source.hf_hub_id})" if source is not None and source.hf_hub_id else ""
            raise _offline_hint(f"timm model {backbone!r}{where}", err) from err
        raise


def smp_fpn(encoder_name: str, in_chans: int = 3, classes: int = 1, decoder: dict | None = None,
            cls_head: dict | None = None, pretrained: bool | str = False, pretrained_file: str | None = None) -> nn.Module:
    """smp FPN with `classes` mask channels and a 14-logit classification head on the encoder.

    pretrained: False, True (smp's "imagenet" encoder weights; for `tu-` encoders timm's), or a
        weights name smp knows. pretrained_file: local encoder weights instead of a download.
    decoder: FPN decoder settings without smp's `decoder_` prefix (pyramid_channels,
        segmentation_channels, merge_policy, dropout, interpolation).
    cls_head: smp `aux_params` besides the class count (pooling "avg"/"max", dropout).
    """
    import segmentation_models_pytorch as smp

    _check_file(pretrained_file)
    weights = ("imagenet" if pretrained is True else pretrained) if pretrained and not pretrained_file else None
    decoder_kwargs = {f"decoder_{name}": value for name, value in (decoder or {}).items()}
    try:
        net = smp.FPN(encoder_name=encoder_name, encoder_weights=weights, in_channels=in_chans, classes=classes,
                      aux_params={"classes": NUM_LABELS, **(cls_head or {})}, **decoder_kwargs)
    except (OSError, RuntimeError) as err:
        if weights and _is_download_failure(err):
            raise _offline_hint(f"smp encoder {encoder_name!r}", err) from err
        raise
    if pretrained_file:
        _load_encoder_file(net.encoder, pretrained_file)
    return net


def _load_encoder_file(encoder: nn.Module, path: str) -> None:
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    own = encoder.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not fitting:
        raise ValueError(f"model.pretrained_file={path}: none of its tensors fit the {type(encoder).__name__} encoder")
    encoder.load_state_dict(fitting, strict=False)


def _is_download_failure(err: Exception) -> bool:
    text = f"{type(err).__name__} {err}".lower()
    return any(word in text for word in ("offline", "localentrynotfound", "connection", "hf_hub", "couldn't connect",
                                         "cannot find the requested files", "download"))


def timm_class_logits(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return net(images)


def fpn_class_logits(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The classification head on the deepest encoder features: the decoder is not run."""
    return net.classification_head(net.encoder(images)[-1])


@dataclass(frozen=True)
class NetFamily:
    """A network builder and how to get B×14 class logits from what it builds."""

    build: Callable[..., nn.Module]
    class_logits: Callable[[nn.Module, torch.Tensor], torch.Tensor]


NET_FAMILIES: dict[str, NetFamily] = {
    "timm_classifier": NetFamily(timm_classifier, timm_class_logits),
    "smp_fpn": NetFamily(smp_fpn, fpn_class_logits),
}


def net_family(name: str) -> NetFamily:
    if name not in NET_FAMILIES:
        raise KeyError(f"unknown network family {name!r} (known: {sorted(NET_FAMILIES)})")
    return NET_FAMILIES[name]


def build_net(spec: ModelSpec, pretrained: bool = True) -> nn.Module:
    """The network of a model spec; `pretrained=False` ignores its pretrained settings (inference, tests)."""
    args = dict(spec.net_args)
    if not pretrained:
        args.update(pretrained=False, pretrained_file=None)
    return net_family(spec.family).build(**args)
