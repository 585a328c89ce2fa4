"""A corpus of unusual and broken series, written with pydicom inside the test (no binary fixtures).

Valid-but-odd series must read in the right order and predict without a fallback; broken ones must
fail with a message naming the file (or folder) and the reason, as a fallback row at inference and a
failed.json entry at cache time. Nothing may crash the predictor or give a blank input a normal score.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
import json
import math
import os
from pathlib import Path
import re
import subprocess
import sys
import time
import warnings

import numpy as np
import pandas as pd
import pydicom
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid
import pytest
import torch
from torch import nn

from iad.contract import InputSpec, ModelSpec, SliceInputSpec
from iad.dicom import MAX_BAD_SLICE_FRACTION, ReadLimits, SeriesTimeout, load_series, scan_series
from iad.inference import LoadedMember, LoadedModel, Predictor, predict_folder
from iad.inference.submission import NoSeriesError, series_folders_in
from iad.labels import LABEL_COLS, UID_COL
from iad.preprocessing import PreprocessConfig, SeriesCache
from iad.preprocessing.cache import FAILED_FILE, normalised_volume, read_stored
from iad.utils.env import PROJECT_ROOT
from tests.dicom_helpers import SAGITTAL, write_enhanced_mr, write_slice

PREPROCESS = PreprocessConfig(image_size=48)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
TILT = math.radians(15)
OBLIQUE = (1.0, 0.0, 0.0, 0.0, math.cos(TILT), math.sin(TILT))
OBLIQUE_NORMAL = np.cross(OBLIQUE[:3], OBLIQUE[3:])


def uid(folder: Path) -> str:
    """A valid SeriesInstanceUID, the same for every file of a folder."""
    return generate_uid(entropy_srcs=[folder.name])


def image(z: int, shape: tuple[int, int] = (32, 32), dtype=np.int16, offset: int = 0) -> np.ndarray:
    """A slice with in-plane contrast whose corner pixel encodes its true position: 10 * z + 1 (+ offset)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    pixels = ((xx * 7 + yy * 3) % 150 + 20).astype(dtype)
    pixels[0, 0] = 10 * z + 1 + offset
    return pixels


def series(folder: Path, n: int = 8, *, names: Callable[[int], str] = lambda z: f"{z:03d}.dcm",
           position: Callable[[int], tuple] = lambda z: (0, 0, z), pixels: Callable[[int], np.ndarray] = image,
           **kwargs) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for z in range(n):
        write_slice(folder / names(z), pixels(z), position=position(z), series_uid=uid(folder), **kwargs)


def write_float_slice(path: Path, pixels: np.ndarray, z: int) -> None:
    """An MR slice with Float Pixel Data (7FE0,0008)."""
    write_slice(path, np.zeros((2, 2), np.int16), position=(0, 0, z), modality="MR", series_uid=uid(path.parent))
    ds = pydicom.dcmread(path)
    del ds.PixelData, ds.PixelRepresentation
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    ds.FloatPixelData = pixels.astype("<f4").tobytes()
    ds.save_as(path, enforce_file_format=True)


def edit(path: Path, **attributes) -> None:
    ds = pydicom.dcmread(path)
    for keyword, value in attributes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)


def corrupt_rle(path: Path) -> None:
    """Zero the compressed segments of an RLE file: its header still parses, its pixels do not decode."""
    data = bytearray(path.read_bytes())
    data[-200:] = b"\x00" * 200
    path.write_bytes(bytes(data))


# ---- valid but odd ---------------------------------------------------------------------------------
def enhanced(folder: Path, positions: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    frames = np.stack([image(z, dtype=np.uint16) for z in range(6)])
    write_enhanced_mr(folder / "multi.dcm", frames, [(0, 0, z) for z in range(6)] if positions else None,
                      series_uid=uid(folder))


def two_groups(folder: Path, keyword: str) -> None:
    for value in (2, 1):  # the second echo / time point is written first: file order must not decide
        series(folder, 8, names=lambda z, v=value: f"{v}_{z:03d}.dcm", modality="MR",
               pixels=lambda z, v=value: image(z, offset=5 * (v - 1)), extra={keyword: value})


def size_tie(folder: Path) -> None:
    series(folder, 20, names=lambda z: f"a{z:03d}.dcm", pixels=lambda z: image(z, (64, 64)))  # cropped half first
    series(folder, 20, names=lambda z: f"b{z:03d}.dcm", pixels=lambda z: image(z, (96, 96)))


def degenerate_orientation(folder: Path) -> None:
    order = np.random.default_rng(0).permutation(10)
    series(folder, 10, names=lambda z: f"{order[z]:03d}.dcm", orientation=(0.0,) * 6,
           extra={"InstanceNumber": int(order[0])})
    for z, path in enumerate(sorted(folder.iterdir())):
        edit(path, InstanceNumber=int(np.random.default_rng(z).integers(1, 100)))


def few_missing_positions(folder: Path) -> None:
    n = 12
    for z in range(n):  # InstanceNumber runs head to feet, i.e. against z, as it often does
        write_slice(folder / f"{z:03d}.dcm", image(z), position=None if z == 5 else (0, 0, z), instance_number=n - z,
                    series_uid=uid(folder))


def float_with_nan(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for z in range(6):
        pixels = image(z).astype(np.float32)
        pixels[5, 5:8] = [np.nan, np.inf, -np.inf]
        write_float_slice(folder / f"{z:03d}.dcm", pixels, z)


def with_localizer(folder: Path) -> None:
    series(folder, 6)
    write_slice(folder / "scout.dcm", image(0, (20, 40)), position=(0, 0, 3), series_uid=uid(folder),
                image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))


def with_stray_files(folder: Path) -> None:
    series(folder, 6)
    (folder / ".DS_Store").write_bytes(b"")
    (folder / "notes.txt").write_text("scanned on Tuesday")


def one_truncated(folder: Path) -> None:
    series(folder, 12)
    path = folder / "004.dcm"
    path.write_bytes(path.read_bytes()[:-300])


def one_undecodable(folder: Path) -> None:
    series(folder, 12, compress_to=RLELossless)
    corrupt_rle(folder / "004.dcm")


def monochrome1(folder: Path) -> None:
    series(folder, 6, modality="MR", extra={"PhotometricInterpretation": "MONOCHROME1"})


def deflated(folder: Path) -> None:
    series(folder, 5)
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        ds.save_as(path, enforce_file_format=True)


@dataclass
class Odd:
    name: str
    write: Callable[[Path], None]
    markers: list[int] | None = None  # expected corner markers (z + 1 codes) in slice order; None: range(n)
    shape: tuple[int, int] | None = None
    warns: str | None = None


def z_order(n: int, skip: tuple[int, ...] = ()) -> list[int]:
    return [10 * z + 1 for z in range(n) if z not in skip]


ODD = [
    Odd("ct_plain", lambda f: series(f)),
    Odd("ct_hu_intercept", lambda f: series(f, pixels=lambda z: image(z) + 1024, intercept=-1024)),
    Odd("implicit_vr", lambda f: series(f, implicit_vr=True)),
    Odd("file_names_against_z", lambda f: series(f, names=lambda z: f"{100 - z:03d}.dcm")),
    Odd("instance_numbers_against_z", lambda f: [write_slice(f / f"{z}.dcm", image(z), position=(0, 0, z),
                                                             instance_number=100 - z, series_uid=uid(f))
                                                 for z in range(8)] and None),
    Odd("sagittal", lambda f: series(f, orientation=SAGITTAL, position=lambda z: (-z, 0, 0))),
    Odd("coronal", lambda f: series(f, orientation=CORONAL, position=lambda z: (0, z, 0))),
    Odd("oblique_15deg", lambda f: series(f, orientation=OBLIQUE, position=lambda z: tuple(z * OBLIQUE_NORMAL + 0.1))),
    Odd("rle", lambda f: series(f, compress_to=RLELossless)),
    Odd("jpeg2000_lossless", lambda f: series(f, pixels=lambda z: image(z, dtype=np.uint16), compress_to=JPEG2000Lossless)),
    Odd("deflated", deflated, markers=z_order(5)),
    Odd("enhanced_mr", enhanced, markers=z_order(6)),
    Odd("enhanced_mr_no_positions", lambda f: enhanced(f, positions=False), markers=z_order(6)),
    Odd("bits_stored_12", lambda f: series(f, pixels=lambda z: image(z, dtype=np.uint16), bits_stored=12)),
    Odd("uint8_mr", lambda f: series(f, pixels=lambda z: image(z, dtype=np.uint8), modality="MR")),
    Odd("negative_mr", lambda f: series(f, pixels=lambda z: image(z) - 500, modality="MR"),
        markers=[10 * z + 1 - 500 for z in range(8)]),
    Odd("per_slice_slopes_mr", lambda f: [write_slice(f / f"{z}.dcm", image(z), position=(0, 0, z), slope=1 + z / 7,
                                                      modality="MR", series_uid=uid(f)) for z in range(8)] and None,
        markers=[round((10 * z + 1) * (1 + z / 7), 3) for z in range(8)]),
    Odd("single_slice", lambda f: series(f, 1), markers=z_order(1)),
    Odd("two_slices", lambda f: series(f, 2), markers=z_order(2)),
    Odd("non_square", lambda f: series(f, pixels=lambda z: image(z, (32, 56))), shape=(32, 56)),
    Odd("thin_and_wide", lambda f: series(f, pixels=lambda z: image(z, (12, 200))), shape=(12, 200)),
    Odd("with_localizer", with_localizer, markers=z_order(6)),
    Odd("with_stray_files", with_stray_files, markers=z_order(6), warns="notes.txt"),
    Odd("no_spacing_tags", lambda f: series(f, pixel_spacing=None)),
    Odd("duplicate_positions", lambda f: [write_slice(f / f"{9 - z}.dcm", image(z), position=(0, 0, 4), instance_number=z,
                                                      series_uid=uid(f)) for z in range(6)] and None, markers=z_order(6)),
    Odd("one_truncated_file", one_truncated, markers=z_order(12, skip=(4,)), warns="004.dcm"),
    # fixed bugs: each of these read wrongly or fell back before
    Odd("one_undecodable_slice", one_undecodable, markers=z_order(12, skip=(4,)), warns="004.dcm"),
    Odd("two_echoes_same_positions", lambda f: two_groups(f, "EchoNumbers"), warns="echo 2"),
    Odd("two_time_points", lambda f: two_groups(f, "TemporalPositionIdentifier"), warns="temporal position 2"),
    Odd("size_tie_keeps_larger", size_tie, markers=z_order(20), shape=(96, 96), warns="kept 20 of 40"),
    Odd("degenerate_orientation", degenerate_orientation, markers=z_order(10), warns="degenerate ImageOrientation"),
    Odd("few_missing_positions", few_missing_positions, markers=z_order(12, skip=(5,)), warns="without ImagePosition"),
    Odd("float_pixels_with_nan", float_with_nan, markers=z_order(6)),
    Odd("monochrome1", monochrome1, markers=z_order(6)),
]


class MeanNet(nn.Module):
    """A tiny deterministic network: enough to run the whole predictor."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Linear(3, len(LABEL_COLS))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(images.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    spec = InputSpec(preprocess=PREPROCESS, slice_input=SliceInputSpec(img_size=32),
                     label_prevalence=[0.25] * len(LABEL_COLS))
    # "timm_classifier" logits are the network's output, as MeanNet's are
    model = LoadedModel(net=MeanNet().eval(), model_spec=ModelSpec("timm_classifier", {}), input_spec=spec, config={})
    return Predictor([LoadedMember("tiny", 1.0, [model])], time_budget_s=60)


@pytest.mark.parametrize("case", ODD, ids=[c.name for c in ODD])
def test_odd_series_read_in_order_and_predict(case: Odd, tmp_path: Path, predictor: Predictor) -> None:
    folder = tmp_path / f"1.2.826.{case.name}"
    folder.mkdir()
    case.write(folder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_series(folder)
    if case.warns:
        assert any(case.warns in str(w.message) for w in caught), [str(w.message) for w in caught]
    expected = case.markers if case.markers is not None else z_order(8)
    np.testing.assert_allclose(loaded.pixels[:, 0, 0], expected, rtol=1e-3)
    if case.shape:
        assert loaded.pixels.shape[1:] == case.shape
    prediction = predictor.predict_safe(folder)
    assert prediction.fallback_reason is None
    assert all(0 <= p <= 1 for p in prediction.probabilities.values())
    report = SeriesCache(tmp_path / "cache", PREPROCESS).build({folder.name: folder}, progress=False)
    assert report.cached == 1, report.failed


def test_monochrome1_is_displayed_inverted(tmp_path: Path) -> None:
    series(tmp_path / "m2", 6, modality="MR")
    monochrome1(tmp_path / "m1")
    plain, _ = normalised_volume(read_stored(scan_series(tmp_path / "m2")), PREPROCESS)
    inverted, _ = normalised_volume(read_stored(scan_series(tmp_path / "m1")), PREPROCESS)
    assert np.abs(inverted.astype(int) - (255 - plain.astype(int))).max() <= 1  # inverted before resizing
    cache = SeriesCache(tmp_path / "cache", PREPROCESS)
    cache.build({"m1": tmp_path / "m1"}, progress=False)
    np.testing.assert_array_equal(cache.volume("m1"), inverted)


# ---- broken ---------------------------------------------------------------------------------------
def lying_frames_rle(folder: Path, frames: int = 1_000_000) -> None:
    series(folder, 1, compress_to=RLELossless)
    edit(folder / "000.dcm", NumberOfFrames=frames)


def lying_frames_native(folder: Path) -> None:
    series(folder, 1)
    edit(folder / "000.dcm", NumberOfFrames=5000)


def huge_declared_image(folder: Path) -> None:
    series(folder, 1, compress_to=RLELossless)
    edit(folder / "000.dcm", Rows=50000, Columns=50000)


def too_many_undecodable(folder: Path) -> None:
    series(folder, 12, compress_to=RLELossless)
    for name in ("002.dcm", "005.dcm", "009.dcm"):
        corrupt_rle(folder / name)


def colour(folder: Path) -> None:
    series(folder, 2)
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit, ds.PixelRepresentation = 7, 0
        ds.PixelData = np.zeros((32, 32, 3), np.uint8).tobytes()
        ds.save_as(path, enforce_file_format=True)


def no_pixel_data(folder: Path) -> None:
    series(folder, 2)
    for path in folder.iterdir():
        edit(path, PixelData=None)


def all_nan(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for z in range(3):
        write_float_slice(folder / f"{z:03d}.dcm", np.full((32, 32), np.nan, np.float32), z)


@dataclass
class Broken:
    name: str
    write: Callable[[Path], None]
    reason: str  # regex the error must match
    names_file: str | None = None  # the file the message must name (else the series folder)


BROKEN = [
    Broken("empty_folder", lambda f: None, "series folder is empty"),
    Broken("only_text_files", lambda f: (f / "a.dcm").write_text("hello"), "not a DICOM file", "a.dcm"),
    Broken("only_localizers", lambda f: series(f, 2, image_type=("DERIVED", "SECONDARY", "LOCALIZER")),
           "LOCALIZER", "000.dcm"),
    Broken("all_truncated", lambda f: [series(f, 3)] and [p.write_bytes(p.read_bytes()[:300]) for p in f.iterdir()]
           and None, "no usable slice", "000.dcm"),
    Broken("colour", colour, "SamplesPerPixel=3", "000.dcm"),
    Broken("no_pixel_data", no_pixel_data, "no pixel data", "000.dcm"),
    Broken("too_many_undecodable", too_many_undecodable, "3 of 12 slice\\(s\\) could not be decoded", "002.dcm"),
    Broken("lying_number_of_frames_rle", lying_frames_rle, "NumberOfFrames is 1000000 but", "000.dcm"),
    Broken("lying_number_of_frames_native", lying_frames_native, "pixel data too short", "000.dcm"),
    Broken("huge_declared_image", huge_declared_image, "decoding would allocate .* MiB allowed", "000.dcm"),
    # blank inputs used to score as normal series
    Broken("rescale_slope_zero", lambda f: series(f, 4, slope=0.0), "RescaleSlope 0", "000.dcm"),
    Broken("constant_volume", lambda f: series(f, 4, modality="MR", pixels=lambda z: np.full((32, 32), 700, np.int16)),
           "no contrast"),
    Broken("constant_ct_outside_window", lambda f: series(f, 4, pixels=lambda z: np.full((32, 32), -1000, np.int16)),
           "no contrast"),
    Broken("all_nan_float_pixels", all_nan, "no finite pixel value"),
]


@pytest.fixture(scope="module")
def broken_corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("broken")
    for case in BROKEN:
        (root / case.name).mkdir()
        case.write(root / case.name)
    return root


@pytest.mark.parametrize("case", BROKEN, ids=[c.name for c in BROKEN])
def test_broken_series_fall_back_naming_file_and_reason(case: Broken, broken_corpus: Path,
                                                        predictor: Predictor) -> None:
    folder = broken_corpus / case.name
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prediction = predictor.predict_safe(folder)
    assert time.perf_counter() - start < 5  # hostile headers are rejected before any decoder allocates
    reason = prediction.fallback_reason
    assert reason is not None and pytest.approx(list(prediction.probabilities.values())) == [0.25] * len(LABEL_COLS)
    assert re.search(case.reason, reason), reason
    assert str(folder / case.names_file) in reason if case.names_file else str(folder) in reason


def test_broken_series_are_listed_in_failed_json(broken_corpus: Path, tmp_path: Path) -> None:
    cache = SeriesCache(tmp_path / "cache", PREPROCESS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = cache.build({case.name: broken_corpus / case.name for case in BROKEN}, progress=False)
    failed = json.loads((cache.dir / FAILED_FILE).read_text())
    assert report.cached == 0 and set(failed) == {case.name for case in BROKEN}
    for case in BROKEN:
        assert re.search(case.reason, failed[case.name]), failed[case.name]


def test_per_series_allocation_cap_is_configurable(tmp_path: Path, predictor: Predictor) -> None:
    series(tmp_path / "s", 8)  # 8 x 32 x 32 x 2 bytes = 16 KiB
    assert len(scan_series(tmp_path / "s", ReadLimits(max_series_bytes=16 * 2**10)).frames) == 8
    with pytest.raises(Exception, match="decoding would allocate"):
        scan_series(tmp_path / "s", ReadLimits(max_series_bytes=8 * 2**10))
    capped = Predictor(predictor.members, max_series_mb=0.001)
    assert "decoding would allocate" in capped.predict_safe(tmp_path / "s").fallback_reason


def test_time_budget_covers_reading(tmp_path: Path, predictor: Predictor) -> None:
    series(tmp_path / "s", 4)
    with pytest.raises(SeriesTimeout, match="time budget"):
        scan_series(tmp_path / "s", ReadLimits(deadline=time.perf_counter() - 1))
    late = Predictor(predictor.members, time_budget_s=0.0)
    prediction = late.predict_safe(tmp_path / "s")
    assert "SeriesTimeout" in prediction.fallback_reason


def test_bad_slice_threshold_is_one_documented_constant() -> None:
    from iad.dicom.layout import allowed_bad_slices

    assert 0 < MAX_BAD_SLICE_FRACTION < 0.5
    assert [allowed_bad_slices(n) for n in (1, 9, 10, 100)] == [1, 1, 1, int(100 * MAX_BAD_SLICE_FRACTION)]


# ---- what an input folder holds ----------------------------------------------------------------------
def test_stray_files_do_not_turn_a_folder_of_series_into_one_series(tmp_path: Path, predictor: Predictor) -> None:
    for index in range(3):
        series(tmp_path / "in" / f"1.2.{index}", 3)
    (tmp_path / "in" / ".DS_Store").write_bytes(b"")
    (tmp_path / "in" / "README.txt").write_text("test set")
    assert [p.name for p in series_folders_in(tmp_path / "in")] == ["1.2.0", "1.2.1", "1.2.2"]
    submission = predict_folder(predictor, tmp_path / "in", tmp_path / "out", progress=False)
    assert list(submission[UID_COL]) == ["1.2.0", "1.2.1", "1.2.2"]
    assert pd.read_csv(tmp_path / "out" / "timings.csv")["fallback"].isna().all()
    # one series folder with a stray hidden file is still one series
    (tmp_path / "in" / "1.2.0" / ".DS_Store").write_bytes(b"")
    assert series_folders_in(tmp_path / "in" / "1.2.0") == [tmp_path / "in" / "1.2.0"]


def test_empty_or_ambiguous_input_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".DS_Store").write_bytes(b"")
    with pytest.raises(NoSeriesError, match="holds no series"):
        series_folders_in(tmp_path / "empty")
    series(tmp_path / "mixed", 2)
    series(tmp_path / "mixed" / "1.2.3", 2)
    with pytest.raises(NoSeriesError, match="ambiguous"):
        series_folders_in(tmp_path / "mixed")
    out = subprocess.run([sys.executable, "predict.py", "model_path=/nonexistent", f"input={tmp_path / 'empty'}",
                          f"output_dir={tmp_path / 'out'}", f"paths.log_dir={tmp_path / 'logs'}"], cwd=PROJECT_ROOT,
                         capture_output=True, text=True, env=dict(os.environ, IAD_OFFLINE="1"), timeout=300)
    assert out.returncode != 0 and "holds no series" in out.stderr


def test_degenerate_orientation_is_recognised(tmp_path: Path) -> None:
    series(tmp_path / "s", 3, orientation=(1.0, 0.0, 0.0, 1.0, 0.0, 0.0))  # row == column: no plane
    with pytest.warns(Warning, match="degenerate"):
        layout = scan_series(tmp_path / "s")
    assert "orientation" in layout.assumed
