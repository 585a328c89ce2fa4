"""Cost controls (slice stride, batch size, precision, folds, devices), their spec keys, and the cost table."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from iad.contract import InputSpec, ModelSpec, SliceInputSpec
from iad.dicom import scan_series
from iad.ensembling.spec import COST_DEFAULTS, SpecError, make_spec, validate_spec
from iad.inference import LoadedMember, LoadedModel, Predictor
from iad.inference.cost import measure_cost, representative_series
from iad.inference.predictor import CostControls, select_folds
from iad.labels import LABEL_COLS
from iad.preprocessing import PreprocessConfig
from iad.preprocessing.cache import normalised_volume, read_stored
from tests.dicom_helpers import write_slice

PREPROCESS = PreprocessConfig(image_size=48)
N_SLICES = 10


class RecordingNet(nn.Module):
    """A small conv net that records how many images each forward pass saw and their logits."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3)
        self.head = nn.Linear(8, len(LABEL_COLS))
        self.batches: list[int] = []
        self.logits: list[torch.Tensor] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.batches.append(len(images))
        logits = self.head(torch.relu(self.conv(images)).mean(dim=(2, 3)))
        self.logits.append(logits.detach().float())
        return logits


def _model() -> LoadedModel:
    spec = InputSpec(preprocess=PREPROCESS, slice_input=SliceInputSpec(img_size=32), label_prevalence=[0.25] * 14)
    return LoadedModel(net=RecordingNet().eval(), model_spec=ModelSpec("timm_classifier", {}), input_spec=spec, config={})


def _predictor(**cost) -> Predictor:
    return Predictor([LoadedMember("m", 1.0, [_model()], cost=CostControls(**cost))], batch_size=4, read_workers=1)


@pytest.fixture(scope="module")
def volume(tmp_path_factory) -> tuple[np.ndarray, np.ndarray]:
    folder = tmp_path_factory.mktemp("cost") / "s"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for z in range(N_SLICES):
        write_slice(folder / f"{z:02d}.dcm", rng.integers(0, 200, (40, 40)).astype(np.int16), position=(0, 0, z))
    return normalised_volume(read_stored(scan_series(folder)), PREPROCESS)


def _probs(predictor: Predictor, volume) -> np.ndarray:
    return np.array(list(predictor.predict_volume(*volume, PREPROCESS.key).values()))


def test_slice_stride_scores_every_kth_slice_and_takes_their_max(volume) -> None:
    full, strided = _predictor(), _predictor(slice_stride=3)
    everyone = _probs(full, volume)
    some = _probs(strided, volume)
    per_slice = torch.sigmoid(torch.cat(full.members[0].models[0].net.logits)).numpy()
    assert sum(strided.members[0].models[0].net.batches) == len(range(0, N_SLICES, 3))
    np.testing.assert_allclose(some, per_slice[::3].max(axis=0), rtol=1e-6)
    np.testing.assert_allclose(everyone, per_slice.max(axis=0), rtol=1e-6)


def test_member_batch_size_changes_batches_not_results(volume) -> None:
    default, small = _predictor(), _predictor(batch_size=3)
    np.testing.assert_allclose(_probs(small, volume), _probs(default, volume), rtol=1e-5)
    assert default.members[0].models[0].net.batches == [4, 4, 2]
    assert small.members[0].models[0].net.batches == [3, 3, 3, 1]


def test_bf16_autocast_on_cpu_is_close_to_float32(volume) -> None:
    bf16 = _predictor(precision="bf16")
    close = _probs(bf16, volume)
    np.testing.assert_allclose(close, _probs(_predictor(), volume), atol=2e-2)
    assert bf16.members[0].models[0].net.logits[0].dtype == torch.float32  # recorded after .float()


def test_channels_last_is_ignored_on_cpu(volume) -> None:
    np.testing.assert_allclose(_probs(_predictor(channels_last=True), volume), _probs(_predictor(), volume))


def test_fold_subsets_choose_checkpoints_by_index() -> None:
    paths = [Path(f"fold_{i}.pt") for i in range(5)]
    assert select_folds(paths, "all", "m") == paths
    assert select_folds(paths, [0, 3], "m") == [paths[0], paths[3]]
    with pytest.raises(ValueError, match=r"folds \[7\]"):
        select_folds(paths, [1, 7], "m")


def _member(**cost) -> dict:
    return {"name": "a", "path": "x", "weight": 1.0, "hflip_tta": False, "center_crop": 0.75, **cost}


def test_spec_records_cost_controls_and_old_specs_still_load() -> None:
    spec = make_spec([_member()], oof={})
    assert {k: spec["members"][0][k] for k in COST_DEFAULTS} == COST_DEFAULTS  # written explicitly
    old = {**spec, "members": [_member()]}  # a spec from before the controls existed
    assert validate_spec(old)["members"][0] == _member()
    chosen = make_spec([_member(slice_stride=2, folds=[0, 2], precision="bf16", batch_size=16)], oof={})
    assert chosen["members"][0]["folds"] == [0, 2] and chosen["members"][0]["precision"] == "bf16"


@pytest.mark.parametrize("bad", [{"slice_stride": 0}, {"folds": []}, {"folds": "some"}, {"precision": "int8"},
                                 {"batch_size": 0}, {"channels_last": "yes"}])
def test_spec_rejects_invalid_cost_controls(bad) -> None:
    with pytest.raises(SpecError, match=next(iter(bad))):
        make_spec([_member(**bad)], oof={})


def test_cost_table_times_each_stage_member_and_model(tmp_path: Path) -> None:
    series = representative_series(None, tmp_path)
    assert len(list(series.glob("*.dcm"))) == 200
    two_folds = LoadedMember("m", 1.0, [_model(), _model()], cost=CostControls(slice_stride=4))
    predictor = Predictor([two_folds, replace(two_folds, name="n", models=[_model()])], batch_size=16, read_workers=1)
    table = measure_cost(predictor, series, repeats=1)
    assert table.n_slices == 200 and set(table.stages) == {"read", "preprocess"}
    assert set(table.members) == {"m", "n"} and set(table.models) == {("m", 0), ("m", 1), ("n", 0)}
    assert all(seconds > 0 for seconds in [*table.stages.values(), *table.members.values(), *table.models.values()])
    assert table.per_series == pytest.approx(sum(table.stages.values()) + sum(table.members.values()))
    assert set(table.as_dict()["models"]) == {"m/0", "m/1", "n/0"}
    text = table.format(n_series=100)
    assert "expected for 100 series" in text and "fold model 1" in text


def test_cost_controls_from_settings_ignore_folds_and_read_yaml_precision() -> None:
    controls = CostControls.from_settings({"precision": 32, "folds": [0], "slice_stride": 2})
    assert controls == CostControls(slice_stride=2, precision="32")


def test_invalid_cost_overrides_fail_before_loading_models(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="slice_stride 0"):
        Predictor.load(tmp_path / "no-such-run", cost={"slice_stride": 0})
