"""Process environment for offline-safe, project-local caches (no torch import)."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CACHE_ROOT = Path(os.environ.get("IAD_CACHE_ROOT", PROJECT_ROOT / ".cache"))

# Each library's cache goes under CACHE_ROOT unless the user already chose a place.
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
    """Point library caches into the project and, when offline, stop hub look-ups.

    Must run before timm / smp / ultralytics / wandb are imported. `offline=None` keeps whatever the
    user exported (`IAD_OFFLINE=1` turns it on).
    """
    for var, sub in _CACHE_VARS.items():
        if var not in os.environ:
            path = CACHE_ROOT / sub
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
