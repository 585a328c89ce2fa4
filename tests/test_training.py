"""The training spine end to end: config composition, fast_dev_run, real multirun sweeps, resume, W&B."""

from __future__ import annotations

import json
from pathlib import Path
import re
import signal
import subprocess
import sys
import time

from hydra import compose, initialize_config_dir
import numpy as np
import pandas as pd
import pytest
import torch

from iad.contract import CONFIG_KEY, INPUT_KEY, MODEL_KEY, VARIANT_KEY, WEIGHTS_KEY, InputSpec, ModelSpec, best_checkpoint
from iad.evaluation import read_oof
from iad.inference.loading import read_model_file
from iad.labels import LABEL_COLS
from iad.utils.config import CONFIG_DIR
from iad.utils.env import PROJECT_ROOT
from tests.training_helpers import configuration_dir, run_train, tiny_overrides

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


def compose_train(overrides: list[str]):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=False)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(experiment, tmp_path):
    cfg = compose_train([f"experiment={experiment}", f"paths.output_dir={tmp_path}"])
    assert cfg.name == experiment
    if cfg.engine == "ultralytics":  # the detectors (tests/test_detection.py)
        assert cfg.data._target_.endswith("DetectorData") and cfg.model._target_.endswith("YoloModel")
        return
    expected = "TOFMRADataModule" if cfg.get("external") and cfg.data.get("external") is None else "RSNASliceDataModule"
    assert cfg.data._target_.endswith(expected) and cfg.model._target_.startswith("iad.models")
    assert cfg.model.optimizer._partial_ is True


def test_reference_settings_in_real_experiments(tmp_path):
    vit = compose_train(["experiment=exp2_vit_large_384", f"paths.output_dir={tmp_path}"])
    assert vit.model.backbone == "vit_large_patch14_clip_336.openai_ft_in12k_in1k" and vit.model.pretrained
    assert vit.data.input.img_size == 384 and vit.data.batch_size == 96
    assert vit.model.optimizer._target_ == "torch.optim.Adam" and vit.model.optimizer.lr == 1e-5
    assert "Cosine" in vit.model.scheduler._target_ and vit.trainer.max_epochs == 15
    assert vit.model.mixup == {"prob": 0.5, "alpha": 0.5} and vit.model.ema_decay == 0.995
    assert vit.trainer.precision == "bf16-mixed" and vit.dataset.name == "rsna"
    eva_full = compose_train(["experiment=exp2_eva_large_384_full", f"paths.output_dir={tmp_path}"])
    assert eva_full.model.backbone == "eva_large_patch14_336.in22k_ft_in22k_in1k"
    assert eva_full.trainer.max_epochs == 10 and eva_full.data.fold is None and eva_full.data.holdout_series == 100
    vit_full = compose_train(["experiment=exp2_vit_large_384_full", f"paths.output_dir={tmp_path}"])
    assert vit_full.trainer.max_epochs == 4


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["exp2_vit_large_384", "exp2_eva_large_384"])
def test_real_models_construct_offline(experiment, tmp_path):
    from hydra.utils import instantiate

    cfg = compose_train([f"experiment={experiment}", "model.pretrained=false", f"paths.output_dir={tmp_path}"])
    model = instantiate(cfg.model)
    with torch.no_grad():
        out = model.net(torch.zeros(1, 3, 384, 384))
    assert out.shape == (1, len(LABEL_COLS))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("train")


def test_smoke_runs_never_leave_state_a_real_run_picks_up(workspace):
    args = [*tiny_overrides(workspace / "data", workspace / "logs"), "name=fdr"]
    for debug in (["debug=fast_dev_run"], ["debug=limit", "trainer.limit_val_batches=1.0"]):  # tiny: 1 val batch
        out = run_train([*args, *debug])
        assert out.returncode == 0, out.stderr[-3000:]
        run_dir = configuration_dir(workspace / "logs", "runs", [*args, *debug], task="debug") / "fold_0"
        assert run_dir.is_dir()
    assert (run_dir / "checkpoints" / "last.ckpt").exists()  # debug=limit trains for real, in logs/debug/
    real = configuration_dir(workspace / "logs", "runs", args) / "fold_0"
    assert not real.exists()
    out = run_train(args)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming" not in out.stdout and json.loads((real / "result.json").read_text())["epochs"] == 1


@pytest.fixture(scope="module")
def sweep(workspace) -> tuple[Path, subprocess.CompletedProcess]:
    args = ["-m", *tiny_overrides(workspace / "data", workspace / "logs"), "data.fold=0,1", "name=sweep2",
            "model.ema_decay=0.99"]  # the real experiments keep an EMA copy: checkpoints must carry it
    out = run_train(args)
    return configuration_dir(workspace / "logs", "sweeps", args), out


def test_two_fold_multirun_outputs(sweep):
    sweep_dir, out = sweep
    assert out.returncode == 0, out.stderr[-3000:]
    for fold in (0, 1):
        run = sweep_dir / f"fold_{fold}"
        assert (run / "checkpoints" / "best.ckpt").exists() and (run / "checkpoints" / "last.ckpt").exists()
        oof = read_oof(run / "oof.csv")
        assert set(oof["fold"]) == {fold}
        assert ((oof[list(LABEL_COLS)] >= 0) & (oof[list(LABEL_COLS)] <= 1)).all().all()
        assert json.loads((run / "result.json").read_text())["fold"] == fold
        assert (run / ".hydra" / "config.yaml").exists()
    merged = read_oof(sweep_dir / "oof.csv")
    per_fold = pd.concat([read_oof(sweep_dir / f"fold_{k}" / "oof.csv") for k in (0, 1)])
    assert sorted(merged["SeriesInstanceUID"]) == sorted(per_fold["SeriesInstanceUID"])
    cv = json.loads((sweep_dir / "cv.json").read_text())
    assert set(cv["folds"]) == {"fold_0", "fold_1"} and set(cv["per_label"]) == set(LABEL_COLS)
    assert set(cv["by_group"]) <= {"CTA", "MRA", "MRI T2", "MRI T1post"}
    assert "all folds (OOF)" in out.stdout


def test_checkpoint_records_what_inference_needs(sweep):
    sweep_dir, _ = sweep
    ckpt = read_model_file(best_checkpoint(sweep_dir / "fold_0"))  # weights-only: plain data and tensors
    spec = InputSpec.from_dict(ckpt[INPUT_KEY])
    assert spec.label_cols == tuple(LABEL_COLS) and len(spec.label_prevalence) == len(LABEL_COLS)
    assert ckpt[VARIANT_KEY] in ("raw", "ema")
    assert ckpt[WEIGHTS_KEY] == {"raw": "net.", "ema": "ema.module."}[ckpt[VARIANT_KEY]]
    assert ckpt[CONFIG_KEY]["data"]["input"]["img_size"] == 32 == spec.slice_input.img_size
    assert spec.slice_input.offsets == (-1, 0, 1) and spec.preprocess.ct_window == (40.0, 450.0)
    model_spec = ModelSpec.from_dict(ckpt[MODEL_KEY])
    assert model_spec.family == "timm_classifier" and model_spec.net_args["backbone"] == ckpt[CONFIG_KEY]["model"]["backbone"]
    assert any(k.startswith("ema.module.") for k in ckpt["state_dict"])


def test_rerun_skips_finished_folds(sweep, workspace):
    sweep_dir, _ = sweep
    before = (sweep_dir / "fold_0" / "checkpoints" / "best.ckpt").stat().st_mtime_ns
    # the same configuration, overrides in another order: the same run folders
    out = run_train(["-m", "model.ema_decay=0.99", "name=sweep2", "data.fold=1,0",
                     *reversed(tiny_overrides(workspace / "data", workspace / "logs"))])
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("already finished") == 2
    assert (sweep_dir / "fold_0" / "checkpoints" / "best.ckpt").stat().st_mtime_ns == before


def test_sweep_over_a_parameter_gives_one_sweep_per_configuration(workspace):
    tiny = tiny_overrides(workspace / "data", workspace / "logs")
    out = run_train(["-m", *tiny, "data.fold=0,1", "name=lrs", "model.optimizer.lr=1e-3,2e-3"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert "already finished" not in out.stdout  # the second learning rate is not mistaken for the first
    sweeps = [p for p in (workspace / "logs" / "train" / "sweeps").glob("lrs@*") if (p / "cv.json").exists()]
    learning_rates = []
    for sweep_dir in sweeps:
        cv = json.loads((sweep_dir / "cv.json").read_text())
        assert set(cv["folds"]) == {"fold_0", "fold_1"} and all(f["complete"] for f in cv["folds"].values())
        configs = [(sweep_dir / fold / ".hydra" / "config.yaml").read_text() for fold in ("fold_0", "fold_1")]
        (lr,) = {re.search(r"\n    lr: (\S+)", config).group(1) for config in configs}  # one per sweep folder
        learning_rates.append(lr)
        assert sweep_dir.name in out.stdout.split("Configurations of this multirun:")[1]
    assert sorted(learning_rates) == ["0.001", "0.002"]


def test_a_changed_configuration_never_reuses_a_run_folder(sweep, workspace):
    """Folder names carry the overrides; identity.json catches what they cannot (an edited experiment file)."""
    sweep_dir, _ = sweep
    identity_file = sweep_dir / "fold_0" / "identity.json"
    identity = json.loads(identity_file.read_text())
    edited = dict(identity, config_hash="0" * 16, settings={**identity["settings"], "model.optimizer.lr": 0.5})
    identity_file.write_text(json.dumps(edited))
    before = (sweep_dir / "fold_0" / "result.json").read_text()
    out = run_train(["-m", *tiny_overrides(workspace / "data", workspace / "logs"), "data.fold=0", "name=sweep2",
                     "model.ema_decay=0.99"])
    identity_file.write_text(json.dumps(identity))
    assert out.returncode != 0
    assert "another configuration" in out.stderr and "model.optimizer.lr: 0.5" in out.stderr
    assert (sweep_dir / "fold_0" / "result.json").read_text() == before


def test_cv_rebuild_command(sweep):
    sweep_dir, _ = sweep
    (sweep_dir / "cv.json").unlink()
    out = subprocess.run([sys.executable, "-m", "iad.evaluation.cv", str(sweep_dir)], capture_output=True, text=True,
                         cwd=PROJECT_ROOT)
    assert out.returncode == 0, out.stderr
    assert (sweep_dir / "cv.json").exists() and "fold_1" in out.stdout


def test_interrupted_fold_resumes_from_last_checkpoint_keeping_metric_rows(workspace):
    args = [*tiny_overrides(workspace / "data", workspace / "logs"), "name=resume", "trainer.max_epochs=3"]
    run_dir = configuration_dir(workspace / "logs", "runs", args) / "fold_0"
    last = run_dir / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen([sys.executable, str(PROJECT_ROOT / "train.py"), *args], cwd=PROJECT_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**__import__("os").environ, "IAD_OFFLINE": "1"})
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert last.exists() and not (run_dir / "result.json").exists(), "the run was not interrupted mid-way"
    metrics = run_dir / "csv" / "metrics.csv"
    assert 0 in set(pd.read_csv(metrics)["epoch"].dropna())
    out = run_train(args)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming from" in out.stdout
    result = json.loads((run_dir / "result.json").read_text())
    assert result["resumed_from_epoch"] is not None and result["epochs"] == 3
    assert set(pd.read_csv(metrics)["epoch"].dropna()) == {0, 1, 2}  # epoch 0 is only in the killed attempt's rows
    assert not list(run_dir.rglob(".tmp*")) and not list(run_dir.rglob("*.tmp"))

    # a last.ckpt truncated by a kill while saving: named, set aside, and the fold resumes from best.ckpt
    last.write_bytes(last.read_bytes()[:1000])
    (run_dir / "result.json").unlink()
    out = run_train(args)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "last.ckpt is damaged" in out.stdout and "resuming from" in out.stdout and "best.ckpt" in out.stdout
    assert (run_dir / "checkpoints" / "last.ckpt.damaged").exists()
    assert json.loads((run_dir / "result.json").read_text())["epochs"] == 3


def test_failing_fold_keeps_the_others(workspace):
    args = ["-m", *tiny_overrides(workspace / "data", workspace / "logs"), "data.fold=0,9", "name=partial"]
    out = run_train(args)
    sweep_dir = configuration_dir(workspace / "logs", "sweeps", args)
    assert out.returncode != 0
    assert (sweep_dir / "fold_9" / "error.txt").read_text().count("fold 9 not in the fold file") == 1
    assert (sweep_dir / "fold_0" / "result.json").exists()
    merged = read_oof(sweep_dir / "oof.csv")
    assert set(merged["fold"]) == {0}
    assert json.loads((sweep_dir / "cv.json").read_text())["folds"]["fold_9"]["failed"] is True


def test_wandb_offline_run_files(workspace):
    args = [*tiny_overrides(workspace / "data", workspace / "logs"), "logger=wandb", "name=wb"]
    out = run_train(args)
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = configuration_dir(workspace / "logs", "runs", args) / "fold_0"
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("run-*.wandb")) and (runs[0] / "files").is_dir()
    data = (next(runs[0].glob("run-*.wandb"))).read_bytes()
    assert b"val/weighted_auc" in data and b"oof/table" in data
    # the run's config records (JSON values in the offline run file): the resolved config and the run's identity
    assert b'"backbone":"test_resnet"' in data and b'"img_size":32' in data
    identity = json.loads((run_dir / "identity.json").read_text())
    assert f'"config_hash":"{identity["config_hash"]}"'.encode() in data
    assert f'"configuration":"{run_dir.parent.name}"'.encode() in data and b'"fold":"fold_0"' in data
    assert re.search(rb'"preprocess_key":"[0-9a-f]{12}"', data) and re.search(rb'"git_commit":"[0-9a-f]{40}', data)
    assert run_dir.parent.name.encode() in data  # the W&B group: one per configuration


def test_full_data_training_writes_checkpoints(workspace):
    args = [*tiny_overrides(workspace / "data", workspace / "logs"), "name=full", "data.fold=null"]
    out = run_train(args)
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = configuration_dir(workspace / "logs", "runs", args) / "full"
    assert (run_dir / "checkpoints" / "last.ckpt").exists() and (run_dir / "checkpoints" / "best.ckpt").exists()
    assert json.loads((run_dir / "result.json").read_text())["weighted_auc"] is None


def test_oof_writer_keeps_the_weights_variant_of_the_best_epoch(tmp_path):
    from types import SimpleNamespace

    from iad.training.callbacks import MONITOR, OOFWriter

    rng = np.random.default_rng(0)
    truth = np.zeros((6, len(LABEL_COLS)), dtype=int)
    truth[:3, [0, -1]] = 1
    info = pd.DataFrame({"SeriesInstanceUID": [f"1.{i}" for i in range(6)], "fold": 0, "Modality": "CTA",
                         **{c: truth[:, k] for k, c in enumerate(LABEL_COLS)}})
    writer = OOFWriter(tmp_path)
    module = SimpleNamespace(val_outputs={"series": np.arange(6), "preds": rng.random((6, len(LABEL_COLS)))})
    for epoch, (variant, score) in enumerate([("ema", 0.8), ("raw", 0.7)]):
        trainer = SimpleNamespace(sanity_checking=False, fast_dev_run=False, loggers=[], is_global_zero=True,
                                  current_epoch=epoch, callback_metrics={MONITOR: torch.tensor(score)},
                                  datamodule=SimpleNamespace(series_info=lambda rows: info.iloc[rows]))
        module.best_variant = variant
        writer.on_validation_end(trainer, module)
    assert (writer.best_epoch, writer.best_variant) == (0, "ema")
    restored = OOFWriter(tmp_path)
    restored.load_state_dict(writer.state_dict())
    assert restored.best_variant == "ema"
