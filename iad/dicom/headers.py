"""One cheap header pass per file, stopping before the pixel data and keeping only the tags we use.

Plain little-endian files go through `quick_parse`; the rest through pydicom (`stop_before_pixels`,
`specific_tags`). Top-level values are parsed straight from raw (still undecoded) elements, several
times cheaper than pydicom's per-element conversion; anything already converted (sequence items)
goes through the ordinary value.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
import os
from pathlib import Path
import struct
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from iad.dicom.quickparse import PIXEL_DATA_TAGS, Elements, ParsedHeader, quick_parse


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return tag


SOP_UID = _tag("SOPInstanceUID")
SERIES_UID = _tag("SeriesInstanceUID")
MODALITY = _tag("Modality")
IMAGE_TYPE = _tag("ImageType")
INSTANCE_NUMBER = _tag("InstanceNumber")
POSITION = _tag("ImagePositionPatient")
ORIENTATION = _tag("ImageOrientationPatient")
PIXEL_SPACING = _tag("PixelSpacing")
SLICE_THICKNESS = _tag("SliceThickness")
SPACING_BETWEEN_SLICES = _tag("SpacingBetweenSlices")
SLOPE = _tag("RescaleSlope")
INTERCEPT = _tag("RescaleIntercept")
ROWS = _tag("Rows")
COLUMNS = _tag("Columns")
BITS_ALLOCATED = _tag("BitsAllocated")
BITS_STORED = _tag("BitsStored")
PIXEL_REPRESENTATION = _tag("PixelRepresentation")
SAMPLES_PER_PIXEL = _tag("SamplesPerPixel")
NUMBER_OF_FRAMES = _tag("NumberOfFrames")
PER_FRAME_GROUPS = _tag("PerFrameFunctionalGroupsSequence")
SHARED_GROUPS = _tag("SharedFunctionalGroupsSequence")
PHOTOMETRIC = _tag("PhotometricInterpretation")
ECHO_NUMBERS = _tag("EchoNumbers")
TEMPORAL_POSITION = _tag("TemporalPositionIdentifier")
EFFECTIVE_ECHO_TIME = _tag("EffectiveEchoTime")
TEMPORAL_POSITION_INDEX = _tag("TemporalPositionIndex")

_HEADER_TAGS = [
    SOP_UID, SERIES_UID, MODALITY, IMAGE_TYPE, INSTANCE_NUMBER, POSITION, ORIENTATION,
    PIXEL_SPACING, SLICE_THICKNESS, SPACING_BETWEEN_SLICES, SLOPE, INTERCEPT, ROWS, COLUMNS,
    BITS_ALLOCATED, BITS_STORED, PIXEL_REPRESENTATION, SAMPLES_PER_PIXEL, NUMBER_OF_FRAMES,
    PER_FRAME_GROUPS, SHARED_GROUPS, PHOTOMETRIC, ECHO_NUMBERS, TEMPORAL_POSITION,
]  # fmt: skip
_US_TAGS = {ROWS, COLUMNS, BITS_ALLOCATED, BITS_STORED, PIXEL_REPRESENTATION, SAMPLES_PER_PIXEL}
_PIXEL_DATA = 0x7FE00010
_WANTED = set(_HEADER_TAGS)
_DECLINED = {PER_FRAME_GROUPS, SHARED_GROUPS}  # enhanced multi-frame: pydicom parses the sequences
_FRAME_TYPE_SEQUENCES = ("MRImageFrameTypeSequence", "CTImageFrameTypeSequence")
_UNDEFINED_LENGTH = 0xFFFFFFFF
_ITEM_TAG = 0xE000FFFE  # (FFFE,E000) read as one little-endian 32-bit word
_UNIT_TOLERANCE = 0.01  # direction cosines: |norm - 1| and |row . col| above this make an orientation degenerate


class UnusableFile(Exception):
    """A file that cannot contribute any slice; the message is the reason."""


@dataclass(frozen=True)
class FrameRef:
    """One 2-D slice of a series: the file it lives in, its frame there, and its rescale."""

    path: Path
    frame: int
    sop_uid: str
    position: tuple[float, float, float] | None
    slope: float
    intercept: float
    invert: bool = False  # MONOCHROME1: low values are displayed bright


@dataclass(frozen=True)
class PixelStorage:
    """Where a file's uncompressed little-endian pixels lie, for reading them without pydicom."""

    offset: int  # byte offset of the Pixel Data value
    dtype: str  # numpy dtype of one stored sample, e.g. "<i2"
    bits_allocated: int
    bits_stored: int
    n_frames: int
    rows: int
    cols: int


@dataclass(frozen=True)
class FrameHeader:
    """Everything the layout step needs to know about one frame."""

    ref: FrameRef
    series_uid: str
    modality: str
    rows: int
    cols: int
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    spacing_between_slices: float | None
    instance_number: int | None
    is_localizer: bool
    echo: float | None = None  # EchoNumbers, or the frame's EffectiveEchoTime
    temporal: float | None = None  # TemporalPositionIdentifier, or the frame's TemporalPositionIndex
    bad_orientation: tuple[float, ...] | None = None  # a degenerate ImageOrientationPatient, ignored


@dataclass(frozen=True)
class FileHeader:
    path: Path
    frames: tuple[FrameHeader, ...]
    storage: PixelStorage | None  # None: pixels must be decoded through pydicom
    decoded_bytes: int = 0  # what decoding every frame of the file allocates


def read_header(path: Path) -> FileHeader:
    """Parse one file's header; raise UnusableFile (message = reason) when it holds no usable image."""
    with open(path, "rb") as fp:
        parsed = quick_parse(fp, _WANTED, _DECLINED) or _parse_with_pydicom(fp)
        file_size = os.fstat(fp.fileno()).st_size
    elements = parsed.elements
    rows, cols = _int(elements, ROWS), _int(elements, COLUMNS)
    if not rows or not cols:
        raise UnusableFile("no image (Rows/Columns missing)")
    samples = _int(elements, SAMPLES_PER_PIXEL) or 1
    if samples != 1:
        raise UnusableFile(f"SamplesPerPixel={samples}: colour images are not supported")
    n_frames = max(_int(elements, NUMBER_OF_FRAMES) or 1, 1)
    bits = _int(elements, BITS_ALLOCATED) or 16
    decoded_bytes = n_frames * rows * cols * max(-(-bits // 8), 1)

    storage = None
    if parsed.syntax != DeflatedExplicitVRLittleEndian:  # deflated: file offsets mean nothing, trust pydicom
        pixel_tag = _element_tag(parsed.pixel_element, parsed.little_endian)
        if pixel_tag not in PIXEL_DATA_TAGS:
            raise UnusableFile("no pixel data")
        _check_declared_size(path, parsed, n_frames, rows, cols, bits, file_size)
        if pixel_tag == _PIXEL_DATA and parsed.syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            storage = _native_storage(parsed, rows, cols, n_frames)
    if storage is not None:
        needed = storage.offset + n_frames * rows * cols * np.dtype(storage.dtype).itemsize
        if file_size < needed:
            raise UnusableFile(f"truncated pixel data ({file_size} bytes, {needed} needed)")
    per_frame, shared = _sequence(elements, PER_FRAME_GROUPS), _sequence(elements, SHARED_GROUPS)[:1]
    frames = tuple(
        _frame_header(elements, path, rows, cols, index, n_frames, per_frame[index : index + 1] + shared)
        for index in range(n_frames)
    )
    return FileHeader(path, frames, storage, decoded_bytes)


def _check_declared_size(path: Path, parsed: ParsedHeader, n_frames: int, rows: int, cols: int, bits: int,
                         file_size: int) -> None:
    """Reject a header whose declared image cannot be in the file, before any decoder allocates it.

    Native data must hold every declared byte; encapsulated data needs at least one fragment per
    frame (PS3.5 A.4: a fragment never holds two frames), counted from the item headers alone.
    """
    element = parsed.pixel_element
    if len(element) < 12:
        raise UnusableFile("truncated pixel data element")
    try:
        explicit = not parsed.syntax.is_implicit_VR
    except (AttributeError, ValueError):  # no or unknown transfer syntax: look at the element itself
        explicit = element[4:6].isalpha()
    length = struct.unpack("<L" if parsed.little_endian else ">L", element[8:12] if explicit else element[4:8])[0]
    value_start = parsed.pixel_tell + (12 if explicit else 8)
    if length != _UNDEFINED_LENGTH:
        needed = -(-n_frames * rows * cols * bits // 8)
        if length < needed or value_start + length > file_size:
            raise UnusableFile(f"pixel data too short for the declared {n_frames} frame(s) of {rows}x{cols} at "
                               f"{bits} bits ({min(length, file_size - value_start)} bytes, {needed} needed)")
        return
    fragments = _count_fragments(path, value_start, file_size)
    if fragments < n_frames:
        raise UnusableFile(f"NumberOfFrames is {n_frames} but the encapsulated pixel data holds {fragments} fragment(s)")


def _count_fragments(path: Path, start: int, file_size: int) -> int:
    """Fragment items after the basic offset table, walking item headers only (a damaged tail ends the count;
    pydicom's `parse_fragments` would raise without one)."""
    count, pos = -1, start  # the first item is the basic offset table
    with open(path, "rb") as fp:
        while pos + 8 <= file_size:
            fp.seek(pos)
            tag, length = struct.unpack("<2L", fp.read(8))
            if tag != _ITEM_TAG or length == _UNDEFINED_LENGTH:
                break  # sequence delimiter, or damage
            count, pos = count + 1, pos + 8 + length
    return max(count, 0)


def _parse_with_pydicom(fp: BinaryIO) -> ParsedHeader:
    fp.seek(0)
    try:
        ds = pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    except pydicom.errors.InvalidDicomError as err:
        raise UnusableFile("not a DICOM file (no DICM prefix or file meta header)") from err
    pixel_tell = fp.tell()  # pydicom rewinds to the start of the pixel data element
    syntax = ds.file_meta.get("TransferSyntaxUID")
    return ParsedHeader(ds, syntax, ds.original_encoding[1], pixel_tell, fp.read(12))


def _element_tag(element_start: bytes, little_endian: bool) -> int | None:
    if len(element_start) < 8:
        return None
    group, element = struct.unpack("<HH" if little_endian else ">HH", element_start[:4])
    return group << 16 | element


def _native_storage(parsed: ParsedHeader, rows: int, cols: int, n_frames: int) -> PixelStorage | None:
    """Fast-path description of native little-endian Pixel Data, or None to leave it to pydicom."""
    ds, tell, element = parsed.elements, parsed.pixel_tell, parsed.pixel_element
    bits_allocated = _int(ds, BITS_ALLOCATED)
    if bits_allocated not in (8, 16, 32):
        return None
    if parsed.syntax == ImplicitVRLittleEndian:
        (length,) = struct.unpack("<L", element[4:8])
        offset = tell + 8
    else:
        (length,) = struct.unpack("<L", element[8:12])
        offset = tell + 12
    if length == _UNDEFINED_LENGTH:
        return None
    signed = _int(ds, PIXEL_REPRESENTATION) == 1
    dtype = f"<{'i' if signed else 'u'}{bits_allocated // 8}"
    bits_stored = min(_int(ds, BITS_STORED) or bits_allocated, bits_allocated)
    return PixelStorage(offset, dtype, bits_allocated, bits_stored, n_frames, rows, cols)


def _frame_header(
    ds: Elements, path: Path, rows: int, cols: int, index: int, n_frames: int, groups: list[Dataset]
) -> FrameHeader:
    """Header of frame `index`; `groups` = [its per-frame item, the shared item], whichever exist.

    Each value comes from the first group that has it, else from the top-level tag.
    """
    position = _group_value(groups, "PlanePositionSequence", POSITION)
    if position is None and n_frames == 1:  # one top-level position cannot place several frames
        position = _floats(ds, POSITION)
    slope = _group_value(groups, "PixelValueTransformationSequence", SLOPE) or _floats(ds, SLOPE)
    intercept = _group_value(groups, "PixelValueTransformationSequence", INTERCEPT) or _floats(ds, INTERCEPT)
    ref = FrameRef(
        path=path,
        frame=index,
        sop_uid=_text(ds, SOP_UID),
        position=_triple(position),
        slope=slope[0] if slope else 1.0,
        intercept=intercept[0] if intercept else 0.0,
        invert=_text(ds, PHOTOMETRIC) == "MONOCHROME1",
    )
    orientation = _group_value(groups, "PlaneOrientationSequence", ORIENTATION) or _floats(ds, ORIENTATION)
    valid = orientation is not None and len(orientation) == 6 and _orthonormal(orientation)
    spacing = _group_value(groups, "PixelMeasuresSequence", PIXEL_SPACING) or _floats(ds, PIXEL_SPACING)
    thickness = _group_value(groups, "PixelMeasuresSequence", SLICE_THICKNESS) or _floats(ds, SLICE_THICKNESS)
    between = _group_value(groups, "PixelMeasuresSequence", SPACING_BETWEEN_SLICES) or _floats(ds, SPACING_BETWEEN_SLICES)
    return FrameHeader(
        ref=ref,
        series_uid=_text(ds, SERIES_UID),
        modality=_text(ds, MODALITY),
        rows=rows,
        cols=cols,
        orientation=orientation if valid else None,
        pixel_spacing=(spacing[0], spacing[1]) if spacing and len(spacing) == 2 else None,
        slice_thickness=thickness[0] if thickness else None,
        spacing_between_slices=between[0] if between else None,
        instance_number=_int(ds, INSTANCE_NUMBER),
        is_localizer="LOCALIZER" in _texts(ds, IMAGE_TYPE) or _frame_is_localizer(groups),
        echo=_first(_group_value(groups, "MREchoSequence", EFFECTIVE_ECHO_TIME) or _floats(ds, ECHO_NUMBERS)),
        temporal=_first(_group_value(groups, "FrameContentSequence", TEMPORAL_POSITION_INDEX)
                        or _floats(ds, TEMPORAL_POSITION)),
        bad_orientation=None if valid or orientation is None else orientation,
    )


def _orthonormal(cosines: tuple[float, ...]) -> bool:
    row, col = np.asarray(cosines[:3]), np.asarray(cosines[3:])
    return (abs(np.linalg.norm(row) - 1) <= _UNIT_TOLERANCE and abs(np.linalg.norm(col) - 1) <= _UNIT_TOLERANCE
            and abs(float(row @ col)) <= _UNIT_TOLERANCE)


def _first(values: tuple[float, ...] | None) -> float | None:
    return values[0] if values else None


def _group_value(groups: list[Dataset], sequence: str, tag: int) -> tuple[float, ...] | None:
    for group in groups:
        items = group.get(sequence)
        if items:
            values = _floats(items[0], tag)
            if values:
                return values
    return None


def _frame_is_localizer(groups: list[Dataset]) -> bool:
    for group in groups:
        for sequence in _FRAME_TYPE_SEQUENCES:
            items = group.get(sequence)
            if items and "LOCALIZER" in (items[0].get("FrameType") or []):
                return True
    return False


def _sequence(ds: Elements, tag: int) -> list[Dataset]:
    if tag not in ds:
        return []
    return list(ds[tag].value or [])


def _texts(ds: Elements, tag: int) -> list[str]:
    """All values of a text element (raw bytes parsed directly), [] when absent or empty."""
    elem = ds.get_item(tag) if isinstance(ds, Dataset) else ds.get(tag)
    if elem is None:
        return []
    value = elem.value
    if isinstance(value, bytes):
        text = value.decode("latin-1").strip(" \x00")
        return [part.strip(" \x00") for part in text.split("\\")] if text else []
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple, MultiValue)):
        return [str(part) for part in value]
    return [str(value)]


def _text(ds: Elements, tag: int) -> str:
    values = _texts(ds, tag)
    return values[0] if values else ""


def _floats(ds: Elements, tag: int) -> tuple[float, ...] | None:
    """Numeric (DS/IS) values, None when absent, empty, unparseable or not finite."""
    try:
        values = tuple(float(part) for part in _texts(ds, tag))
    except ValueError:
        return None
    return values if values and all(map(math.isfinite, values)) else None


def _int(ds: Elements, tag: int) -> int | None:
    """First value of a US or IS element, None when absent or unparseable."""
    elem = ds.get_item(tag) if isinstance(ds, Dataset) else ds.get(tag)
    if elem is None:
        return None
    if tag in _US_TAGS and isinstance(elem.value, bytes):
        if len(elem.value) < 2:
            return None
        return int.from_bytes(elem.value[:2], "little" if elem.is_little_endian else "big")
    values = _floats(ds, tag)
    return int(values[0]) if values else None


def _triple(values: tuple[float, ...] | None) -> tuple[float, float, float] | None:
    return (values[0], values[1], values[2]) if values and len(values) == 3 else None
