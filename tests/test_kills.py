"""A killed preparation with pool workers, and damaged cache entries, leave nothing that blocks or hangs a rerun.

The killed and damaged training run is in tests/test_training.py (it reuses that module's data).
"""

from __future__ import annotations

from pathlib import Path
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from iad.preprocessing import PreprocessConfig, SeriesCache
from iad.preprocessing.cache import META_FILE, TMP_PREFIX, VOLUME_FILE, CacheEntryError
from iad.utils.env import PROJECT_ROOT
from tests.dicom_helpers import write_slice

BUILD_SCRIPT = """
import sys
from pathlib import Path
from iad.preprocessing import PreprocessConfig, SeriesCache
root = Path(sys.argv[1])
folders = {p.name: p for p in sorted((root / "series").iterdir())}
print(SeriesCache(root / sys.argv[2], PreprocessConfig()).build(folders, workers=2, progress=False), flush=True)
"""


def write_series(folder: Path, n: int, seed: int, size: int = 48) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for z in range(n):
        write_slice(folder / f"{z:03d}.dcm", rng.integers(0, 2000, (size, size)).astype(np.int16), position=(0, 0, z),
                    intercept=-1024, series_uid=folder.name)


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    running = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                running.append(process)
        except psutil.NoSuchProcess:
            pass
    return running


def build(root: Path, cache: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", BUILD_SCRIPT, str(root), cache], cwd=PROJECT_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_killed_parallel_preparation_leaves_no_orphans_and_reruns_to_identical_entries(tmp_path):
    for index in range(40):
        write_series(tmp_path / "series" / f"1.2.{index}", n=30, seed=index, size=96)
    proc = build(tmp_path, "killed")
    cache_dir = tmp_path / "killed" / PreprocessConfig().key
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        done = list(cache_dir.glob(f"*/{META_FILE}")) if cache_dir.exists() else []
        if len(done) >= 3 and list(cache_dir.glob(f"{TMP_PREFIX}*")):
            break
        time.sleep(0.01)
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert proc.poll() is None and len(workers) == 2, "the build was not killed mid-way with its two workers"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while alive(workers) and time.time() < deadline:
        time.sleep(0.1)
    assert not alive(workers), "pool workers outlived their killed parent"

    rerun = build(tmp_path, "killed")
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err[-3000:]
    assert "failed 0" in out and not list(cache_dir.glob(f"{TMP_PREFIX}*"))
    clean = SeriesCache(tmp_path / "clean", PreprocessConfig())
    clean.build({p.name: p for p in (tmp_path / "series").iterdir()}, progress=False)
    for entry in sorted(clean.dir.glob(f"*/{META_FILE}")):
        for name in (VOLUME_FILE, "mean.npy", META_FILE):
            assert (cache_dir / entry.parent.name / name).read_bytes() == (entry.parent / name).read_bytes()


def test_truncated_cache_entry_is_named_when_opened_and_rebuilt(tmp_path):
    write_series(tmp_path / "series" / "1.2.3", n=6, seed=0)
    cache = SeriesCache(tmp_path / "cache", PreprocessConfig())
    cache.build({"1.2.3": tmp_path / "series" / "1.2.3"}, progress=False)
    volume = cache.series_dir("1.2.3") / VOLUME_FILE
    intact = volume.read_bytes()
    volume.write_bytes(intact[: len(intact) // 2])  # what a full disk or a copy interrupted midway leaves

    assert not cache.has("1.2.3")
    with pytest.raises(CacheEntryError, match=r"1\.2\.3.*volume\.npy .*bytes"):
        cache.volume("1.2.3")
    report = cache.build({"1.2.3": tmp_path / "series" / "1.2.3"}, progress=False)
    assert report.rebuilt == ["1.2.3"] and report.cached == 1 and "rebuilt 1 damaged" in str(report)
    assert volume.read_bytes() == intact and cache.volume("1.2.3").shape == (6, 48, 48)
