"""Label names, the left/right flip permutation, and readers for the label and localizer tables (no torch)."""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from dataclasses import dataclass
import math
import os
from typing import NamedTuple
import warnings

import numpy as np
import pandas as pd

PRESENT_COL = "Aneurysm Present"
LOCATION_COLS: tuple[str, ...] = (
    "Left Infraclinoid Internal Carotid Artery",
    "Right Infraclinoid Internal Carotid Artery",
    "Left Supraclinoid Internal Carotid Artery",
    "Right Supraclinoid Internal Carotid Artery",
    "Left Middle Cerebral Artery",
    "Right Middle Cerebral Artery",
    "Anterior Communicating Artery",
    "Left Anterior Cerebral Artery",
    "Right Anterior Cerebral Artery",
    "Left Posterior Communicating Artery",
    "Right Posterior Communicating Artery",
    "Basilar Tip",
    "Other Posterior Circulation",
)
LABEL_COLS: tuple[str, ...] = LOCATION_COLS + (PRESENT_COL,)
NUM_LABELS = len(LABEL_COLS)
# A horizontal flip swaps patient left and right: column i of a flipped image holds FLIP_PERM[i].
FLIP_PERM: tuple[int, ...] = (1, 0, 3, 2, 5, 4, 6, 8, 7, 10, 9, 11, 12, 13)
UID_COL = "SeriesInstanceUID"
SOP_COL = "SOPInstanceUID"
MODALITY_COL = "Modality"
# Competition modality names (the `Modality` column of train.csv), not DICOM's (0008,0060).
MODALITIES: tuple[str, ...] = ("CTA", "MRA", "MRI T2", "MRI T1post")
# Column position of each label name in LABEL_COLS (the localizers' `label_index`).
LABEL_INDEX: dict[str, int] = {name: i for i, name in enumerate(LABEL_COLS)}
_LOCALIZER_SOURCE_COLS = (UID_COL, SOP_COL, "coordinates", "location")
_MAX_LISTED = 10  # offending ids listed in an error message


def read_series_labels(path: str | os.PathLike, *, strict: bool = True) -> pd.DataFrame:
    """Read train.csv (one row per series) and validate it; see `validate_series_labels`."""
    return validate_series_labels(pd.read_csv(path), source=str(path), strict=strict)


def validate_series_labels(df: pd.DataFrame, source: str = "<labels>", *, strict: bool = True) -> pd.DataFrame:
    """Check a series label table and return it with the 14 labels as int.

    Raises ValueError (naming `source`) on missing columns, duplicate series, unknown modalities
    or labels other than 0/1. A row whose "Aneurysm Present" differs from max(locations) raises
    too, or only warns when `strict=False`.
    """
    _require_columns(df, (UID_COL, MODALITY_COL, *LABEL_COLS), source)
    duplicated = df.loc[df[UID_COL].duplicated(), UID_COL]
    if len(duplicated):
        raise ValueError(f"{source}: {len(duplicated)} duplicate {UID_COL}s, e.g. {_listed(duplicated)}")
    unknown = sorted(map(str, set(df[MODALITY_COL]) - set(MODALITIES)))
    if unknown:
        raise ValueError(f"{source}: unknown {MODALITY_COL} values {unknown}; expected {list(MODALITIES)}")
    for col in LABEL_COLS:
        if not df[col].isin((0, 1)).all():
            bad = df.loc[~df[col].isin((0, 1)), col]
            raise ValueError(f"{source}: column {col!r} must hold 0/1, found {_listed(bad.unique())}")
    out = df.copy()
    out[list(LABEL_COLS)] = out[list(LABEL_COLS)].astype(int)
    inconsistent = out.loc[out[PRESENT_COL] != out[list(LOCATION_COLS)].max(axis=1), UID_COL]
    if len(inconsistent):
        message = f"{source}: {PRESENT_COL!r} differs from max(locations) in {len(inconsistent)} rows: {_listed(inconsistent)}"
        if strict:
            raise ValueError(message)
        warnings.warn(message, stacklevel=2)
    return out


def parse_coordinates(text: str) -> tuple[float, float, int | None]:
    """Parse a localizer `coordinates` cell: "{'x': 258.3, 'y': 261.3}" with an optional 'f': 57.

    Returns (x, y, frame); frame is the 0-based frame of a multi-frame file, None when absent.
    """
    if not isinstance(text, str):
        raise ValueError(f"coordinates must be a string, got {type(text).__name__}: {text!r}")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, RecursionError) as err:
        raise ValueError(f"coordinates are not a Python dict literal: {text!r}") from err
    if not isinstance(value, dict) or not {"x", "y"} <= value.keys() or value.keys() - {"x", "y", "f"}:
        raise ValueError(f"coordinates must be a dict with keys 'x', 'y' and optionally 'f': {text!r}")
    x, y, frame = value["x"], value["y"], value.get("f")
    if not all(_is_finite_number(v) for v in (x, y)):
        raise ValueError(f"coordinates 'x' and 'y' must be finite numbers: {text!r}")
    if frame is not None and not (isinstance(frame, int) and not isinstance(frame, bool) and frame >= 0):
        raise ValueError(f"coordinates 'f' must be a non-negative integer: {text!r}")
    return float(x), float(y), frame


def read_localizers(path: str | os.PathLike) -> pd.DataFrame:
    """Read train_localizers.csv into one row per localizer.

    Columns: SeriesInstanceUID, SOPInstanceUID, x, y (float pixels in the slice/frame), frame
    (Int64, NA for single-frame files), location, label_index (index into LABEL_COLS). Rows are
    kept as they are, duplicates included.
    """
    source = str(path)
    raw = pd.read_csv(path)
    _require_columns(raw, _LOCALIZER_SOURCE_COLS, source)
    unknown = raw.loc[~raw["location"].isin(LOCATION_COLS), "location"]
    if len(unknown):
        raise ValueError(f"{source}: unknown location names {_listed(unknown.unique())}")
    parsed = []
    for row_number, text in enumerate(raw["coordinates"], start=2):  # line 1 is the header
        try:
            parsed.append(parse_coordinates(text))
        except ValueError as err:
            raise ValueError(f"{source}, line {row_number}: {err}") from None
    x, y, frame = zip(*parsed, strict=True) if parsed else ((), (), ())
    return pd.DataFrame(
        {
            UID_COL: raw[UID_COL],
            SOP_COL: raw[SOP_COL],
            "x": np.asarray(x, dtype=float),
            "y": np.asarray(y, dtype=float),
            "frame": pd.array(list(frame), dtype="Int64"),
            "location": raw["location"],
            "label_index": raw["location"].map(LABEL_INDEX).astype(int),
        }
    )


@dataclass(frozen=True)
class SeriesGeometry:
    """What `locate_slices` (and so `map_localizers`, `iad.boxes.map_boxes`) needs about one cached series.

    `index_of(sop_uid, frame)` gives the slice index in the sorted cached volume (frame is None for
    single-frame files) and raises KeyError when the image is not in the volume. `scale_x` and
    `scale_y` are cached size / original size along x (columns) and y (rows).
    """

    index_of: Callable[[str, int | None], int]
    scale_x: float = 1.0
    scale_y: float = 1.0


class CacheMapping(NamedTuple):
    """`mapped`: rows placed in cached volumes; `missing`: rows that could not be, with a `reason`."""

    mapped: pd.DataFrame
    missing: pd.DataFrame


def locate_slices(table: pd.DataFrame, geometry: Mapping[str, SeriesGeometry]) -> CacheMapping:
    """Find the cached slice of each row of `table` (SeriesInstanceUID, SOPInstanceUID, frame).

    `geometry` maps SeriesInstanceUID to its `SeriesGeometry`. `mapped` adds slice_index and the
    series' scale_x, scale_y; rows whose series is absent from `geometry` or whose image
    `index_of` cannot find go to `missing`.
    """
    outcome = [
        _slice_of(geometry.get(uid), sop, None if pd.isna(frame) else int(frame))
        for uid, sop, frame in zip(table[UID_COL], table[SOP_COL], table["frame"], strict=True)
    ]
    found = np.array([reason is None for _, reason in outcome], dtype=bool)
    hits = table[found]
    series = [geometry[uid] for uid in hits[UID_COL]]
    mapped = hits.assign(
        slice_index=np.array([index for index, reason in outcome if reason is None], dtype=int),
        scale_x=np.array([g.scale_x for g in series], dtype=float),
        scale_y=np.array([g.scale_y for g in series], dtype=float),
    )
    reasons = [reason for _, reason in outcome if reason is not None]
    missing = table[~found].assign(reason=pd.Series(reasons, index=table.index[~found], dtype=str))
    return CacheMapping(mapped=mapped.reset_index(drop=True), missing=missing.reset_index(drop=True))


def map_localizers(localizers: pd.DataFrame, geometry: Mapping[str, SeriesGeometry]) -> CacheMapping:
    """Place localizers (from `read_localizers`) in cached volumes; see `locate_slices`.

    In `mapped`, `slice_index` is the cached slice and x, y are cache pixel coordinates (the
    source values stay in x_orig, y_orig). Pixel centres are aligned as cv2.resize does:
    x' = (x + 0.5) * scale_x - 0.5.
    """
    located = locate_slices(localizers, geometry)
    rows = located.mapped
    mapped = rows.assign(
        x_orig=rows["x"],
        y_orig=rows["y"],
        x=(rows["x"] + 0.5) * rows["scale_x"] - 0.5,
        y=(rows["y"] + 0.5) * rows["scale_y"] - 0.5,
    ).drop(columns=["scale_x", "scale_y"])
    return located._replace(mapped=mapped)


def _slice_of(series: SeriesGeometry | None, sop_uid: str, frame: int | None) -> tuple[int, str | None]:
    """(slice index, None) when the image is in the cached series, else (-1, reason)."""
    if series is None:
        return -1, "series not in the cache"
    try:
        return int(series.index_of(sop_uid, frame)), None
    except KeyError:
        return -1, "image not in the cached series"


def flip_labels(y: np.ndarray) -> np.ndarray:
    """Swap left and right label columns (last axis of length 14), as a horizontal flip does."""
    y = np.asarray(y)
    if y.ndim == 0 or y.shape[-1] != NUM_LABELS:
        raise ValueError(f"flip_labels expects a last axis of length {NUM_LABELS}, got shape {y.shape}")
    return y[..., list(FLIP_PERM)]


def _require_columns(df: pd.DataFrame, columns: tuple[str, ...], source: str) -> None:
    missing = [col for col in columns if col not in df.columns]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing}")


def _listed(values) -> str:
    values = list(values)
    shown = ", ".join(str(v) for v in values[:_MAX_LISTED])
    return shown + (f" ... ({len(values)} in all)" if len(values) > _MAX_LISTED else "")


def _is_finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
