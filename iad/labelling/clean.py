"""The label-cleaning stage: `python -m iad.labelling.clean [cleaning=reference|demo] [present_threshold=0.9] ...`.

Reads the members' out-of-fold predictions (blended by weight) and exp0's out-of-fold detections,
applies `iad.labelling.cleaning.clean_labels` to the dataset's train.csv and writes to the run folder
(`logs/clean/<name>[@overrides]`): `train_labels.csv` (data.train_labels), `boxes.csv`
(data.extra_boxes), `flipped.csv` and `report.json` (counts per modality; on a synthetic dataset with
hidden positives, precision and recall against them and the chance precision, and
`threshold_grid.csv`: the same over a grid of thresholds). report.json present
means finished: the stage is skipped unless `overwrite=true`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
import json
import logging
import os
from pathlib import Path

import pandas as pd

from iad.datasets import HIDDEN_POSITIVES_CSV, DatasetSource
from iad.labelling.cleaning import (
    Thresholds,
    align_member,
    blend,
    clean_labels,
    cleaning_report,
    format_report,
    load_member,
    read_detection_table,
    threshold_grid,
)
from iad.labels import LABEL_COLS, UID_COL, read_series_labels
from iad.utils.io import write_csv_atomic, write_json_atomic

log = logging.getLogger(__name__)

TRAIN_LABELS_FILE = "train_labels.csv"
BOXES_FILE = "boxes.csv"
FLIPPED_FILE = "flipped.csv"
REPORT_FILE = "report.json"
GRID_FILE = "threshold_grid.csv"  # with hidden positives: precision / recall over a grid of thresholds


def run_cleaning(dataset: DatasetSource, members: Mapping[str, Mapping], detections: str | os.PathLike | None,
                 out_dir: str | os.PathLike, thresholds: Thresholds = Thresholds(), overwrite: bool = False,
                 require_all_series: bool = True) -> dict:
    """Clean `dataset`'s labels into `out_dir`; returns the report (read back when already finished).

    `members`: {name: {path: sweep folder or OOF csv, weight}}; `detections`: exp0 sweep folder or its
    detections.csv (None: no boxes, so every flipped series is left out of training).
    `require_all_series=False` judges only the series every member scored (a sweep cut to some folds, as
    the pipeline's smoke recipe runs); the others keep their labels and are counted as `unjudged`.
    """
    out_dir = Path(out_dir)
    if (out_dir / REPORT_FILE).exists() and not overwrite:
        log.info("label cleaning already finished in %s (overwrite=true reruns it)", out_dir)
        return json.loads((out_dir / REPORT_FILE).read_text())
    if not members:
        raise ValueError("label cleaning needs at least one member {name: {path, weight}}")
    labels = read_series_labels(dataset.train_csv)
    oofs = {name: load_member(spec["path"], name) for name, spec in members.items()}
    judged = labels if require_all_series else _scored_by_all(labels, oofs.values())
    predictions = blend({name: align_member(oof, judged, name) for name, oof in oofs.items()},
                        {name: spec.get("weight", 1.0) for name, spec in members.items()})
    cleaned = clean_labels(judged, predictions, read_detection_table(detections) if detections else None, thresholds)
    if len(judged) < len(labels):  # the unjudged series train with their own labels
        unjudged = labels[~labels[UID_COL].isin(judged[UID_COL])]
        cleaned = replace(cleaned, train_labels=pd.concat([cleaned.train_labels, unjudged], ignore_index=True))
    hidden_file = Path(dataset.root) / HIDDEN_POSITIVES_CSV
    hidden = pd.read_csv(hidden_file, dtype={UID_COL: str}) if hidden_file.exists() else None
    if hidden is not None and [c for c in (UID_COL, *LABEL_COLS) if c not in hidden.columns]:
        raise ValueError(f"{hidden_file}: expected columns {UID_COL} and the 14 labels")
    report = cleaning_report(labels, cleaned, hidden)
    report.update(unjudged=len(labels) - len(judged), dataset=dataset.name, train_csv=str(dataset.train_csv),
                  members={name: {"path": str(spec["path"]), "weight": float(spec.get("weight", 1.0))}
                           for name, spec in members.items()},
                  detections=None if detections is None else str(detections),
                  thresholds={"present": thresholds.present, "location": thresholds.location,
                              "detector_confidence": thresholds.detector_confidence})
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(cleaned.train_labels, out_dir / TRAIN_LABELS_FILE)
    write_csv_atomic(cleaned.boxes, out_dir / BOXES_FILE)
    write_csv_atomic(cleaned.flipped, out_dir / FLIPPED_FILE)
    if hidden is not None:
        write_csv_atomic(threshold_grid(judged, predictions, hidden).round(6), out_dir / GRID_FILE)
    write_json_atomic(report, out_dir / REPORT_FILE)  # last: its presence means finished
    return report


def _scored_by_all(labels: pd.DataFrame, oofs) -> pd.DataFrame:
    """The rows of `labels` whose series every member's OOF table holds."""
    scored = set.intersection(*(set(oof[UID_COL]) for oof in oofs))
    return labels[labels[UID_COL].isin(scored)].reset_index(drop=True)


def main() -> None:
    import hydra
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from iad.utils.config import CONFIG_DIR
    from iad.utils.env import setup_env

    setup_env()

    @hydra.main(config_path=str(CONFIG_DIR), config_name="clean", version_base="1.3")
    def entry(cfg) -> None:
        members = OmegaConf.to_container(cfg.members, resolve=True)
        thresholds = Thresholds(cfg.present_threshold, cfg.location_threshold, cfg.detector_confidence)
        report = run_cleaning(instantiate(cfg.dataset), members, cfg.detections, cfg.paths.output_dir, thresholds,
                              cfg.overwrite, cfg.require_all_series)
        print(f"{cfg.paths.output_dir}\n{format_report(report)}")

    entry()


if __name__ == "__main__":
    main()
