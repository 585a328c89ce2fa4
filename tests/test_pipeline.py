"""The one-command pipeline: its plan (every stage, in the reference's order, each command naming the outputs of
the stages before it), the runner's skip / fail / resume behaviour on stand-in stages, and the results table."""

from __future__ import annotations

import json
from pathlib import Path
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from iad.contract import OOF_FILE
from iad.evaluation.oof import make_oof, read_oof, score_oof
from iad.folds import FOLD_COL
from iad.labels import LABEL_COLS, MODALITY_COL, UID_COL
from iad.pipeline.run import STATUS_FILE, StageError, run_pipeline
from iad.pipeline.stages import (
    BASE_MEMBERS,
    CLASSIFIER_MEMBERS,
    CLEANED_MEMBERS,
    Planner,
    Recipe,
    Stage,
    crop_oof_file,
)
from iad.pipeline.table import BLEND_ROW, results_table
from iad.utils.env import CONFIG_DIR, PROJECT_ROOT


def _recipe(**changes) -> Recipe:
    settings = dict(experiments={m: f"exp_{m}" for m in ("exp0", "exp1", *CLASSIFIER_MEMBERS)}, dataset="synthetic_noisy",
                    external="synthetic", folds=[0, 1], center_crop=0.75, ensemble="final1",
                    dataset_overrides=["dataset.synthetic.n_series=30"], external_overrides=["external.x=1"],
                    overrides={"exp2_vit": ["trainer.max_epochs=1"]})
    settings.update(changes)
    return Recipe(**settings)


def _value(argv: list[str], key: str) -> str:
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"{key}=")]
    assert len(values) == 1, f"{key} given {len(values)} times in {argv}"
    return values[0]


def test_plan_runs_the_reference_order_and_hands_outputs_on(tmp_path):
    planner = Planner(_recipe(test_data={"n_series": 3, "seed": 5}), tmp_path / "pipe", tmp_path / "logs",
                      ["paths.root_dir=/r"])
    stages = planner.stages()
    names = [s.name for s in stages]
    assert names[:4] == ["exp0", "exp1", "brain_crops", "external_brain_crops"]
    order = {name: i for i, name in enumerate(names)}
    assert max(order[m] for m in BASE_MEMBERS) < order["cleaning"] < min(order[m] for m in CLEANED_MEMBERS)
    assert order["pseudo_labels"] < min(order[m] for m in CLEANED_MEMBERS)
    assert names[-4:] == ["final1", "bundle", "test_data", "predictions"]
    by_name = dict(zip(names, stages))
    crop_table = _value(by_name["brain_crops"].argv, "out")
    brain_run = _value(by_name["brain_crops"].argv, "detector")
    assert by_name["exp1"].done_file == Path(brain_run) / "result.json"
    for member in CLASSIFIER_MEMBERS:  # every classifier trains on the crop table the crop stage writes
        assert _value(by_name[member].argv, "data.crop_table") == crop_table
        assert _value(by_name[member].argv, "data.fold") == "0,1"
        assert _value(by_name[member].argv, "dataset.synthetic.n_series") == "30"
    for member in CLEANED_MEMBERS:  # and the cleaned members on what cleaning and pseudo-labelling write
        assert Path(_value(by_name[member].argv, "data.train_labels")).parent == by_name["cleaning"].done_file.parent
        pseudo = Path(_value(by_name[member].argv, "data.external.pseudo_labels"))
        assert pseudo.parent == by_name["pseudo_labels"].done_file.parent
        assert _value(by_name[member].argv, "external.x") == "1"
        # the external slices on the same detector's crops of the external volumes
        assert _value(by_name[member].argv, "data.external.crop_table") == _value(by_name["external_brain_crops"].argv, "out")
    external_crops = by_name["external_brain_crops"].argv
    assert _value(external_crops, "detector") == brain_run and _value(external_crops, "external") == "synthetic"
    assert _value(external_crops, "out") != crop_table
    assert "data.train_labels" not in " ".join(by_name["exp2_vit"].argv)
    assert _value(by_name["exp2_vit"].argv, "trainer.max_epochs") == "1"
    assert "trainer.max_epochs=1" not in by_name["exp2_eva"].argv
    # cleaning and pseudo labels read exp2 ViT and exp3's sweeps and exp0's detections
    for stage in ("cleaning", "pseudo_labels"):
        argv = by_name[stage].argv
        assert _value(argv, "members.exp2_vit.path") == str(planner.sweep_dir("exp2_vit"))
        assert _value(argv, "members.exp3.path") == str(planner.sweep_dir("exp3"))
    assert _value(by_name["cleaning"].argv, "detections") == str(planner.sweep_dir("exp0"))
    # the ensemble blends the centre-crop OOF files the rescoring stages write, and the bundle packs its spec
    ensemble = by_name["final1"].argv
    for member in CLASSIFIER_MEMBERS:
        assert _value(ensemble, f"ensemble.members.{member}.path") == str(by_name[f"{member}_crop0.75"].done_file)
    assert _value(by_name["bundle"].argv, "model_path") == str(by_name["final1"].done_file)
    assert _value(by_name["predictions"].argv, "model_path") == str(by_name["bundle"].done_file.parent)
    assert Path(_value(by_name["predictions"].argv, "input")).parent == by_name["test_data"].done_file.parent


def test_sweep_folders_are_named_by_configuration(tmp_path):
    a = Planner(_recipe(), tmp_path / "a", tmp_path / "logs", [])
    b = Planner(_recipe(dataset_overrides=["dataset.synthetic.n_series=40"]), tmp_path / "a", tmp_path / "logs", [])
    c = Planner(_recipe(), tmp_path / "c", tmp_path / "logs", [])
    assert a.sweep_dir("exp0") != b.sweep_dir("exp0")  # other data, another sweep
    assert a.sweep_dir("exp0") == c.sweep_dir("exp0")  # the detector does not depend on the pipeline folder
    assert a.sweep_dir("exp2_vit") != c.sweep_dir("exp2_vit")  # a classifier does: its crop table lives there


class _Stub:
    """A planner whose stages are small Python commands writing their done files."""

    def __init__(self, out: Path, fail: str | None = None):
        self.out = out
        self.fail = fail
        self.calls = out / "calls.txt"

    def stages(self) -> list[Stage]:
        out = []
        for name in ("a", "b", "c"):
            done = self.out / f"{name}.done"
            code = (f"import sys; open({str(self.calls)!r}, 'a').write('{name}\\n'); print('working on {name}'); "
                    + ("sys.exit(3)" if name == self.fail else f"open({str(done)!r}, 'w').write('x')"))
            out.append(Stage(name, [sys.executable, "-c", code], done))
        return out


def test_runner_skips_finished_stages_and_stops_at_a_failure(tmp_path):
    stub = _Stub(tmp_path, fail="b")
    tmp_path.mkdir(exist_ok=True)
    with pytest.raises(StageError, match=r"(?s)stage 'b' failed \(exit status 3\).*working on b"):
        run_pipeline(stub, echo=False)
    record = json.loads((tmp_path / STATUS_FILE).read_text())
    assert record["a"]["status"] == "ran" and record["b"]["status"] == "failed" and "c" not in record
    assert "working on b" in (tmp_path / "logs" / "b.log").read_text()
    stub.fail = None  # fixed: the rerun skips a, runs b and c
    record = run_pipeline(stub, echo=False)
    assert [record[n]["status"] for n in "abc"] == ["skipped", "ran", "ran"]
    assert stub.calls.read_text().split() == ["a", "b", "b", "c"]
    assert [run_pipeline(stub, echo=False)[n]["status"] for n in "abc"] == ["skipped"] * 3
    with pytest.raises(ValueError, match="unknown stage"):
        run_pipeline(stub, only=["z"], echo=False)


def test_a_stage_that_leaves_no_output_fails(tmp_path):
    stage = Stage("quiet", [sys.executable, "-c", "print('nothing written')"], tmp_path / "never.csv")

    class One:
        out = tmp_path

        def stages(self):
            return [stage]

    with pytest.raises(StageError, match="ended without its output"):
        run_pipeline(One(), echo=False)


def _oof(uids, rng, signal: float) -> pd.DataFrame:
    truth = rng.integers(0, 2, size=(len(uids), len(LABEL_COLS)))
    info = pd.DataFrame({UID_COL: uids, FOLD_COL: np.arange(len(uids)) % 2, MODALITY_COL: "CTA"})
    info[list(LABEL_COLS)] = truth
    return make_oof(info, np.clip(truth * signal + rng.random(truth.shape) * (1 - signal), 0, 1))


def test_results_table_scores_each_member_and_the_blend(tmp_path):
    planner = Planner(_recipe(), tmp_path / "pipe", tmp_path / "logs", [])
    rng = np.random.default_rng(0)
    uids = [f"1.2.{i}" for i in range(40)]
    base = _oof(uids, rng, 0.0)
    for k, member in enumerate(CLASSIFIER_MEMBERS):
        sweep = planner.sweep_dir(member)
        sweep.mkdir(parents=True)
        frame = _oof(uids, np.random.default_rng(k + 1), 0.3)
        frame[[f"true_{c}" for c in LABEL_COLS]] = base[[f"true_{c}" for c in LABEL_COLS]].to_numpy()
        frame[list(LABEL_COLS)] = np.clip(frame[[f"true_{c}" for c in LABEL_COLS]].to_numpy() * 0.3
                                          + np.random.default_rng(k + 10).random((40, 14)) * 0.7, 0, 1)
        frame.to_csv(sweep / OOF_FILE, index=False)
        if member != "exp5":  # exp5's centre-crop rescoring has not run
            frame.to_csv(sweep / crop_oof_file(0.75), index=False)
    weights = {"exp2_vit": 0.5, "exp3": 0.5}
    table = results_table(planner, weights, {"exp2_vit": {"oof": 0.8491, "oof_crop": 0.8503}}).set_index("member")
    expected = score_oof(read_oof(planner.sweep_dir("exp3") / OOF_FILE))["weighted_auc"]
    assert table.loc["exp3", "oof"] == pytest.approx(expected)
    assert pd.isna(table.loc["exp5", "oof_crop"])
    assert table.loc["exp2_vit", "reference_oof"] == 0.8491
    blend = table.loc[BLEND_ROW]
    singles = table.loc[["exp2_vit", "exp3"], "oof"]
    assert blend["weight"] == pytest.approx(1.0)
    assert blend["oof"] > singles.max()  # two independent noisy views of one truth blend to a better one


def test_pipeline_command_plans_the_reference_recipe(tmp_path):
    """Every experiment a recipe names exists, and the command prints its stages without running any."""
    for recipe in ("reference", "demo", "smoke"):
        done = subprocess.run([sys.executable, "-m", "iad.pipeline", f"recipe={recipe}", "plan_only=true",
                               f"paths.log_dir={tmp_path}"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        lines = done.stdout.splitlines()
        assert [line.split()[0] for line in lines][:4] == ["exp0", "exp1", "brain_crops", "external_brain_crops"]
        for line in lines:
            for arg in line.split():
                if arg.startswith("experiment="):
                    assert (CONFIG_DIR / "experiment" / f"{arg.split('=', 1)[1]}.yaml").exists(), arg


def _compose(config: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=config, overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("recipe_name", ["final1", "final2"])
def test_reference_ensembles_resolve_the_six_members(tmp_path, recipe_name):
    """final1 / final2 name the sweeps the reference's experiments leave (their `name`), and blend all of them."""
    from omegaconf import OmegaConf

    from iad.ensembling import run_ensemble

    recipe = OmegaConf.load(CONFIG_DIR / "recipe" / "reference.yaml")
    ensemble = _compose("ensemble", [f"ensemble={recipe_name}", f"paths.log_dir={tmp_path}"]).ensemble
    members = OmegaConf.to_container(ensemble.members, resolve=True)
    uids = [f"1.2.{i}" for i in range(30)]
    for member, settings in members.items():
        experiment = recipe.experiments[member]
        train = _compose("train", [f"experiment={experiment}", f"paths.log_dir={tmp_path}"])
        assert train.name == experiment
        assert Path(settings["path"]) == tmp_path / "train" / "sweeps" / experiment
        Path(settings["path"]).mkdir(parents=True)
        _oof(uids, np.random.default_rng(1), 0.2).to_csv(Path(settings["path"]) / OOF_FILE, index=False)
    expected = {"final1": set(CLASSIFIER_MEMBERS), "final2": set(CLASSIFIER_MEMBERS) - {"exp5"}}[recipe_name]
    assert set(members) == expected
    report = run_ensemble(members, tmp_path / "out")
    assert {m["name"] for m in report["members"]} == expected
    spec = json.loads((tmp_path / "out" / "ensemble.json").read_text())
    assert {m["name"] for m in spec["members"]} == expected


def _numbers(pattern: str, text: str) -> set[tuple[int, ...]]:
    import re

    found = {tuple(int(g) for g in m.groups()) for m in re.finditer(pattern, text)}
    assert found, f"no line matches {pattern!r}"
    return found


def test_smoke_pipeline_runs_every_stage_hands_outputs_on_and_resumes(tmp_path):
    """The reduced reference pipeline (recipe=smoke: 2 folds, 1 epoch, tiny inputs) end to end through the real
    commands; each stage's outputs are what the next one used; a rerun skips everything; a lost output reruns
    just its stage."""
    root = tmp_path / "root"
    command = [sys.executable, "-m", "iad.pipeline", "recipe=smoke", f"paths.root_dir={root}", "echo=false"]
    done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = root / "logs" / "pipeline" / "smoke"
    record = json.loads((out / STATUS_FILE).read_text())
    assert set(s["status"] for s in record.values()) == {"ran"} and len(record) == 22

    # cleaning → exp4: the relabelled series and the ones left out are the report's
    clean = json.loads((out / "clean" / "report.json").read_text())
    labels = pd.read_csv(out / "clean" / "train_labels.csv")
    assert clean["series"] == 30 and len(labels) == 30 - clean["left_out_without_box"]
    exp4_log = (out / "logs" / "exp4_vit.log").read_text()
    assert _numbers(r"(\d+) series relabelled, (\d+) not in it left out", exp4_log) == {
        (clean["flipped_with_boxes"], clean["left_out_without_box"])}
    # pseudo labels → exp4 / exp5: every kept slice and control row trains, the kept ones as positives
    pseudo = json.loads((out / "pseudo" / "report.json").read_text())
    table = pd.read_csv(out / "pseudo" / "pseudo_labels.csv")
    assert pseudo["slices"]["kept"] > 0 and pseudo["slices"]["kept"] == pseudo["slices"]["on_lesion"]  # thresholds 0
    assert (table["Aneurysm Present"] == 1).sum() == pseudo["slices"]["kept"]
    external_crops = pd.read_csv(out / "crops" / "external-synthetic.csv")  # the brain detector's, every volume
    assert set(table["SeriesInstanceUID"]) <= set(external_crops["SeriesInstanceUID"])
    for member in ("exp4_vit", "exp5"):
        log_text = (out / "logs" / f"{member}.log").read_text()
        assert "not in the crop table" not in log_text
        assert _numbers(r"external source \w+: (\d+) training slices \((\d+) positive\)", log_text) == {
            (len(table), pseudo["slices"]["kept"])}

    # the table: every member scored plain and with the crop, and the blend of both
    results = pd.read_csv(out / "table.csv").set_index("member")
    assert list(results.index) == [*CLASSIFIER_MEMBERS, BLEND_ROW]
    assert results[["oof", "oof_crop"]].notna().all().all()
    assert results[["oof", "oof_crop"]].apply(lambda c: c.between(0, 1)).all().all()
    assert "ref +crop 0.75" in done.stdout and "0.8823" in done.stdout
    # the bundle packs the ensemble's six members and predicted every test series
    spec = json.loads((out / "ensemble" / "ensemble.json").read_text())
    assert {m["name"] for m in spec["members"]} == set(CLASSIFIER_MEMBERS)
    submission = pd.read_csv(out / "predictions" / "submission.csv")
    test_series = [p for p in (out / "test_data" / "series").iterdir() if p.is_dir()]
    assert len(submission) == len(test_series) == 3 and list(submission.columns)[1:] == list(LABEL_COLS)

    again = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert set(s["status"] for s in json.loads((out / STATUS_FILE).read_text()).values()) == {"skipped"}
    (out / "bundle" / "bundle.json").unlink()  # as if the bundle stage had been killed before it finished
    (out / "predictions" / "submission.csv").unlink()
    third = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stderr[-3000:]
    statuses = {name: s["status"] for name, s in json.loads((out / STATUS_FILE).read_text()).items()}
    assert {name for name, status in statuses.items() if status == "ran"} == {"bundle", "predictions"}
