"""Inference end to end: sweeps → ensemble spec → Predictor → submission; fallbacks; bundle; Kaggle adapter."""

from __future__ import annotations

import json
import os
from pathlib import Path
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from iad.evaluation import read_oof
from iad.inference import Predictor, export_bundle, predict_folder
from iad.labels import FLIP_PERM, LABEL_COLS, UID_COL
from iad.synthetic import make_dataset
from iad.utils.env import PROJECT_ROOT
from tests.training_helpers import configuration_dir, run_train, tiny_overrides


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A 2-fold demo sweep that has learned something, and unseen synthetic series to predict."""
    root = tmp_path_factory.mktemp("infer")
    args = ["-m", *tiny_overrides(root / "data", root / "logs", n_series=24), "data.fold=0,1", "name=exp2tiny",
            "trainer.max_epochs=3", "data.input.img_size=48", "data.negative_fraction=0.5",
            "data.val_stride=1"]  # the OOF then scores every slice, as the predictor does
    out = run_train(args, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    unseen = root / "unseen"
    make_dataset(unseen, n_series=12, seed=123)
    return {"root": root, "sweep": configuration_dir(root / "logs", "sweeps", args), "unseen": unseen}


def truth(unseen: Path) -> pd.DataFrame:
    return pd.read_csv(unseen / "train.csv").set_index(UID_COL)


def test_predictor_from_sweep_writes_a_valid_submission(trained, tmp_path):
    predictor = Predictor.load(trained["sweep"], hflip=True, center_crop=0.75)
    assert len(predictor.members[0].models) == 2  # both folds, averaged
    submission = predict_folder(predictor, trained["unseen"] / "series", tmp_path, progress=False)
    assert list(submission.columns) == [UID_COL, *LABEL_COLS]
    assert ((submission[list(LABEL_COLS)] >= 0) & (submission[list(LABEL_COLS)] <= 1)).all().all()
    written = pd.read_csv(tmp_path / "submission.csv")
    assert len(written) == 12 and set(written[UID_COL]) == set(truth(trained["unseen"]).index)
    timings = pd.read_csv(tmp_path / "timings.csv")
    assert {"read_s", "preprocess_s", "model_s", "aggregate_s", "total_s"} <= set(timings.columns)
    assert (timings["fallback"].isna()).all()


def test_predictor_rebuilds_the_validation_input_exactly(trained):
    """Re-scoring each fold's held-out series with the validation settings reproduces the training OOF file:
    the checkpoint alone (window, cache size, offsets, crop, weights, aggregation) defines the input."""
    from iad.inference.rescore import rescore_sweep

    rescored, _, path = rescore_sweep(trained["sweep"])  # center_crop=None: the validation crop
    original = read_oof(trained["sweep"] / "oof.csv").set_index(UID_COL).sort_index()
    rescored = rescored.set_index(UID_COL).sort_index()
    assert path.name == "oof_cropval.csv" and list(rescored.index) == list(original.index)
    assert np.allclose(rescored[list(LABEL_COLS)].to_numpy(), original[list(LABEL_COLS)].to_numpy(), atol=1e-4)


def test_dicom_and_cached_paths_agree(trained):
    from iad.preprocessing import SeriesCache

    predictor = Predictor.load(trained["sweep"])
    model = predictor.members[0].models[0]
    preprocess = model.input_spec.preprocess
    cache = SeriesCache(model.config["paths"]["cache_dir"], preprocess)
    series_root = Path(model.config["dataset"]["series_dir"])
    assert series_root.is_relative_to(trained["root"])
    for folder in sorted(series_root.iterdir())[:4]:
        from_dicom = predictor.predict(folder)
        from_cache = predictor.predict_volume(cache.volume(folder.name), cache.mean_image(folder.name), preprocess.key)
        assert np.allclose([from_dicom[c] for c in LABEL_COLS], [from_cache[c] for c in LABEL_COLS], atol=1e-6)


def test_hflip_tta_undoes_the_label_swap(trained):
    plain = Predictor.load(trained["sweep"], hflip=False, center_crop=1.0)
    model = plain.members[0].models[0]
    volume = np.random.default_rng(0).integers(0, 255, size=(5, 40, 40), dtype=np.uint8)
    import torch

    batch = model.slice_input.normalize(torch.stack([model.slice_input(volume, z, (0, 0, 1, 1)) for z in range(5)]))
    direct = model.slice_probabilities(batch)
    flipped_then_unswapped = model.slice_probabilities(batch.flip(-1))[:, list(FLIP_PERM)]
    tta = plain._tta_probabilities(model, batch, hflip=True)
    assert torch.allclose(tta, (direct + flipped_then_unswapped) / 2, atol=1e-6)


def test_malformed_series_get_fallback_rows(trained, tmp_path):
    inputs = tmp_path / "inputs"
    good = sorted((trained["unseen"] / "series").iterdir())[0]
    shutil.copytree(good, inputs / "good")
    (inputs / "empty").mkdir()
    (inputs / "not_dicom").mkdir()
    (inputs / "not_dicom" / "a.dcm").write_text("hello")
    truncated = inputs / "truncated"
    truncated.mkdir()
    for f in sorted(good.iterdir())[:3]:
        (truncated / f.name).write_bytes(f.read_bytes()[:300])
    predictor = Predictor.load(trained["sweep"])
    submission = predict_folder(predictor, inputs, tmp_path / "out", progress=False).set_index(UID_COL)
    timings = pd.read_csv(tmp_path / "out" / "timings.csv").set_index(UID_COL)
    for name in ("empty", "not_dicom", "truncated"):
        assert "SeriesReadError" in timings.loc[name, "fallback"]
        assert np.allclose(submission.loc[name, list(LABEL_COLS)].to_numpy(float), predictor.prevalence)
    assert pd.isna(timings.loc["good", "fallback"])
    assert 0 < predictor.prevalence[LABEL_COLS.index("Aneurysm Present")] < 1


def test_time_budget_gives_fallback(trained):
    predictor = Predictor.load(trained["sweep"], time_budget_s=0.0)
    series = sorted((trained["unseen"] / "series").iterdir())[0]
    assert "SeriesTimeout" in predictor.predict_safe(series).fallback_reason


def test_bundle_round_trip_gives_the_same_predictions(trained, tmp_path):
    predictor = Predictor.load(trained["sweep"], hflip=True, center_crop=0.75)
    bundle = export_bundle(predictor, tmp_path / "bundle")
    moved = tmp_path / "elsewhere"
    shutil.move(str(bundle), moved)  # self-contained: no reference to the training outputs or conf/
    reloaded = Predictor.load(moved)
    assert reloaded.members[0].hflip is True and reloaded.members[0].center_crop == 0.75
    for series in sorted((trained["unseen"] / "series").iterdir())[:3]:
        a, b = predictor.predict(series), reloaded.predict(series)
        assert np.allclose([a[c] for c in LABEL_COLS], [b[c] for c in LABEL_COLS], atol=1e-6)
    size = sum(p.stat().st_size for p in moved.rglob("*.pt"))
    ckpts = sum(p.stat().st_size for p in trained["sweep"].glob("fold_*/checkpoints/best.ckpt"))
    assert size < ckpts  # weights only: no optimiser state, no second (raw/EMA) copy


def test_kaggle_adapter_returns_one_row_of_14_columns(trained, monkeypatch):
    import polars as pl

    import iad.inference.kaggle as kaggle

    monkeypatch.setenv(kaggle.MODEL_ENV, str(trained["sweep"]))
    monkeypatch.setattr(kaggle, "_predictor", None)
    series = sorted((trained["unseen"] / "series").iterdir())[0]
    frame = kaggle.predict(str(series))
    assert isinstance(frame, pl.DataFrame) and frame.shape == (1, 14) and frame.columns == list(LABEL_COLS)
    assert kaggle.predict("/does/not/exist").shape == (1, 14)


def test_kaggle_adapter_warmup_fails_early_on_a_bad_model_path(monkeypatch, tmp_path):
    import iad.inference.kaggle as kaggle

    monkeypatch.setattr(kaggle, "_predictor", None)
    monkeypatch.delenv(kaggle.MODEL_ENV, raising=False)
    with pytest.raises(RuntimeError, match=kaggle.MODEL_ENV):
        kaggle.warmup()
    monkeypatch.setenv(kaggle.MODEL_ENV, str(tmp_path / "no-bundle"))
    with pytest.raises(FileNotFoundError, match="no-bundle"):
        kaggle.warmup()


def test_kaggle_adapter_clears_only_the_gateway_share(trained, monkeypatch, tmp_path, caplog):
    import iad.inference.kaggle as kaggle

    monkeypatch.setenv(kaggle.MODEL_ENV, str(trained["sweep"]))
    monkeypatch.setattr(kaggle, "_predictor", None)
    shared = tmp_path / "shared"
    monkeypatch.setenv(kaggle.SHARED_DIR_ENV, str(shared))
    outside = sorted((trained["unseen"] / "series").iterdir())[0]
    copied = shutil.copytree(outside, shared / "series" / outside.name)
    assert kaggle.predict(str(outside)).shape == (1, 14) and copied.exists()  # not from the share: kept
    assert kaggle.predict(str(copied)).shape == (1, 14) and not shared.exists()  # from the share: removed
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.dcm").write_bytes(b"not dicom")
    with caplog.at_level("WARNING", logger=kaggle.__name__):
        kaggle.predict(str(tmp_path / "bad"))
    lines = [r.getMessage() for r in caplog.records if r.name == kaggle.__name__]
    assert len(lines) == 1 and "fallback row" in lines[0] and "\n" not in lines[0]


def test_malicious_model_file_is_refused_without_running_its_payload(trained, tmp_path):
    """A bundle's model file that pickles a callable must not execute it when loaded."""
    import torch

    from iad.inference import UnsafeModelFile, load_model

    predictor = Predictor.load(trained["sweep"])
    bundle = export_bundle(predictor, tmp_path / "bundle")
    victim = sorted(bundle.rglob("*.pt"))[0]
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    blob = torch.load(victim, weights_only=True)
    blob["extra"] = Payload()
    torch.save(blob, victim)
    with pytest.raises(UnsafeModelFile, match=re.escape(str(victim))):
        load_model(victim)
    with pytest.raises(UnsafeModelFile):
        Predictor.load(bundle)
    assert not marker.exists()


def test_oof_rescoring_with_center_crop(trained):
    env = dict(os.environ, IAD_OFFLINE="1")
    out = subprocess.run([sys.executable, "predict.py", "mode=oof", f"model_path={trained['sweep']}", "tta.center_crop=0.75",
                          f"paths.log_dir={trained['root']}/logs"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                         env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rescored = read_oof(trained["sweep"] / "oof_crop0.75.csv")
    original = read_oof(trained["sweep"] / "oof.csv")
    assert sorted(rescored[UID_COL]) == sorted(original[UID_COL])
    merged = rescored.merge(original[[UID_COL, "fold"]], on=UID_COL, suffixes=("", "_orig"))
    assert (merged["fold"] == merged["fold_orig"]).all()
    assert not np.allclose(rescored.sort_values(UID_COL)[list(LABEL_COLS)].to_numpy(),
                           original.sort_values(UID_COL)[list(LABEL_COLS)].to_numpy())


def test_exp2_and_exp3_sweeps_ensemble_into_a_spec_the_predictor_runs(trained, tmp_path):
    root = trained["root"]
    overrides = [o for o in tiny_overrides(root / "data", root / "logs", n_series=24) if not o.startswith("model.backbone")]
    args = ["-m", "experiment=demo_clsseg", *overrides, "data.fold=0,1", "name=exp3tiny",
            "model.encoder_name=tu-test_resnet", "model.decoder.pyramid_channels=32",
            "model.decoder.segmentation_channels=32", "data.input.img_size=64"]
    exp3 = run_train(args)
    assert exp3.returncode == 0, exp3.stderr[-3000:]
    exp3_sweep = configuration_dir(root / "logs", "sweeps", args)
    members = f"ensemble.members={{exp2:{{path:{trained['sweep']},center_crop:0.75}},exp3:{{path:{exp3_sweep}}}}}"
    env = dict(os.environ, IAD_OFFLINE="1")
    out = subprocess.run([sys.executable, "ensemble.py", "ensemble=custom", members, "ensemble.weights=optimize",
                          f"paths.log_dir={root}/logs"], cwd=PROJECT_ROOT, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    spec_path = root / "logs" / "ensemble" / "custom-optimize-mean" / "ensemble.json"
    spec = json.loads(spec_path.read_text())
    assert abs(sum(m["weight"] for m in spec["members"]) - 1) < 1e-6
    predictor = Predictor.load(spec_path)
    assert {m.name for m in predictor.members} == {m["name"] for m in spec["members"]}
    submission = predict_folder(predictor, trained["unseen"] / "series", tmp_path, progress=False)
    assert len(submission) == 12
    assert ((submission[list(LABEL_COLS)] >= 0) & (submission[list(LABEL_COLS)] <= 1)).all().all()


def test_predict_command_submission_and_bundle(trained, tmp_path):
    env = dict(os.environ, IAD_OFFLINE="1")
    common = [f"paths.log_dir={trained['root']}/logs", f"model_path={trained['sweep']}"]
    out = subprocess.run([sys.executable, "predict.py", *common, f"input={trained['unseen'] / 'series'}",
                          f"output_dir={tmp_path}/sub"], cwd=PROJECT_ROOT, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(pd.read_csv(tmp_path / "sub" / "submission.csv")) == 12
    out = subprocess.run([sys.executable, "predict.py", *common, "mode=bundle", f"output_dir={tmp_path}/bundle",
                          "tta.hflip=true"], cwd=PROJECT_ROOT, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    spec = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert spec["members"][0]["hflip_tta"] is True and len(list((tmp_path / "bundle").rglob("*.pt"))) == 2


def test_cost_controls_from_a_sweep_and_in_its_bundle(trained, tmp_path):
    """A fold subset on two (CPU) devices, stride and batch size from `cost`; the bundle records them."""
    chosen = Predictor.load(trained["sweep"], cost={"folds": [1], "slice_stride": 2, "batch_size": 8, "precision": None},
                            devices=["cpu", "cpu"], read_workers=2)
    member = chosen.members[0]
    assert len(member.models) == 1 and member.models[0].source.endswith("fold_1/checkpoints/best.ckpt")
    assert (member.cost.slice_stride, member.cost.batch_size, member.cost.precision) == (2, 8, "32")
    series = sorted((trained["unseen"] / "series").iterdir())[0]
    assert set(chosen.predict(series)) == set(LABEL_COLS)
    export_bundle(chosen, tmp_path / "bundle")
    recorded = json.loads((tmp_path / "bundle" / "bundle.json").read_text())["members"][0]
    assert (recorded["slice_stride"], recorded["batch_size"], recorded["folds"]) == (2, 8, "all")
    assert len(list((tmp_path / "bundle").rglob("*.pt"))) == 1
    reloaded = Predictor.load(tmp_path / "bundle")
    assert reloaded.members[0].cost == member.cost
    assert reloaded.predict(series) == pytest.approx(chosen.predict(series), abs=1e-6)


def test_predict_command_oof_under_a_stride_and_the_cost_table(trained, tmp_path):
    env = dict(os.environ, IAD_OFFLINE="1")
    common = [f"paths.log_dir={trained['root']}/logs", f"model_path={trained['sweep']}"]
    out = subprocess.run([sys.executable, "predict.py", *common, "mode=oof", "cost.slice_stride=2"], cwd=PROJECT_ROOT,
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "model seconds per series" in out.stdout
    assert len(read_oof(trained["sweep"] / "oof_cropval_slice_stride2.csv")) == len(read_oof(trained["sweep"] / "oof.csv"))
    out = subprocess.run([sys.executable, "predict.py", *common, "mode=cost", f"input={trained['unseen'] / 'series'}",
                          "n_series=2500", "cost_repeats=1", f"output_dir={tmp_path}"], cwd=PROJECT_ROOT,
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    for row in ("read", "preprocess", "fold model 0", "fold model 1", "expected per series", "expected for 2500 series"):
        assert row in out.stdout, out.stdout
    assert json.loads((tmp_path / "cost.json").read_text())["per_series_s"] > 0
