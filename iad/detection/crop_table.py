"""Brain crop table of a dataset: `python -m iad.detection.crop_table detector=<brain detector run or detector.pt>
dataset=rsna [external=tofmra] [min_confidence=0.25] [out=<csv>]`.

Runs the brain detector over every cached series' mean image (the cache of the detector's own
preprocessing, built first where missing) and writes `<detector run>/crops/<dataset>.csv` (the crop
table `data.crop_table` takes) with its sidecar JSON naming the detector; see `iad.detection.crops`.
With `external=<source>` it crops that external source's usable volumes instead
(`<detector run>/crops/external-<source>.csv`, the table `data.external.crop_table` takes), so
external slices train on the same learned crop as the RSNA series they join.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from iad.contract import CHECKPOINT_DIR, detector_file
from iad.utils.config import CONFIG_DIR
from iad.utils.env import setup_env

setup_env()

CROPS_DIR = "crops"


def resolve_detector(path: str | Path) -> tuple[Path, Path]:
    """(detector file, its run folder) of a detector run folder or a detector file."""
    path = Path(path)
    if path.is_dir():
        if not detector_file(path).exists():
            raise FileNotFoundError(f"{path}: no {detector_file('.')} in this detector run folder")
        return detector_file(path), path
    if not path.exists():
        raise FileNotFoundError(f"detector {path} does not exist")
    return path, path.parent.parent if path.parent.name == CHECKPOINT_DIR else path.parent


def build_crop_table(detector_path: str | Path, source, cache_root: str | Path, out: str | Path | None = None,
                     min_confidence: float | None = None, workers: int = 0, device: str = "cpu") -> tuple[Path, Counter]:
    """Crop every cached series of `source` (a DatasetSource, or an ExternalSource: its usable volumes) with
    the brain detector; returns the table path and the counts per source ("detector", "head_box: <reason>",
    "not cached"). `min_confidence` defaults to the rule's (`iad.detection.crops.DEFAULT_MIN_CONFIDENCE`)."""
    from iad.detection.crops import DEFAULT_MIN_CONFIDENCE, brain_crop, crop_row, write_crop_table
    from iad.detection.detector import load_detector
    from iad.utils.weights import file_sha256

    path, run_dir = resolve_detector(detector_path)
    detector = load_detector(path, device)
    if detector.spec.image != "mean":
        raise ValueError(f"{path}: a {detector.spec.task} detector on {detector.spec.image!r} images; "
                         "a crop table needs the brain detector (mean images)")
    cache, listed, name = _listed_series(source, cache_root, detector.spec.preprocess, workers)
    min_confidence = DEFAULT_MIN_CONFIDENCE if min_confidence is None else min_confidence
    uids = [uid for uid in listed if cache.has(uid)]  # each entry's integrity is checked once
    counts: Counter = Counter(not_cached=len(listed) - len(uids))
    rows = []
    for uid in uids:
        mean = cache.mean_image(uid)
        # one image per forward pass, as inference runs it: a batch could tip a near-tie between two boxes.
        # Every detection (conf 0.001, as ultralytics validates): the rule, not the detector, applies min_confidence.
        decision = brain_crop(detector.detect_mean(mean), detector.spec.classes, mean, min_confidence)
        counts[decision.source if decision.reason is None else f"{decision.source}: {decision.reason}"] += 1
        rows.append(crop_row(uid, decision))
    out = Path(out) if out else run_dir / CROPS_DIR / f"{name}.csv"
    return write_crop_table(rows, out, path, file_sha256(path), min_confidence), counts


def _listed_series(source, cache_root: str | Path, preprocess, workers: int) -> tuple:
    """(the detector's cache, the series to crop, the table's default name) of a dataset or external source."""
    from iad.detection.crops import external_crop_table_name
    from iad.external.cache import prepare_external
    from iad.external.source import ExternalSource
    from iad.external.tables import usable_series
    from iad.labels import UID_COL, read_series_labels
    from iad.preprocessing import SeriesCache, prepare_dataset

    if isinstance(source, ExternalSource):
        series = prepare_external(source, cache_root, preprocess, workers=workers).series
        return SeriesCache(cache_root, preprocess), list(usable_series(series)), external_crop_table_name(source.name)
    cache, _ = prepare_dataset(source, cache_root, preprocess, workers=workers)
    return cache, list(read_series_labels(source.train_csv)[UID_COL]), source.name


@hydra.main(config_path=str(CONFIG_DIR), config_name="crop_table", version_base="1.3")
def main(cfg: DictConfig) -> None:
    source = instantiate(cfg.external) if cfg.get("external") else instantiate(cfg.dataset)
    table, counts = build_crop_table(cfg.detector, source, cfg.paths.cache_dir, cfg.out,
                                     cfg.min_confidence, cfg.workers, cfg.device)
    print(f"crop table {table}: " + ", ".join(f"{key} {n}" for key, n in sorted(counts.items())))


if __name__ == "__main__":
    main()
