"""The ensembling stage on synthetic OOF sweeps: alignment, blends, reports, weight optimisation, spec, entry point."""

from __future__ import annotations

import json
from pathlib import Path
import subprocess
import sys

from hydra import compose, initialize_config_dir
import numpy as np
from omegaconf import OmegaConf
import pandas as pd
import pytest

from iad.contract import OOF_FILE
from iad.ensembling import (
    SPEC_FILE,
    BlendObjective,
    SpecError,
    align_members,
    blend_predictions,
    format_ensemble_report,
    make_spec,
    mean_fold_auc,
    nested_cv,
    optimize_weights,
    read_spec,
    run_ensemble,
    write_spec,
)
from iad.evaluation.cv import merge_sweep
from iad.evaluation.oof import TRUE_COLS, make_oof
from iad.labels import LABEL_COLS, MODALITIES, MODALITY_COL, NUM_LABELS, PRESENT_COL, UID_COL
from iad.metrics import weighted_auc
from iad.utils.config import CONFIG_DIR
from iad.utils.env import PROJECT_ROOT
from iad.utils.io import write_json_atomic

N_SERIES, N_FOLDS = 300, 5
PRESENT = LABEL_COLS.index(PRESENT_COL)
LOCATIONS = slice(0, PRESENT)


def synthetic_series(rng: np.random.Generator) -> pd.DataFrame:
    """Series info: uid, fold, modality and 14 labels, half positive with 1-2 locations, present = max(locations)."""
    locations = np.zeros((N_SERIES, PRESENT), dtype=int)
    for row in np.flatnonzero(rng.random(N_SERIES) < 0.5):
        locations[row, rng.choice(PRESENT, size=rng.integers(1, 3), replace=False)] = 1
    info = pd.DataFrame(np.column_stack([locations, locations.max(axis=1)]), columns=list(LABEL_COLS))
    info.insert(0, UID_COL, [f"1.2.826.{i}" for i in range(N_SERIES)])
    info.insert(1, "fold", rng.permutation(np.arange(N_SERIES) % N_FOLDS))
    info.insert(2, MODALITY_COL, rng.choice(MODALITIES, N_SERIES))
    return info


def noisy(truth: np.ndarray, noise_sd: float, rng: np.random.Generator, informative=slice(None)) -> np.ndarray:
    """Probabilities: sigmoid(±1 + noise) on the `informative` columns, uniform noise on the others."""
    predictions = rng.random(truth.shape)
    signal = 2.0 * truth[:, informative] - 1.0
    predictions[:, informative] = 1 / (1 + np.exp(-(signal + noise_sd * rng.normal(size=signal.shape))))
    return predictions


def write_sweep(sweep_dir: Path, info: pd.DataFrame, predictions: np.ndarray, seed: int) -> Path:
    """A sweep as training leaves it: fold_<k>/oof.csv (rows shuffled), merged into oof.csv by merge_sweep."""
    oof = make_oof(info, predictions)
    for fold in range(N_FOLDS):
        rows = oof[oof["fold"] == fold].sample(frac=1.0, random_state=seed + fold)
        (sweep_dir / f"fold_{fold}").mkdir(parents=True)
        rows.to_csv(sweep_dir / f"fold_{fold}" / OOF_FILE, index=False)
    merge_sweep(sweep_dir)
    return sweep_dir


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> dict[str, Path]:
    """Five members: strong, weak, informative for "present" only, for the locations only, pure noise."""
    rng = np.random.default_rng(0)
    info = synthetic_series(rng)
    truth = info[list(LABEL_COLS)].to_numpy()
    predictions = {
        "strong": noisy(truth, 1.0, rng),
        "weak": noisy(truth, 2.0, rng),
        "present_only": noisy(truth, 0.7, rng, informative=slice(PRESENT, None)),
        "locations_only": noisy(truth, 0.7, rng, informative=LOCATIONS),
        "noise": rng.random(truth.shape),
    }
    root = tmp_path_factory.mktemp("sweeps")
    return {name: write_sweep(root / name, info, pred, seed=10 * i) for i, (name, pred) in enumerate(predictions.items())}


@pytest.fixture(scope="module")
def aligned(sweeps):
    return align_members({name: path / OOF_FILE for name, path in sweeps.items()})


@pytest.fixture(scope="module")
def optimised(aligned):
    members, truth = aligned.stacked(), aligned.series[list(TRUE_COLS)].to_numpy()
    return members, truth, optimize_weights(members, truth, seed=3)


def by_uid(path: Path, uids) -> np.ndarray:
    return pd.read_csv(path).set_index(UID_COL).loc[uids, list(LABEL_COLS)].to_numpy()


# --- alignment ---------------------------------------------------------------------------------

def test_shuffled_rows_align_by_series(sweeps, aligned):
    uids = aligned.series[UID_COL]
    assert len(uids) == N_SERIES and uids.is_unique
    strong = pd.read_csv(sweeps["strong"] / OOF_FILE)
    assert not strong[UID_COL].equals(pd.read_csv(sweeps["weak"] / OOF_FILE)[UID_COL])  # really shuffled
    for name, path in sweeps.items():
        np.testing.assert_array_equal(aligned.predictions[name], by_uid(path / OOF_FILE, uids))
    truth = strong.set_index(UID_COL).loc[uids, list(TRUE_COLS)].to_numpy()
    np.testing.assert_array_equal(aligned.series[list(TRUE_COLS)].to_numpy(), truth)


def test_prediction_file_without_truth_aligns(sweeps, tmp_path):
    predictions = pd.read_csv(sweeps["weak"] / OOF_FILE)[[UID_COL, *LABEL_COLS]].sample(frac=1.0, random_state=1)
    predictions.to_csv(tmp_path / "test_predictions.csv", index=False)
    result = align_members({"strong": sweeps["strong"] / OOF_FILE, "weak_tta": tmp_path / "test_predictions.csv"})
    np.testing.assert_array_equal(result.predictions["weak_tta"], by_uid(sweeps["weak"] / OOF_FILE, result.series[UID_COL]))


def test_missing_series_names_the_file_and_intersection_warns(sweeps, tmp_path):
    short_file = tmp_path / "weak_short.csv"
    pd.read_csv(sweeps["weak"] / OOF_FILE).iloc[5:].to_csv(short_file, index=False)
    files = {"strong": sweeps["strong"] / OOF_FILE, "weak": short_file}
    with pytest.raises(ValueError, match=r"weak_short\.csv.*5 of .*strong.*missing.*intersect"):
        align_members(files)
    with pytest.warns(UserWarning, match=r"weak_short\.csv.*keeping the 295 series"):
        result = align_members(files, intersect=True)
    assert len(result.series) == N_SERIES - 5
    np.testing.assert_array_equal(result.predictions["weak"], by_uid(short_file, result.series[UID_COL]))


# --- fixed weights, reference recipes -----------------------------------------------------------

def test_fixed_weights_blend_is_the_weighted_mean(sweeps, tmp_path):
    config = {"strong": {"path": str(sweeps["strong"]), "weight": 3},
              "weak": {"path": str(sweeps["weak"] / OOF_FILE), "weight": 1, "center_crop": 0.75, "hflip_tta": True}}
    report = run_ensemble(config, tmp_path, weights="fixed")
    blend_oof = pd.read_csv(tmp_path / OOF_FILE)
    uids = blend_oof[UID_COL]
    expected = 0.75 * by_uid(sweeps["strong"] / OOF_FILE, uids) + 0.25 * by_uid(sweeps["weak"] / OOF_FILE, uids)
    np.testing.assert_allclose(blend_oof[list(LABEL_COLS)].to_numpy(), expected, rtol=0, atol=1e-12)
    spec = read_spec(tmp_path / SPEC_FILE)
    assert [(m["name"], m["weight"], m["hflip_tta"], m["center_crop"]) for m in spec["members"]] == [
        ("strong", 0.75, False, 1.0), ("weak", 0.25, True, 0.75)]
    assert [m["path"] for m in spec["members"]] == [str(sweeps["strong"]), str(sweeps["weak"])]
    assert "nested_cv" not in spec and report["nested_cv"] is None
    assert spec["oof"]["weighted_auc"] == pytest.approx(weighted_auc(blend_oof[list(TRUE_COLS)].to_numpy(), expected))


@pytest.mark.parametrize(("recipe", "weights"), [
    ("final1", {"exp3": 0.25, "exp5": 0.25, "exp2_vit": 0.125, "exp4_vit": 0.125, "exp2_eva": 0.125, "exp4_eva": 0.125}),
    ("final2", {"exp3": 0.5, "exp2_vit": 0.125, "exp4_vit": 0.125, "exp2_eva": 0.125, "exp4_eva": 0.125}),
])
def test_reference_recipes_compose_and_resolve(recipe, weights, tmp_path):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("ensemble", overrides=[f"ensemble={recipe}", f"paths.log_dir={tmp_path}"])
    ensemble = OmegaConf.to_container(cfg.ensemble, resolve=True)
    assert {name: member["weight"] for name, member in ensemble["members"].items()} == weights
    assert ensemble["members"]["exp3"]["path"] == f"{tmp_path}/train/sweeps/exp3_mit_b4_fpn_384"
    assert ensemble["members"]["exp2_eva"]["path"] == f"{tmp_path}/train/sweeps/exp2_eva_large_384"
    assert all(member["center_crop"] == 0.75 for member in ensemble["members"].values())
    assert ensemble["weights"] == "fixed" and ensemble["blend"] == "mean"


# --- report ------------------------------------------------------------------------------------

def test_report_aucs_equal_the_metric(sweeps, tmp_path):
    report = run_ensemble({name: {"path": str(path)} for name, path in sweeps.items()}, tmp_path, weights="equal")
    oof = pd.read_csv(tmp_path / OOF_FILE)
    truth, uids = oof[list(TRUE_COLS)].to_numpy(), oof[UID_COL]
    member_predictions = {name: by_uid(path / OOF_FILE, uids) for name, path in sweeps.items()}
    for member in report["members"]:
        assert member["weight"] == pytest.approx(1 / len(sweeps))
        assert member["scores"]["weighted_auc"] == pytest.approx(weighted_auc(truth, member_predictions[member["name"]]))
    equal_blend = np.mean(list(member_predictions.values()), axis=0)
    blend_scores = report["blends"]["mean"]
    assert blend_scores["weighted_auc"] == pytest.approx(weighted_auc(truth, equal_blend))
    mra = (oof[MODALITY_COL] == "MRA").to_numpy()
    assert blend_scores["by_group"]["MRA"]["weighted_auc"] == pytest.approx(weighted_auc(truth[mra], equal_blend[mra]))
    assert blend_scores["per_label"][PRESENT_COL] == pytest.approx(
        weighted_auc(truth[:, [PRESENT]], equal_blend[:, [PRESENT]], label_cols=[PRESENT_COL]))
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["blends"]["mean"]["weighted_auc"] == pytest.approx(blend_scores["weighted_auc"])


# --- optimisation ------------------------------------------------------------------------------

@pytest.mark.parametrize("decimals", [None, 1])  # rounding to 1 decimal makes many ties
def test_fast_objective_equals_the_metric(optimised, decimals):
    members, truth, weights = optimised
    if decimals is not None:
        members, weights = members.round(decimals), np.full(len(members), 0.2)
    blended = blend_predictions(members, weights)
    assert BlendObjective(members, truth)(weights) == pytest.approx(weighted_auc(truth, blended), abs=1e-12)


def test_optimised_weights_beat_single_members_and_equal_weights(aligned, optimised):
    members, truth, weights = optimised
    names = list(aligned.predictions)
    assert (weights >= 0).all() and weights.sum() == pytest.approx(1.0, abs=1e-9)
    optimum = weighted_auc(truth, blend_predictions(members, weights))
    assert optimum >= max(weighted_auc(truth, member) for member in members)
    assert optimum >= weighted_auc(truth, members.mean(axis=0))
    assert weights[names.index("noise")] < 0.05
    # the blend needs both specialists: each carries real weight
    assert weights[names.index("present_only")] > 0.05 and weights[names.index("locations_only")] > 0.05


def test_optimisation_is_deterministic_for_a_seed(optimised):
    members, truth, weights = optimised
    np.testing.assert_array_equal(optimize_weights(members, truth, seed=3), weights)


def test_nested_cv_is_no_better_than_in_sample(aligned, optimised):
    members, truth, weights = optimised
    folds = aligned.series["fold"].to_numpy()
    nested = nested_cv(members, truth, folds, list(aligned.predictions))
    assert nested["pooled_auc"] <= weighted_auc(truth, blend_predictions(members, weights))
    fold_aucs = [weighted_auc(truth[folds == fold], blend_predictions(members[:, folds == fold], weights))
                 for fold in range(N_FOLDS)]
    assert mean_fold_auc(members, truth, folds, weights) == pytest.approx(np.mean(fold_aucs))
    assert sorted(nested["folds"]) == [str(fold) for fold in range(N_FOLDS)]
    assert sum(fold["n_series"] for fold in nested["folds"].values()) == N_SERIES


def test_nested_cv_fits_each_folds_weights_on_the_other_folds(aligned):
    """A member that is near-perfect on fold 0 only: fold 0's weights (fit without fold 0) ignore it."""
    rng = np.random.default_rng(1)
    truth = aligned.series[list(TRUE_COLS)].to_numpy()
    folds = aligned.series["fold"].to_numpy()
    oracle = rng.random(truth.shape)
    oracle[folds == 0] = noisy(truth[folds == 0], 0.1, rng)
    members = np.stack([aligned.predictions["weak"], oracle])
    nested = nested_cv(members, truth, folds, ["weak", "oracle"])
    assert nested["folds"]["0"]["weights"]["oracle"] < 0.06
    assert all(nested["folds"][str(fold)]["weights"]["oracle"] > 0.12 for fold in range(1, N_FOLDS))
    fold0 = folds == 0
    assert nested["folds"]["0"]["weighted_auc"] < weighted_auc(truth[fold0], oracle[fold0]) - 0.1


# --- rank blend ----------------------------------------------------------------------------------

def test_rank_blend_is_the_weighted_mean_of_normalised_ranks(aligned):
    members = aligned.stacked()[:3]
    weights = np.array([0.5, 0.3, 0.2])
    direct = sum(w * pd.DataFrame(m).rank(pct=True).to_numpy() for w, m in zip(weights, members))
    np.testing.assert_allclose(blend_predictions(members, weights, "rank"), direct, rtol=0, atol=1e-12)


def test_rank_blend_run_keeps_probability_weights_in_the_spec(sweeps, tmp_path):
    report = run_ensemble({name: {"path": str(sweeps[name])} for name in ("strong", "weak")}, tmp_path, blend="rank",
                          weights="equal")
    assert set(report["blends"]) == {"mean", "rank"}
    spec = read_spec(tmp_path / SPEC_FILE)
    assert spec["blend"] == "mean" and spec["oof"]["weighted_auc"] == pytest.approx(report["blends"]["mean"]["weighted_auc"])


# --- spec --------------------------------------------------------------------------------------

def valid_spec() -> dict:
    members = [{"name": "a", "path": "/runs/a", "weight": 0.7, "hflip_tta": True, "center_crop": 0.75},
               {"name": "b", "path": "/runs/b", "weight": 0.3, "hflip_tta": False, "center_crop": 1.0}]
    return make_spec(members, oof={"weighted_auc": 0.9})


def test_spec_round_trip(tmp_path):
    spec = valid_spec()
    write_spec(spec, tmp_path / "spec.json")
    assert read_spec(tmp_path / "spec.json") == spec
    assert spec["format"] == "iad-ensemble/1" and spec["label_cols"] == list(LABEL_COLS) and len(LABEL_COLS) == NUM_LABELS


@pytest.mark.parametrize(("change", "message"), [
    (lambda s: s["members"][0].update(weight=-0.1), "weight -0.1 must be a finite number >= 0"),
    (lambda s: s["members"][0].update(weight=0.6), "weights sum to 0.9"),
    (lambda s: s["label_cols"].__setitem__(0, "Left Nose"), r"unknown label\(s\) \['Left Nose'\]"),
    (lambda s: s["members"][1].update(center_crop=0), "center_crop 0 must be a number in"),
    (lambda s: s["members"][1].update(path=""), "must be a non-empty string"),
    (lambda s: s.update(blend="rank"), "only 'mean'"),
    (lambda s: s.update(format="iad-ensemble/0"), "format"),
])
def test_invalid_specs_raise_clear_errors(change, message, tmp_path):
    spec = valid_spec()
    change(spec)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(SpecError, match=message) as error:
        read_spec(path)
    assert str(path) in str(error.value)
    with pytest.raises(SpecError):
        write_spec(spec, tmp_path / "never.json")
    assert not (tmp_path / "never.json").exists()


# --- entry point, imports ------------------------------------------------------------------------

def test_entry_point_end_to_end(sweeps, tmp_path):
    members = ",".join(f"{name}:{{path:{path}}}" for name, path in sweeps.items())
    result = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "ensemble.py"), "ensemble=custom", f"ensemble.members={{{members}}}",
         "ensemble.weights=optimize", f"paths.log_dir={tmp_path}"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    spec = read_spec(tmp_path / "ensemble" / "custom-optimize-mean" / SPEC_FILE)
    assert {m["name"] for m in spec["members"]} <= set(sweeps) and "noise" not in {m["name"] for m in spec["members"]}
    nested = spec["nested_cv"]
    assert nested["pooled_auc"] <= nested["in_sample_auc"] and len(nested["folds"]) == N_FOLDS
    for row in ("strong", "locations_only", "blend (mean)", "Aneurysm Present", "nested CV: pooled"):
        assert row in result.stdout


def _cost_file(path: Path, members: dict[str, float]) -> Path:
    write_json_atomic({"stages": {"read": 0.5, "preprocess": 0.5}, "members": members}, path)
    return path


def test_budget_keeps_the_best_subset_that_fits_and_reports_the_frontier(sweeps, tmp_path):
    names = ("strong", "weak", "noise")
    costs = _cost_file(tmp_path / "cost.json", {"strong": 3.0, "weak": 1.0, "noise": 0.5})
    config = {name: {"path": str(sweeps[name])} for name in names}
    tight = run_ensemble(config, tmp_path / "tight", weights="optimize", budget_s=2.2, costs=costs)
    roomy = run_ensemble(config, tmp_path / "roomy", weights="optimize", budget_s=100, costs=costs)

    subsets = tight["budget"]["subsets"]
    assert len(subsets) == 7 and [s["seconds"] for s in subsets] == sorted(s["seconds"] for s in subsets)
    assert tight["budget"]["chosen"]["seconds"] <= 2.2 and "strong" not in tight["budget"]["chosen"]["members"]
    assert [m["name"] for m in tight["members"]] == tight["budget"]["chosen"]["members"]
    assert "strong" in roomy["budget"]["chosen"]["members"]
    assert roomy["budget"]["chosen"]["nested_auc"] == max(s["nested_auc"] for s in subsets)
    front = roomy["budget"]["frontier"]
    assert all(b["seconds"] > a["seconds"] and b["nested_auc"] > a["nested_auc"] for a, b in zip(front, front[1:]))
    assert "frontier" in format_ensemble_report(roomy)
    with pytest.raises(ValueError, match="cheapest member"):
        run_ensemble(config, tmp_path / "none", budget_s=1.2, costs=costs)
    with pytest.raises(ValueError, match="needs ensemble.costs"):
        run_ensemble(config, tmp_path / "nocost", budget_s=5)


def test_the_spec_names_the_aneurysm_detector_when_given(sweeps, tmp_path):
    """`ensemble.aneurysm_detector` goes into ensemble.json as an absolute path; without it the spec has none."""
    members = {name: {"path": str(sweeps[name])} for name in ("strong", "weak")}
    run_ensemble(members, tmp_path / "with", weights="equal", aneurysm_detector=tmp_path / "exp0")
    entry = json.loads((tmp_path / "with" / "ensemble.json").read_text())["aneurysm_detector"]
    assert entry == {"path": str((tmp_path / "exp0").resolve())}
    run_ensemble(members, tmp_path / "without", weights="equal")
    assert "aneurysm_detector" not in json.loads((tmp_path / "without" / "ensemble.json").read_text())
