"""External TOF-MRA volumes into the series cache, lesion masks into per-slice boxes and centres (no torch).

Every angio volume `discover` finds is loaded with nibabel, turned into iad.dicom's axial layout by its
affine (`orient`), normalised exactly as an RSNA MR series (`normalise_slices("MR", ...)`, resized to
`preprocess.image_size`) and written as an ordinary cache entry (`SeriesCache`: volume.npy, mean.npy,
meta.json; modality "MR", one pseudo-SOP per slice: sop_uids = [uid] * Z, frames = 0..Z-1), through the
cache's own temporary-folder-and-rename writer. Cached volumes are skipped; a volume that cannot be read
is reported in series.csv (`excluded`) and `report.json`, never fatal. The RSNA build's failed.json is
left alone.

Lesion masks are oriented by their own affines (a mask may store its voxels in another order than its
volume) and must then match the volume's grid. Per lesion and slice, each connected component
(`scipy.ndimage.label`, 2-D) gives a box; per lesion, its centre of mass gives the centre. Boxes are
taken on the original grid and scaled to cache pixels (pixel k spans [k, k+1), as drawn boxes do), so
a small lesion never vanishes in a resize; centres use pixel-centre coordinates (pixel k at k, as the
localizers). Tables go atomically to `external_dir(cache.dir, source.name)`; a finished preparation
whose inputs have not changed (same volumes, masks, file sizes and times) is read back, not redone.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
import hashlib
import json
import logging
import os
from pathlib import Path
import shutil

import nibabel as nib
from nibabel.orientations import inv_ornt_aff
import numpy as np
import pandas as pd
from scipy import ndimage

from iad.boxes import XYXY_COLS
from iad.external.bids import discover
from iad.external.orientation import orient, orientation
from iad.external.source import ExternalSource, ensure_external
from iad.external.tables import (
    CONTROL,
    LESION_BOX_COLS,
    LESION_BOXES_TABLE,
    LESION_COL,
    LESION_COLS,
    LESIONS_TABLE,
    POSITIVE,
    SERIES_COLS,
    SERIES_TABLE,
    SLICE_COL,
    STATUS_COL,
    UNKNOWN,
    external_dir,
    external_series_uid,
    read_table,
    usable_series,
)
from iad.labels import UID_COL
from iad.preprocessing.cache import (
    CONFIG_FILE,
    MEAN_FILE,
    META_FILE,
    VOLUME_FILE,
    SeriesCache,
    SeriesMeta,
    VolumeWriter,
    _die_with_parent,
    _remove_stale_temporaries,
    entry_writer,
)
from iad.preprocessing.normalize import PreprocessConfig, normalise_slices, require_contrast
from iad.utils.io import write_csv_atomic, write_json_atomic

log = logging.getLogger(__name__)

MR_MODALITY = "MR"  # what iad.dicom reports for MRA series: the cache's MR normalisation
REPORT_FILE = "report.json"  # what the last preparation did; holds the fingerprint of its inputs
PREPARE_VERSION = 1  # bumped when the tables' computation changes


@dataclass
class ExternalTables:
    """The external source's tables (see iad.external.tables) and the folder they live in."""

    series: pd.DataFrame
    lesion_boxes: pd.DataFrame
    lesions: pd.DataFrame
    dir: Path


class MaskError(ValueError):
    """A lesion mask that cannot be used (other grid than its volume, empty)."""


def load_oriented(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """A 3-D NIfTI image as (slice, row, column) in iad.dicom's axial layout, and its affine after that reorientation."""
    image = nib.load(str(path))
    proxy = image.dataobj  # stored integers stay integers (the cache's histogram path); scaled data become float32
    scaled = getattr(proxy, "slope", 1.0) != 1.0 or getattr(proxy, "inter", 0.0) != 0.0
    data = image.get_fdata(dtype=np.float32) if scaled else np.asanyarray(proxy)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3-D image, got shape {data.shape}")
    ornt = orientation(image.affine)
    return orient(data, image.affine), image.affine @ inv_ornt_aff(ornt, data.shape)


def cache_volume(path: str | os.PathLike, series_dir: Path, config: PreprocessConfig) -> SeriesMeta:
    """Write one NIfTI angio volume as a cache entry (atomically) into `series_dir`; returns its meta."""
    volume, affine = load_oriented(path)
    n_slices, rows, cols = volume.shape
    spacing = np.linalg.norm(affine[:3, :3], axis=0)  # mm along slice, row, column
    normal = affine[:3, 0] / spacing[0]
    start = float(affine[:3, 3] @ normal)
    size = config.image_size
    shape = (n_slices, size or rows, size or cols)
    uid = series_dir.name
    with entry_writer(series_dir) as tmp_dir:
        writer = VolumeWriter(tmp_dir / VOLUME_FILE, shape)
        try:
            intensity = normalise_slices(MR_MODALITY, list(volume), [(1.0, 0.0)] * n_slices, config, writer)
        finally:
            writer.close()
        require_contrast(writer.low, writer.high, path)
        np.save(tmp_dir / MEAN_FILE, writer.mean_image())
        meta = SeriesMeta(
            series_uid=uid, modality=MR_MODALITY, shape=shape, original_shape=(n_slices, rows, cols),
            sop_uids=[uid] * n_slices, frames=list(range(n_slices)),
            slice_positions=[start + z * float(spacing[0]) for z in range(n_slices)],
            spacing=(float(spacing[0]), float(spacing[1]) * rows / shape[1], float(spacing[2]) * cols / shape[2]),
            intensity=intensity, config_key=config.key)
        write_json_atomic(meta.to_json(), tmp_dir / META_FILE)
    return meta


def lesion_tables(uid: str, mask_paths: list[str | os.PathLike], meta: SeriesMeta) -> tuple[list[dict], list[dict]]:
    """(lesion_boxes rows, lesions rows) of a volume's lesion masks, in cache pixels of its entry `meta`."""
    box_rows, centre_rows = [], []
    sy, sx = meta.shape[1] / meta.original_shape[1], meta.shape[2] / meta.original_shape[2]
    for lesion, path in enumerate(mask_paths, start=1):
        mask = lesion_mask(path, meta.original_shape)
        for z in np.flatnonzero(mask.any(axis=(1, 2))):
            labelled, _ = ndimage.label(mask[z], structure=np.ones((3, 3), bool))
            for component, found in enumerate(ndimage.find_objects(labelled), start=1):
                rows, cols = found
                box = (cols.start * sx, rows.start * sy, cols.stop * sx, rows.stop * sy)
                box_rows.append({UID_COL: uid, LESION_COL: lesion, SLICE_COL: int(z), **dict(zip(XYXY_COLS, box)),
                                 "voxels": int((labelled[found] == component).sum())})
        cz, cy, cx = ndimage.center_of_mass(mask)
        centre_rows.append({UID_COL: uid, LESION_COL: lesion, SLICE_COL: int(round(cz)),
                            "x": (cx + 0.5) * sx - 0.5, "y": (cy + 0.5) * sy - 0.5, "voxels": int(mask.sum())})
    return box_rows, centre_rows


def lesion_mask(path: str | os.PathLike, shape: tuple[int, int, int]) -> np.ndarray:
    """A lesion mask (voxels > 0.5) oriented by its own affine; MaskError unless it is non-empty and of `shape`."""
    mask, _ = load_oriented(path)
    mask = mask > 0.5
    if mask.shape != tuple(shape):
        raise MaskError(f"{path}: mask grid {mask.shape} (oriented) differs from its volume's {tuple(shape)}")
    if not mask.any():
        raise MaskError(f"{path}: empty lesion mask")
    return mask


def _prepare_one(args: tuple) -> dict:
    """Cache one volume (unless cached) and read its masks; errors become the result's `excluded` reason."""
    uid, volume_path, mask_paths, cache_root, config = args
    cache = SeriesCache(cache_root, config)
    result = {UID_COL: uid, "cached": False, "boxes": [], "centres": [], "n_slices": None, "excluded": ""}
    try:
        problem = cache.problem(uid)
        if problem is not None:
            if problem != "not cached":
                log.warning("cache entry %s is damaged (%s); rebuilding it", cache.series_dir(uid), problem)
                shutil.rmtree(cache.series_dir(uid))
            cache_volume(volume_path, cache.series_dir(uid), config)
            result["cached"] = True
        meta = cache.meta(uid)
        result["n_slices"] = meta.shape[0]
        result["boxes"], result["centres"] = lesion_tables(uid, mask_paths, meta)
    except Exception as err:  # noqa: BLE001 - one bad volume must not stop the others
        result["excluded"] = str(err) if isinstance(err, MaskError) else f"{volume_path}: {type(err).__name__}: {err}"
    return result


def volume_table(source: ExternalSource) -> tuple[pd.DataFrame, list[str]]:
    """Every volume of the source's datasets (discover's columns + uid, absolute paths), and discovery's problems."""
    parts, problems = [], []
    for dataset, root in sorted(source.roots.items()):
        found = discover(root, dataset)
        problems += [f"{dataset}: {p}" for p in found.attrs.get("problems", [])]
        found[UID_COL] = [external_series_uid(dataset, s, t, a) for s, t, a in zip(found.subject, found.session, found.acq)]
        found["volume_path"] = [str(Path(root, v)) for v in found.volume]
        found["mask_paths"] = [[str(Path(root, m)) for m in masks] for masks in found.lesion_masks]
        parts.append(found)
    table = pd.concat(parts, ignore_index=True)
    duplicated = table[UID_COL][table[UID_COL].duplicated()]
    if len(duplicated):
        raise ValueError(f"external source '{source.name}': volumes share an id: {sorted(set(duplicated))[:5]}")
    return table, problems


def _flag(value) -> bool | None:
    """A control flag as True/False, None when unknown (None or NaN)."""
    return None if value is None or pd.isna(value) else bool(value)


def _status(row) -> str:
    if row.n_lesions > 0:
        return POSITIVE
    return CONTROL if _flag(row.control) else UNKNOWN


def _fingerprint(volumes: pd.DataFrame, source: ExternalSource, config: PreprocessConfig) -> str:
    """Hash of what the tables depend on: the volumes and masks (paths, sizes, times), exclusions, settings."""
    files = [p for v, masks in zip(volumes.volume_path, volumes.mask_paths) for p in (v, *masks)]
    stats = [(p, *(lambda s: (s.st_size, s.st_mtime_ns))(os.stat(p))) if os.path.exists(p) else (p, None) for p in files]
    blob = json.dumps({"version": PREPARE_VERSION, "key": config.key, "exclude": list(source.exclude_acq), "files": stats,
                       "controls": [_flag(c) for c in volumes.control]}, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()


def prepare_external(source: ExternalSource, cache_root: str | os.PathLike, preprocess: PreprocessConfig,
                     workers: int = 0, progress: bool = True) -> ExternalTables:
    """Generate (if synthetic) and cache every volume of `source`, and write its series, lesion-box and lesion tables."""
    ensure_external(source)
    cache = SeriesCache(cache_root, preprocess)
    out_dir = external_dir(cache.dir, source.name)
    volumes, problems = volume_table(source)
    fingerprint = _fingerprint(volumes, source, preprocess)
    report_path = out_dir / REPORT_FILE
    if report_path.exists() and json.loads(report_path.read_text()).get("fingerprint") == fingerprint:
        tables = read_external(cache_root, preprocess, source.name)
        if all(cache.has(uid) for uid in usable_series(tables.series)):
            return tables
    cache.dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(cache.dir)
    if not (cache.dir / CONFIG_FILE).exists():
        write_json_atomic(preprocess.to_dict(), cache.dir / CONFIG_FILE)
    excluded = volumes.acq.isin(source.exclude_acq)
    todo = [(row[UID_COL], row.volume_path, row.mask_paths, str(cache_root), preprocess)
            for _, row in volumes[~excluded].iterrows()]
    results = {r[UID_COL]: r for r in _run(todo, workers, progress)}
    series = _series_table(volumes, excluded, results)
    boxes = pd.DataFrame([b for r in results.values() for b in r["boxes"]], columns=LESION_BOX_COLS)
    centres = pd.DataFrame([c for r in results.values() for c in r["centres"]], columns=LESION_COLS)
    write_csv_atomic(series, out_dir / SERIES_TABLE)
    write_csv_atomic(boxes.sort_values([UID_COL, LESION_COL, SLICE_COL], ignore_index=True), out_dir / LESION_BOXES_TABLE)
    write_csv_atomic(centres.sort_values([UID_COL, LESION_COL], ignore_index=True), out_dir / LESIONS_TABLE)
    failed = {r[UID_COL]: r["excluded"] for r in results.values() if r["excluded"]}
    for uid, reason in failed.items():
        log.warning("external volume %s left out: %s", uid, reason)
    for problem in problems:
        log.warning("%s", problem)
    write_json_atomic({"source": source.name, "volumes": len(volumes), "excluded_acq": int(excluded.sum()),
                       "cached": sum(r["cached"] for r in results.values()), "failed": failed,
                       "status": series[STATUS_COL].value_counts().to_dict(), "problems": problems,
                       "fingerprint": fingerprint}, report_path)
    log.info("external source %s: %d volumes, %d cached now, %d failed, %d excluded by acquisition", source.name,
             len(volumes), sum(r["cached"] for r in results.values()), len(failed), int(excluded.sum()))
    return read_external(cache_root, preprocess, source.name)


def _series_table(volumes: pd.DataFrame, excluded: pd.Series, results: dict) -> pd.DataFrame:
    series = volumes.copy()
    series[STATUS_COL] = [_status(row) for row in volumes.itertuples(index=False)]
    series["n_slices"] = [results.get(uid, {}).get("n_slices") for uid in volumes[UID_COL]]
    series["excluded"] = [f"acquisition {acq!r} excluded (exclude_acq)" if skip else results[uid]["excluded"]
                          for uid, acq, skip in zip(volumes[UID_COL], volumes.acq, excluded)]
    series["n_slices"] = series["n_slices"].astype("Int64")
    return series[SERIES_COLS].sort_values(UID_COL, ignore_index=True)


def _run(todo: list, workers: int, progress: bool):
    from tqdm.auto import tqdm

    with tqdm(total=len(todo), desc="caching external volumes", unit="volume", disable=not progress or not todo) as bar:
        if workers <= 1 or len(todo) <= 1:
            for item in todo:
                yield _prepare_one(item)
                bar.update()
            return
        with ProcessPoolExecutor(max_workers=workers, initializer=_die_with_parent) as pool:
            for future in as_completed([pool.submit(_prepare_one, item) for item in todo]):
                yield future.result()
                bar.update()


def read_external(cache_root: str | os.PathLike, preprocess: PreprocessConfig, source_name: str) -> ExternalTables:
    """The tables `prepare_external` wrote for `source_name` under this preprocessing key (clear error when absent)."""
    folder = external_dir(SeriesCache(cache_root, preprocess).dir, source_name)
    if not (folder / SERIES_TABLE).exists():
        raise FileNotFoundError(f"{folder / SERIES_TABLE} does not exist: external source '{source_name}' is not prepared "
                                "for this preprocessing (run prepare_external / the DataModule's prepare_data)")
    return ExternalTables(series=read_table(folder / SERIES_TABLE, SERIES_COLS),
                          lesion_boxes=read_table(folder / LESION_BOXES_TABLE, LESION_BOX_COLS),
                          lesions=read_table(folder / LESIONS_TABLE, LESION_COLS), dir=folder)
