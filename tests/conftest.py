"""Shared fixtures: offline, project-local caches; the real competition tables when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("IAD_OFFLINE", "1")
from iad.utils.env import CACHE_ROOT_ENV, PROJECT_ROOT, setup_env  # noqa: E402

os.environ.setdefault(CACHE_ROOT_ENV, str(PROJECT_ROOT / ".cache"))  # as the Makefile: caches stay in the project
setup_env(offline=True)

SHARED_DIR = Path(os.environ.get("IAD_SHARED_DIR", PROJECT_ROOT.parent / "shared"))
RSNA_DIR = SHARED_DIR / "data" / "rsna"


@pytest.fixture(scope="session")
def rsna_tables() -> Path:
    """Folder with the real train.csv / train_localizers.csv / train_kfold.csv / box archive."""
    if not (RSNA_DIR / "train.csv").exists():
        pytest.skip(f"real RSNA tables not found at {RSNA_DIR} (only CI and dev machines have ../shared)")
    return RSNA_DIR


@pytest.fixture(scope="session")
def external_layouts() -> Path:
    """Folder with the external TOF-MRA dataset layouts (file lists, sidecars)."""
    path = SHARED_DIR / "data" / "external"
    if not path.exists():
        pytest.skip(f"external dataset layouts not found at {path}")
    return path
