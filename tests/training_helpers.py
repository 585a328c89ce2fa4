"""Tiny, fast settings for running the real training entry point on synthetic data in tests."""

from __future__ import annotations

import os
from pathlib import Path
import subprocess
import sys

from iad.utils.env import PROJECT_ROOT

TINY_MODEL = "test_resnet"  # a timm test model: a real ResNet, a few hundred K parameters


def tiny_overrides(data_dir: Path, log_dir: Path, n_series: int = 16) -> list[str]:
    return [
        f"paths.data_dir={data_dir}",
        f"paths.log_dir={log_dir}",
        f"dataset.synthetic.n_series={n_series}",
        "dataset.synthetic.seed=7",
        f"model.backbone={TINY_MODEL}",
        "data.input.img_size=32",
        "data.batch_size=8",
        "data.eval_batch_size=64",
        "data.num_workers=0",
        "data.prepare_workers=0",
        "data.negative_fraction=0.3",
        "trainer.max_epochs=1",
        "callbacks=none",
    ]


def run_train(args: list[str], timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python train.py ARGS` from the project root; returns the finished process."""
    full_env = dict(os.environ, IAD_OFFLINE="1", WANDB_MODE="offline", **(env or {}))
    return subprocess.run([sys.executable, str(PROJECT_ROOT / "train.py"), *args], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=timeout, env=full_env)


def configuration_dir(log_dir: Path, kind: str, args: list[str], task: str = "train") -> Path:
    """Where `train.py ARGS` puts a configuration: <log_dir>/<task>/<runs|sweeps>/<name>[,<overrides>]."""
    from iad.utils.config import run_name

    overrides = [a for a in args if not a.startswith("-")]
    name = next(a.split("=", 1)[1] for a in reversed(overrides) if a.startswith("name="))
    return log_dir / task / kind / run_name(name, overrides)
