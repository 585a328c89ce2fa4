"""Writers for small, valid DICOM files used by the iad.dicom tests (pydicom 3 APIs)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    CTImageStorage,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    MRImageStorage,
    generate_uid,
)

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


def ds_values(values: Sequence[float]) -> list[str]:
    """DS strings rounded to 6 significant digits (DS holds at most 16 characters)."""
    return [f"{float(v):.6g}" for v in values]


def _base_dataset(sop_class: str, transfer_syntax: str, series_uid: str, modality: str, sop_uid: str | None) -> Dataset:
    sop_uid = sop_uid or generate_uid()
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = transfer_syntax
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    ds.PatientID = "TEST"
    return ds


def _set_pixels(ds: Dataset, pixels: np.ndarray, bits_stored: int | None = None) -> None:
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    ds.PixelData = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("<")).tobytes()


def write_slice(
    path: Path,
    pixels: np.ndarray,
    *,
    position: Sequence[float] | None = (0.0, 0.0, 0.0),
    orientation: Sequence[float] | None = AXIAL,
    series_uid: str = "1.2.3.4.5",
    sop_uid: str | None = None,
    modality: str = "CT",
    instance_number: int | None = None,
    slope: float | None = None,
    intercept: float | None = None,
    pixel_spacing: Sequence[float] | None = (0.5, 0.5),
    slice_thickness: float | None = None,
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    implicit_vr: bool = False,
    bits_stored: int | None = None,
    compress_to: str | None = None,
    extra: dict | None = None,
) -> str:
    """Write one single-frame image; return its SOPInstanceUID.

    `compress_to`: a transfer syntax pydicom can encode (RLE Lossless, JPEG 2000 Lossless).
    `extra`: further attributes by keyword (e.g. EchoNumbers), set before compressing.
    """
    syntax = ImplicitVRLittleEndian if implicit_vr else ExplicitVRLittleEndian
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    ds = _base_dataset(sop_class, syntax, series_uid, modality, sop_uid)
    ds.ImageType = list(image_type)
    if instance_number is not None:
        ds.InstanceNumber = instance_number
    if position is not None:
        ds.ImagePositionPatient = ds_values(position)
    if orientation is not None:
        ds.ImageOrientationPatient = ds_values(orientation)
    if pixel_spacing is not None:
        ds.PixelSpacing = ds_values(pixel_spacing)
    if slice_thickness is not None:
        ds.SliceThickness = ds_values([slice_thickness])[0]
    if slope is not None:
        ds.RescaleSlope = ds_values([slope])[0]
    if intercept is not None:
        ds.RescaleIntercept = ds_values([intercept])[0]
    _set_pixels(ds, pixels, bits_stored)
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    if compress_to is not None:
        ds.compress(compress_to)
    ds.save_as(path, enforce_file_format=True)
    return ds.SOPInstanceUID


def write_jpeg_baseline(path: Path, pixels: np.ndarray, encoded: bytes, *, position: Sequence[float]) -> str:
    """Write an 8-bit grey image whose JPEG baseline codestream `encoded` was made elsewhere."""
    ds = _base_dataset(MRImageStorage, JPEGBaseline8Bit, "1.2.3.4.7", "MR", None)
    ds.ImagePositionPatient = ds_values(position)
    ds.ImageOrientationPatient = ds_values(AXIAL)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = encapsulate([encoded])
    ds.save_as(path, enforce_file_format=True)
    return ds.SOPInstanceUID


def write_enhanced_mr(
    path: Path,
    frames: np.ndarray,
    positions: Sequence[Sequence[float]] | None,
    *,
    orientation: Sequence[float] = AXIAL,
    series_uid: str = "1.2.3.4.6",
    slopes: Sequence[float] | None = None,
    pixel_spacing: Sequence[float] = (0.8, 0.8),
    spacing_between_slices: float | None = None,
) -> str:
    """Write an enhanced multi-frame MR (per-frame positions/rescale, shared orientation/spacing)."""
    ds = _base_dataset(EnhancedMRImageStorage, ExplicitVRLittleEndian, series_uid, "MR", None)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.InstanceNumber = 1
    ds.NumberOfFrames = len(frames)
    measures = Dataset()
    measures.PixelSpacing = ds_values(pixel_spacing)
    if spacing_between_slices is not None:
        measures.SpacingBetweenSlices = ds_values([spacing_between_slices])[0]
    plane_orientation = Dataset()
    plane_orientation.ImageOrientationPatient = ds_values(orientation)
    shared = Dataset()
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PlaneOrientationSequence = DicomSequence([plane_orientation])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    per_frame = []
    for index in range(len(frames)):
        group = Dataset()
        if positions is not None:
            plane_position = Dataset()
            plane_position.ImagePositionPatient = ds_values(positions[index])
            group.PlanePositionSequence = DicomSequence([plane_position])
        if slopes is not None:
            transform = Dataset()
            transform.RescaleSlope = ds_values([slopes[index]])[0]
            transform.RescaleIntercept = "0"
            transform.RescaleType = "US"
            group.PixelValueTransformationSequence = DicomSequence([transform])
        per_frame.append(group)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    _set_pixels(ds, frames)
    ds.save_as(path, enforce_file_format=True)
    return ds.SOPInstanceUID
