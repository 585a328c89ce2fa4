"""iad.dicom: real pydicom test files, synthetic round-trips, the quick header parser, no torch."""

from __future__ import annotations

from pathlib import Path
import pickle
import re
import shutil
import struct
import uuid
import warnings

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000Lossless, RLELossless
import pytest

from iad.dicom import (
    Series,
    SeriesReadError,
    SeriesReadWarning,
    iter_stored_slices,
    load_series,
    scan_series,
)
import iad.dicom.headers as headers
from tests.dicom_helpers import SAGITTAL, write_enhanced_mr, write_jpeg_baseline, write_slice

# --------------------------------------------------------------------------- real files nobody here wrote

REAL_FILES = [
    "CT_small.dcm",  # explicit VR little endian, int16 with rescale
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "JPEG-LL.dcm",  # JPEG lossless, process 14
    "JPGExtended.dcm",  # lossy JPEG, process 2 and 4
    "JPEG2000.dcm",
    "image_dfl.dcm",  # deflated explicit VR little endian
    "emri_small.dcm",  # enhanced MR, 10 frames, no functional groups kept
    "emri_small_RLE.dcm",
    "eCT_Supplemental.dcm",  # enhanced CT, 2 frames with per-frame positions
]


def _real_file(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not installed (pydicom-data missing?)")
    return Path(path)


def _reference_frames(path: Path) -> tuple[pydicom.Dataset, np.ndarray]:
    ds = pydicom.dcmread(path)
    try:
        pixels = ds.pixel_array
    except Exception as err:  # any decoder failure means: not testable here
        pytest.skip(f"no working decoder for {path.name} ({ds.file_meta.TransferSyntaxUID.name}): {err}")
    return ds, pixels.reshape(-1, ds.Rows, ds.Columns)


def _frame_rescale(ds: pydicom.Dataset, frame: int) -> tuple[float, float]:
    """Rescale of one frame: per-frame group, shared group, then the top-level tags."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    shared = ds.get("SharedFunctionalGroupsSequence") or []
    for group in [*per_frame[frame : frame + 1], *shared[:1]]:
        if "PixelValueTransformationSequence" in group:
            item = group.PixelValueTransformationSequence[0]
            return float(item.RescaleSlope), float(item.RescaleIntercept)
    return float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))


@pytest.mark.parametrize("name", REAL_FILES)
def test_real_file_matches_pydicom(name: str, tmp_path: Path) -> None:
    source = _real_file(name)
    ds, stored = _reference_frames(source)
    shutil.copy(source, tmp_path / "image")

    series = load_series(tmp_path)

    assert series.pixels.dtype == np.float32
    assert series.pixels.shape == stored.shape
    assert sorted(series.frames.tolist()) == list(range(stored.shape[0]))
    assert series.sop_uids == [ds.SOPInstanceUID] * stored.shape[0]
    assert series.modality == ds.Modality
    assert series.series_uid == ds.SeriesInstanceUID
    for z, frame in enumerate(series.frames):
        slope, intercept = _frame_rescale(ds, frame)
        np.testing.assert_allclose(series.pixels[z], stored[frame] * slope + intercept, rtol=1e-6)
    for z, array, _, _ in iter_stored_slices(series.layout):
        assert array.dtype == stored.dtype
        np.testing.assert_array_equal(array, stored[series.frames[z]])


def test_compressed_series_round_trip(tmp_path: Path) -> None:
    """A series mixing RLE and JPEG 2000 lossless slices (encoded by pydicom) loads losslessly in order."""
    syntaxes = [RLELossless, JPEG2000Lossless, RLELossless, JPEG2000Lossless]
    for index, syntax in enumerate(syntaxes):
        try:
            write_slice(tmp_path / _random_name(), _slice_pixels(index), position=(0, 0, -index), compress_to=syntax)
        except (RuntimeError, ImportError) as err:
            pytest.skip(f"pydicom cannot encode {syntax.name} here: {err}")

    series = load_series(tmp_path)

    assert all(storage is None for storage in series.layout.storage.values())
    for z in range(4):
        np.testing.assert_array_equal(series.pixels[z], _slice_pixels(3 - z))


def test_jpeg_baseline_grey_slices(tmp_path: Path) -> None:
    cv2 = pytest.importorskip("cv2")
    images = [np.tile(np.arange(64, dtype=np.uint8) * 3 + 10 * index, (48, 1)) for index in range(2)]
    for index, image in enumerate(images):
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        assert ok
        write_jpeg_baseline(tmp_path / f"j{index}", image, encoded.tobytes(), position=(0, 0, index))
    _reference_frames(tmp_path / "j0")  # skips when no JPEG decoder

    series = load_series(tmp_path)

    assert series.pixels.shape == (2, 48, 64)
    for z, image in enumerate(images):
        np.testing.assert_array_equal(series.pixels[z], pydicom.dcmread(tmp_path / f"j{z}").pixel_array)
        assert np.abs(series.pixels[z] - image).max() <= 8  # lossy, but the same picture


def test_real_stored_slices_keep_pydicom_dtype(tmp_path: Path) -> None:
    source = _real_file("CT_small.dcm")
    shutil.copy(source, tmp_path / "ct")
    layout = scan_series(tmp_path)
    ((z, stored, slope, intercept),) = list(iter_stored_slices(layout))
    reference = pydicom.dcmread(source)
    assert z == 0
    assert stored.dtype == reference.pixel_array.dtype
    np.testing.assert_array_equal(stored, reference.pixel_array)
    assert (slope, intercept) == (float(reference.RescaleSlope), float(reference.RescaleIntercept))
    assert layout.storage[tmp_path / "ct"] is not None, "native little-endian file should take the direct read"


def test_real_enhanced_ct_follows_per_frame_groups(tmp_path: Path) -> None:
    source = _real_file("eCT_Supplemental.dcm")
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    shutil.copy(source, tmp_path / "ect")

    series = load_series(tmp_path)

    per_frame = ds.PerFrameFunctionalGroupsSequence
    shared = ds.SharedFunctionalGroupsSequence[0]
    expected_orientation = [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient]
    np.testing.assert_allclose(series.orientation, expected_orientation)
    assert series.spacing[1:] == tuple(float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    assert len(series.frames) == int(ds.NumberOfFrames)
    for z, frame in enumerate(series.frames):
        expected = [float(v) for v in per_frame[frame].PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(series.positions[z], expected)
    normal = np.cross(series.orientation[:3], series.orientation[3:])
    assert np.all(np.diff(series.positions @ normal) >= 0)


def test_real_enhanced_mr_without_positions_keeps_frame_order(tmp_path: Path) -> None:
    source = _real_file("emri_small.dcm")
    shutil.copy(source, tmp_path / "emri")
    series = load_series(tmp_path)
    assert series.frames.tolist() == list(range(10))
    assert np.isnan(series.positions).all()
    assert "positions" in series.layout.assumed
    assert series.index_of(series.sop_uids[0], 7) == 7


# --------------------------------------------------------------------------- synthetic series


def _slice_pixels(value: int, shape: tuple[int, int] = (32, 32), dtype: str = "int16") -> np.ndarray:
    """A slice whose every pixel says which slice it is, plus a gradient so orientation errors show."""
    gradient = np.arange(shape[0] * shape[1]).reshape(shape) % 7
    return (value * 10 + gradient).astype(dtype)


def _random_name() -> str:
    return uuid.uuid4().hex


@pytest.mark.parametrize("step", [2.5, -2.5])
def test_slices_sort_ascending_along_z_whatever_the_file_order(tmp_path: Path, step: float) -> None:
    rng = np.random.default_rng(0)
    zs = 100 + step * np.arange(8)
    for index in rng.permutation(8):
        write_slice(
            tmp_path / _random_name(),
            _slice_pixels(index),
            position=(-10, -20, zs[index]),
            instance_number=index + 1,
        )

    series = load_series(tmp_path)

    assert series.pixels.shape == (8, 32, 32)
    assert np.all(np.diff(series.positions[:, 2]) > 0)
    expected_order = np.argsort(zs)
    np.testing.assert_array_equal(series.pixels[:, 0, 0], expected_order * 10)
    assert series.spacing == pytest.approx((2.5, 0.5, 0.5))
    assert series.dropped == []


def test_sagittal_series_sorts_along_the_slice_normal(tmp_path: Path) -> None:
    xs = [-30.0, 10.0, -10.0, 30.0, 0.0, 20.0]
    for index, x in enumerate(xs):  # instance numbers deliberately unrelated to x
        write_slice(
            tmp_path / _random_name(),
            _slice_pixels(index),
            position=(x, -50, 20),
            orientation=SAGITTAL,
            instance_number=len(xs) - index,
        )

    series = load_series(tmp_path)

    normal = np.cross(SAGITTAL[:3], SAGITTAL[3:])  # (-1, 0, 0): ascending along it means x descending
    assert np.all(np.diff(series.positions @ normal) > 0)
    assert series.positions[:, 0].tolist() == sorted(xs, reverse=True)
    assert series.spacing[0] == pytest.approx(10.0)
    np.testing.assert_array_equal(series.orientation, SAGITTAL)


def test_rescale_slope_and_intercept_applied(tmp_path: Path) -> None:
    for index in range(3):
        pixels = _slice_pixels(index + 100, dtype="uint16")
        write_slice(tmp_path / f"s{index}", pixels, position=(0, 0, index), slope=2.0, intercept=-1024.0)

    layout = scan_series(tmp_path)
    stored = {z: (array, slope, intercept) for z, array, slope, intercept in iter_stored_slices(layout)}
    series = load_series(tmp_path)

    for z in range(3):
        array, slope, intercept = stored[z]
        assert array.dtype == np.uint16
        assert (slope, intercept) == (2.0, -1024.0)
        np.testing.assert_array_equal(series.pixels[z], array.astype(np.float32) * 2 - 1024)
    assert series.pixels[0, 0, 0] == 100 * 10 * 2 - 1024


def test_index_of_single_frame_sop_uids(tmp_path: Path) -> None:
    uids = {}
    for index, z in enumerate([5.0, 1.0, 3.0]):
        uids[z] = write_slice(tmp_path / _random_name(), _slice_pixels(index), position=(0, 0, z))

    series = load_series(tmp_path)

    assert series.index_of(uids[1.0]) == 0
    assert series.index_of(uids[3.0], 0) == 1
    assert series.index_of(uids[5.0]) == 2
    with pytest.raises(KeyError, match=r"1\.2\.999"):
        series.index_of("1.2.999")


def test_enhanced_multiframe_round_trip(tmp_path: Path) -> None:
    z_of_frame = [4.0, 0.0, 2.0, 6.0, 8.0]
    frames = np.stack([_slice_pixels(i, dtype="uint16") for i in range(5)])
    slopes = [1.0, 2.0, 0.5, 1.5, 3.0]
    sop = write_enhanced_mr(tmp_path / "enhanced.dcm", frames, [(0, 0, z) for z in z_of_frame], slopes=slopes)

    series = load_series(tmp_path)

    assert series.frames.tolist() == list(np.argsort(z_of_frame))
    assert series.positions[:, 2].tolist() == sorted(z_of_frame)
    for z, frame in enumerate(series.frames):
        np.testing.assert_allclose(series.pixels[z], frames[frame] * slopes[frame])
        assert series.index_of(sop, frame) == z
    assert series.spacing == pytest.approx((2.0, 0.8, 0.8))
    assert series.modality == "MR"
    with pytest.raises(KeyError, match="pass frame="):
        series.index_of(sop)
    with pytest.raises(KeyError, match="frame 9"):
        series.index_of(sop, 9)


def test_enhanced_multiframe_without_positions_uses_frame_order(tmp_path: Path) -> None:
    frames = np.stack([_slice_pixels(i, dtype="uint16") for i in range(4)])
    write_enhanced_mr(tmp_path / "enhanced.dcm", frames, None, spacing_between_slices=1.5)

    series = load_series(tmp_path)

    assert series.frames.tolist() == [0, 1, 2, 3]
    assert series.spacing[0] == 1.5
    assert "positions" in series.layout.assumed


def test_non_dicom_file_is_skipped(tmp_path: Path) -> None:
    for index in range(3):
        write_slice(tmp_path / f"s{index}.dcm", _slice_pixels(index), position=(0, 0, index))
    (tmp_path / "notes.txt").write_text("not an image\n" * 20)

    with pytest.warns(SeriesReadWarning, match="notes.txt"):
        series = load_series(tmp_path)

    assert series.pixels.shape[0] == 3
    assert [Path(path).name for path, _ in series.dropped] == ["notes.txt"]
    assert "not a DICOM file" in series.dropped[0][1]


@pytest.mark.parametrize("keep_bytes", [300, -100], ids=["header", "pixels"])
def test_truncated_file_among_good_ones_is_skipped(tmp_path: Path, keep_bytes: int) -> None:
    for index in range(5):
        write_slice(tmp_path / f"s{index}.dcm", _slice_pixels(index), position=(0, 0, index))
    broken = tmp_path / "s2.dcm"
    broken.write_bytes(broken.read_bytes()[:keep_bytes])

    with pytest.warns(SeriesReadWarning, match="s2.dcm"):
        series = load_series(tmp_path)

    assert series.positions[:, 2].tolist() == [0, 1, 3, 4]
    assert [Path(path).name for path, _ in series.dropped] == ["s2.dcm"]


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
def test_undecodable_compressed_file_is_skipped_at_pixel_time(tmp_path: Path) -> None:
    source = Path(_real_file("MR_small_RLE.dcm"))
    _reference_frames(source)  # skips when no RLE decoder
    shutil.copy(source, tmp_path / "good")
    data = bytearray(source.read_bytes())
    data[-2000:] = b"\x00" * 2000  # RLE segments now decode to the wrong length
    (tmp_path / "bad").write_bytes(bytes(data))
    layout = scan_series(tmp_path)
    assert len(layout.frames) == 2, "headers are intact; only decoding can find the damage"

    with pytest.warns(SeriesReadWarning, match="bad"):
        series = load_series(tmp_path)

    assert series.pixels.shape[0] == 1
    assert [Path(path).name for path, _ in series.dropped] == ["bad"]
    assert "unreadable pixels" in series.dropped[0][1]

    (tmp_path / "good").unlink()
    with (
        pytest.warns(SeriesReadWarning),
        pytest.raises(SeriesReadError, match=r"no slice could be decoded.*bad"),
    ):
        load_series(tmp_path)


def test_missing_positions_fall_back_to_instance_number_then_file_name(tmp_path: Path) -> None:
    numbers = [3, 1, 4, 2]
    for number in numbers:
        write_slice(tmp_path / _random_name(), _slice_pixels(number), position=None, instance_number=number)
    for name in ["b", "a"]:  # no InstanceNumber: after the numbered ones, by file name
        write_slice(tmp_path / name, _slice_pixels(10 if name == "a" else 11), position=None)

    first, second = load_series(tmp_path), load_series(tmp_path)

    np.testing.assert_array_equal(first.pixels[:, 0, 0], [10, 20, 30, 40, 100, 110])
    np.testing.assert_array_equal(first.pixels, second.pixels)
    assert np.isnan(first.positions).all()
    assert "positions" in first.layout.assumed


def test_mixed_sizes_keep_the_largest_group(tmp_path: Path) -> None:
    for index in range(5):
        write_slice(tmp_path / f"big{index}", _slice_pixels(index), position=(0, 0, index))
    for index in range(2):
        write_slice(tmp_path / f"small{index}", _slice_pixels(index, shape=(16, 16)), position=(0, 0, index + 0.5))

    with pytest.warns(SeriesReadWarning, match="kept 5 of 7"):
        series = load_series(tmp_path)

    assert series.pixels.shape == (5, 32, 32)
    assert sorted(Path(path).name for path, _ in series.dropped) == ["small0", "small1"]
    assert all("16x16" in reason for _, reason in series.dropped)


def test_mixed_orientations_keep_the_largest_group(tmp_path: Path) -> None:
    for index in range(4):
        write_slice(tmp_path / f"axial{index}", _slice_pixels(index), position=(0, 0, index))
    for index in range(2):
        write_slice(tmp_path / f"sagittal{index}", _slice_pixels(index), position=(index, 0, 0), orientation=SAGITTAL)

    with pytest.warns(SeriesReadWarning, match="orientation"):
        series = load_series(tmp_path)

    assert series.pixels.shape[0] == 4
    np.testing.assert_array_equal(series.orientation, [1, 0, 0, 0, 1, 0])
    assert sorted(Path(path).name for path, _ in series.dropped) == ["sagittal0", "sagittal1"]


def test_duplicate_positions_keep_a_deterministic_order(tmp_path: Path) -> None:
    numbers = [5, 2, 4, 1, 3]
    for number in numbers:
        write_slice(
            tmp_path / _random_name(),
            _slice_pixels(number),
            position=(0, 0, 7.0),
            instance_number=number,
            slice_thickness=1.25,
        )

    series = load_series(tmp_path)

    np.testing.assert_array_equal(series.pixels[:, 0, 0], [10, 20, 30, 40, 50])
    assert series.spacing[0] == 1.25


def test_single_slice(tmp_path: Path) -> None:
    sop = write_slice(tmp_path / "only", _slice_pixels(3), position=(1, 2, 3))
    series = load_series(tmp_path)
    assert series.pixels.shape == (1, 32, 32)
    assert series.index_of(sop) == 0
    assert series.spacing == (1.0, 0.5, 0.5)
    assert "slice_spacing" in series.layout.assumed


def test_missing_geometry_defaults_are_flagged(tmp_path: Path) -> None:
    write_slice(tmp_path / "bare", _slice_pixels(1), position=None, orientation=None, pixel_spacing=None)
    layout = scan_series(tmp_path)
    np.testing.assert_array_equal(layout.orientation, [1, 0, 0, 0, 1, 0])
    assert layout.pixel_spacing == (1.0, 1.0)
    assert set(layout.assumed) == {"orientation", "pixel_spacing", "positions", "slice_spacing"}


def test_empty_and_missing_folders_raise(tmp_path: Path) -> None:
    with pytest.raises(SeriesReadError, match=re.escape(str(tmp_path))):
        load_series(tmp_path)
    missing = tmp_path / "nowhere"
    with pytest.raises(SeriesReadError, match=r"nowhere.*does not exist"):
        load_series(missing)


def test_folder_without_any_image_raises_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("hello")
    with (
        pytest.warns(SeriesReadWarning),
        pytest.raises(SeriesReadError, match=r"readme\.txt.*not a DICOM file"),
    ):
        scan_series(tmp_path)


def test_localizer_images_are_dropped(tmp_path: Path) -> None:
    for index in range(4):
        write_slice(tmp_path / f"s{index}", _slice_pixels(index), position=(0, 0, index))
    write_slice(
        tmp_path / "scout",
        _slice_pixels(9),
        position=(0, 0, 1.5),
        image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
    )

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an expected localizer is not worth a warning
        series = load_series(tmp_path)

    assert series.pixels.shape[0] == 4
    assert series.dropped == [(str(tmp_path / "scout"), "LOCALIZER image")]


def test_colour_images_are_dropped(tmp_path: Path) -> None:
    shutil.copy(_real_file("SC_rgb.dcm"), tmp_path / "rgb")
    with pytest.warns(SeriesReadWarning), pytest.raises(SeriesReadError, match="SamplesPerPixel=3"):
        scan_series(tmp_path)


def test_only_localizers_raise(tmp_path: Path) -> None:
    write_slice(tmp_path / "scout", _slice_pixels(1), image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    with pytest.raises(SeriesReadError, match="LOCALIZER"):
        load_series(tmp_path)


def test_unused_high_bits_match_pydicom(tmp_path: Path) -> None:
    """12 bits stored in 16 with garbage above: the direct read must clear/sign-extend as pydicom does."""
    pixels = (np.arange(32 * 32).reshape(32, 32) * 37 - 9000).astype(np.int16)
    write_slice(tmp_path / "s", pixels, bits_stored=12, implicit_vr=True)
    layout = scan_series(tmp_path)
    ((_, stored, _, _),) = list(iter_stored_slices(layout))
    assert layout.storage[tmp_path / "s"] is not None
    np.testing.assert_array_equal(stored, pydicom.dcmread(tmp_path / "s").pixel_array)
    assert not np.array_equal(stored, pixels), "the test data must exercise the correction"


def test_series_and_layout_pickle(tmp_path: Path) -> None:
    for index in range(2):
        write_slice(tmp_path / f"s{index}", _slice_pixels(index), position=(0, 0, index))
    series = load_series(tmp_path)
    restored = pickle.loads(pickle.dumps(series))
    assert isinstance(restored, Series)
    np.testing.assert_array_equal(restored.pixels, series.pixels)
    assert restored.index_of(series.sop_uids[1]) == 1


# --------------------------------------------------------------------------- the quick header parser


def _pydicom_test_files() -> list[Path]:
    folder = Path(pydicom.data.__file__).parent / "test_files"
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.stat().st_size < 4_000_000)


def _header_or_reason(path: Path) -> object:
    try:
        return headers.read_header(path)
    except Exception as err:  # both paths must fail the same way, whatever it is
        return f"{type(err).__name__}: {err}"


def test_quick_parser_agrees_with_pydicom(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every pydicom test file: the quick header path and the pydicom path give the same header."""
    quick_used = 0
    original = headers.quick_parse
    for path in _pydicom_test_files():
        with open(path, "rb") as fp:
            quick_used += original(fp, headers._WANTED, headers._DECLINED) is not None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quick = _header_or_reason(path)
            monkeypatch.setattr(headers, "quick_parse", lambda *args: None)
            slow = _header_or_reason(path)
            monkeypatch.setattr(headers, "quick_parse", original)
        assert quick == slow, path.name
    assert quick_used >= 20, "the quick parser should handle most plain little-endian files"


def test_quick_parser_skips_undefined_length_un_sequences(tmp_path: Path) -> None:
    """An undefined-length UN (an unknown private sequence) holds implicit-VR items (PS3.5 6.2.2)."""
    path = tmp_path / "private"
    write_slice(path, _slice_pixels(1), position=(0, 0, 2))
    item_element = struct.pack("<HHL", 0x0009, 0x1002, 6) + b"AB\\CD "
    un_element = (
        struct.pack("<HH2s2xL", 0x0009, 0x1001, b"UN", 0xFFFFFFFF)
        + struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
        + item_element
        + struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
        + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    )
    data = path.read_bytes()
    at = data.index(struct.pack("<HH", 0x0010, 0x0020) + b"LO")  # PatientID, the first element after group 0009
    path.write_bytes(data[:at] + un_element + data[at:])

    with open(path, "rb") as fp:
        parsed = headers.quick_parse(fp, headers._WANTED, headers._DECLINED)

    assert parsed is not None
    assert pydicom.dcmread(path)[0x00091001].value[0][0x00091002].value  # pydicom reads it too
    series = load_series(tmp_path)
    assert series.positions.tolist() == [[0, 0, 2]]
    np.testing.assert_array_equal(series.pixels[0], _slice_pixels(1))
