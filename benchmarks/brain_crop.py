"""What the learned brain crop is worth: the demo classifier's OOF with brain-detector crops vs the head box
vs no crop, in one run on the synthetic data.

Trains the demo brain detector (exp1 on CPU), writes its crop table, then runs the same classifier sweep
three times (`data.crop_table=<table>`, the default Otsu head box, `data.head_crop=false`) and prints the
merged OOF weighted AUC of each, plain and with the reference's test-time centre crop 0.75.
Usage: python benchmarks/brain_crop.py [--folds 0,1,2,3,4] [--experiment demo] [-- extra Hydra overrides]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import subprocess
import sys
import time

import pandas as pd

from iad.evaluation.oof import read_oof, score_oof

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "_work" / "brain_crop"


def run(args: list[str]) -> None:
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", default="0,1,2,3,4")
    parser.add_argument("--experiment", default="demo")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for the classifier sweeps")
    args = parser.parse_args()
    paths = [f"paths.log_dir={WORK / 'logs'}", f"paths.data_dir={WORK / 'data'}"]
    start = time.perf_counter()
    run(["train.py", "experiment=demo_yolo_brain", "name=bench_brain", *paths])
    detector_run = WORK / "logs" / "train" / "runs" / "bench_brain" / "full"
    table = WORK / "crops.csv"
    run(["-m", "iad.detection.crop_table", f"detector={detector_run}", f"out={table}", *paths])
    detector_seconds = time.perf_counter() - start
    crops = pd.read_csv(table)
    variants = {"brain detector crop": [f"data.crop_table={table}"], "head box (Otsu)": [],
                "no crop": ["data.head_crop=false"]}
    rows = []
    for label, extra in variants.items():
        name = f"bench_crop_{len(rows)}"
        overrides = [f"experiment={args.experiment}", f"data.fold={args.folds}", f"name={name}", *paths, *extra,
                     *args.overrides]
        run(["train.py", "-m", *overrides])
        (sweep,) = (WORK / "logs" / "train" / "sweeps").glob(f"{name}*")  # <name>[@<overrides>]: the configuration's folder
        plain = json.loads((sweep / "cv.json").read_text())["weighted_auc"]
        run(["predict.py", "mode=oof", f"model_path={sweep}", "tta.center_crop=0.75", f"output_dir={WORK / 'rescore'}",
             *paths])
        rescored = max(sweep.glob("oof_*.csv"), key=lambda p: p.stat().st_mtime)  # the file mode=oof just wrote
        cropped = score_oof(read_oof(rescored))["weighted_auc"]
        rows.append((label, plain, cropped))
    print(f"\nbrain detector + crop table: {detector_seconds:.0f} s; crop sources: "
          + ", ".join(f"{k} {v}" for k, v in crops["source"].value_counts().items()))
    print(f"{args.experiment} classifier, folds {args.folds}, OOF weighted AUC (plain / centre crop 0.75):")
    for label, plain, cropped in rows:
        print(f"  {label:<22}{plain:.4f} / {cropped:.4f}")
    print(f"wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
