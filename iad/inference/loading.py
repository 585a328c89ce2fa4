"""Trained models as inference sees them: read a checkpoint or model file safely, rebuild the network.

Every load is weights-only (`torch.load(..., weights_only=True)`): a model file from someone else
can hold tensors and plain data, never code. The network comes from the checkpoint's `ModelSpec`
through `iad.models.nets` with pretrained weights off, the weights from the state-dict prefix the
checkpoint declares, the input settings from its `InputSpec` (see `iad.contract`). No Lightning,
Hydra or W&B import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from iad.contract import (
    CONFIG_KEY,
    FORMAT_KEY,
    INPUT_KEY,
    MODEL_FILE_FORMAT,
    MODEL_KEY,
    STATE_DICT_KEY,
    WEIGHTS_KEY,
    ContractError,
    InputSpec,
    ModelSpec,
    checkpoints_in,  # noqa: F401 - the loaders' callers import it from here
)
from iad.data.inputs import SliceInput
from iad.models.nets import build_net, net_family
from iad.utils.weights import UnsafeModelFile, load_weights_only, save_weights_only  # noqa: F401 - UnsafeModelFile: re-exported


@dataclass
class LoadedModel:
    """One trained network (one fold) with the exact input settings it was trained with."""

    net: nn.Module
    model_spec: ModelSpec
    input_spec: InputSpec
    config: dict = field(repr=False)
    source: str = ""
    class_logits: Callable[[nn.Module, torch.Tensor], torch.Tensor] = field(init=False, repr=False)
    slice_input: SliceInput = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.class_logits = net_family(self.model_spec.family).class_logits
        self.slice_input = SliceInput.from_spec(self.input_spec.slice_input)

    @torch.no_grad()
    def slice_probabilities(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.class_logits(self.net, images).float())


def read_model_file(path: str | Path) -> dict:
    """A checkpoint or model file's contents, weights-only; refuses pickled code, naming the file."""
    path = Path(path)
    blob = load_weights_only(path)
    if not isinstance(blob, dict):
        raise ContractError(f"{path}: not an iad checkpoint or model file (holds a {type(blob).__name__})")
    missing = [key for key in (CONFIG_KEY, MODEL_KEY, INPUT_KEY, WEIGHTS_KEY, STATE_DICT_KEY) if key not in blob]
    if missing:
        raise ContractError(f"{path}: not an iad checkpoint or model file (missing {missing})")
    return blob


def inference_weights(blob: dict, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The network weights at the prefix the file declares (EMA or raw, as validation chose)."""
    prefix = blob[WEIGHTS_KEY]
    weights = {k[len(prefix):]: v for k, v in blob[STATE_DICT_KEY].items() if k.startswith(prefix)}
    if not weights:
        raise ContractError(f"{source}: no weights under the declared prefix {prefix!r}")
    return weights


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild a model from a Lightning checkpoint or an exported model file (bundle)."""
    blob = read_model_file(path)
    source = str(path)
    model_spec = ModelSpec.from_dict(blob[MODEL_KEY], f"{source}: {MODEL_KEY}")
    input_spec = InputSpec.from_dict(blob[INPUT_KEY], f"{source}: {INPUT_KEY}")
    input_spec.check_labels(source)
    net = build_net(model_spec, pretrained=False)
    net.load_state_dict(inference_weights(blob, source))
    return LoadedModel(net=net.to(device).eval(), model_spec=model_spec, input_spec=input_spec,
                       config=blob[CONFIG_KEY], source=source)


def export_model(model: LoadedModel, path: str | Path) -> None:
    """Write the weights-only model file a bundle holds (no optimiser state, no raw/EMA duplicate)."""
    blob = {
        FORMAT_KEY: MODEL_FILE_FORMAT,
        STATE_DICT_KEY: model.net.state_dict(),
        WEIGHTS_KEY: "",
        CONFIG_KEY: model.config,
        MODEL_KEY: model.model_spec.to_dict(),
        INPUT_KEY: model.input_spec.to_dict(),
    }
    save_weights_only(blob, path)
