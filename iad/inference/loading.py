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
import hashlib
from pathlib import Path

import torch
from torch import nn

from iad.contract import (
    BRAIN_DETECTOR_KEY,
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

# brain detectors already loaded, by (SHA-256, device): the fold models of a member share one
_DETECTORS: dict[tuple[str, str], object] = {}


@dataclass
class LoadedModel:
    """One trained network (one fold) with the exact input settings it was trained with."""

    net: nn.Module
    model_spec: ModelSpec
    input_spec: InputSpec
    config: dict = field(repr=False)
    source: str = ""
    brain_detector: object | None = field(default=None, repr=False)  # LoadedDetector when InputSpec.brain_crop
    brain_detector_file: bytes | None = field(default=None, repr=False)  # its file's bytes (checked), for export
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
    model = LoadedModel(net=net.to(device).eval(), model_spec=model_spec, input_spec=input_spec,
                        config=blob[CONFIG_KEY], source=source)
    if input_spec.brain_crop:
        model.brain_detector_file = brain_detector_bytes(blob, input_spec.brain_crop, source)
        model.brain_detector = _shared_detector(model.brain_detector_file, input_spec.brain_crop, device)
    return model


def brain_detector_bytes(blob: dict, brain_crop: dict, source: str) -> bytes:
    """The brain detector file a model's crops need: carried in the model file (bundles), else the file
    training recorded; either way its SHA-256 must be the recorded one."""
    if BRAIN_DETECTOR_KEY in blob:
        data, where = blob[BRAIN_DETECTOR_KEY].numpy().tobytes(), f"{source} (the brain detector it carries)"
    else:
        path = Path(brain_crop["detector"])
        if not path.is_file():
            raise ContractError(f"{source}: trained on the crops of brain detector {path}, which is not here; "
                                "export a bundle (it carries the detector) to use the model elsewhere")
        data, where = path.read_bytes(), str(path)
    sha = hashlib.sha256(data).hexdigest()
    if sha != brain_crop["sha256"]:
        raise ContractError(f"{where}: brain detector SHA-256 {sha[:16]}... is not the {brain_crop['sha256'][:16]}... "
                            f"that {source} was trained with (the detector file changed)")
    return data


def _shared_detector(data: bytes, brain_crop: dict, device):
    from iad.detection.detector import load_detector

    key = (brain_crop["sha256"], str(device))
    if key not in _DETECTORS:
        _DETECTORS[key] = load_detector(brain_crop["detector"], device, data=data)
    return _DETECTORS[key]


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
    if model.brain_detector_file is not None:  # the model file carries its brain detector: a bundle crops anywhere
        blob[BRAIN_DETECTOR_KEY] = torch.frombuffer(bytearray(model.brain_detector_file), dtype=torch.uint8)
    save_weights_only(blob, path)
