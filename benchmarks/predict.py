"""Per-series inference time split into read, preprocess, model and aggregate, on one core; then the
cost table (`mode=cost`) under each cost control side by side with the defaults.

A 200-slice 512×512 uncompressed CT series (the prepare benchmark's writer) through the Predictor
with the demo experiment's model (weights do not change the timing). Prints the split side by side
with the reference's budget: the 1st place needed about 4 s of preprocessing per series.
Usage: python benchmarks/predict.py [--slices 200] [--size 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
from dataclasses import replace
import statistics

import cv2
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from prepare import ct_series
import torch

from iad.contract import InputSpec
from iad.inference.cost import HIDDEN_TEST_SERIES, measure_cost
from iad.inference.loading import LoadedModel
from iad.inference.predictor import TIMING_STAGES, CostControls, LoadedMember, Predictor
from iad.utils.config import CONFIG_DIR

FIRST_PLACE_PREPROCESS_S = 4.0
COST_CONTROLS = {"defaults": {}, "slice_stride=2": {"slice_stride": 2}, "slice_stride=4": {"slice_stride": 4},
                 "precision=bf16": {"precision": "bf16"}, "batch_size=16": {"batch_size": 16}}


def demo_model() -> LoadedModel:
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=demo", "paths.output_dir=."])
    module = instantiate(cfg.model).eval()
    spec = InputSpec(preprocess=instantiate(cfg.preprocess), slice_input=instantiate(cfg.data.input).spec(),
                     head_crop=True, val_center_crop=0.75)
    return LoadedModel(net=module.net, model_spec=module.spec, input_spec=spec,
                       config=OmegaConf.to_container(cfg, resolve=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    folder = ct_series(args.slices, args.size)[0].parent
    predictor = Predictor([LoadedMember("demo", 1.0, [demo_model()])], batch_size=64)
    predictor.predict_with_timings(folder)  # warm-up
    runs = [predictor.predict_with_timings(folder).timings.as_dict() for _ in range(args.repeats)]
    median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    print(f"{args.slices} slices of {args.size}² CT, demo model, 1 core, median of {args.repeats}")
    for stage in TIMING_STAGES:
        print(f"  {stage:<12}{median[f'{stage}_s']:>8.3f} s")
    front = median["read_s"] + median["preprocess_s"]
    print(f"read + preprocess {front:.3f} s (target <= 0.5 s; the 1st place's preprocessing: "
          f"~{FIRST_PLACE_PREPROCESS_S:.0f} s, {FIRST_PLACE_PREPROCESS_S / front:.0f}x ours)")
    print_cost_controls(predictor, folder, args.repeats)


def print_cost_controls(predictor: Predictor, folder, repeats: int) -> None:
    """The cost table's seconds per series under each control, side by side with the defaults (same run)."""
    rows = {name: measure_cost(Predictor([replace(m, cost=CostControls(**control)) for m in predictor.members],
                                         batch_size=predictor.batch_size, read_workers=1), folder, repeats)
            for name, control in COST_CONTROLS.items()}
    base = rows["defaults"].per_series
    print(f"{'cost controls (mode=cost)':<22}{'model s':>9}{'per series s':>14}{'vs defaults':>13}"
          f"{f'{HIDDEN_TEST_SERIES} series':>14}")
    for name, table in rows.items():
        print(f"{name:<22}{sum(table.members.values()):>9.3f}{table.per_series:>14.3f}{table.per_series / base:>12.2f}x"
              f"{table.per_series * HIDDEN_TEST_SERIES / 3600:>12.2f} h")


if __name__ == "__main__":
    main()
