"""Merge a sweep's fold runs into `<sweep>/oof.csv` and `<sweep>/cv.json`.

Runs automatically when a `python train.py -m ... data.fold=0,1,2,3,4` sweep ends (Hydra callback),
and alone: `python -m iad.evaluation.cv <sweep dir>` rebuilds both from whatever folds exist.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
import shutil

from hydra.experimental.callback import Callback
import pandas as pd

from iad.contract import CV_FILE, DETECTIONS_FILE, ERROR_FILE, FOLD_PREFIX, OOF_FILE, RESULT_FILE, fold_runs
from iad.evaluation.detections import DETECTOR_REPORT, format_detection_report, is_detector_sweep, merge_detection_sweep
from iad.evaluation.oof import read_oof, score_oof
from iad.labels import LABEL_COLS
from iad.metrics import format_auc
from iad.utils.io import write_csv_atomic, write_json_atomic

log = logging.getLogger(__name__)

SWEEP_REGISTRY = ".sweep_dirs"  # in the multirun's folder: one file per job naming the sweep folder it filled
SWEEP_REGISTRY_ENV = "IAD_SWEEP_REGISTRY"


def merge_sweep(sweep_dir: str | Path) -> dict:
    """Concatenate every fold's OOF file, score it, write oof.csv and cv.json; returns the report.

    A detector sweep merges its folds' out-of-fold detections instead (`iad.evaluation.detections`).
    """
    sweep_dir = Path(sweep_dir)
    if is_detector_sweep(sweep_dir):
        return merge_detection_sweep(sweep_dir)
    frames, folds = [], {}
    for run in fold_runs(sweep_dir):
        status = {"complete": (run / RESULT_FILE).exists(), "failed": (run / ERROR_FILE).exists()}
        if (run / OOF_FILE).exists():
            frame = read_oof(run / OOF_FILE)
            frames.append(frame)
            status.update(n_series=len(frame), weighted_auc=score_oof(frame)["weighted_auc"])
        folds[run.name] = status
    if not frames:
        raise FileNotFoundError(f"no fold OOF file under {sweep_dir}/{FOLD_PREFIX}*/{OOF_FILE}")
    oof = pd.concat(frames, ignore_index=True)
    duplicated = oof["SeriesInstanceUID"].duplicated()
    if duplicated.any():
        raise ValueError(f"{sweep_dir}: {int(duplicated.sum())} series appear in more than one fold's OOF file")
    report = score_oof(oof)
    report["folds"] = folds
    write_csv_atomic(oof, sweep_dir / OOF_FILE, index=False)
    write_json_atomic(report, sweep_dir / CV_FILE)
    return report


def format_cv_report(report: dict) -> str:
    """Plain-text CV table: per fold, per modality, per label (per fold mAP for a detector sweep)."""
    if report.get("kind") == DETECTOR_REPORT:
        return format_detection_report(report)
    fmt = format_auc
    lines = [f"{'':<44}{'weighted AUC':>14}{'series':>8}"]
    for name, fold in report.get("folds", {}).items():
        flag = "" if fold.get("complete") else ("  (failed)" if fold.get("failed") else "  (incomplete)")
        lines.append(f"{name:<44}{fmt(fold.get('weighted_auc')):>14}{fold.get('n_series', 0):>8}{flag}")
    lines.append(f"{'all folds (OOF)':<44}{fmt(report['weighted_auc']):>14}{report['n_series']:>8}")
    for group, sub in report.get("by_group", {}).items():
        lines.append(f"  {group:<42}{fmt(sub['weighted_auc']):>14}{sub['n_series']:>8}")
    lines.append("per label:")
    for label in LABEL_COLS:
        lines.append(f"  {label:<42}{fmt(report['per_label'][label]):>14}")
    return "\n".join(lines)


def format_sweeps_table(reports: dict[str, dict]) -> str:
    """One row per configuration of a multirun: folds done, OOF weighted AUC overall and per modality."""
    groups = sorted({group for report in reports.values() for group in report.get("by_group", {})})
    width = max(len(name) for name in reports) + 2
    lines = [f"{'configuration':<{width}}{'folds':>7}{'series':>8}{'OOF':>8}" + "".join(f"{g:>12}" for g in groups)]
    for name, report in reports.items():
        done = sum(bool(fold.get("complete")) for fold in report.get("folds", {}).values())
        by_group = report.get("by_group", {})
        lines.append(f"{name:<{width}}{done:>7}{report['n_series']:>8}{format_auc(report['weighted_auc']):>8}"
                     + "".join(f"{format_auc(by_group.get(g, {}).get('weighted_auc')):>12}" for g in groups))
    return "\n".join(lines)


class MergeFoldsCallback(Callback):
    """Hydra callback: merge each configuration's folds after every fold, and print the CV tables at the end.

    Merging after each job keeps oof.csv / cv.json current even when a later fold fails (Hydra's
    sweeper then raises before `on_multirun_end`, so the process exits non-zero). A multirun over
    other parameters than the fold, or over several experiments, fills one sweep folder per
    configuration (conf/hydra/train.yaml): each job, in whatever process a launcher runs it, notes its
    folder in `$IAD_SWEEP_REGISTRY`, and the end merges every one and tables them side by side.
    """

    def on_multirun_start(self, config, **kwargs) -> None:
        registry = Path(config.hydra.sweep.dir) / SWEEP_REGISTRY
        shutil.rmtree(registry, ignore_errors=True)
        registry.mkdir(parents=True)
        os.environ[SWEEP_REGISTRY_ENV] = str(registry)  # launched jobs inherit it

    def on_job_end(self, config, job_return, **kwargs) -> None:
        from hydra.types import RunMode

        if config.hydra.mode != RunMode.MULTIRUN:
            return
        if os.environ.get(SWEEP_REGISTRY_ENV):
            (Path(os.environ[SWEEP_REGISTRY_ENV]) / str(config.hydra.job.num)).write_text(str(config.hydra.sweep.dir))
        try:
            merge_sweep(config.hydra.sweep.dir)
        except FileNotFoundError:
            pass  # no fold has an OOF file yet

    def on_multirun_end(self, config, **kwargs) -> None:
        if config.get("preflight_only"):  # the jobs only checked their configs: nothing to merge
            return
        registry = Path(os.environ.pop(SWEEP_REGISTRY_ENV, Path(config.hydra.sweep.dir) / SWEEP_REGISTRY))
        noted = sorted({p.read_text() for p in registry.glob("*")}) if registry.is_dir() else []
        reports, failed = {}, []
        for sweep_dir in map(Path, noted or [config.hydra.sweep.dir]):
            try:
                reports[sweep_dir.name] = report = merge_sweep(sweep_dir)
            except FileNotFoundError as err:
                log.error("sweep merge: %s", err)
                failed.append(sweep_dir.name)
                continue
            merged = DETECTIONS_FILE if report.get("kind") == DETECTOR_REPORT else OOF_FILE
            print(f"\nCV of {sweep_dir}:\n{format_cv_report(report)}\n→ {sweep_dir / merged}, {sweep_dir / CV_FILE}")
            failed += [f"{sweep_dir.name}/{name}" for name, fold in report["folds"].items()
                       if fold.get("failed") and not fold.get("complete")]
        classifier_reports = {name: r for name, r in reports.items() if r.get("kind") != DETECTOR_REPORT}
        if len(classifier_reports) > 1:
            print(f"\nConfigurations of this multirun:\n{format_sweeps_table(classifier_reports)}")
        if failed:
            log.error("folds failed: %s (see %s in each)", ", ".join(failed), ERROR_FILE)
            raise SystemExit(1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Rebuild a sweep's oof.csv and cv.json from its fold runs.")
    parser.add_argument("sweep_dir", type=Path)
    args = parser.parse_args(argv)
    report = merge_sweep(args.sweep_dir)
    print(format_cv_report(report))


if __name__ == "__main__":
    main()
