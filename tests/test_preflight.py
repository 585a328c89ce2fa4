"""Preflight: each check names the config key and the path; a good config passes fast; a bad run stops at once."""

from __future__ import annotations

import os
from pathlib import Path
import time
from types import SimpleNamespace

from hydra import compose, initialize_config_dir
import pytest

from iad import preflight as pf
from iad.preflight import Problem, run_preflight
from iad.utils.config import CONFIG_DIR
from tests.training_helpers import run_train

DEMO_BOUND_S = 1.0  # generous: the demo's checks take ~15 ms (no torch, no timm)


def compose_config(name: str, overrides: list[str]):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose(name, overrides=overrides)


def train_cfg(tmp_path: Path, *overrides: str):
    return compose_config("train", [f"paths.data_dir={tmp_path}/data", f"paths.log_dir={tmp_path}/logs",
                                    f"paths.output_dir={tmp_path}/logs/run", *overrides])


def fatal(problems: list[Problem]) -> dict[str, Problem]:
    return {p.key: p for p in problems if p.fatal}


def test_demo_passes_fast(tmp_path):
    cfg = train_cfg(tmp_path)
    start = time.perf_counter()
    problems = run_preflight(cfg, "train")
    seconds = time.perf_counter() - start
    print(f"demo preflight: {seconds * 1000:.1f} ms")
    assert problems == []
    assert seconds < DEMO_BOUND_S
    assert not (tmp_path / "data").exists()  # checked, not generated


def test_real_dataset_without_its_tables(tmp_path):
    problems = run_preflight(train_cfg(tmp_path, "dataset=rsna"), "train")
    found = fatal(problems)
    assert str(found["dataset.train_csv"]) == (
        f"dataset.train_csv={tmp_path}/data/rsna/train.csv: the label table does not exist "
        "(put the competition download under paths.data_dir, or set dataset.root)")
    assert found["dataset.series_dir"].path == f"{tmp_path}/data/rsna/series"
    notes = {p.key for p in problems if not p.fatal}
    assert notes == {"dataset.localizers_csv", "dataset.boxes"}  # the run goes on without them


def test_boxes_are_noted_only_when_used(tmp_path):
    problems = run_preflight(train_cfg(tmp_path, "dataset=rsna", "data.use_boxes=false"), "train")
    assert "dataset.boxes" not in {p.key for p in problems}


def test_missing_crop_table(tmp_path):
    found = fatal(run_preflight(train_cfg(tmp_path, f"data.crop_table={tmp_path}/boxes.csv"), "train"))
    assert str(found["data.crop_table"]) == (
        f"data.crop_table={tmp_path}/boxes.csv: the crop table (brain-detector boxes) does not exist")


def test_missing_cleaned_labels_and_boxes(tmp_path):
    (tmp_path / "boxes.csv").write_text("")
    found = fatal(run_preflight(train_cfg(tmp_path, f"data.train_labels={tmp_path}/train_labels.csv",
                                          f"data.extra_boxes={tmp_path}/boxes.csv"), "train"))
    assert "data.train_labels" in found and "does not exist" in str(found["data.train_labels"])
    assert "data.extra_boxes" not in found  # that one exists


def test_crop_table_without_sidecar_is_noted(tmp_path):
    table = tmp_path / "boxes.csv"
    table.write_text("SeriesInstanceUID,x0,y0,x1,y1\n1.2.3,0.1,0.1,0.9,0.9\n")
    problems = run_preflight(train_cfg(tmp_path, f"data.crop_table={table}"), "train")
    notes = [p for p in problems if p.key == "data.crop_table"]
    assert len(notes) == 1 and not notes[0].fatal and "no sidecar boxes.json" in notes[0].message
    table.with_suffix(".json").write_text("{not json")
    found = fatal(run_preflight(train_cfg(tmp_path, f"data.crop_table={table}"), "train"))
    assert "boxes.json: unreadable" in str(found["data.crop_table"])


def test_folder_that_cannot_be_made(tmp_path):
    (tmp_path / "taken").write_text("a file")
    found = fatal(run_preflight(train_cfg(tmp_path, f"paths.cache_dir={tmp_path}/taken/cache"), "train"))
    assert str(found["paths.cache_dir"]) == f"paths.cache_dir={tmp_path}/taken/cache: {tmp_path}/taken is a file, not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_folder(tmp_path):
    (tmp_path / "ro").mkdir(mode=0o500)
    found = fatal(run_preflight(train_cfg(tmp_path, f"paths.log_dir={tmp_path}/ro/logs"), "train"))
    assert "not writable" in str(found["paths.log_dir"])


def test_gpu_asked_for_without_one(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    found = fatal(run_preflight(train_cfg(tmp_path, "trainer=gpu"), "train"))
    assert "gpu asked for but no CUDA GPU is visible" in str(found["trainer.accelerator"])


def test_couplings_are_checked(tmp_path):
    found = fatal(run_preflight(train_cfg(tmp_path, "experiment=exp2_vit_large_384",
                                          "model.backbone_kwargs.img_size=224"), "train"))
    assert "does not match data.input.img_size=384" in str(found["model.backbone_kwargs.img_size"])


def test_missing_pretrained_file(tmp_path):
    found = fatal(run_preflight(train_cfg(tmp_path, f"model.pretrained_file={tmp_path}/w.safetensors"), "train"))
    assert str(found["model.pretrained_file"]) == f"model.pretrained_file={tmp_path}/w.safetensors: does not exist"


def hub_cache(monkeypatch, tmp_path: Path) -> Path:
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_pretrained_weights_not_cached_offline(tmp_path, monkeypatch):
    cache = hub_cache(monkeypatch, tmp_path)
    found = fatal(run_preflight(train_cfg(tmp_path, "model.backbone=test_resnet", "model.pretrained=true"), "train"))
    message = str(found["model.backbone"])
    assert message.startswith("model.backbone=test_resnet: pretrained weights for 'test_resnet' "
                              "(timm/test_resnet.r160_in1k/model.safetensors or pytorch_model.bin) are not in the local cache")
    assert str(cache) in message and "model.pretrained_file" in message and "HF_HUB_OFFLINE" in message


def test_pretrained_weights_found_in_cache(tmp_path, monkeypatch):
    cache = hub_cache(monkeypatch, tmp_path)
    repo = cache / "models--timm--test_resnet.r160_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "model.safetensors").write_bytes(b"weights")
    assert run_preflight(train_cfg(tmp_path, "model.backbone=test_resnet", "model.pretrained=true"), "train") == []


@pytest.mark.parametrize(("encoder", "source"), [
    ("resnet18", "smp-hub/resnet18.imagenet/config.json + model.safetensors"),  # smp's own weights
    ("tu-resnet10t", "timm/resnet10t.c3_in1k/model.safetensors or pytorch_model.bin"),  # a timm encoder: timm's
])
def test_smp_encoder_weights_not_cached_offline(tmp_path, monkeypatch, encoder, source):
    hub_cache(monkeypatch, tmp_path)
    found = fatal(run_preflight(train_cfg(tmp_path, "experiment=demo_clsseg", f"model.encoder_name={encoder}",
                                          "model.pretrained=true"), "train"))
    assert f"pretrained weights for {encoder!r} ({source}" in str(found["model.encoder_name"])


def test_disk_too_small_for_the_checkpoints(tmp_path, monkeypatch):
    monkeypatch.setattr(pf.shutil, "disk_usage", lambda path: SimpleNamespace(free=1024**2))
    found = fatal(run_preflight(train_cfg(tmp_path), "train"))
    message = str(found["paths.output_dir"])
    assert message.startswith(f"paths.output_dir={tmp_path}/logs/run: 1.0 MiB free, the checkpoints need about ")


def test_checkpoint_size_counts_ema_and_adam(tmp_path):
    ctx = pf.Context(train_cfg(tmp_path, "model.ema_decay=0.995"), "train")
    assert pf.checkpoint_bytes(ctx, 1000) == 1000 * 4 * (1 + 1 + 2) * 2  # weights + EMA + Adam moments, best + last


def test_ensemble_members(tmp_path):
    (tmp_path / "unfinished").mkdir()
    cfg = compose_config("ensemble", ["ensemble=custom", f"+ensemble.members.a.path={tmp_path}/nowhere",
                                      f"+ensemble.members.b.path={tmp_path}/unfinished"])
    found = fatal(run_preflight(cfg, "ensemble"))
    assert str(found["ensemble.members.a.path"]).startswith(f"ensemble.members.a.path={tmp_path}/nowhere: does not exist")
    assert str(found["ensemble.members.b.path"]).startswith(f"ensemble.members.b.path={tmp_path}/unfinished: has no oof.csv")


def test_predict_inputs(tmp_path):
    (tmp_path / "empty_sweep").mkdir()
    cfg = compose_config("predict", [f"model_path={tmp_path}/empty_sweep", f"output_dir={tmp_path}/out"])
    found = fatal(run_preflight(cfg, "predict"))
    assert str(found["model_path"]).startswith(f"model_path={tmp_path}/empty_sweep: holds no checkpoint")
    assert str(found["input"]) == "input: mode=submission needs input=<series folder or folder of series>"
    (tmp_path / "no_series").mkdir()
    cfg = compose_config("predict", [f"model_path={tmp_path}/nowhere", f"input={tmp_path}/no_series"])
    found = fatal(run_preflight(cfg, "predict"))
    assert str(found["model_path"]) == f"model_path={tmp_path}/nowhere: does not exist"
    assert str(found["input"]).startswith(f"input={tmp_path}/no_series: input {tmp_path}/no_series holds no series")


def test_prepare_real_dataset(tmp_path):
    cfg = compose_config("prepare", [f"paths.data_dir={tmp_path}", "dataset=rsna"])
    assert {"dataset.train_csv", "dataset.series_dir"} <= set(fatal(run_preflight(cfg, "prepare")))


def test_preflight_only_prints_the_plan(tmp_path):
    out = run_train(["preflight_only=true", f"paths.data_dir={tmp_path}/data", f"paths.log_dir={tmp_path}/logs"], timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    for line in ("ok       dataset", "ok       disk", "experiment: demo", "fold: 0",
                 f"run folder: {tmp_path}/logs/train/runs/demo/fold_0", "checkpoints: about"):
        assert line in out.stdout
    assert not (tmp_path / "data").exists()  # no data generated, nothing trained
    assert not (tmp_path / "logs/train/runs/demo/fold_0/identity.json").exists()


def test_bad_run_stops_with_every_problem(tmp_path):
    args = ["experiment=exp2_vit_large_384", "trainer=cpu", f"paths.data_dir={tmp_path}/data",
            f"paths.log_dir={tmp_path}/logs", f"data.crop_table={tmp_path}/crops.csv"]
    out = run_train(args, timeout=300, env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    assert out.returncode != 0
    assert "preflight: 4 problem(s), nothing was started" in out.stderr
    for key in ("dataset.train_csv", "dataset.series_dir", "data.crop_table",
                "model.backbone=vit_large_patch14_clip_336.openai_ft_in12k_in1k"):
        assert key in out.stderr
    assert "Seed set" not in out.stderr + out.stdout  # no model built, no data touched
    assert not (tmp_path / "data").exists()
