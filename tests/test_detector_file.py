"""The weights-only detector file: export → load gives the same network; pickles and other files are refused;
`detect` letterboxes as ultralytics does and maps boxes back to the input image's pixels.

The round trip uses a real (randomly initialised) yolo11n built from ultralytics' bundled yaml. The
post-processing is checked with a stand-in network whose raw output encodes known boxes in
letterboxed pixels: no trained detector is involved, so nothing here says a detector finds anything.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from iad.contract import (
    DETECTOR_FORMAT,
    DETECTOR_KEY,
    FORMAT_KEY,
    MODEL_FILE_FORMAT,
    STATE_DICT_KEY,
    ContractError,
    DetectorSpec,
)
from iad.detection.detector import METRICS_KEY, LoadedDetector, export_detector, load_detector, read_detector_file
from iad.preprocessing.normalize import PreprocessConfig
from iad.utils.weights import UnsafeModelFile

ultralytics = pytest.importorskip("ultralytics")

SPEC = DetectorSpec(task="brain", classes=("brain", "abnormal"), imgsz=64, image="mean",
                    preprocess=PreprocessConfig(image_size=48))


@pytest.fixture(scope="module")
def yolo() -> nn.Module:
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    return DetectionModel("yolo11n.yaml", nc=2, verbose=False).eval()


@pytest.fixture(scope="module")
def detector_path(yolo, tmp_path_factory):
    return export_detector(yolo, SPEC, tmp_path_factory.mktemp("det") / "detector.pt", metrics={"mAP50": 0.5})


def test_export_is_plain_data_with_exact_weights(yolo, detector_path):
    blob = torch.load(detector_path, weights_only=True)
    assert blob[FORMAT_KEY] == DETECTOR_FORMAT
    assert DetectorSpec.from_dict(blob[DETECTOR_KEY]) == SPEC
    assert blob[METRICS_KEY] == {"mAP50": 0.5}
    state = yolo.state_dict()
    assert blob[STATE_DICT_KEY].keys() == state.keys()
    assert all(torch.equal(blob[STATE_DICT_KEY][k], v) for k, v in state.items())


def test_loaded_detector_computes_what_the_original_does(yolo, detector_path):
    loaded = load_detector(detector_path)
    assert loaded.spec == SPEC and loaded.net.names == {0: "brain", 1: "abnormal"}
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        assert torch.allclose(loaded.net(x)[0], yolo(x)[0], atol=1e-4, rtol=1e-4)  # loaded one is fused
    images = np.random.default_rng(0).integers(0, 255, (3, 40, 56, 3), dtype=np.uint8)
    original = LoadedDetector(copy.deepcopy(yolo).fuse(verbose=False).eval(), SPEC)
    for ours, theirs in zip(loaded.detect(images), original.detect(images)):
        assert ours.shape == theirs.shape and ours.shape[1] == 6 and len(ours) > 0
        np.testing.assert_allclose(ours, theirs, atol=1e-4)
        assert (np.diff(ours[:, 4]) <= 0).all()  # by confidence
        assert (ours[:, [0, 2]] >= 0).all() and (ours[:, [0, 2]] <= 56).all()
        assert (ours[:, [1, 3]] >= 0).all() and (ours[:, [1, 3]] <= 40).all()


def test_a_pickled_model_is_refused(yolo, tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"model": yolo}, path)  # as ultralytics' own .pt files: the whole module pickled
    with pytest.raises(UnsafeModelFile, match="pickled.pt"):
        load_detector(path)


def test_another_file_is_refused(tmp_path):
    path = tmp_path / "classifier.pt"
    torch.save({FORMAT_KEY: MODEL_FILE_FORMAT, STATE_DICT_KEY: {}}, path)
    with pytest.raises(ContractError, match="classifier.pt.*not a detector file"):
        read_detector_file(path)
    path.write_bytes(b"not a torch file")
    with pytest.raises(ContractError, match="classifier.pt"):
        read_detector_file(path)


def test_weights_of_another_architecture_are_refused(yolo, detector_path, tmp_path):
    blob = torch.load(detector_path, weights_only=True)
    blob[STATE_DICT_KEY].pop(next(iter(blob[STATE_DICT_KEY])))
    torch.save(blob, tmp_path / "cut.pt")
    with pytest.raises(ContractError, match="cut.pt.*do not fit"):
        load_detector(tmp_path / "cut.pt")


class BoxNet(nn.Module):
    """Stands in for a YOLO: its raw output (B, 4 + nc, N) holds fixed xywh boxes (letterboxed pixels) and scores."""

    def __init__(self, boxes_xywh, scores):
        super().__init__()
        self.stride = torch.tensor([8.0, 16.0, 32.0])
        self.weight = nn.Parameter(torch.zeros(1, 3, 1, 1))
        self.boxes, self.scores = torch.tensor(boxes_xywh).float(), torch.tensor(scores).float()
        self.seen = None

    def forward(self, x):
        self.seen = x.clone()
        out = torch.cat([self.boxes, self.scores], dim=1).T  # (4 + nc, N)
        return out[None].repeat(len(x), 1, 1), {}


def test_detect_maps_letterboxed_boxes_back_to_input_pixels():
    height, width, size = 100, 200, 64
    gain = size / max(height, width)  # letterbox: scale the long side to `size`, pad the short one, centred
    pad_y = (size - round(height * gain)) / 2
    wanted = np.array([[50.0, 25.0, 150.0, 75.0], [10.0, 60.0, 30.0, 90.0]])  # input pixels, xyxy
    boxed = wanted * gain + np.array([0, pad_y, 0, pad_y])
    xywh = np.stack([(boxed[:, 0] + boxed[:, 2]) / 2, (boxed[:, 1] + boxed[:, 3]) / 2,
                     boxed[:, 2] - boxed[:, 0], boxed[:, 3] - boxed[:, 1]], axis=1)
    net = BoxNet(xywh, [[0.1, 0.6], [0.8, 0.05]]).eval()  # box 0: class 1 at 0.6; box 1: class 0 at 0.8
    detector = LoadedDetector(net, DetectorSpec(task="brain", classes=("brain", "abnormal"), imgsz=size,
                                                image="mean", preprocess=PreprocessConfig()))
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[..., 1], image[..., 2] = 100, 200  # channel c of the image is channel c of the network input
    rows = detector.detect(image[None], conf=0.3)[0]
    assert rows.dtype == np.float32 and rows.shape == (2, 6)
    np.testing.assert_allclose(rows[:, :4], wanted[[1, 0]], atol=1.0)  # within a pixel of letterbox rounding
    np.testing.assert_allclose(rows[:, 4:], [[0.8, 0], [0.6, 1]], atol=1e-6)
    seen = net.seen[0]
    assert seen.shape == (3, size, size)
    middle = seen[:, size // 2, size // 2]
    np.testing.assert_allclose(middle.numpy(), [0, 100 / 255, 200 / 255], atol=1e-6)
    assert torch.allclose(seen[:, 0, size // 2], torch.full((3,), 114 / 255))  # padding rows: ultralytics grey
