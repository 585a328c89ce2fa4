"""Preprocessing: window/percentile normalisation, the atomic keyed cache, the prepare command."""

from __future__ import annotations

import json
import os
from pathlib import Path
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from iad.datasets import DatasetSource
from iad.dicom import load_series
from iad.preprocessing import PreprocessConfig, SeriesCache, cache_series, prepare_dataset
from iad.preprocessing.cache import META_FILE, TMP_PREFIX
from iad.preprocessing.normalize import percentile_bounds, window_slice
from tests.dicom_helpers import write_enhanced_mr, write_slice


def reference_window(values: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.clip(np.rint((values.astype(np.float64) - low) * 255.0 / (high - low)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.uint8])
@pytest.mark.parametrize("slope,intercept", [(1.0, -1024.0), (0.5, 10.0), (2.0, 0.0)])
def test_window_slice_matches_float_formula(dtype, slope, intercept):
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype)
    stored = rng.integers(max(info.min, -3000), min(info.max, 4000), size=(37, 53)).astype(dtype)
    low, high = -185.0, 265.0
    expected = reference_window(stored * slope + intercept, low, high)
    got = window_slice(stored, slope, intercept, low, high)
    assert got.dtype == np.uint8 and got.shape == stored.shape
    assert np.abs(got.astype(int) - expected).max() <= 1  # rounding of the fused pass
    assert (got[expected == 255] == 255).all()
    if slope == 1.0:  # integer HU grid: the window edge is a stored value, so air is exactly 0
        assert (got[expected == 0] == 0).all()


def test_window_slice_negative_slope_uses_float_path():
    stored = np.arange(-50, 50, dtype=np.int16).reshape(10, 10)
    got = window_slice(stored, -1.0, 0.0, -20.0, 20.0)
    assert np.array_equal(got, reference_window(-stored.astype(float), -20.0, 20.0))


@pytest.mark.parametrize("uniform_rescale", [True, False])
def test_percentile_bounds_match_numpy(uniform_rescale):
    rng = np.random.default_rng(1)
    slices = [rng.integers(0, 3000, size=(40, 40)).astype(np.uint16) for _ in range(6)]
    rescale = [(1.5, -7.0)] * 6 if uniform_rescale else [(1.0 + 0.1 * i, 0.0) for i in range(6)]
    sample = np.concatenate([(s[::2, ::2] * a + b).ravel() for s, (a, b) in zip(slices, rescale)])
    low, high = percentile_bounds(slices, rescale, (1.0, 99.0))
    # the histogram path returns sample values (inverted CDF); the float path interpolates (numpy default)
    method = "inverted_cdf" if uniform_rescale else "linear"
    ref_low, ref_high = np.percentile(sample, (1.0, 99.0), method=method)
    assert low == pytest.approx(ref_low) and high == pytest.approx(ref_high)


def test_config_key_tracks_every_setting():
    base = PreprocessConfig()
    assert base.key == PreprocessConfig().key
    changed = [PreprocessConfig(ct_window=(50, 450)), PreprocessConfig(ct_apply_rescale=False),
               PreprocessConfig(mr_percentiles=(1, 99)), PreprocessConfig(image_size=64)]
    assert len({base.key, *(c.key for c in changed)}) == 5
    with pytest.raises(ValueError, match="width"):
        PreprocessConfig(ct_window=(40, 0))
    with pytest.raises(ValueError, match="mr_percentiles"):
        PreprocessConfig(mr_percentiles=(99, 1))


def write_ct_series(folder: Path, n: int = 7, size: int = 24, seed: int = 0, descending: bool = True) -> list[str]:
    """CT slices in HU with intercept −1024, written in shuffled order; returns SOP uids by ascending z."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    zs = np.arange(n) * 2.5
    order = rng.permutation(n)
    uids = [None] * n
    for i in order:
        hu = rng.integers(-1000, 1500, size=(size, size)) + i * 5
        z = -zs[i] if descending else zs[i]
        uids[i] = write_slice(folder / f"{rng.integers(1e9):x}", (hu + 1024).astype(np.int16), position=(0, 0, z),
                              intercept=-1024, slope=1, pixel_spacing=(0.7, 0.7), series_uid="1.2.3.9")
    return uids[::-1] if descending else uids


def test_cache_series_ct_matches_loaded_hu(tmp_path):
    folder = tmp_path / "dicom" / "1.2.3.9"
    write_ct_series(folder)
    config = PreprocessConfig()
    meta = cache_series(folder, tmp_path / "cache" / "1.2.3.9", config)
    volume = np.load(tmp_path / "cache" / "1.2.3.9" / "volume.npy")
    series = load_series(folder)
    centre, width = config.ct_window
    expected = reference_window(series.pixels, centre - width / 2, centre + width / 2)
    assert volume.shape == series.pixels.shape == meta.shape
    assert np.abs(volume.astype(int) - expected).max() <= 1
    assert meta.sop_uids == series.sop_uids
    assert meta.slice_positions == sorted(meta.slice_positions)
    mean = np.load(tmp_path / "cache" / "1.2.3.9" / "mean.npy")
    assert np.abs(mean.astype(float) - volume.mean(axis=0)).max() <= 0.5 + 1e-9
    assert meta.index_of(series.sop_uids[3]) == 3
    with pytest.raises(KeyError, match="not in the cached series"):
        meta.index_of("9.9.9")


def test_reference_mode_windows_stored_values(tmp_path):
    folder = tmp_path / "s"
    write_ct_series(folder, n=3)
    cache_series(folder, tmp_path / "hu", PreprocessConfig())
    cache_series(folder, tmp_path / "raw", PreprocessConfig(ct_apply_rescale=False))
    stored = load_series(folder).pixels + 1024  # undo the intercept: what the reference windowed
    raw = np.load(tmp_path / "raw" / "volume.npy")
    assert np.abs(raw.astype(int) - reference_window(stored, -185, 265)).max() <= 1
    assert not np.array_equal(raw, np.load(tmp_path / "hu" / "volume.npy"))


def test_cache_series_multiframe_mr_percentiles_and_resize(tmp_path):
    folder = tmp_path / "mr"
    folder.mkdir()
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 2000, size=(5, 30, 40)).astype(np.uint16)
    positions = [(0, 0, 10 - 2 * i) for i in range(5)]  # descending on purpose
    sop = write_enhanced_mr(folder / "one.dcm", frames, positions)
    config = PreprocessConfig(mr_percentiles=(1, 99), image_size=20)
    meta = cache_series(folder, tmp_path / "c", config)
    volume = np.load(tmp_path / "c" / "volume.npy")
    assert volume.shape == (5, 20, 20) and meta.original_shape == (5, 30, 40)
    assert meta.frames == [4, 3, 2, 1, 0]
    assert meta.index_of(sop, 4) == 0 and meta.index_of(sop, 0) == 4
    with pytest.raises(KeyError, match="has 5 frames.*pass frame="):
        meta.index_of(sop)
    assert meta.intensity["kind"] == "percentile"
    low, high = np.percentile(frames[:, ::2, ::2], (1, 99))
    assert abs(meta.intensity["low"] - low) <= 1 and abs(meta.intensity["high"] - high) <= 1
    geometry = meta.geometry
    assert geometry.scale_x == pytest.approx(0.5) and geometry.scale_y == pytest.approx(20 / 30)
    assert meta.spacing[1] == pytest.approx(0.8 * 30 / 20) and meta.spacing[2] == pytest.approx(0.8 * 40 / 20)


def test_build_is_keyed_resumable_and_reports_failures(tmp_path):
    good = tmp_path / "series" / "1.2.3.9"
    write_ct_series(good, n=4)
    bad = tmp_path / "series" / "1.2.3.bad"
    bad.mkdir(parents=True)
    (bad / "notes.txt").write_text("not dicom")
    folders = {"1.2.3.9": good, "1.2.3.bad": bad}

    cache = SeriesCache(tmp_path / "cache", PreprocessConfig())
    report = cache.build(folders, progress=False)
    assert report.cached == 1 and list(report.failed) == ["1.2.3.bad"]
    assert str(bad) in report.failed["1.2.3.bad"]
    assert json.loads((cache.dir / "failed.json").read_text()) == report.failed
    assert cache.has("1.2.3.9") and not cache.has("1.2.3.bad")
    assert not list(cache.dir.glob(f"{TMP_PREFIX}*"))

    again = cache.build(folders, progress=False)
    assert again.skipped == 1 and again.cached == 0 and len(again.failed) == 1

    other = SeriesCache(tmp_path / "cache", PreprocessConfig(ct_window=(300, 1500)))
    assert other.dir != cache.dir and not other.has("1.2.3.9")
    other.build({"1.2.3.9": good}, progress=False)
    assert not np.array_equal(other.volume("1.2.3.9"), cache.volume("1.2.3.9"))
    assert json.loads((other.dir / "config.json").read_text())["ct_window"] == [300.0, 1500.0]


def test_killed_write_leaves_no_entry(tmp_path, monkeypatch):
    folder = tmp_path / "s"
    write_ct_series(folder, n=3)
    import iad.preprocessing.cache as cache_module

    def explode(*args, **kwargs):
        raise KeyboardInterrupt  # what a killed run looks like from inside

    monkeypatch.setattr(cache_module, "write_normalised", explode)
    target = tmp_path / "cache" / "key" / "uid"
    with pytest.raises(KeyboardInterrupt):
        cache_series(folder, target, PreprocessConfig())
    assert not target.exists() and not list(target.parent.iterdir())
    monkeypatch.undo()
    # a stale temp folder from a hard kill does not count as cached and does not block a rerun
    (target.parent / f"{TMP_PREFIX}uid-999").mkdir()
    cache = SeriesCache(tmp_path / "c2", PreprocessConfig())
    assert not cache.has("uid")
    cache_series(folder, target, PreprocessConfig())
    assert (target / META_FILE).exists()


def test_parallel_build_matches_serial(tmp_path):
    folders = {}
    for i in range(3):
        folders[f"1.2.{i}"] = tmp_path / "series" / f"1.2.{i}"
        write_ct_series(folders[f"1.2.{i}"], n=3, seed=i)
    serial = SeriesCache(tmp_path / "a", PreprocessConfig())
    parallel = SeriesCache(tmp_path / "b", PreprocessConfig())
    serial.build(folders, workers=0, progress=False)
    report = parallel.build(folders, workers=2, progress=False)
    assert report.cached == 3
    for uid in folders:
        assert np.array_equal(serial.volume(uid), parallel.volume(uid))
        assert serial.meta(uid).sop_uids == parallel.meta(uid).sop_uids


def test_prepare_command_builds_synthetic_cache(tmp_path):
    env = dict(os.environ, IAD_OFFLINE="1")
    cmd = [sys.executable, "-m", "iad.preprocessing", f"paths.data_dir={tmp_path}", f"paths.log_dir={tmp_path}/logs",
           "dataset.synthetic.n_series=3", "workers=0", "preprocess.image_size=64"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "cached 3" in out.stdout
    cache_dirs = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert len(cache_dirs) == 1
    volumes = list(cache_dirs[0].glob("*/volume.npy"))
    assert len(volumes) == 3 and all(np.load(v, mmap_mode="r").shape[1:] == (64, 64) for v in volumes)
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert "already cached 3" in rerun.stdout


def test_prepare_caches_only_the_series_the_label_table_lists(tmp_path):
    from iad.synthetic import make_dataset

    make_dataset(tmp_path / "data", n_series=3, seed=3, size_range=(64, 64))
    listed = pd.read_csv(tmp_path / "data" / "train.csv")
    pd.DataFrame(listed.iloc[:2]).to_csv(tmp_path / "data" / "train.csv", index=False)
    root = tmp_path / "data"
    source = DatasetSource(root=str(root), series_dir=str(root / "series"), train_csv=str(root / "train.csv"),
                           localizers_csv=str(root / "train_localizers.csv"), folds_csv=str(root / "train_kfold.csv"))
    cache, report = prepare_dataset(source, tmp_path / "cache", PreprocessConfig(image_size=32), progress=False)
    assert {uid for uid in listed["SeriesInstanceUID"] if cache.has(uid)} == set(listed["SeriesInstanceUID"].iloc[:2])


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_a_few_undecodable_slices_are_dropped_more_fail_the_series(tmp_path, monkeypatch, modality):
    """One bad slice in 10 is dropped (MAX_BAD_SLICE_FRACTION), never cached as a blank slice; two fail."""
    import iad.dicom.pixels as pixels

    folder = tmp_path / "series" / "1.2.3.9"
    folder.mkdir(parents=True)
    for z in range(10):
        write_slice(folder / f"{z:02d}.dcm", np.full((16, 16), 400 + 50 * z, np.int16), position=(0, 0, z),
                    modality=modality, intercept=-1024 if modality == "CT" else None)
    names = sorted(folder.iterdir())
    broken = {names[3]}
    decode = pixels._read_file_frames

    def failing_decoder(path, *args):  # what a corrupt compressed file does inside the codec
        if Path(path) in broken:
            raise ValueError("corrupt codestream")
        return decode(path, *args)

    monkeypatch.setattr(pixels, "_read_file_frames", failing_decoder)
    config = PreprocessConfig(ct_window=(-700, 1000))
    cache = SeriesCache(tmp_path / "cache", config)
    with pytest.warns(Warning, match="dropped 1 undecodable slice"):
        report = cache.build({"1.2.3.9": folder}, progress=False)
    assert report.cached == 1
    meta = cache.meta("1.2.3.9")
    assert meta.shape[0] == 9 and meta.slice_positions == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert [Path(p).name for p, _ in meta.dropped] == ["03.dcm"]
    volume = cache.volume("1.2.3.9")
    assert (np.diff(volume[:, 0, 0].astype(int)) > 0).all()  # no blank slice stands in for the lost one
    assert np.array_equal(cache.mean_image("1.2.3.9"), np.rint(volume.mean(axis=0)).astype(np.uint8))

    broken.add(names[6])
    other = SeriesCache(tmp_path / "cache2", config)
    with pytest.warns(Warning, match="unreadable pixels"):
        report = other.build({"1.2.3.9": folder}, progress=False)
    assert "2 of 10 slice(s) could not be decoded" in report.failed["1.2.3.9"]
    assert str(names[3]) in report.failed["1.2.3.9"] and not other.has("1.2.3.9")
