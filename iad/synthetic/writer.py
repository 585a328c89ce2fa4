"""Write a rendered series as DICOM files: single-frame CT/MR images or one enhanced multi-frame MR.

The rendered volume is stored in the plan's view (axial, coronal or sagittal; `iad.synthetic.views`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels.encoders import JPEG2000LosslessEncoder, RLELosslessEncoder
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLosslessSV1, RLELossless, generate_uid

from iad.synthetic.modalities import CT_RESCALE_INTERCEPT, MR_BITS_STORED
from iad.synthetic.plan import SeriesPlan
from iad.synthetic.views import AXIAL

MANUFACTURER = "IAD synthetic phantom"
# transfer syntax → GDCM's name for it, for `transcode`
GDCM_SYNTAXES = {JPEGLosslessSV1: "JPEGLosslessProcess14_1", JPEG2000Lossless: "JPEG2000Lossless"}
CODECS = {"RLE": (RLELossless, RLELosslessEncoder), "J2K": (JPEG2000Lossless, JPEG2000LosslessEncoder)}
MR_WINDOW_PERCENTILES = (0.5, 99.5)


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters (4 decimals, trailing zeros dropped)."""
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def available_codecs() -> set[str]:
    """The codecs of CODECS whose encoder can run here (others fall back to uncompressed)."""
    return {name for name, (_, encoder) in CODECS.items() if encoder.is_available}


def _stored_pixels(plan: SeriesPlan, volume: np.ndarray) -> np.ndarray:
    lo, hi = plan.style.value_range
    values = np.rint(np.clip(volume, lo, hi))
    if plan.style.dicom_modality == "CT":
        return (values - CT_RESCALE_INTERCEPT).astype(np.int16)
    return values.astype(np.uint16)


def _window(plan: SeriesPlan, volume: np.ndarray) -> tuple[str, str]:
    header = plan.style.header
    if "WindowCenter" in header:
        return header["WindowCenter"], header["WindowWidth"]
    lo, hi = np.percentile(volume[:, ::4, ::4], MR_WINDOW_PERCENTILES)
    return _ds(round((lo + hi) / 2)), _ds(round(hi - lo))


def _common_header(plan: SeriesPlan) -> Dataset:
    """Patient, study, series and equipment attributes shared by every file of the series."""
    style = plan.style
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = list(style.image_type)
    ds.SOPClassUID = style.sop_class
    ds.Modality = style.dicom_modality
    ds.Manufacturer = MANUFACTURER
    ds.SeriesDescription = style.description
    if plan.view != AXIAL:
        ds.ImageType = ["REFORMATTED" if value == "AXIAL" else value for value in style.image_type]
        ds.SeriesDescription = f"{style.description} {plan.view.upper()}"
    ds.BodyPartExamined = "HEAD"
    ds.PatientID = plan.series_uid.split(".")[-1][:16]
    ds.PatientAge = f"{plan.age:03d}Y"
    ds.PatientSex = plan.sex[0]
    ds.StudyInstanceUID = plan.study_uid
    ds.SeriesInstanceUID = plan.series_uid
    ds.FrameOfReferenceUID = plan.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.StudyID = "1"
    ds.SeriesNumber = plan.index + 1
    ds.AcquisitionNumber = 1
    for keyword, value in style.header.items():
        if keyword not in ("WindowCenter", "WindowWidth"):
            setattr(ds, keyword, value)
    return ds


def _geometry_values(plan: SeriesPlan) -> dict[str, object]:
    step, row_mm, column_mm = plan.stored_spacing
    return {"PixelSpacing": [_ds(row_mm), _ds(column_mm)], "SliceThickness": _ds(step), "SpacingBetweenSlices": _ds(step)}


def _orientation(plan: SeriesPlan) -> list[str]:
    return [str(v) for v in plan.image_plane.orientation]


def _position(plan: SeriesPlan, slice_index: int) -> list[str]:
    """ImagePositionPatient (the first pixel's centre) of stored slice `slice_index`."""
    grid = plan.geometry
    k, i, j = plan.image_plane.render_index(grid.shape, (slice_index, 0, 0))
    return [_ds(o + index * s) for o, s, index in zip(grid.origin, grid.spacing, (j, i, k))]


def _single_frame(plan: SeriesPlan, pixels: np.ndarray, slice_index: int, position: int, window) -> Dataset:
    ds = _common_header(plan)
    ds.SOPInstanceUID = plan.sop_uids[position]
    ds.InstanceNumber = position + 1
    ds.ImagePositionPatient = _position(plan, slice_index)
    ds.ImageOrientationPatient = _orientation(plan)
    ds.SliceLocation = _ds(float(np.dot(np.asarray(ds.ImagePositionPatient, dtype=float), plan.image_plane.normal)))
    geometry = _geometry_values(plan)
    if plan.style.dicom_modality == "CT":
        del geometry["SpacingBetweenSlices"]
        ds.RescaleIntercept = _ds(CT_RESCALE_INTERCEPT)
        ds.RescaleSlope = "1"
    for keyword, value in geometry.items():
        setattr(ds, keyword, value)
    ds.WindowCenter, ds.WindowWidth = window
    ds.set_pixel_data(pixels, "MONOCHROME2", _bits_stored(plan), generate_instance_uid=False)
    return ds


def _item(**elements) -> Dataset:
    item = Dataset()
    for keyword, value in elements.items():
        setattr(item, keyword, value)
    return item


def _enhanced(plan: SeriesPlan, frames: np.ndarray, window) -> Dataset:
    """One Enhanced MR Image Storage file holding every slice as a frame, in `plan.slice_order`."""
    ds = _common_header(plan)
    ds.SOPInstanceUID = plan.sop_uids[0]
    ds.InstanceNumber = 1
    ds.ContentQualification = "PRODUCT"
    ds.BurnedInAnnotation = "NO"
    ds.SharedFunctionalGroupsSequence = Sequence(
        [
            _item(
                PixelMeasuresSequence=Sequence([_item(**_geometry_values(plan))]),
                PlaneOrientationSequence=Sequence([_item(ImageOrientationPatient=_orientation(plan))]),
                PixelValueTransformationSequence=Sequence([_item(RescaleIntercept="0", RescaleSlope="1", RescaleType="US")]),
                FrameVOILUTSequence=Sequence([_item(WindowCenter=window[0], WindowWidth=window[1])]),
            )
        ]
    )
    ds.PerFrameFunctionalGroupsSequence = Sequence(
        [
            _item(
                FrameContentSequence=Sequence(
                    [_item(StackID="1", InStackPositionNumber=position + 1, DimensionIndexValues=[1, position + 1])]
                ),
                PlanePositionSequence=Sequence([_item(ImagePositionPatient=_position(plan, int(slice_index)))]),
            )
            for position, slice_index in enumerate(plan.slice_order)
        ]
    )
    ds.set_pixel_data(frames[plan.slice_order], "MONOCHROME2", _bits_stored(plan), generate_instance_uid=False)
    return ds


def _bits_stored(plan: SeriesPlan) -> int:
    return 16 if plan.style.dicom_modality == "CT" else MR_BITS_STORED


def write_series(plan: SeriesPlan, volume: np.ndarray, folder: Path) -> None:
    """Write the rendered `volume` (render grid: z, y, x) into `folder` as the plan's files in its
    view, compressed when possible."""
    volume = np.ascontiguousarray(plan.image_plane.to_stored(volume))
    stored = _stored_pixels(plan, volume)
    window = _window(plan, volume)
    if plan.style.multi_frame:
        datasets = [_enhanced(plan, stored, window)]
    else:
        datasets = [_single_frame(plan, stored[k], int(k), position, window) for position, k in enumerate(plan.slice_order)]
    codec = plan.codec if plan.codec in available_codecs() else None
    for ds, name in zip(datasets, plan.file_names):
        if codec is not None:
            ds.compress(CODECS[codec][0], generate_instance_uid=False)
        ds.save_as(folder / name, enforce_file_format=True)


def transcode(source: Path, target: Path, syntax: str) -> None:
    """Rewrite one DICOM file's pixels in transfer syntax `syntax` with GDCM (pydicom 3 cannot encode
    JPEG lossless); raises KeyError for a syntax not in GDCM_SYNTAXES, RuntimeError when GDCM fails."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(source))
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, GDCM_SYNTAXES[syntax])))
    if not reader.Read():
        raise RuntimeError(f"GDCM cannot read {source}")
    change.SetInput(reader.GetImage())
    writer = gdcm.ImageWriter()
    writer.SetFile(reader.GetFile())
    writer.SetFileName(str(target))
    if not change.Change():
        raise RuntimeError(f"GDCM cannot encode {source} as {syntax}")
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise RuntimeError(f"GDCM cannot write {target}")


def write_ct_phantom(folder: Path, n_slices: int, size: int) -> list[Path]:
    """An uncompressed axial CT series (a head-sized ellipse of 40 HU in air, slight noise), stored int16;
    the benchmarks' and `mode=cost`'s representative series."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    head = ((xx - size / 2) ** 2 / (0.4 * size) ** 2 + (yy - size / 2) ** 2 / (0.45 * size) ** 2) < 1
    series_uid, study_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for z in range(n_slices):
        hu = np.where(head, 40, -1000) + rng.normal(0, 10, (size, size))
        stored = np.clip(hu + 1024, -32768, 32767).astype(np.int16)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality, ds.ImageType, ds.InstanceNumber = "CT", ["ORIGINAL", "PRIMARY", "AXIAL"], z + 1
        ds.ImagePositionPatient = [-125.0, -125.0, round(z * 0.5, 4)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [0.488281, 0.488281], 0.5
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = stored.tobytes()
        path = folder / f"{generate_uid()}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
