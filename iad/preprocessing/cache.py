"""Series → memory-mappable uint8 volume cache, keyed by the preprocessing settings.

Layout: `<root>/<config key>/<SeriesInstanceUID>/{volume.npy, mean.npy, meta.json}` plus
`<root>/<config key>/config.json`. Each series is written into a temporary sibling folder and
renamed into place, so a killed run never leaves a half-written entry and a rerun skips finished
series; temporary folders of dead processes are removed by the next build. An entry is checked
against its meta.json (shape and file sizes) whenever it is opened: a damaged one is rebuilt by the
next build and named in the error otherwise. Series that cannot be read are reported (and retried
on the next run), never fatal.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
import json
import logging
import os
from pathlib import Path
import shutil
import threading
import time

import cv2
import numpy as np
from numpy.lib.format import read_array_header_1_0, read_array_header_2_0, read_magic, write_array_header_1_0

from iad.dicom import ReadLimits, SeriesLayout, SeriesReadError, iter_stored_slices, keep_decoded, scan_series
from iad.dicom.layout import project_position, slice_index_of, slice_normal
from iad.labels import SeriesGeometry
from iad.preprocessing.normalize import (
    NoContrastError,
    PreprocessConfig,
    display_slice,
    effective_rescale,
    mean_from_sum,
    mean_over_slices,
    normalise_slices,
    require_contrast,
    volume_window,
)
from iad.utils.io import write_json_atomic

log = logging.getLogger(__name__)

VOLUME_FILE = "volume.npy"
MEAN_FILE = "mean.npy"
META_FILE = "meta.json"
CONFIG_FILE = "config.json"
TMP_PREFIX = ".tmp-"
FAILED_FILE = "failed.json"


class CacheEntryError(RuntimeError):
    """A cache entry whose files do not match its meta.json (e.g. a truncated volume.npy)."""


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
        self.low, self.high = 255, 0  # darkest and brightest voxel written

    def __setitem__(self, z: int, image: np.ndarray) -> None:
        image = np.ascontiguousarray(image, dtype=np.uint8)
        if image.shape != self.shape[1:]:
            raise ValueError(f"slice {z} has shape {image.shape}, expected {self.shape[1:]}")
        os.pwrite(self.file.fileno(), image.data, self.offset + z * self.slice_bytes)
        cv2.add(self.total, image, dst=self.total, dtype=cv2.CV_32S)
        low, high = cv2.minMaxLoc(image)[:2]
        self.low, self.high = min(self.low, int(low)), max(self.high, int(high))

    def mean_image(self) -> np.ndarray:
        return mean_from_sum(self.total, self.shape[0])

    def close(self) -> None:
        self.file.truncate(self.offset + self.shape[0] * self.slice_bytes)
        self.file.close()


@dataclass
class StoredSeries:
    """The decodable slices of a series as stored (no rescale), in slice order, with the layout they keep."""

    layout: SeriesLayout
    slices: list[np.ndarray]
    rescale: list[tuple[float, float]]

    @property
    def invert(self) -> list[bool]:
        return [ref.invert for ref in self.layout.frames]


def read_stored(layout: SeriesLayout) -> StoredSeries:
    """Decode every slice; a few undecodable ones are dropped (`keep_decoded`), more fail the series."""
    slices: list[np.ndarray | None] = [None] * len(layout.frames)
    rescale: list[tuple[float, float]] = [(1.0, 0.0)] * len(layout.frames)
    for z, stored, slope, intercept in iter_stored_slices(layout):
        slices[z], rescale[z] = stored, (slope, intercept)
    decoded = [z for z, s in enumerate(slices) if s is not None]
    return StoredSeries(keep_decoded(layout, decoded), [slices[z] for z in decoded], [rescale[z] for z in decoded])


def normalised_volume(stored: StoredSeries, config: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """The Z×H×W uint8 input and its mean image, as a cache entry would hold them; a flat input raises."""
    size, layout = config.image_size, stored.layout
    out = np.empty((len(stored.slices), size or layout.rows, size or layout.cols), dtype=np.uint8)
    with _naming(layout.folder):
        normalise_slices(layout.modality, list(stored.slices), stored.rescale, config, out, stored.invert)
    require_contrast(int(out.min()), int(out.max()), layout.folder)
    return out, mean_over_slices(out)


@contextmanager
def _naming(folder: Path) -> Iterator[None]:
    """Prefix the series folder to a NoContrastError raised without it."""
    try:
        yield
    except NoContrastError as err:
        raise NoContrastError(f"{folder}: {err}") from None


def _cache_shape(layout: SeriesLayout, config: PreprocessConfig) -> tuple[int, int, int]:
    size = config.image_size
    return (len(layout.frames), size, size) if size else (len(layout.frames), layout.rows, layout.cols)


def _write_ct_streaming(layout: SeriesLayout, out: VolumeWriter, config: PreprocessConfig) -> tuple[dict, list[int]]:
    """CT needs no volume statistics: window each slice as it is decoded (never holds the volume)."""
    low, high, intensity = volume_window("CT", [], [], config)
    written = []
    for z, stored, slope, intercept in iter_stored_slices(layout):
        slope, intercept = effective_rescale("CT", slope, intercept, config)
        out[z] = display_slice(stored, slope, intercept, low, high, layout.frames[z].invert, config.image_size)
        written.append(z)
    return intensity, written


def _compact(path: Path, shape: tuple[int, int, int], kept: list[int]) -> VolumeWriter:
    """Rewrite a streamed volume without the slices that could not be decoded."""
    old = np.load(path, mmap_mode="r")
    part = path.with_name(f"{path.name}.part")
    new = VolumeWriter(part, (len(kept), *shape[1:]))
    try:
        for z, old_z in enumerate(kept):
            new[z] = old[old_z]
    finally:
        new.close()
        del old
    os.replace(part, path)
    return new


def write_normalised(layout: SeriesLayout, path: Path, config: PreprocessConfig) -> tuple[SeriesLayout, VolumeWriter, dict]:
    """Normalise a series into the .npy `path`; returns the slices kept, the closed writer and the intensity record."""
    if layout.modality == "CT":
        writer = VolumeWriter(path, _cache_shape(layout, config))
        try:
            intensity, written = _write_ct_streaming(layout, writer, config)
        finally:
            writer.close()
        kept = keep_decoded(layout, written)
        if kept is not layout:
            writer = _compact(path, writer.shape, sorted(written))
        return kept, writer, intensity
    stored = read_stored(layout)
    writer = VolumeWriter(path, _cache_shape(stored.layout, config))
    try:
        with _naming(layout.folder):
            intensity = normalise_slices(layout.modality, stored.slices, stored.rescale, config, writer, stored.invert)
    finally:
        writer.close()
    return stored.layout, writer, intensity


def _projected_positions(layout: SeriesLayout) -> list[float | None]:
    normal = slice_normal(layout.orientation)
    return [project_position(p, normal) for p in layout.positions]


def cache_series(folder: str | Path, series_dir: Path, config: PreprocessConfig,
                 limits: ReadLimits | None = None) -> SeriesMeta:
    """Read one DICOM series folder and write its cache entry atomically into `series_dir`.

    Raises SeriesReadError (unreadable) or NoContrastError (a flat, unscorable input).
    """
    layout = scan_series(folder, limits)
    with entry_writer(series_dir) as tmp_dir:
        layout, volume, intensity = write_normalised(layout, tmp_dir / VOLUME_FILE, config)
        require_contrast(volume.low, volume.high, folder)
        shape, (n_slices, rows, cols) = volume.shape, (len(layout.frames), layout.rows, layout.cols)
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
    return meta


@contextmanager
def entry_writer(series_dir: Path) -> Iterator[Path]:
    """A temporary sibling folder to write a cache entry into, renamed to `series_dir` when the block
    succeeds (removed when it fails; kept out of the way when a concurrent writer finished first)."""
    tmp_dir = series_dir.parent / f"{TMP_PREFIX}{series_dir.name}-{os.getpid()}"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    try:
        yield tmp_dir
        if series_dir.exists():  # a concurrent writer finished first; theirs is identical
            shutil.rmtree(tmp_dir)
        else:
            os.replace(tmp_dir, series_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise


def _cache_one(args: tuple[str, str, PreprocessConfig, ReadLimits | None]) -> tuple[str, str | None]:
    folder, series_dir, config, limits = args
    try:
        cache_series(folder, Path(series_dir), config, limits)
        return Path(series_dir).name, None
    except (SeriesReadError, NoContrastError) as err:
        return Path(series_dir).name, str(err)
    except Exception as err:  # noqa: BLE001 - one bad series must not stop the others
        return Path(series_dir).name, f"{folder}: {type(err).__name__}: {err}"


@dataclass
class BuildReport:
    """What a cache build did: counts and the reason for each series that failed."""

    cached: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    rebuilt: list[str] = field(default_factory=list)  # damaged entries found and rebuilt

    def __str__(self) -> str:
        text = f"cached {self.cached}, already cached {self.skipped}, failed {len(self.failed)}"
        return f"{text}, rebuilt {len(self.rebuilt)} damaged" if self.rebuilt else text


def _npy_problem(path: Path, shape: tuple[int, ...]) -> str | None:
    """Why the uint8 .npy at `path` is not an array of `shape` (None when it is), from its header and size."""
    try:
        with open(path, "rb") as fh:
            version = read_magic(fh)
            read_header = read_array_header_1_0 if version == (1, 0) else read_array_header_2_0
            found, _, dtype = read_header(fh)
            offset = fh.tell()
            size = os.fstat(fh.fileno()).st_size
    except (OSError, ValueError) as err:
        return f"unreadable ({type(err).__name__}: {err})"
    if tuple(found) != tuple(shape) or dtype != np.uint8:
        return f"holds {dtype} {tuple(found)}, meta.json says uint8 {tuple(shape)}"
    expected = offset + int(np.prod(shape))
    if size != expected:
        return f"{size} bytes, {expected} expected (truncated or overwritten)"
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temporaries(folder: Path) -> None:
    """Remove `.tmp-<uid>-<pid>` folders whose writer process is gone (a killed build)."""
    for tmp in folder.glob(f"{TMP_PREFIX}*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if tmp.is_dir() and pid.isdigit() and not _pid_alive(int(pid)):
            log.info("removing %s, left by a killed build", tmp)
            shutil.rmtree(tmp, ignore_errors=True)


def _die_with_parent() -> None:
    """Pool-worker initializer: exit when the process that started the pool dies. A SIGKILLed parent
    otherwise leaves its workers blocked on the task queue forever (they hold its pipe open)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


class SeriesCache:
    """Cached uint8 volumes for one preprocessing configuration."""

    def __init__(self, root: str | Path, config: PreprocessConfig | None = None):
        self.config = config or PreprocessConfig()
        self.root = Path(root)
        self.dir = self.root / self.config.key

    def series_dir(self, series_uid: str) -> Path:
        return self.dir / series_uid

    def problem(self, series_uid: str) -> str | None:
        """Why an entry cannot be used ("not cached", a damaged file), or None when it is complete and consistent."""
        folder = self.series_dir(series_uid)
        if not (folder / META_FILE).exists():
            return "not cached"
        try:
            meta = self.meta(series_uid)
        except (OSError, ValueError, TypeError, KeyError) as err:
            return f"{META_FILE} unreadable ({type(err).__name__}: {err})"
        for name, shape in ((VOLUME_FILE, meta.shape), (MEAN_FILE, meta.shape[1:])):
            problem = _npy_problem(folder / name, shape)
            if problem:
                return f"{name} {problem}"
        return None

    def has(self, series_uid: str) -> bool:
        """True when the entry exists and its files match its meta.json."""
        return self.problem(series_uid) is None

    def _checked(self, series_uid: str) -> Path:
        problem = self.problem(series_uid)
        if problem:
            raise CacheEntryError(f"cache entry {self.series_dir(series_uid)} (series {series_uid}): {problem}; "
                                  "rerun the preparation to rebuild it")
        return self.series_dir(series_uid)

    def volume(self, series_uid: str, mmap: bool = True) -> np.ndarray:
        """Z×H×W uint8 volume (memory-mapped by default), after checking the entry against its meta.json."""
        return np.load(self._checked(series_uid) / VOLUME_FILE, mmap_mode="r" if mmap else None)

    def mean_image(self, series_uid: str) -> np.ndarray:
        """Mean over slices (the brain detector's input), H×W uint8."""
        return np.load(self._checked(series_uid) / MEAN_FILE)

    def meta(self, series_uid: str) -> SeriesMeta:
        with open(self.series_dir(series_uid) / META_FILE) as fh:
            return SeriesMeta.from_json(json.load(fh))

    def build(self, series_folders: Mapping[str, str | Path], workers: int = 0, progress: bool = True,
              limits: ReadLimits | None = None) -> BuildReport:
        """Cache every series not cached yet (or damaged); `series_folders` maps SeriesInstanceUID → DICOM folder."""
        self.dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(self.dir)
        write_json_atomic(self.config.to_dict(), self.dir / CONFIG_FILE)
        report = BuildReport()
        todo = []
        for uid, folder in series_folders.items():
            problem = self.problem(uid)
            if problem is None:
                report.skipped += 1
                continue
            if problem != "not cached":
                log.warning("cache entry %s is damaged (%s); rebuilding it", self.series_dir(uid), problem)
                report.rebuilt.append(uid)
                shutil.rmtree(self.series_dir(uid))
            todo.append((str(folder), str(self.series_dir(uid)), self.config, limits))
        results = self._run(todo, workers, progress)
        for uid, error in results:
            if error is None:
                report.cached += 1
            else:
                report.failed[uid] = error
                log.warning("could not cache series %s: %s", uid, error)
        write_json_atomic(report.failed, self.dir / FAILED_FILE)
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
            with ProcessPoolExecutor(max_workers=workers, initializer=_die_with_parent) as pool:
                for future in as_completed([pool.submit(_cache_one, item) for item in todo]):
                    yield future.result()
                    bar.update()
        bar.close()
