"""The weights-only detector file (`iad.contract.DETECTOR_FILE`) and the detector as inference runs it.

`export_detector` writes an ultralytics `DetectionModel` as plain data: its architecture (the model
yaml as a dict), a float32 state dict, its `DetectorSpec` and its validation metrics. `load_detector`
reads it with `torch.load(weights_only=True)` and rebuilds the network offline from the architecture,
so a detector file, like a model file, can never run code. No Lightning, Hydra, sklearn, SciPy or
W&B; ultralytics is imported inside the functions that need it.

Channel order: `detect` feeds an image's channels to the network in the order given (channel c of the
H×W×C array is input channel c), scaled to [0, 1], letterboxed as ultralytics does. ultralytics'
dataset treats what `load_image` returns as BGR and reverses 3-channel images before the network sees
them (`Format`, always at validation; in training unless the `bgr` augmentation fires, so keep bgr=0).
A trainer that hands it our stacks must therefore hand them channel-reversed (`image[..., ::-1]`):
then the network sees, in training as here, channel c = slice z + offsets[c] (for a mean image every
channel is the same, so only the aneurysm detector's slice stacks care).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from iad.contract import DETECTOR_FORMAT, DETECTOR_KEY, FORMAT_KEY, STATE_DICT_KEY, ContractError, DetectorSpec
from iad.detection.images import mean_stack, slice_stack
from iad.utils.weights import load_weights_only, save_weights_only

ARCHITECTURE_KEY = "architecture"  # the ultralytics model yaml as a plain dict
METRICS_KEY = "metrics"
# ultralytics' NMS stops after max_time_img seconds per image; generous so a slow CPU never truncates silently
NMS_SECONDS_PER_IMAGE = 2.0


def _plain(value, where: str = "architecture"):
    """The model yaml as JSON-like plain data (weights-only loading accepts nothing else)."""
    try:
        return json.loads(json.dumps(value))
    except TypeError as err:
        raise ContractError(f"{where}: not plain data ({err})") from err


def export_detector(net: nn.Module, spec: DetectorSpec, path: str | Path, metrics: dict | None = None) -> Path:
    """Write `net` (an ultralytics DetectionModel) and `spec` as a weights-only detector file, atomically."""
    if len(spec.classes) != int(net.yaml["nc"]):
        raise ContractError(f"{path}: spec has {len(spec.classes)} classes, the network {net.yaml['nc']}")
    state = {k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().clone()
             for k, v in net.state_dict().items()}
    blob = {FORMAT_KEY: DETECTOR_FORMAT, DETECTOR_KEY: spec.to_dict(), ARCHITECTURE_KEY: _plain(net.yaml),
            STATE_DICT_KEY: state, METRICS_KEY: _plain(metrics, "metrics") if metrics is not None else None}
    return save_weights_only(blob, path)


def read_detector_file(path: str | Path, data: bytes | None = None) -> dict:
    """A detector file's contents, weights-only; refuses pickled code and other files, naming the file.

    `data`: the file's bytes when held in memory (a model file carries its brain detector so).
    """
    blob = load_weights_only(path, "detector file", data)
    if not isinstance(blob, dict) or blob.get(FORMAT_KEY) != DETECTOR_FORMAT:
        found = blob.get(FORMAT_KEY) if isinstance(blob, dict) else type(blob).__name__
        raise ContractError(f"{path}: not a detector file (format {found!r}, expected {DETECTOR_FORMAT!r})")
    missing = [key for key in (DETECTOR_KEY, ARCHITECTURE_KEY, STATE_DICT_KEY) if key not in blob]
    if missing:
        raise ContractError(f"{path}: detector file without {missing}")
    return blob


def load_detector(path: str | Path, device: str | torch.device = "cpu", data: bytes | None = None) -> LoadedDetector:
    """Rebuild a detector from its file (or its bytes, `data`) offline: strict weights, eval mode, fused."""
    from ultralytics.nn.tasks import DetectionModel

    blob = read_detector_file(path, data)
    spec = DetectorSpec.from_dict(blob[DETECTOR_KEY], f"{path}: {DETECTOR_KEY}")
    net = DetectionModel(cfg=blob[ARCHITECTURE_KEY], nc=len(spec.classes), verbose=False)
    try:
        net.load_state_dict(blob[STATE_DICT_KEY], strict=True)
    except RuntimeError as err:
        raise ContractError(f"{path}: weights do not fit the recorded architecture ({err})") from err
    net.names = dict(enumerate(spec.classes))
    net = net.fuse(verbose=False).to(device).eval()
    return LoadedDetector(net, spec, str(path), metrics=blob.get(METRICS_KEY))


@dataclass
class LoadedDetector:
    """A detector network with its spec; `detect` maps images to boxes in their own pixels."""

    net: nn.Module
    spec: DetectorSpec
    source: str = ""
    metrics: dict | None = None

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @torch.no_grad()
    def detect(self, images: np.ndarray | Sequence[np.ndarray], conf: float = 0.001, iou: float = 0.6,
               max_det: int = 20, batch_size: int = 32) -> list[np.ndarray]:
        """Per image, a (K, 6) float32 array of [x0, y0, x1, y1, confidence, class index], by confidence.

        `images`: N×H×W×C uint8 (or a list of H×W×C): channels fed as given (module docstring).
        Boxes are in each input image's pixels. As ultralytics' validator: long side to `spec.imgsz`
        (bilinear), grey-114 padding, /255, multi-label NMS at `conf` / `iou`, boxes scaled back. The
        validator pads a batch to its own rectangle, this to the square: the same input for square
        images (the cache's, with `preprocess.image_size` set).
        """
        from ultralytics.data.augment import LetterBox
        from ultralytics.utils import nms, ops

        images = [np.asarray(image) for image in images]
        for image in images:
            if image.ndim != 3 or image.dtype != np.uint8:
                raise ValueError(f"detect expects H×W×C uint8 images, got {image.shape} {image.dtype}")
        letterbox = LetterBox((self.spec.imgsz, self.spec.imgsz), auto=False, stride=int(self.net.stride.max()))
        end2end = bool(getattr(self.net, "end2end", False))
        results = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            boxed = np.stack([letterbox(image=image) for image in chunk])
            if boxed.ndim == 3:  # cv2 drops a single channel
                boxed = boxed[..., None]
            inputs = torch.from_numpy(boxed).to(self.device).permute(0, 3, 1, 2).float().div_(255)
            kept = nms.non_max_suppression(self.net(inputs), conf, iou, multi_label=True, max_det=max_det,
                                           end2end=end2end, max_time_img=NMS_SECONDS_PER_IMAGE)
            for image, rows in zip(chunk, kept):
                rows = rows[:, :6].float().clone()
                rows[:, :4] = ops.scale_boxes(inputs.shape[2:], rows[:, :4], image.shape[:2])
                rows = rows[torch.argsort(rows[:, 4], descending=True, stable=True)]
                results.append(rows.cpu().numpy().astype(np.float32))
        return results

    def detect_series_slices(self, volume: np.ndarray, zs: Sequence[int] | None = None, **kwargs) -> list[np.ndarray]:
        """Detections on slices `zs` (default: all) of a cached volume, stacked with `spec.offsets`."""
        zs = list(range(volume.shape[0]) if zs is None else zs)
        step = kwargs.get("batch_size", 32)  # stack one batch at a time, not the whole volume
        return [rows for start in range(0, len(zs), step)
                for rows in self.detect([slice_stack(volume, z, self.spec.offsets) for z in zs[start:start + step]],
                                        **kwargs)]

    def detect_mean(self, mean_image: np.ndarray, **kwargs) -> np.ndarray:
        """Detections on a series' cached mean image (every channel the same)."""
        channels = int(getattr(self.net, "yaml", {}).get("channels", 3))
        return self.detect([mean_stack(mean_image, channels)], **kwargs)[0]
