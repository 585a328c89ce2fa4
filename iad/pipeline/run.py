"""Run the stages in order: skip the finished ones, run the others as their own commands, keep each one's log,
then print the reference's table for this run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import json
from pathlib import Path
import subprocess
import sys
import time

from iad.ensembling.run import REPORT_FILE
from iad.pipeline.stages import ENSEMBLE_DIR, Planner, Stage
from iad.pipeline.table import format_results_table, results_table
from iad.utils.env import PROJECT_ROOT
from iad.utils.io import write_csv_atomic, write_json_atomic

STATUS_FILE = "stages.json"
TABLE_FILE = "table.csv"
LOG_DIR = "logs"
TAIL_LINES = 30


class StageError(RuntimeError):
    """A stage's command failed; the message names the stage, its exit status and its log file."""


def run_stage(stage: Stage, log_file: Path, echo: bool = True) -> None:
    """Run one stage's command from the project folder, its output into `log_file` (and the console when `echo`)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a") as out:
        out.write(f"$ {' '.join(stage.argv)}\n")
        out.flush()
        process = subprocess.Popen(stage.argv, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, bufsize=1)
        for line in process.stdout:
            out.write(line)
            if echo:
                sys.stdout.write(line)
        status = process.wait()
    if status != 0:
        tail = "".join(log_file.read_text().splitlines(keepends=True)[-TAIL_LINES:])
        raise StageError(f"stage {stage.name!r} failed (exit status {status}); its log: {log_file}\n{tail}")
    if not stage.finished():
        raise StageError(f"stage {stage.name!r} ended without its output {stage.done_file}; its log: {log_file}")


def run_pipeline(planner: Planner, only: Sequence[str] | None = None, echo: bool = True) -> dict:
    """Run (or skip) every stage; returns {stage: {status, seconds, output}} (also written to stages.json)."""
    stages = planner.stages()
    unknown = set(only or ()) - {s.name for s in stages}
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; the stages are {[s.name for s in stages]}")
    status_path = planner.out / STATUS_FILE
    record: dict[str, dict] = {}
    for stage in stages:
        if only and stage.name not in only:
            continue
        if stage.finished():
            print(f"[pipeline] {stage.name}: finished before, skipped ({stage.done_file})", flush=True)
            record[stage.name] = {"status": "skipped", "seconds": 0.0, "output": str(stage.done_file)}
            continue
        print(f"[pipeline] {stage.name}: running", flush=True)
        start = time.perf_counter()
        try:
            run_stage(stage, planner.out / LOG_DIR / f"{stage.name}.log", echo=echo)
        except StageError:
            record[stage.name] = {"status": "failed", "seconds": round(time.perf_counter() - start, 1),
                                  "output": str(stage.done_file)}
            write_json_atomic(record, status_path)
            raise
        seconds = round(time.perf_counter() - start, 1)
        record[stage.name] = {"status": "ran", "seconds": seconds, "output": str(stage.done_file)}
        write_json_atomic(record, status_path)
        print(f"[pipeline] {stage.name}: done in {seconds:.0f} s", flush=True)
    write_json_atomic(record, status_path)
    return record


def ensemble_weights(planner: Planner) -> dict[str, float]:
    """The weights the ensemble stage gave its members (empty before it ran)."""
    path = planner.out / ENSEMBLE_DIR / REPORT_FILE
    if not path.exists():
        return {}
    return {member["name"]: float(member["weight"]) for member in json.loads(path.read_text())["members"]}


def report_table(planner: Planner, reference: Mapping[str, Mapping]) -> str:
    """Write table.csv in the pipeline folder and return the table as text (blend: the ensemble stage's weights)."""
    table = results_table(planner, ensemble_weights(planner), reference)
    write_csv_atomic(table, planner.out / TABLE_FILE, index=False)
    return format_results_table(table, planner.recipe.center_crop)
