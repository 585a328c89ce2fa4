"""The run/checkpoint contract (iad.contract) and the network builders inference relies on (iad.models.nets)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from iad.contract import ContractError, InputSpec, ModelSpec, SliceInputSpec, fold_name, fold_runs
from iad.labels import LABEL_COLS
from iad.models.nets import build_net, net_family
from iad.preprocessing import PreprocessConfig
from iad.utils.env import PROJECT_ROOT


def input_spec(**changes) -> InputSpec:
    settings = dict(preprocess=PreprocessConfig(ct_window=(300, 1500), image_size=64),
                    slice_input=SliceInputSpec(48, (-2, 0, 2)), head_crop=False, val_center_crop=0.75,
                    masks={"radius_mm": 4.0, "kind": "disk"}, label_prevalence=[0.1] * len(LABEL_COLS))
    return InputSpec(**{**settings, **changes})


def test_input_spec_round_trips_through_plain_data():
    spec = input_spec()
    blob = spec.to_dict()
    assert InputSpec.from_dict(blob) == spec
    assert blob["preprocess"]["ct_window"] == [300.0, 1500.0] and blob["slice_input"]["offsets"] == [-2, 0, 2]
    assert spec.preprocess.key == InputSpec.from_dict(blob).preprocess.key  # same cache


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda blob: blob.pop("slice_input"), "slice_input"),
    (lambda blob: blob.update(unexpected=1), "unknown \\['unexpected'\\]"),
    (lambda blob: blob["preprocess"].update(ct_window=[40, -1]), "ct_window"),
])
def test_input_spec_names_what_is_wrong(mutate, message):
    blob = input_spec().to_dict()
    mutate(blob)
    with pytest.raises(ValueError, match=message):
        InputSpec.from_dict(blob, source="run/best.ckpt")


def test_another_label_order_is_refused():
    spec = input_spec(label_cols=list(reversed(LABEL_COLS)))
    with pytest.raises(ContractError, match="label order"):
        spec.check_labels("bundle/fold_0.pt")
    input_spec().check_labels()


def test_fold_names_and_runs(tmp_path):
    assert fold_name(3) == "fold_3" and fold_name(None) == fold_name("null") == "full"
    for name in ("fold_1", "fold_0", "full"):
        (tmp_path / name).mkdir()
    (tmp_path / "fold_9.txt").write_text("stray file")
    assert [p.name for p in fold_runs(tmp_path)] == ["fold_0", "fold_1"]


@pytest.mark.parametrize("spec", [
    ModelSpec("timm_classifier", {"backbone": "resnet10t", "in_chans": 3, "pretrained": True,
                                  "pretrained_file": "/nowhere/weights.safetensors", "backbone_kwargs": {}}),
    ModelSpec("smp_fpn", {"encoder_name": "resnet18", "in_chans": 3, "classes": 1, "decoder": {}, "cls_head": {},
                          "pretrained": True, "pretrained_file": "/nowhere/encoder.pth"}),
])
def test_inference_build_ignores_pretrained_settings(spec):
    """What inference does: whatever the run asked for, no download and no local file is touched."""
    net = build_net(spec, pretrained=False).eval()
    with torch.no_grad():
        logits = net_family(spec.family).class_logits(net, torch.zeros(1, 3, 64, 64))
    assert logits.shape == (1, len(LABEL_COLS))
    with pytest.raises(FileNotFoundError, match="model.pretrained_file=/nowhere"):
        build_net(spec)


def test_smp_encoder_loads_a_local_weights_file(tmp_path):
    args = {"encoder_name": "resnet18", "in_chans": 3, "classes": 1, "decoder": {}, "cls_head": {}, "pretrained": False}
    source = build_net(ModelSpec("smp_fpn", args))
    torch.save(source.encoder.state_dict(), tmp_path / "encoder.pth")
    loaded = build_net(ModelSpec("smp_fpn", {**args, "pretrained_file": str(tmp_path / "encoder.pth")}))
    fresh = build_net(ModelSpec("smp_fpn", args))
    key = "conv1.weight"
    assert torch.equal(loaded.encoder.state_dict()[key], source.encoder.state_dict()[key])
    assert not torch.equal(fresh.encoder.state_dict()[key], source.encoder.state_dict()[key])


def test_offline_pretrained_names_the_cache_and_the_local_file_option(tmp_path):
    code = ("from iad.contract import ModelSpec; from iad.models.nets import build_net; "
            "build_net(ModelSpec('timm_classifier', {'backbone': 'resnet10t', 'pretrained': True}))")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                            cwd=PROJECT_ROOT)
    assert result.returncode != 0
    assert "PretrainedWeightsUnavailable" in result.stderr and "model.pretrained_file" in result.stderr
    assert "timm/resnet10t." in result.stderr  # the repository it would have read
    assert str(tmp_path / "hf") in result.stderr


def test_run_names_carry_the_result_changing_overrides():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from iad.utils.config import MAX_TAG_CHARS, run_name

    assert run_name("exp2", ["experiment=exp2", "data.fold=3", "paths.data_dir=/data", "logger=wandb"]) == "exp2"
    assert run_name("exp2", ["model.optimizer.lr=1e-3", "seed=1"]) == run_name("exp2", ["seed=1", "model.optimizer.lr=1e-3"])
    assert run_name("exp2", ["model.optimizer.lr=1e-3"]) == "exp2@model.optimizer.lr:0.001"  # Hydra's canonical value
    # as the multirun's folder is named from the typed overrides and each job's from Hydra's re-serialised ones
    assert run_name("exp2", ["data.head_crop=false"]) == run_name("exp2", ["data.head_crop=False"])
    assert run_name("exp2", ["model.optimizer.lr=1e-3"]) == run_name("exp2", ["model.optimizer.lr=0.0010"])
    assert run_name("exp2", ["seed=1", "data.input.offsets=[-2,0,2]"]) == "exp2@data.input.offsets:_-2_0_2_+seed:1"
    assert run_name("exp2", ["seed=1", "seed=2"]) == run_name("exp2", ["seed=2"])  # the last value wins
    assert run_name("exp2", ["model.optimizer.lr=1e-3,2e-3", "data.fold=0,1"]) == "exp2"  # sweep lists: per job
    folder = run_name("exp2", ["model.pretrained_file=/w/vit.safetensors", "~model.mixup"])
    assert folder == "exp2@model.mixup:deleted+model.pretrained_file:_w_vit.safetensors"
    OverridesParser.create().parse_override(f"model_path=/logs/{folder}")  # usable unquoted on a command line
    long = run_name("exp2", [f"model.backbone_kwargs.k{i}={i}" for i in range(30)])
    assert len(long) <= len("exp2@") + MAX_TAG_CHARS
    assert long != run_name("exp2", [f"model.backbone_kwargs.k{i}={i}" for i in range(31)])
