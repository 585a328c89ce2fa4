"""Loggers that survive a resumed run."""

from __future__ import annotations

import csv
from pathlib import Path

from pytorch_lightning.loggers import CSVLogger as LightningCSVLogger
from pytorch_lightning.loggers.logger import rank_zero_experiment

METRICS_FILE = "metrics.csv"


class CSVLogger(LightningCSVLogger):
    """Lightning's CSVLogger, except that a resumed run keeps the rows already in `metrics.csv`.

    Lightning deletes the file when its writer starts in a non-empty folder; the rows are read before
    and written back (with their header) right after, so the new rows append to the history.
    """

    @property
    @rank_zero_experiment
    def experiment(self):
        if self._experiment is not None:
            return self._experiment
        path = Path(self.log_dir) / METRICS_FILE
        header, rows = [], []
        if path.is_file():
            with open(path, newline="") as fh:
                reader = csv.DictReader(fh)
                rows, header = list(reader), list(reader.fieldnames or [])
        experiment = super().experiment
        if header:
            experiment.metrics_keys = sorted(header)
            with open(path, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=experiment.metrics_keys)
                writer.writeheader()
                writer.writerows(rows)
        return experiment
