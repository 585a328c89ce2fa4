"""Learning check: the demo experiment's 5-fold OOF weighted AUC on the synthetic data, and its wall time.

Runs the real sweep (`train.py -m data.fold=0,1,2,3,4`) into a scratch log folder, then prints the
merged CV score and the time next to the targets (OOF weighted AUC >= 0.95 in <= 10 minutes on 2 cores).
Usage: python benchmarks/learning.py [--experiment demo] [--keep-data] [-- extra Hydra overrides]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import shutil
import subprocess
import sys
import time

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "_work" / "learning"
TARGET_AUC, TARGET_SECONDS = 0.95, 600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="demo")
    parser.add_argument("--keep-data", action="store_true", help="reuse the data and cache of the last run")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = parser.parse_args()
    name = f"learning_{args.experiment}"
    if not args.keep_data:  # time a first run: generation and caching included
        shutil.rmtree(WORK / "data", ignore_errors=True)
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", f"experiment={args.experiment}", "data.fold=0,1,2,3,4",
           f"name={name}", "overwrite=true", f"paths.log_dir={WORK / 'logs'}", f"paths.data_dir={WORK / 'data'}",
           *args.overrides]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    seconds = time.perf_counter() - start
    cv = json.loads((WORK / "logs" / "train" / "sweeps" / name / "cv.json").read_text())
    folds = ", ".join(f"{v['weighted_auc']:.3f}" for v in cv["folds"].values())
    print(f"\n{args.experiment}: 5-fold OOF weighted AUC {cv['weighted_auc']:.4f} (folds {folds}); "
          f"target >= {TARGET_AUC}")
    first = "reused data and cache" if args.keep_data else "data generation and caching included"
    print(f"wall time {seconds:.0f} s ({first}); target <= {TARGET_SECONDS} s")


if __name__ == "__main__":
    main()
