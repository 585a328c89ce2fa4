"""Pseudo-labels for external TOF-MRA volumes: `python -m iad.labelling.pseudo [external=synthetic] [name=demo]`.

The stage (see `iad.labelling.pseudo_labels` for the rule): the external volumes go into the cache of
every preprocessing the models look at (`iad.external.cache.prepare_external`); the members' fold
models (averaged, members weighted) score every slice of every usable volume through the predictor,
each model with its own input (crop rule, slice input), exactly as `iad.inference.predictor.Predictor`
builds it; the exp0 fold detectors look at the lesion slices of the positive volumes; the rule keeps
slices and picks their boxes. Written to the output folder, atomically: `pseudo_labels.csv`
(PSEUDO_COLS; boxes in cache pixels of the first member's preprocessing), `slice_predictions.csv`,
`detections.csv` (every fold detector's boxes on lesion slices, those pixels too) and `report.json`
(last: its presence marks the stage finished; `overwrite=true` reruns).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from iad.external.tables import (
    CONTROL,
    POSITIVE,
    PSEUDO_TABLE,
    SLICE_COL,
    TRUTH_COLS,
    UNKNOWN,
    read_table,
    usable_series,
)
from iad.labelling.pseudo_labels import (
    DETECTION_COLS,
    ON_LESION_COL,
    SLICE_PREDICTION_COLS,
    PseudoRule,
    on_lesion,
    pseudo_report,
    select_pseudo_labels,
)
from iad.labels import LABEL_COLS, UID_COL
from iad.utils.io import write_csv_atomic, write_json_atomic

log = logging.getLogger(__name__)

SLICE_PREDICTIONS_FILE = "slice_predictions.csv"
DETECTIONS_FILE = "detections.csv"
REPORT_FILE = "report.json"
SCORED_STATUSES = (POSITIVE, CONTROL, UNKNOWN)  # every usable volume is scored; only positives and controls label


def load_members(members: Mapping[str, Mapping], device: str = "cpu"):
    """Predictor members from {name: {path: sweep / run / checkpoint, weight (1), hflip_tta (false),
    center_crop (null: the models' validation crop)} or null (left out)}: each member's fold models, averaged."""
    from iad.inference.loading import checkpoints_in, load_model
    from iad.inference.predictor import LoadedMember

    members = {name: settings for name, settings in (members or {}).items() if settings is not None}  # null: left out
    if not members:
        raise ValueError("pseudo labels need at least one member {name: {path, weight}}")
    loaded = []
    for name, settings in members.items():
        if settings.get("path") is None:
            raise ValueError(f"member {name!r}: no path (a sweep, run or checkpoint)")
        models = [load_model(path, device) for path in checkpoints_in(settings["path"])]
        loaded.append(LoadedMember(str(name), float(settings.get("weight", 1.0)), models,
                                   hflip=bool(settings.get("hflip_tta", False)), center_crop=settings.get("center_crop")))
    return loaded


def model_configs(predictor, detectors) -> dict:
    """Every preprocessing (by key) a model, its brain detector or an aneurysm detector looks at; the first
    member's first model's comes first (the pseudo-label boxes are in its cache's pixels)."""
    configs = {}
    for member in predictor.members:
        for model in member.models:
            configs.setdefault(model.input_spec.preprocess.key, model.input_spec.preprocess)
    configs.update({key: config for key, config in predictor.brain_detector_configs().items() if key not in configs})
    for detector in detectors:
        configs.setdefault(detector.spec.preprocess.key, detector.spec.preprocess)
    return configs


def score_slices(predictor, caches: Mapping, uids) -> pd.DataFrame:
    """Blended per-slice probabilities of the cached volumes `uids`: uid, slice_index and the 14 labels."""
    model_keys = {model.input_spec.preprocess.key for member in predictor.members for model in member.models}
    frames = []
    for uid in uids:
        volumes = {key: (cache.volume(uid) if key in model_keys else None, cache.mean_image(uid))
                   for key, cache in caches.items()}
        probabilities = predictor.predict_volume_slices(volumes)
        frame = pd.DataFrame(probabilities, columns=list(LABEL_COLS))
        frame.insert(0, SLICE_COL, np.arange(len(frame)))
        frame.insert(0, UID_COL, uid)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[UID_COL, SLICE_COL, *LABEL_COLS])


def detect_slices(detectors, cache, target, slices: pd.DataFrame, rule: PseudoRule, batch_size: int = 16) -> pd.DataFrame:
    """Every fold detector's boxes (confidence >= the rule's) on `slices` (uid, slice_index), read from the
    detectors' `cache` and scaled to the pixels of the `target` cache (DETECTION_COLS)."""
    from iad.detection.findings import scale_box

    rows = []
    for uid, group in slices.groupby(UID_COL, sort=False):
        zs = sorted(int(z) for z in group[SLICE_COL])
        volume = cache.volume(uid)
        to_hw = tuple(target.meta(uid).shape[1:])
        for fold, detector in enumerate(detectors):
            found = detector.detect_series_slices(volume, zs, conf=rule.detector_confidence, batch_size=batch_size)
            for z, boxes in zip(zs, found):
                for box in boxes:
                    scaled = scale_box(box[:4], volume.shape[1:], to_hw)
                    rows.append([uid, z, fold, *scaled, float(box[4]), detector.spec.classes[int(box[5])]])
    return pd.DataFrame(rows, columns=DETECTION_COLS)


def pseudo_label(tables_for: Callable, cache_root: str | Path, predictor, detectors, out_dir: str | Path,
                 rule: PseudoRule | None = None, truth: str | Path | None = None, batch_size: int = 16,
                 overwrite: bool = False) -> dict:
    """Run the stage with loaded models: `tables_for(preprocess)` caches the external volumes for one
    preprocessing and returns their tables (ExternalTables: series, lesion_boxes, ...); `detectors` are
    the aneurysm fold detectors (LoadedDetector). Returns the report (read back when already finished)."""
    from iad.preprocessing import SeriesCache

    out_dir, rule = Path(out_dir), rule or PseudoRule()
    if (out_dir / REPORT_FILE).exists() and not overwrite:
        log.info("%s: finished already (overwrite=true reruns it)", out_dir)
        return json.loads((out_dir / REPORT_FILE).read_text())
    configs = model_configs(predictor, detectors)
    tables = {key: tables_for(config) for key, config in configs.items()}
    caches = {key: SeriesCache(cache_root, config) for key, config in configs.items()}
    target_key = next(iter(configs))
    series, lesion_boxes = tables[target_key].series, tables[target_key].lesion_boxes
    uids = [uid for status in SCORED_STATUSES for uid in usable_series(series, status)]
    missing = {uid: problem for uid in uids for cache in caches.values() if (problem := cache.problem(uid)) is not None}
    for uid, problem in missing.items():
        log.warning("external series %s left out: %s", uid, problem)
    uids = [uid for uid in uids if uid not in missing]
    slices = score_slices(predictor, caches, uids)
    slices[ON_LESION_COL] = on_lesion(slices, series, lesion_boxes)
    detector_key = detectors[0].spec.preprocess.key if detectors else target_key
    detections = detect_slices(detectors, caches[detector_key], caches[target_key],
                               slices[slices[ON_LESION_COL]], rule, batch_size)
    pseudo = select_pseudo_labels(slices, series, lesion_boxes, detections, rule)
    truth_table = read_table(truth, TRUTH_COLS) if truth else None
    report = {**pseudo_report(series, slices, pseudo, rule, truth_table, lesion_boxes),
              "not_cached": missing, "preprocess_key": target_key,
              "members": {m.name: {"weight": m.weight, "models": [model.source for model in m.models]}
                          for m in predictor.members},
              "detectors": [d.source for d in detectors]}
    write_csv_atomic(slices[SLICE_PREDICTION_COLS], out_dir / SLICE_PREDICTIONS_FILE, index=False)
    write_csv_atomic(detections, out_dir / DETECTIONS_FILE, index=False)
    write_csv_atomic(pseudo, out_dir / PSEUDO_TABLE, index=False)
    write_json_atomic(report, out_dir / REPORT_FILE)
    return report


def run_pseudo_labels(source, members: Mapping[str, Mapping], detector: str | Path, cache_root: str | Path,
                      out_dir: str | Path, rule: PseudoRule | None = None, device: str = "cpu", batch_size: int = 64,
                      detector_batch_size: int = 16, workers: int = 0, overwrite: bool = False) -> dict:
    """The whole stage for an `ExternalSource`: load the members (sweeps) and the exp0 detector (sweep, run or
    detector.pt; every fold), cache the source's volumes, label, write (see `pseudo_label`)."""
    out_dir = Path(out_dir)
    if (out_dir / REPORT_FILE).exists() and not overwrite:
        return json.loads((out_dir / REPORT_FILE).read_text())
    from iad.external.cache import prepare_external
    from iad.inference.localize import load_localizer
    from iad.inference.predictor import Predictor

    predictor = Predictor(load_members(members, device), batch_size=batch_size, device=device)
    detectors = load_localizer(detector, device=device).detectors  # every fold; one cache, slice images: checked

    def tables_for(config):
        return prepare_external(source, cache_root, config, workers=workers)

    return pseudo_label(tables_for, cache_root, predictor, detectors, out_dir, rule, getattr(source, "truth", None),
                        detector_batch_size, overwrite=True)


def summary(report: Mapping) -> str:
    """A few lines a user reads after the stage."""
    slices, lines, iou = report["slices"], [], report.get("detector_box_iou")
    lines.append(f"volumes: {json.dumps(report['volumes'])}")
    lines.append(f"slices scored {slices['scored']}, on a lesion {slices['on_lesion']}, kept {slices['kept']} "
                 f"(boxes: {json.dumps(report['box_source'])}, detector boxes' IoU with the mask box "
                 f"{'-' if iou is None else f'{iou:.3f}'}), control rows {slices['control_rows']}")
    for name, scores in report.get("truth", {}).items():
        if scores["n"]:
            lines.append(f"top location on {name}: {scores['accuracy']:.3f} of {scores['n']} "
                         f"(chance {scores['chance']:.3f}, majority {scores['majority']:.3f})")
    return "\n".join(lines)


def _main() -> None:
    import hydra
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from iad.utils.config import CONFIG_DIR
    from iad.utils.env import setup_env

    setup_env()

    @hydra.main(config_path=str(CONFIG_DIR), config_name="pseudo", version_base="1.3")
    def main(cfg) -> None:
        rule = PseudoRule(cfg.present_threshold, cfg.location_threshold, cfg.iou_threshold, cfg.detector_confidence,
                          cfg.controls, cfg.control_stride)
        report = run_pseudo_labels(instantiate(cfg.external), OmegaConf.to_container(cfg.members, resolve=True),
                                   cfg.detector, cfg.paths.cache_dir, cfg.paths.output_dir, rule, cfg.device,
                                   cfg.batch_size, cfg.detector_batch_size, cfg.workers, cfg.overwrite)
        print(f"pseudo labels {Path(cfg.paths.output_dir) / PSEUDO_TABLE}\n{summary(report)}")

    main()


if __name__ == "__main__":
    _main()
