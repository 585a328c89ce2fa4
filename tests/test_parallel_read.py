"""Decoding compressed slices on a pool gives exactly the serial result: pixels, order, drops, warnings."""

from __future__ import annotations

from concurrent.futures import Executor, Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from pathlib import Path
import time
import warnings

import numpy as np
from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, RLELossless
import pytest

from iad.dicom import ReadLimits, SeriesReadError, SeriesTimeout, decode_pool, load_series, scan_series
from iad.dicom.decode_pool import POOL_KINDS, resolve_workers
from iad.preprocessing.cache import read_stored
from iad.synthetic.writer import transcode
from tests.dicom_helpers import write_slice

N_SLICES = 12


def _pixels(index: int) -> np.ndarray:
    return (np.arange(64 * 64).reshape(64, 64) % 97 + 50 * index).astype(np.int16)


def _mixed_series(folder: Path, n_corrupt: int = 1) -> Path:
    """JPEG lossless (GDCM), JPEG 2000 and RLE (pydicom) and uncompressed slices, names not in z order;
    the last `n_corrupt` JPEG lossless files have their pixel data cut short."""
    folder.mkdir()
    for index in range(N_SLICES):
        name = f"{(index * 7) % N_SLICES:02d}.dcm"
        kind = index % 4
        target = folder / name
        source = folder.parent / f"raw-{name}" if kind == 0 else target
        write_slice(source, _pixels(index), position=(0, 0, index),
                    compress_to={1: JPEG2000Lossless, 2: RLELossless}.get(kind))
        if kind == 0:
            transcode(source, target, JPEGLosslessSV1)
    for index in range(0, 4 * n_corrupt, 4):
        path = folder / f"{(index * 7) % N_SLICES:02d}.dcm"
        data = path.read_bytes()
        path.write_bytes(data[:-len(data) // 3])
    return folder


def _load(folder: Path, **limits) -> tuple:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        series = load_series(folder, ReadLimits(**limits))
    return series, [str(w.message) for w in caught]


@pytest.mark.parametrize("pool", sorted(POOL_KINDS))
def test_pool_read_equals_serial(tmp_path: Path, pool: str) -> None:
    folder = _mixed_series(tmp_path / "series")
    serial, serial_warnings = _load(folder)
    pooled, pooled_warnings = _load(folder, workers=2, pool=pool)

    assert serial.pixels.shape[0] == N_SLICES - 1, "one corrupt JPEG lossless file is dropped"
    np.testing.assert_array_equal(pooled.pixels, serial.pixels)
    assert pooled.sop_uids == serial.sop_uids
    assert pooled.dropped == serial.dropped
    assert pooled_warnings == serial_warnings and any("skipping" in m for m in serial_warnings)
    for z in range(serial.pixels.shape[0]):
        index = int(serial.positions[z, 2])
        np.testing.assert_array_equal(serial.pixels[z], _pixels(index))


def test_pool_read_fails_like_serial_beyond_the_bad_slice_fraction(tmp_path: Path) -> None:
    folder = _mixed_series(tmp_path / "series", n_corrupt=2)
    messages = []
    for workers in (1, 2):
        with pytest.raises(SeriesReadError) as err, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            read_stored(scan_series(folder, ReadLimits(workers=workers)))
        messages.append(str(err.value))
    assert messages[0] == messages[1] and "2 of 12" in messages[0]


def test_pool_read_respects_the_deadline(tmp_path: Path) -> None:
    folder = _mixed_series(tmp_path / "series", n_corrupt=0)
    layout = scan_series(folder, ReadLimits(workers=2))
    layout = replace(layout, limits=replace(layout.limits, deadline=time.perf_counter() - 1))
    with pytest.raises(SeriesTimeout):
        read_stored(layout)


def test_worker_count_default_is_every_core() -> None:
    assert resolve_workers(None) >= 1
    assert resolve_workers(0) == resolve_workers(1) == 1
    assert resolve_workers(3) == 3


class _BrokenPool(Executor):
    """A pool whose every job fails as a pool (not a file) failure does."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        future.set_exception(BrokenProcessPool("a worker died"))
        return future


def test_a_broken_pool_falls_back_to_serial_decoding(tmp_path: Path, monkeypatch) -> None:
    folder = _mixed_series(tmp_path / "series")
    serial, serial_warnings = _load(folder)
    monkeypatch.setitem(decode_pool._POOLS, ("processes", 3), _BrokenPool())
    pooled, pooled_warnings = _load(folder, workers=3)
    np.testing.assert_array_equal(pooled.pixels, serial.pixels)
    assert pooled.dropped == serial.dropped
    assert [m for m in pooled_warnings if "read pool broke" not in m] == serial_warnings
    assert sum("read pool broke" in m for m in pooled_warnings) == 1
    assert ("processes", 3) not in decode_pool._POOLS
