"""The package as a user installs it: a wheel (configs included) trains and predicts from any directory."""

from __future__ import annotations

import os
from pathlib import Path
import re
import shutil
import subprocess
import sys
import zipfile

import pandas as pd
import pytest

from iad.labels import LABEL_COLS, UID_COL
from iad.utils.env import CACHE_ROOT_ENV, PROJECT_ROOT
from tests.training_helpers import tiny_overrides

BUILD_INPUTS = ("iad", "conf", "pyproject.toml", "setup.py", "README.md")
ENTRY_POINTS = ("iad-train", "iad-predict", "iad-ensemble", "iad-prepare", "iad-synthetic")


def _run(args: list[str], cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{args}\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """Build the wheel from a copy of the sources and install it (no dependencies: the venv's) into a target."""
    root = tmp_path_factory.mktemp("install")
    src = root / "src"
    for name in BUILD_INPUTS:
        copy = shutil.copytree if (PROJECT_ROOT / name).is_dir() else shutil.copy2
        copy(PROJECT_ROOT / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                                  if (PROJECT_ROOT / name).is_dir() else {}))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src), "-w", str(root / "dist")],
         cwd=root, env=os.environ.copy())
    wheel = next((root / "dist").glob("iad-*.whl"))
    site = root / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q", "--target", str(site), str(wheel)],
         cwd=root, env=os.environ.copy())
    work = root / "work"  # outside the repository: the user's folder
    work.mkdir()
    # A user's environment: their own HF_HOME, no W&B settings folder exported, no project cache root.
    env = {k: v for k, v in os.environ.items() if k not in (CACHE_ROOT_ENV, "HF_HOME", "WANDB_CONFIG_DIR", "PYTHONPATH")}
    env.update(PYTHONPATH=str(site), HF_HOME=str(root / "user-hf"))
    return {"root": root, "wheel": wheel, "site": site, "work": work, "env": env}


def test_wheel_carries_the_configs_and_console_scripts(installed):
    names = zipfile.ZipFile(installed["wheel"]).namelist()
    conf = {name.removeprefix("iad/conf/") for name in names if name.startswith("iad/conf/")}
    assert conf == {str(p.relative_to(PROJECT_ROOT / "conf")) for p in (PROJECT_ROOT / "conf").rglob("*.yaml")}
    assert all((installed["site"] / "bin" / script).exists() for script in ENTRY_POINTS)


def test_installed_package_respects_user_settings(installed):
    code = ("import os, iad, iad.train; from iad.utils.env import CONFIG_DIR, PROJECT_ROOT; "
            "print(iad.__file__, CONFIG_DIR, PROJECT_ROOT, os.environ['HF_HOME'], os.environ.get('WANDB_CONFIG_DIR'), sep='\\n')")
    out = _run([sys.executable, "-c", code], cwd=installed["work"], env=installed["env"]).stdout.split("\n")
    site, work = installed["site"].resolve(), installed["work"].resolve()
    assert Path(out[0]).resolve().is_relative_to(site) and Path(out[1]).resolve() == site / "iad" / "conf"
    assert Path(out[2]) == work  # data/ and logs/ go to the working folder, not site-packages
    assert out[3] == str(installed["root"] / "user-hf") and out[4] == "None"  # kept; W&B reads its usual folder


@pytest.mark.parametrize(("script", "key"), [("iad-prepare", "workers"), ("iad-ensemble", "ensemble"), ("iad-predict", "tta")])
def test_other_console_scripts_compose_their_configs(installed, script, key):
    out = _run([str(installed["site"] / "bin" / script), "--cfg", "job"], cwd=installed["work"], env=installed["env"])
    assert f"{key}:" in out.stdout


def test_installed_train_and_predict_outside_the_repository(installed):
    work, env, site = installed["work"], installed["env"], installed["site"]
    overrides = [o for o in tiny_overrides(work, work) if not o.startswith("paths.")] + ["name=installed"]
    trained = _run([str(site / "bin" / "iad-train"), *overrides], cwd=work, env=env)
    warned = [line for line in trained.stderr.splitlines() if re.search(r"\.py:\d+: ", line)]
    assert not [line for line in warned if "/iad/" in line or "LeafSpec" in line], warned  # none of ours, none filtered
    best = list((work / "logs").rglob("best.ckpt"))
    assert len(best) == 1
    run_dir = best[0].parent.parent
    series = sorted((work / "data" / "synthetic").glob("*/series/*"))[:2]
    inputs = work / "input"
    for folder in series:
        shutil.copytree(folder, inputs / folder.name)
    _run([sys.executable, "-m", "iad.predict", f"model_path={run_dir}", f"input={inputs}", "output_dir=out"], cwd=work, env=env)
    submission = pd.read_csv(work / "out" / "submission.csv")
    assert sorted(submission[UID_COL]) == sorted(f.name for f in series)
    assert list(submission.columns) == [UID_COL, *LABEL_COLS]
    assert {p.name for p in site.iterdir()} <= {"iad", "bin", f"{installed['wheel'].name.split('-py3')[0]}.dist-info"}
