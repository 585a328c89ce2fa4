"""Generate a synthetic dataset in the competition layout (series folders + the three tables + boxes)."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, replace
import json
import multiprocessing
import os
from pathlib import Path
import shutil
import time

import numpy as np
import pandas as pd
from pydicom.filereader import read_file_meta_info

from iad.datasets import HIDDEN_POSITIVES_CSV
from iad.folds import N_FOLDS, make_folds, write_folds
from iad.labels import LABEL_COLS, LOCATION_COLS, MODALITIES, MODALITY_COL, PRESENT_COL, SOP_COL, UID_COL
from iad.synthetic.annotations import boxes_record, read_boxes_record, write_boxes
from iad.synthetic.phantom import render_volume
from iad.synthetic.plan import SIZE_RANGE, SLICES_RANGE, SeriesPlan, localizer, plan_series, render_rng
from iad.synthetic.views import AXIAL
from iad.synthetic.writer import write_series
from iad.utils.io import write_csv_atomic, write_json_atomic

SERIES_DIR = "series"
TRAIN_CSV = "train.csv"
LOCALIZERS_CSV = "train_localizers.csv"
FOLDS_CSV = "train_kfold.csv"
SETTINGS_JSON = "synthetic.json"
LOCK_FILE = ".generating.lock"
# What the generator draws: a dataset, and every run trained on it, changes with it (it is a dataset
# setting, so part of a run's identity). 2: LabelImg boxes and a few coronal/sagittal series.
GENERATOR_VERSION = 2
AGE_COL = "PatientAge"
SEX_COL = "PatientSex"
TRAIN_COLUMNS: tuple[str, ...] = (UID_COL, AGE_COL, SEX_COL, MODALITY_COL, *LABEL_COLS)
LOCALIZER_COLUMNS: tuple[str, ...] = (UID_COL, SOP_COL, "coordinates", "location")
MIN_SIZE = 32


@dataclass(frozen=True)
class DatasetSummary:
    """What a dataset folder holds (counted from disk) and how long `make_dataset` took."""

    root: Path
    n_series: int
    series_per_modality: dict[str, int]
    n_positive: int
    n_aneurysms: int
    n_non_axial: int  # coronal and sagittal series
    n_files: int
    n_compressed_files: int
    n_bytes: int
    n_generated: int  # series written by this call; the others were already complete
    seconds: float

    def format(self) -> str:
        """A few human-readable lines."""
        modalities = ", ".join(f"{name} {count}" for name, count in self.series_per_modality.items())
        return "\n".join(
            [
                f"synthetic dataset at {self.root}: {self.n_series} series ({modalities})",
                f"  positives {self.n_positive}, aneurysms {self.n_aneurysms}, coronal or sagittal {self.n_non_axial}",
                f"  files {self.n_files}, compressed {self.n_compressed_files}, {self.n_bytes / 2**20:.1f} MiB",
                f"  generated {self.n_generated} series in {self.seconds:.1f} s",
            ]
        )


def label_table(plans: list[SeriesPlan]) -> pd.DataFrame:
    """train.csv rows (same columns as the competition's), sorted by SeriesInstanceUID."""
    rows = []
    for plan in plans:
        flags = {column: int(column in plan.locations) for column in LOCATION_COLS}
        rows.append(
            {
                UID_COL: plan.series_uid,
                AGE_COL: plan.age,
                SEX_COL: plan.sex,
                MODALITY_COL: plan.modality,
                **flags,
                PRESENT_COL: int(bool(plan.locations)),
            }
        )
    return pd.DataFrame(rows, columns=list(TRAIN_COLUMNS)).sort_values(UID_COL, ignore_index=True)


def localizer_table(plans: list[SeriesPlan]) -> pd.DataFrame:
    """train_localizers.csv rows: one per aneurysm, pointing at its centre."""
    rows = []
    for plan in plans:
        for aneurysm in plan.aneurysms:
            sop_uid, coordinates = localizer(plan, aneurysm)
            rows.append((plan.series_uid, sop_uid, str(coordinates), aneurysm.location))
    return pd.DataFrame(rows, columns=list(LOCALIZER_COLUMNS)).sort_values([UID_COL, SOP_COL], ignore_index=True)


def generate_series(seed: int, index: int, size_range: tuple[int, int], series_root: Path, **options) -> None:
    """Render and write one series into a temporary folder, then rename it into place.

    `options`: the other keywords of `plan_series` (locations, positive_share, max_slices).
    """
    plan = plan_series(seed, index, size_range, **options)
    final = series_root / plan.series_uid
    partial = series_root / f".{plan.series_uid}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    write_series(plan, render_volume(plan, render_rng(seed, index)), partial)
    try:
        partial.rename(final)
    except OSError:  # another process finished the same series first
        shutil.rmtree(partial, ignore_errors=True)


def _generate_all(seed: int, indices: list[int], size_range: tuple[int, int], series_root: Path, workers: int,
                  options: dict, progress: bool = True) -> None:
    from tqdm.auto import tqdm

    with tqdm(total=len(indices), desc="generating synthetic series", unit="series",
              disable=not progress or not indices) as bar:
        if workers <= 1 or len(indices) <= 1:
            for index in indices:
                generate_series(seed, index, size_range, series_root, **options)
                bar.update()
            return
        # spawn: safe even when the caller already runs threads (torch, data loaders)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(workers, len(indices)), mp_context=context) as pool:
            futures = [pool.submit(generate_series, seed, index, size_range, series_root, **options) for index in indices]
            for future in as_completed(futures):
                future.result()
                bar.update()


def _summarize(root: Path, plans: list[SeriesPlan], n_generated: int, seconds: float) -> DatasetSummary:
    files = [path for plan in plans for path in sorted((root / SERIES_DIR / plan.series_uid).iterdir())]
    counts = Counter(plan.modality for plan in plans)
    return DatasetSummary(
        root=root,
        n_series=len(plans),
        series_per_modality={name: counts[name] for name in MODALITIES if counts[name]},
        n_positive=sum(bool(plan.aneurysms) for plan in plans),
        n_aneurysms=sum(len(plan.aneurysms) for plan in plans),
        n_non_axial=sum(plan.view != AXIAL for plan in plans),
        n_files=len(files),
        n_compressed_files=sum(read_file_meta_info(path).TransferSyntaxUID.is_compressed for path in files),
        n_bytes=sum(path.stat().st_size for path in files),
        n_generated=n_generated,
        seconds=seconds,
    )


def read_settings(root: str | os.PathLike) -> dict | None:
    """The settings `make_dataset` last completed in `root` (None when it never finished there)."""
    path = Path(root) / SETTINGS_JSON
    return json.loads(path.read_text()) if path.exists() else None


def is_current(root: str | os.PathLike, settings: dict) -> bool:
    """Whether `root` holds a complete dataset made with `settings` (a `dataset_settings` dict), boxes included."""
    return read_settings(root) == settings and read_boxes_record(root) == boxes_record(settings)


def dataset_settings(n_series: int = 60, seed: int = 0, size_range: tuple[int, int] = SIZE_RANGE,
                     locations: str = "real", positive_share: float | None = None, max_slices: int = SLICES_RANGE[1],
                     generator: int = GENERATOR_VERSION, hidden_positive_share: float = 0.0) -> dict:
    """The full settings of a synthetic dataset (defaults filled in), as `make_dataset` records them.

    `generator` must be this code's GENERATOR_VERSION: an older version's data cannot be made again.
    `hidden_positive_share` is recorded only when > 0, so clean datasets keep their settings.
    """
    if int(generator) != GENERATOR_VERSION:
        raise ValueError(f"dataset.synthetic.generator={generator}: this code generates version {GENERATOR_VERSION} "
                         "(older versions' data cannot be made again)")
    if not 0.0 <= float(hidden_positive_share) < 1.0:
        raise ValueError(f"hidden_positive_share must be in [0, 1), got {hidden_positive_share}")
    settings = {"n_series": int(n_series), "seed": int(seed), "size_range": [int(v) for v in size_range],
                "locations": locations, "positive_share": None if positive_share is None else float(positive_share),
                "max_slices": int(max_slices), "generator": GENERATOR_VERSION}
    if hidden_positive_share > 0:
        settings["hidden_positive_share"] = float(hidden_positive_share)
    return settings


def hidden_positives(plans: list[SeriesPlan], share: float, seed: int) -> set[str]:
    """SeriesInstanceUIDs of round(share × positives) positive series to write as negative (label noise).

    Deterministic in (seed, plans): each positive series gets a random key from (seed, its index) and
    the lowest keys are hidden.
    """
    positives = [plan for plan in plans if plan.aneurysms]
    n_hidden = int(round(share * len(positives)))
    keys = [np.random.default_rng((seed, plan.index, 0x41D)).random() for plan in positives]
    return {positives[i].series_uid for i in np.argsort(keys, kind="stable")[:n_hidden]}


def written_plans(plans: list[SeriesPlan], hidden: set[str]) -> list[SeriesPlan]:
    """The plans as the tables and boxes describe them: hidden positives without their aneurysms.

    The images keep the aneurysms (they are rendered from the original plans).
    """
    return [replace(plan, aneurysms=()) if plan.series_uid in hidden else plan for plan in plans]


def make_dataset(
    out_dir: str | os.PathLike,
    n_series: int = 60,
    seed: int = 0,
    *,
    size_range: tuple[int, int] = SIZE_RANGE,
    locations: str = "real",
    positive_share: float | None = None,
    max_slices: int = SLICES_RANGE[1],
    generator: int = GENERATOR_VERSION,
    hidden_positive_share: float = 0.0,
    workers: int = 1,
    progress: bool = True,
) -> DatasetSummary:
    """Write `n_series` synthetic series, train.csv, train_localizers.csv, train_kfold.csv and boxes.

    Layout: `out_dir/series/<SeriesInstanceUID>/<random hex>.dcm`; `out_dir/boxes/` holds LabelImg
    aneurysm and brain boxes as the reference's box archive does (`iad.synthetic.annotations`),
    written when missing or made for other settings. Series `i` depends only on
    (seed, i), so a larger `n_series` adds series without changing the first ones; series already on
    disk are kept (each is written to a temporary folder and renamed when complete). `size_range`
    bounds the in-plane image size in pixels; `locations` names the aneurysm location shares
    ("real" or "uniform", see `frequencies.LOCATION_WEIGHTS`); `positive_share` sets the share of
    positive series in every modality (None: the real per-modality shares); `max_slices` caps the
    slices per series; `workers` > 1 renders series in parallel processes; `progress` shows a bar of
    the series rendered. Folds: 5 (fewer only when there are fewer than 5 series), stratified by
    `iad.folds.make_folds`. `hidden_positive_share` > 0 writes that share of positive series as
    negative (no localizers, no aneurysm boxes; the images still show the aneurysms) and their true
    labels to `hidden_positives.csv`; the folds follow the written labels. The settings are written
    last to `synthetic.json` (`read_settings`), so a folder whose settings match is complete.
    """
    low, high = size_range
    if not MIN_SIZE <= low <= high:
        raise ValueError(f"size_range must satisfy {MIN_SIZE} <= min <= max, got {size_range}")
    if n_series < 2:
        raise ValueError(f"n_series must be at least 2 (cross-validation folds), got {n_series}")
    start = time.perf_counter()
    root = Path(out_dir)
    series_root = root / SERIES_DIR
    series_root.mkdir(parents=True, exist_ok=True)
    # an older generator version (or a bad share) is refused before anything is drawn
    settings = dataset_settings(n_series, seed, size_range, locations, positive_share, max_slices, generator,
                                hidden_positive_share)
    options = {"locations": locations, "positive_share": positive_share, "max_slices": max_slices}
    plans = [plan_series(seed, index, size_range, **options) for index in range(n_series)]
    with _exclusive(root / LOCK_FILE):  # parallel sweep jobs: the first generates, the others then find it done
        missing = [plan.index for plan in plans if not (series_root / plan.series_uid).is_dir()]
        _generate_all(seed, missing, size_range, series_root, workers, options, progress)
        hidden = hidden_positives(plans, hidden_positive_share, seed) if hidden_positive_share > 0 else set()
        written = written_plans(plans, hidden)
        labels = label_table(written)
        write_csv_atomic(labels, root / TRAIN_CSV)
        write_csv_atomic(localizer_table(written), root / LOCALIZERS_CSV)
        write_folds(make_folds(labels, n_folds=min(N_FOLDS, n_series), seed=seed), root / FOLDS_CSV)
        if hidden:
            truth = label_table([plan for plan in plans if plan.series_uid in hidden])
            write_csv_atomic(truth[[UID_COL, *LABEL_COLS]], root / HIDDEN_POSITIVES_CSV)
        else:
            (root / HIDDEN_POSITIVES_CSV).unlink(missing_ok=True)
        if read_boxes_record(root) != boxes_record(settings):  # also adds the boxes to datasets made before them
            write_boxes(root, written, settings)
        write_json_atomic(settings, root / SETTINGS_JSON)
    return _summarize(root, plans, len(missing), time.perf_counter() - start)


@contextmanager
def _exclusive(lock_path: Path):
    """Hold an exclusive lock on `lock_path` across processes (POSIX; elsewhere no lock)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
