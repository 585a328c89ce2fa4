"""The label-cleaning rule on constructed out-of-fold tables, and the stage end to end on a tiny real sweep."""

from __future__ import annotations

import json
from pathlib import Path
import re

import numpy as np
import pandas as pd
import pytest

from iad.boxes import ANEURYSM_BOX_COLS, read_aneurysm_box_table
from iad.contract import DETECTIONS_FILE, OOF_FILE
from iad.datasets import DatasetSource
from iad.detection.training import DETECTIONS_FILE_COLS
from iad.evaluation.oof import TRUE_COLS
from iad.labelling.clean import BOXES_FILE, FLIPPED_FILE, GRID_FILE, REPORT_FILE, TRAIN_LABELS_FILE, run_cleaning
from iad.labelling.cleaning import (
    GRID,
    LOCATIONS_SEP,
    Thresholds,
    align_member,
    blend,
    clean_labels,
    cleaning_report,
    detection_boxes,
    load_member,
    threshold_grid,
)
from iad.labels import LABEL_COLS, LOCATION_COLS, MODALITY_COL, PRESENT_COL, SOP_COL, UID_COL, read_series_labels

RNG = np.random.default_rng(0)


def label_table(present: list[int]) -> pd.DataFrame:
    rows = []
    for i, p in enumerate(present):
        flags = dict.fromkeys(LOCATION_COLS, 0)
        if p:
            flags[LOCATION_COLS[i % len(LOCATION_COLS)]] = 1
        rows.append({UID_COL: f"1.2.{i}", MODALITY_COL: ("CTA", "MRA")[i % 2], **flags, PRESENT_COL: p})
    return pd.DataFrame(rows)


def predictions(labels: pd.DataFrame, present: list[float], locations: list[dict]) -> pd.DataFrame:
    """Low noise everywhere, then the given present score and location scores per series."""
    scores = RNG.uniform(0.0, 0.3, size=(len(labels), len(LABEL_COLS)))
    frame = pd.DataFrame(scores, columns=list(LABEL_COLS)).assign(**{UID_COL: labels[UID_COL].to_numpy()})
    frame[PRESENT_COL] = present
    for row, chosen in enumerate(locations):
        for name, value in chosen.items():
            frame.loc[row, name] = value
    return frame


def detections_for(rows: list[tuple[str, float]]) -> pd.DataFrame:
    """A detections.csv frame: one box per (series, confidence), original pixels = 2 × cache pixels."""
    records = []
    for k, (uid, confidence) in enumerate(rows):
        x0, y0 = 10 + k, 20 + k
        records.append({UID_COL: uid, SOP_COL: f"{uid}.9{k}", "frame": pd.NA, "slice_index": k, "cls": "aneurysm",
                        "confidence": confidence, "x0": x0, "y0": y0, "x1": x0 + 4, "y1": y0 + 4,
                        "orig_x0": 2 * x0, "orig_y0": 2 * y0, "orig_x1": 2 * x0 + 8, "orig_y1": 2 * y0 + 8})
    frame = pd.DataFrame(records, columns=list(DETECTIONS_FILE_COLS))
    frame["frame"] = frame["frame"].astype("Int64")
    return frame


MCA, ACOM = LOCATION_COLS[4], LOCATION_COLS[6]


def test_rule_flips_only_confident_negatives_and_boxes_them():
    t = Thresholds(present=0.9, location=0.9, detector_confidence=0.2)
    labels = label_table([0, 0, 0, 0, 0, 1])
    present = [0.95, 0.95, 0.85, 0.91, t.present, 0.99]  # the 5th sits on the threshold: not above it
    locations = [{MCA: 0.95, ACOM: 0.92}, {MCA: 0.85}, {MCA: 0.95}, {ACOM: 0.91}, {MCA: 0.95}, {MCA: 0.99}]
    preds = predictions(labels, present, locations)
    uids = labels[UID_COL].tolist()
    detections = detections_for([(uids[0], 0.5), (uids[0], 0.1), (uids[1], 0.9), (uids[5], 0.9)])
    cleaned = clean_labels(labels, preds, detections, t)

    expected = [uid for uid, p, loc, y in zip(uids, present, locations, labels[PRESENT_COL], strict=True)
                if y == 0 and p > t.present and max([*loc.values(), 0.3]) > t.location]
    assert cleaned.flipped[UID_COL].tolist() == expected == [uids[0], uids[3]]
    flipped = cleaned.flipped.set_index(UID_COL)
    assert flipped.loc[uids[0], "locations"].split(LOCATIONS_SEP) == [MCA, ACOM]
    assert flipped.loc[uids[0], "n_boxes"] == 1 and flipped.loc[uids[3], "n_boxes"] == 0
    # its box: the detection above the confidence, in original pixels and box-table columns
    assert list(cleaned.boxes.columns) == list(ANEURYSM_BOX_COLS) and cleaned.boxes[UID_COL].tolist() == [uids[0]]
    box = cleaned.boxes.iloc[0]
    assert (box["xmin"], box["ymin"], box["xmax"], box["ymax"]) == tuple(detections.loc[0, ["orig_x0", "orig_y0",
                                                                                            "orig_x1", "orig_y1"]])
    # train labels: the boxed flip is positive at its locations, the unboxed one is left out, the rest unchanged
    train = cleaned.train_labels.set_index(UID_COL)
    assert uids[3] not in train.index and len(train) == len(labels) - 1
    assert train.loc[uids[0], PRESENT_COL] == 1
    assert {c for c in LOCATION_COLS if train.loc[uids[0], c] == 1} == {MCA, ACOM}
    untouched = [uids[1], uids[2], uids[4], uids[5]]
    pd.testing.assert_frame_equal(train.loc[untouched], labels.set_index(UID_COL).loc[untouched])
    report = cleaning_report(labels, cleaned)
    assert (report["flipped"], report["flipped_with_boxes"], report["left_out_without_box"]) == (2, 1, 1)
    assert report["per_modality"]["CTA"]["flipped"] + report["per_modality"]["MRA"]["flipped"] == 2


def test_lower_thresholds_flip_more_and_no_detector_leaves_every_flip_out():
    labels = label_table([0, 0, 0, 1])
    preds = predictions(labels, [0.95, 0.85, 0.6, 0.99], [{MCA: 0.95}, {MCA: 0.95}, {MCA: 0.7}, {MCA: 0.99}])
    strict = clean_labels(labels, preds, None, Thresholds(0.9, 0.9))
    loose = clean_labels(labels, preds, None, Thresholds(0.8, 0.8))
    looser = clean_labels(labels, preds, None, Thresholds(0.5, 0.5))
    assert len(strict.flipped) == 1 < len(loose.flipped) == 2 < len(looser.flipped) == 3
    assert not looser.flipped["kept"].any() and len(looser.train_labels) == 1 and looser.boxes.empty
    with pytest.raises(ValueError, match="threshold"):
        Thresholds(present=1.5)


def oof_file(path: Path, labels: pd.DataFrame, preds: pd.DataFrame) -> Path:
    frame = labels[[UID_COL, MODALITY_COL]].assign(fold=0)
    frame[list(LABEL_COLS)] = preds.set_index(UID_COL).loc[labels[UID_COL], list(LABEL_COLS)].to_numpy()
    frame[list(TRUE_COLS)] = labels[list(LABEL_COLS)].to_numpy()
    frame.to_csv(path, index=False)
    return path


def test_members_must_score_every_series_exactly_once(tmp_path):
    labels = label_table([0, 1, 0])
    preds = predictions(labels, [0.1, 0.9, 0.2], [{}, {}, {}])
    good = oof_file(tmp_path / "good.csv", labels, preds)
    assert align_member(load_member(good), labels)[UID_COL].tolist() == labels[UID_COL].tolist()
    twice = pd.concat([pd.read_csv(good), pd.read_csv(good).iloc[:1]])
    twice.to_csv(tmp_path / "twice.csv", index=False)
    with pytest.raises(ValueError, match="twice.csv: duplicated"):
        align_member(load_member(tmp_path / "twice.csv", "exp3"), labels, "exp3")
    pd.read_csv(good).iloc[1:].to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(ValueError, match=r"'exp3': .*short.csv lacks 1 of the 3"):
        align_member(load_member(tmp_path / "short.csv", "exp3"), labels, "exp3")
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / OOF_FILE).write_text(good.read_text())
    assert align_member(load_member(sweep), labels).equals(align_member(load_member(good), labels))  # a sweep folder: its oof.csv


def test_blend_is_the_weighted_mean():
    labels = label_table([0, 1])
    a, b = predictions(labels, [0.2, 0.8], [{}, {}]), predictions(labels, [0.6, 0.4], [{}, {}])
    blended = blend({"a": a, "b": b}, {"a": 3, "b": 1})
    np.testing.assert_allclose(blended[list(LABEL_COLS)], 0.75 * a[list(LABEL_COLS)] + 0.25 * b[list(LABEL_COLS)])
    with pytest.raises(ValueError, match="weights"):
        blend({"a": a}, {"a": 0})


def test_precision_and_recall_on_hidden_positives_are_far_above_chance():
    """Predictions that see the hidden aneurysms (noisy, as a decent model's): flips find them, at a
    precision far above chance; the report's figures follow from the flips."""
    n, n_hidden = 400, 20
    labels = label_table([0] * n)
    hidden_rows = RNG.choice(n, n_hidden, replace=False)
    present = RNG.uniform(0.0, 0.93, n)
    present[hidden_rows] = RNG.uniform(0.85, 1.0, n_hidden)
    locations = [{MCA: p} for p in present]
    preds = predictions(labels, present.tolist(), locations)
    hidden = labels.iloc[hidden_rows][[UID_COL]].assign(**{**dict.fromkeys(LABEL_COLS, 0), MCA: 1, PRESENT_COL: 1})
    detections = detections_for([(uid, 0.9) for uid in labels[UID_COL]])
    cleaned = clean_labels(labels, preds, detections)
    scores = cleaning_report(labels, cleaned, hidden)["hidden"]
    true_flips = set(cleaned.flipped[UID_COL]) & set(hidden[UID_COL])
    assert scores["precision"] == len(true_flips) / len(cleaned.flipped)
    assert scores["recall"] == len(true_flips) / n_hidden
    assert scores["chance_precision"] == n_hidden / n
    assert scores["precision"] > 5 * scores["chance_precision"] and scores["recall"] > 0.3
    assert scores["location_hit_rate"] == 1.0
    grid = threshold_grid(labels, preds, hidden, values=(0.5, 0.9)).set_index(["present_threshold", "location_threshold"])
    assert grid.loc[(0.9, 0.9), "precision"] == scores["precision"] and grid.loc[(0.9, 0.9), "recall"] == scores["recall"]
    assert grid.loc[(0.5, 0.5), "recall"] >= grid.loc[(0.9, 0.9), "recall"]  # lower thresholds flip more


# ---- the stage, end to end ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory) -> dict:
    """A real 5-fold sweep (tiny model, 1 epoch) on a synthetic dataset with hidden positives."""
    from tests.training_helpers import configuration_dir, run_train, tiny_overrides

    base = tmp_path_factory.mktemp("clean")
    dataset_args = ["dataset=synthetic_noisy", "dataset.synthetic.hidden_positive_share=0.3",
                    "dataset.synthetic.positive_share=0.7", "dataset.synthetic.size_range=[64,64]",
                    "dataset.synthetic.max_slices=24", *tiny_overrides(base / "data", base / "logs", n_series=15)]
    args = ["-m", "experiment=demo_exp2_vit", *dataset_args, "data.fold=0,1,2,3,4", "name=demo_exp2_vit"]
    result = run_train(args)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = configuration_dir(base / "logs", "sweeps", args)
    root = base / "data" / "synthetic_noisy" / "uniform"
    dataset = DatasetSource(root=str(root), series_dir=str(root / "series"), train_csv=str(root / "train.csv"),
                            localizers_csv=str(root / "train_localizers.csv"), folds_csv=str(root / "train_kfold.csv"),
                            boxes=str(root / "boxes"), name="synthetic_noisy")
    return {"sweep": sweep, "dataset": dataset, "base": base, "dataset_args": dataset_args}


def true_detections(dataset: DatasetSource, uids) -> pd.DataFrame:
    """An exp0 stand-in that finds exactly the generator's aneurysm boxes of series `uids` (confidence 0.9)."""
    from iad.synthetic import read_settings
    from iad.synthetic.annotations import aneurysm_boxes
    from iad.synthetic.plan import plan_series

    settings = read_settings(dataset.root)
    options = {key: settings[key] for key in ("locations", "positive_share", "max_slices")}
    rows = []
    for index in range(settings["n_series"]):
        plan = plan_series(settings["seed"], index, tuple(settings["size_range"]), **options)
        if plan.series_uid not in set(uids):
            continue
        for stem, boxes in aneurysm_boxes(plan).items():
            sop, _, frame = stem.partition("_")
            for box in boxes:
                rows.append({UID_COL: plan.series_uid, SOP_COL: sop, "frame": int(frame) if frame else pd.NA,
                             "slice_index": 0, "cls": box.cls, "confidence": 0.9, "x0": 0, "y0": 0, "x1": 1, "y1": 1,
                             "orig_x0": box.xmin, "orig_y0": box.ymin, "orig_x1": box.xmax, "orig_y1": box.ymax})
    frame = pd.DataFrame(rows, columns=list(DETECTIONS_FILE_COLS))
    frame["frame"] = frame["frame"].astype("Int64")
    return frame


def test_stage_end_to_end_on_a_real_sweep(tiny_sweep):
    dataset, sweep, base = tiny_sweep["dataset"], tiny_sweep["sweep"], tiny_sweep["base"]
    labels = read_series_labels(dataset.train_csv)
    hidden = pd.read_csv(Path(dataset.root) / "hidden_positives.csv")
    # exp0 stand-in: one detection per slice of every series, confident only on the hidden ones
    detections = detections_for([(uid, 0.9 if uid in set(hidden[UID_COL]) else 0.1) for uid in labels[UID_COL]])
    detections.to_csv(base / DETECTIONS_FILE, index=False)
    members = {"a": {"path": str(sweep), "weight": 0.5}, "b": {"path": str(sweep / OOF_FILE), "weight": 0.5}}
    out = base / "clean"
    # thresholds 0: every negative flips, so precision is the chance precision and recall is 1
    report = run_cleaning(dataset, members, base / DETECTIONS_FILE, out, Thresholds(0.0, 0.0, 0.2))
    negatives = labels.loc[labels[PRESENT_COL] == 0, UID_COL]
    assert report["flipped"] == len(negatives) and report["flipped_with_boxes"] == len(hidden)
    assert report["hidden"]["precision"] == report["hidden"]["chance_precision"] == len(hidden) / len(negatives)
    assert report["hidden"]["recall"] == 1.0
    train = read_series_labels(out / TRAIN_LABELS_FILE)
    assert set(train[UID_COL]) == set(labels.loc[labels[PRESENT_COL] == 1, UID_COL]) | set(hidden[UID_COL])
    assert read_aneurysm_box_table(out / BOXES_FILE)[UID_COL].isin(hidden[UID_COL]).all()
    assert len(pd.read_csv(out / FLIPPED_FILE)) == len(negatives)
    assert json.loads((out / REPORT_FILE).read_text()) == report
    grid = pd.read_csv(out / GRID_FILE)
    assert len(grid) == len(GRID) ** 2 and (grid["chance_precision"] == report["hidden"]["chance_precision"]).all()
    # finished: skipped (the report is read back), unless overwrite
    assert run_cleaning(dataset, members, None, out, Thresholds(0.9, 0.9)) == report
    assert run_cleaning(dataset, members, None, out, Thresholds(0.9, 0.9), overwrite=True)["detections"] is None


def test_cleaning_command_then_exp4_trains_on_its_labels_with_validation_unchanged(tiny_sweep):
    """`python -m iad.labelling.clean cleaning=demo` writes logs/clean/demo@<overrides>/; demo_exp4_vit trains
    on its train_labels.csv and boxes.csv, and its OOF holds fold for fold the series and labels of exp2's."""
    import subprocess
    import sys

    from iad.utils.config import run_name
    from iad.utils.env import PROJECT_ROOT
    from tests.training_helpers import configuration_dir, run_train

    dataset, sweep, base = tiny_sweep["dataset"], tiny_sweep["sweep"], tiny_sweep["base"]
    hidden = pd.read_csv(Path(dataset.root) / "hidden_positives.csv")
    true_detections(dataset, hidden[UID_COL]).to_csv(base / "true_detections.csv", index=False)
    dataset_args = [a for a in tiny_sweep["dataset_args"] if a.startswith(("dataset", "paths"))]
    args = ["cleaning=demo", *dataset_args, f"members.exp2_vit.path={sweep}", f"members.exp3.path={sweep}",
            f"detections={base / 'true_detections.csv'}", "present_threshold=0", "location_threshold=0"]
    result = subprocess.run([sys.executable, "-m", "iad.labelling.clean", *args], cwd=PROJECT_ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = base / "logs" / "clean" / run_name("demo", args)  # the preset names the folder, overrides tag it
    report = json.loads((out / REPORT_FILE).read_text())
    assert str(out) in result.stdout and "hidden positives" in result.stdout
    assert report["flipped_with_boxes"] == len(hidden) == report["hidden"]["true_flips"]

    exp4 = ["-m", "experiment=demo_exp4_vit", "data.external=null", *tiny_sweep["dataset_args"], "data.fold=0,1",
            f"data.train_labels={out / TRAIN_LABELS_FILE}", f"data.extra_boxes={out / BOXES_FILE}"]
    result = run_train(exp4)
    assert result.returncode == 0, result.stderr[-3000:]
    exp4_sweep = configuration_dir(base / "logs", "sweeps", [*exp4, "name=demo_exp4_vit"])
    for fold in (0, 1):
        mine = pd.read_csv(exp4_sweep / f"fold_{fold}" / OOF_FILE)
        theirs = pd.read_csv(sweep / f"fold_{fold}" / OOF_FILE)
        assert mine[UID_COL].tolist() == theirs[UID_COL].tolist()
        pd.testing.assert_frame_equal(mine[list(TRUE_COLS)], theirs[list(TRUE_COLS)])
        log = (exp4_sweep / f"fold_{fold}" / "train.log").read_text()
        relabelled, left_out = map(int, re.search(r"(\d+) series relabelled, (\d+) not in it", log).groups())
        assert (relabelled, left_out) == (len(hidden), report["left_out_without_box"])
        assert "give no slice" not in log  # every relabelled training series has its boxes placed


def test_detection_boxes_are_the_box_table_the_data_module_reads(tmp_path):
    detections = detections_for([("1.2.3", 0.5), ("1.2.3", 0.1), ("1.2.4", 0.9)])
    boxes = detection_boxes(detections, ["1.2.3"], 0.2)
    boxes.to_csv(tmp_path / "boxes.csv", index=False)
    back = read_aneurysm_box_table(tmp_path / "boxes.csv")
    assert back[UID_COL].tolist() == ["1.2.3"] and back["frame"].isna().all()
    assert list(back.columns) == list(ANEURYSM_BOX_COLS)
