"""Series → memory-mappable uint8 volume cache, keyed by the preprocessing settings.

Layout: `<root>/<config key>/<SeriesInstanceUID>/{volume.npy, mean.npy, meta.json}` plus
`<root>/<config key>/config.json`. Each series is written into a temporary sibling folder and
renamed into place, so a killed run never leaves a half-written entry and a rerun skips finished
series. Series that cannot be read are reported (and retried on the next run), never fatal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
import json
import logging
import os
from pathlib import Path
import shutil

import cv2
import numpy as np
from numpy.lib.format import write_array_header_1_0

from iad.dicom import SeriesLayout, SeriesReadError, iter_stored_slices, scan_series
from iad.dicom.layout import project_position, slice_index_of, slice_normal
from iad.labels import SeriesGeometry
from iad.preprocessing.normalize import (
    PreprocessConfig,
    effective_rescale,
    mean_from_sum,
    normalise_slices,
    resize_slice,
    volume_window,
    window_slice,
)
from iad.utils.io import write_json_atomic

log = logging.getLogger(__name__)

VOLUME_FILE = "volume.npy"
MEAN_FILE = "mean.npy"
META_FILE = "meta.json"
CONFIG_FILE = "config.json"
TMP_PREFIX = ".tmp-"


@dataclass
class SeriesMeta:
    """What a cached volume's slices are: enough to map labels and to rebuild the input."""

    series_uid: str
    modality: str
    shape: tuple[int, int, int]
    original_shape: tuple[int, int, int]
    sop_uids: list[str]
    frames: list[int]
    slice_positions: list[float | None]
    spacing: tuple[float, float, float]
    intensity: dict
    config_key: str
    dropped: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.shape = tuple(self.shape)
        self.original_shape = tuple(self.original_shape)
        self.spacing = tuple(self.spacing)
        self._slice_of = {(sop, int(f)): z for z, (sop, f) in enumerate(zip(self.sop_uids, self.frames))}

    @property
    def scale_xy(self) -> tuple[float, float]:
        """(x, y) factors from original pixel coordinates to cached ones."""
        return self.shape[2] / self.original_shape[2], self.shape[1] / self.original_shape[1]

    def index_of(self, sop_uid: str, frame: int | None = None) -> int:
        """Slice index of a SOP instance (and frame, for multi-frame files) in the cached volume."""
        return slice_index_of(self._slice_of, sop_uid, frame, f"cached series {self.series_uid}")

    @property
    def geometry(self) -> SeriesGeometry:
        """What `iad.labels.map_localizers` needs to place localizers in this volume."""
        sx, sy = self.scale_xy
        return SeriesGeometry(index_of=self.index_of, scale_x=sx, scale_y=sy)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, blob: dict) -> SeriesMeta:
        blob = dict(blob)
        blob["dropped"] = [tuple(d) for d in blob.get("dropped", [])]
        return cls(**blob)


class VolumeWriter:
    """Streams uint8 slices, in any order, into a .npy file at their offsets; keeps the slice sum.

    Writing with pwrite avoids page-faulting a fresh memory map and never holds the volume.
    """

    def __init__(self, path: Path, shape: tuple[int, int, int]):
        self.shape = shape
        self.slice_bytes = shape[1] * shape[2]
        self.file = open(path, "wb")
        write_array_header_1_0(self.file, {"descr": "|u1", "fortran_order": False, "shape": shape})
        self.offset = self.file.tell()
        self.total = np.zeros(shape[1:], dtype=np.int32)

    def __setitem__(self, z: int, image: np.ndarray) -> None:
        image = np.ascontiguousarray(image, dtype=np.uint8)
        if image.shape != self.shape[1:]:
            raise ValueError(f"slice {z} has shape {image.shape}, expected {self.shape[1:]}")
        os.pwrite(self.file.fileno(), image.data, self.offset + z * self.slice_bytes)
        cv2.add(self.total, image, dst=self.total, dtype=cv2.CV_32S)

    def mean_image(self) -> np.ndarray:
        return mean_from_sum(self.total, self.shape[0])

    def close(self) -> None:
        self.file.truncate(self.offset + self.shape[0] * self.slice_bytes)
        self.file.close()


def read_stored(layout: SeriesLayout) -> tuple[list[np.ndarray], list[tuple[float, float]]]:
    """Every slice's stored pixels and (slope, intercept), in slice order."""
    slices: list[np.ndarray | None] = [None] * len(layout.frames)
    rescale: list[tuple[float, float]] = [(1.0, 0.0)] * len(layout.frames)
    for z, stored, slope, intercept in iter_stored_slices(layout):
        slices[z], rescale[z] = stored, (slope, intercept)
    _require_every_slice(layout, [z for z, s in enumerate(slices) if s is not None])
    return slices, rescale


def _require_every_slice(layout: SeriesLayout, decoded: list[int]) -> None:
    """Raise when a slice was not decoded: a gap must fail the series, not become a blank slice."""
    missing = sorted(set(range(len(layout.frames))) - set(decoded))
    if missing:
        first = layout.frames[missing[0]].path
        raise SeriesReadError(f"{layout.folder}: {len(missing)} slice(s) could not be decoded (first: {first})")


def _write_ct_streaming(layout: SeriesLayout, out: VolumeWriter, config: PreprocessConfig) -> dict:
    """CT needs no volume statistics: window each slice as it is decoded (never holds the volume)."""
    low, high, intensity = volume_window("CT", [], [], config)
    written = []
    for z, stored, slope, intercept in iter_stored_slices(layout):
        slope, intercept = effective_rescale("CT", slope, intercept, config)
        out[z] = resize_slice(window_slice(stored, slope, intercept, low, high), config.image_size)
        written.append(z)
    _require_every_slice(layout, written)
    return intensity


def write_normalised(layout: SeriesLayout, out, config: PreprocessConfig) -> dict:
    """Normalise a series into `out[z]` (a VolumeWriter or a Z×H×W uint8 array); returns the intensity record."""
    if layout.modality == "CT":
        return _write_ct_streaming(layout, out, config)
    return normalise_slices(layout.modality, *read_stored(layout), config, out)


def _projected_positions(layout: SeriesLayout) -> list[float | None]:
    normal = slice_normal(layout.orientation)
    return [project_position(p, normal) for p in layout.positions]


def cache_series(folder: str | Path, series_dir: Path, config: PreprocessConfig) -> SeriesMeta:
    """Read one DICOM series folder and write its cache entry atomically into `series_dir`."""
    layout = scan_series(folder)
    n_slices, rows, cols = len(layout.frames), layout.rows, layout.cols
    size = config.image_size
    shape = (n_slices, size, size) if size else (n_slices, rows, cols)
    tmp_dir = series_dir.parent / f"{TMP_PREFIX}{series_dir.name}-{os.getpid()}"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    try:
        volume = VolumeWriter(tmp_dir / VOLUME_FILE, shape)
        try:
            intensity = write_normalised(layout, volume, config)
        finally:
            volume.close()
        np.save(tmp_dir / MEAN_FILE, volume.mean_image())
        row_spacing, col_spacing = layout.pixel_spacing
        meta = SeriesMeta(
            series_uid=series_dir.name,
            modality=layout.modality,
            shape=shape,
            original_shape=(n_slices, rows, cols),
            sop_uids=[f.sop_uid for f in layout.frames],
            frames=[int(f.frame) for f in layout.frames],
            slice_positions=_projected_positions(layout),
            spacing=(float(layout.slice_spacing), row_spacing * rows / shape[1], col_spacing * cols / shape[2]),
            intensity=intensity,
            config_key=config.key,
            dropped=[tuple(map(str, d)) for d in layout.dropped],
        )
        write_json_atomic(meta.to_json(), tmp_dir / META_FILE)
        if series_dir.exists():  # a concurrent writer finished first; theirs is identical
            shutil.rmtree(tmp_dir)
        else:
            os.replace(tmp_dir, series_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return meta


def _cache_one(args: tuple[str, str, PreprocessConfig]) -> tuple[str, str | None]:
    folder, series_dir, config = args
    try:
        cache_series(folder, Path(series_dir), config)
        return Path(series_dir).name, None
    except SeriesReadError as err:
        return Path(series_dir).name, str(err)
    except Exception as err:  # noqa: BLE001 - one bad series must not stop the others
        return Path(series_dir).name, f"{folder}: {type(err).__name__}: {err}"


@dataclass
class BuildReport:
    """What a cache build did: counts and the reason for each series that failed."""

    cached: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"cached {self.cached}, already cached {self.skipped}, failed {len(self.failed)}"


class SeriesCache:
    """Cached uint8 volumes for one preprocessing configuration."""

    def __init__(self, root: str | Path, config: PreprocessConfig | None = None):
        self.config = config or PreprocessConfig()
        self.root = Path(root)
        self.dir = self.root / self.config.key

    def series_dir(self, series_uid: str) -> Path:
        return self.dir / series_uid

    def has(self, series_uid: str) -> bool:
        return (self.series_dir(series_uid) / META_FILE).exists()

    def volume(self, series_uid: str, mmap: bool = True) -> np.ndarray:
        """Z×H×W uint8 volume (memory-mapped by default)."""
        return np.load(self.series_dir(series_uid) / VOLUME_FILE, mmap_mode="r" if mmap else None)

    def mean_image(self, series_uid: str) -> np.ndarray:
        """Mean over slices (the brain detector's input), H×W uint8."""
        return np.load(self.series_dir(series_uid) / MEAN_FILE)

    def meta(self, series_uid: str) -> SeriesMeta:
        with open(self.series_dir(series_uid) / META_FILE) as fh:
            return SeriesMeta.from_json(json.load(fh))

    def build(self, series_folders: Mapping[str, str | Path], workers: int = 0, progress: bool = True) -> BuildReport:
        """Cache every series not cached yet; `series_folders` maps SeriesInstanceUID → DICOM folder."""
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.config.to_dict(), self.dir / CONFIG_FILE)
        report = BuildReport()
        todo = []
        for uid, folder in series_folders.items():
            if self.has(uid):
                report.skipped += 1
            else:
                todo.append((str(folder), str(self.series_dir(uid)), self.config))
        results = self._run(todo, workers, progress)
        for uid, error in results:
            if error is None:
                report.cached += 1
            else:
                report.failed[uid] = error
                log.warning("could not cache series %s: %s", uid, error)
        write_json_atomic(report.failed, self.dir / "failed.json")
        return report

    @staticmethod
    def _run(todo: list, workers: int, progress: bool) -> Iterable[tuple[str, str | None]]:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="caching series", unit="series", disable=not progress or not todo)
        if workers <= 1 or len(todo) <= 1:
            for item in todo:
                yield _cache_one(item)
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for future in as_completed([pool.submit(_cache_one, item) for item in todo]):
                    yield future.result()
                    bar.update()
        bar.close()
