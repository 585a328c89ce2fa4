"""Past one process: Hydra's launchers (submitit local for real, SLURM and joblib configs) and 2-rank CPU DDP."""

from __future__ import annotations

import json
from pathlib import Path

from hydra import compose, initialize_config_dir
import pandas as pd

from iad.evaluation import read_oof
from iad.labels import UID_COL
from iad.utils.config import CONFIG_DIR
from iad.utils.env import PROJECT_ROOT
from tests.training_helpers import run_train, tiny_overrides

# Launched processes (submitit workers, DDP ranks) import iad from this checkout.
ENV = {"PYTHONPATH": str(PROJECT_ROOT)}


def compose_hydra(overrides: list[str]):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=[*overrides, "paths.output_dir=."], return_hydra_config=True)


def test_launcher_configs_take_overrides():
    slurm = compose_hydra(["hydra/launcher=slurm", "hydra.launcher.partition=a100", "hydra.launcher.timeout_min=90",
                           "hydra.launcher.tasks_per_node=4", "trainer=ddp", "trainer.devices=4"])
    assert slurm.hydra.launcher._target_.endswith("SlurmLauncher")
    assert (slurm.hydra.launcher.partition, slurm.hydra.launcher.timeout_min) == ("a100", 90)
    assert slurm.hydra.launcher.gpus_per_node == 4 and slurm.trainer.devices == 4  # one task per GPU
    local = compose_hydra(["hydra/launcher=local_folds", "hydra.launcher.n_jobs=5"])
    assert local.hydra.launcher._target_.endswith("JoblibLauncher") and local.hydra.launcher.n_jobs == 5


def test_ddp_trainer_fits_the_device():
    cpu = compose_hydra(["trainer=ddp", "trainer.accelerator=cpu"]).trainer
    assert (cpu.strategy, cpu.sync_batchnorm, cpu.precision) == ("ddp", False, "32-true")
    gpu = compose_hydra(["trainer=ddp", "trainer.accelerator=gpu"]).trainer
    assert (gpu.sync_batchnorm, gpu.precision) == (True, "bf16-mixed")


def _sweep_outputs(log_dir: Path, data_dir: Path, folds: tuple[int, ...], n_sweeps: int = 1) -> None:
    """Each sweep folder holds each fold once (one result each); every fold's OOF file and the merged one
    hold each of its validation series once; cv.json lists the folds."""
    table = pd.read_csv(next(data_dir.glob("synthetic/*/train_kfold.csv")))
    sweeps = [path.parent for path in sorted(log_dir.rglob("cv.json"))]
    assert len(sweeps) == n_sweeps
    for sweep_dir in sweeps:
        results = sorted(sweep_dir.rglob("result.json"))
        assert sorted(json.loads(p.read_text())["fold"] for p in results) == list(folds)
        for path in results:
            fold = json.loads(path.read_text())["fold"]
            oof = read_oof(path.parent / "oof.csv")
            assert sorted(oof[UID_COL]) == sorted(table.loc[table["fold"] == fold, UID_COL])
        merged = read_oof(sweep_dir / "oof.csv")
        assert sorted(merged[UID_COL]) == sorted(table.loc[table["fold"].isin(folds), UID_COL])
        assert set(json.loads((sweep_dir / "cv.json").read_text())["folds"]) == {f"fold_{k}" for k in folds}


def test_submitit_local_multirun(tmp_path):
    args = ["-m", "hydra/launcher=submitit_local", *tiny_overrides(tmp_path / "data", tmp_path / "logs"),
            "data.fold=0,1", "name=submitit"]
    out = run_train(args, env=ENV)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    _sweep_outputs(tmp_path / "logs", tmp_path / "data", (0, 1))
    assert list((tmp_path / "logs").rglob(".submitit"))  # the jobs really went through submitit
    assert "all folds (OOF)" in out.stdout


def test_ddp_two_cpu_ranks_under_multirun(tmp_path):
    args = ["-m", *tiny_overrides(tmp_path / "data", tmp_path / "logs"), "data.fold=0,1", "name=ddp",
            "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
    out = run_train(args, env=ENV)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    _sweep_outputs(tmp_path / "logs", tmp_path / "data", (0, 1))
    lines = out.stdout.splitlines()
    for fold in (0, 1):  # each job ran and reported once (rank 1 did not relaunch the sweep)
        assert sum(line.startswith(f"fold_{fold}: validation weighted AUC") for line in lines) == 1
    assert out.stdout.count("Launching 2 jobs locally") == 1


def test_local_folds_over_two_experiments(tmp_path):
    """Folds × experiments in parallel processes: one sweep folder per experiment, each merged at the end.

    With loader workers: inside a loky job torch's default start method cannot start them.
    """
    tiny = [a.replace("data.num_workers=0", "data.num_workers=1") for a in tiny_overrides(tmp_path / "data", tmp_path / "logs")]
    args = ["-m", "hydra/launcher=local_folds", *tiny, "data.fold=0", "name=exp_a,exp_b"]
    out = run_train(args, env=ENV)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    _sweep_outputs(tmp_path / "logs", tmp_path / "data", (0,), n_sweeps=2)
    assert out.stdout.count("all folds (OOF)") == 2
