"""Detectability check: a run trained on the RSNA-like synthetic data scores the synthetic external TOF-MRA volumes.

Generates and caches a synthetic external source (`iad.synthetic.bids`) with the run's preprocessing, then
prints (1) series level: AUC of "Aneurysm Present" (positives vs controls/unknown), the share of positives
whose top location is one of their true ones (with chance), the mean location AUC; (2) slice level, the
pseudo-label rule's view: lesion slices with present > 0.5 and max(location) > 0.5, the top location's
accuracy on them, and how many slices of negative volumes pass the same rule.
Usage: python benchmarks/external_detectability.py RUN_OR_SWEEP [--n-volumes 40] [--seed 11] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score
import torch

from iad.data.crops import head_box
from iad.external.cache import prepare_external
from iad.external.source import ExternalSource
from iad.external.tables import POSITIVE
from iad.inference.predictor import Predictor
from iad.labels import LOCATION_COLS, PRESENT_COL, UID_COL
from iad.preprocessing import SeriesCache

ROOT = Path(__file__).resolve().parents[1]
RULE = 0.5  # the reference's pseudo-label thresholds (present and max location)


def slice_probabilities(model, volume: np.ndarray, mean_image: np.ndarray) -> np.ndarray:
    """Z×14 probabilities of one loaded model on every slice (head-box crop, no TTA)."""
    box = head_box(mean_image)
    stack = torch.stack([model.slice_input(volume, z, box) for z in range(volume.shape[0])])
    with torch.no_grad():
        return model.slice_probabilities(model.slice_input.normalize(stack)).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run folder, sweep folder or checkpoint (Predictor.load)")
    parser.add_argument("--n-volumes", type=int, default=40)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--work", default=str(ROOT / "benchmarks" / "_work" / "external"))
    args = parser.parse_args()
    work = Path(args.work)
    predictor = Predictor.load(args.run, device="cpu")
    model = predictor.members[0].models[0]
    config = model.input_spec.preprocess
    source = ExternalSource("synthetic", {d: str(work / "data" / d) for d in ("ds003949", "ds005096")},
                            synthetic={"n_volumes": args.n_volumes, "seed": args.seed}, truth=str(work / "data" / "truth.csv"))
    tables = prepare_external(source, work / "cache", config, progress=False)
    cache, truth = SeriesCache(work / "cache", config), pd.read_csv(source.truth)
    locations = truth.groupby(UID_COL)["location"].agg(set)
    lesion_location = truth.set_index([UID_COL, "lesion"])["location"]
    series, kept, lesion_slices, top_ok, negative_slices, negative_passing = [], 0, 0, [], 0, 0
    for uid, status in zip(tables.series[UID_COL], tables.series["status"]):
        volume, mean_image = np.asarray(cache.volume(uid)), cache.mean_image(uid)
        series.append({UID_COL: uid, "status": status,
                       **predictor.predict_volume(volume, mean_image, config.key)})
        probs = slice_probabilities(model, volume, mean_image)
        passing = (probs[:, -1] > RULE) & (probs[:, :-1].max(axis=1) > RULE)
        if status != POSITIVE:
            negative_slices, negative_passing = negative_slices + len(probs), negative_passing + int(passing.sum())
            continue
        boxes = tables.lesion_boxes[tables.lesion_boxes[UID_COL] == uid]
        for z, group in boxes.groupby("slice_index"):
            lesion_slices, kept = lesion_slices + 1, kept + bool(passing[z])
            if passing[z]:
                top = LOCATION_COLS[int(probs[z, :-1].argmax())]
                top_ok.append(top in {lesion_location[uid, lesion] for lesion in group["lesion"]})
    scored = pd.DataFrame(series).set_index(UID_COL)
    positive = (scored["status"] == POSITIVE).astype(int)
    location_aucs = [roc_auc_score(scored.index.isin(truth[truth["location"] == c][UID_COL]), scored[c])
                     for c in LOCATION_COLS if 0 < scored.index.isin(truth[truth["location"] == c][UID_COL]).sum() < len(scored)]
    top_right = [scored.loc[uid, list(LOCATION_COLS)].astype(float).idxmax() in found for uid, found in locations.items()]
    print(json.dumps({
        "volumes": len(scored), "positives": int(positive.sum()),
        "auc_present": round(roc_auc_score(positive, scored[PRESENT_COL]), 4),
        "top_location_correct": round(float(np.mean(top_right)), 4),
        "top_location_chance": round(float(np.mean([len(found) / len(LOCATION_COLS) for found in locations])), 4),
        "mean_location_auc": round(float(np.mean(location_aucs)), 4), "location_aucs": len(location_aucs),
        "lesion_slices": lesion_slices, "lesion_slices_kept_by_rule": kept,
        "top_location_correct_on_kept": round(float(np.mean(top_ok)), 4) if top_ok else None,
        "negative_volume_slices": negative_slices, "negative_slices_passing_rule": negative_passing,
    }, indent=1))


if __name__ == "__main__":
    main()
