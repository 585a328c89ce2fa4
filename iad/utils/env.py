"""Process environment: where the project lives, its configs, optional project-local caches (no torch import)."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parents[1]
_CHECKOUT = _PACKAGE_DIR.parent
# A source checkout (editable install or `python train.py` in the repository) keeps data/ and logs/ in the
# repository; an installed package works in the current directory (or $IAD_ROOT).
IN_CHECKOUT = (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "conf").is_dir()
PROJECT_ROOT = Path(os.environ.get("IAD_ROOT") or (_CHECKOUT if IN_CHECKOUT else Path.cwd())).resolve()
# The Hydra configs: the repository's conf/, or the copy a wheel carries as iad/conf.
CONFIG_DIR = _CHECKOUT / "conf" if IN_CHECKOUT else _PACKAGE_DIR / "conf"

# With $IAD_CACHE_ROOT set (the Makefile and the tests set the project's .cache/), each library's cache goes
# under it unless the user already chose a place; without it, every library keeps its standard user location.
CACHE_ROOT_ENV = "IAD_CACHE_ROOT"
_CACHE_VARS = {
    "HF_HOME": "hf",
    "TORCH_HOME": "torch",
    "WANDB_DIR": "wandb",
    "WANDB_CACHE_DIR": "wandb-cache",
    "WANDB_CONFIG_DIR": "wandb-config",
    "WANDB_DATA_DIR": "wandb-data",
    "MPLCONFIGDIR": "matplotlib",
    "YOLO_CONFIG_DIR": "ultralytics",
}


def setup_env(offline: bool | None = None) -> None:
    """Point unset library caches under $IAD_CACHE_ROOT (when set) and, when offline, stop hub look-ups.

    Must run before timm / smp / ultralytics / wandb are imported. Variables the user exported are never
    changed. `offline=None` keeps whatever the user exported (`IAD_OFFLINE=1` turns it on).
    """
    cache_root = os.environ.get(CACHE_ROOT_ENV)
    if cache_root:
        for var, sub in _CACHE_VARS.items():
            if var not in os.environ:
                path = Path(cache_root) / sub
                path.mkdir(parents=True, exist_ok=True)
                os.environ[var] = str(path)
    if offline is None:
        offline = os.environ.get("IAD_OFFLINE", "0") == "1"
    if offline:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("YOLO_OFFLINE", "1")
    # W&B stays offline (real run files under the run folder) unless the user exports WANDB_MODE.
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
