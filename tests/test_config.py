"""Settings two config groups share are stated once; a contradicting override fails before any work."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
import pytest

from iad.utils.config import CONFIG_DIR
from iad.utils.couplings import CouplingError, check_couplings
from tests.training_helpers import run_train

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


def compose_train(overrides: list[str]):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=[*overrides, "paths.output_dir=."])


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiments_are_consistent(experiment):
    cfg = compose_train([f"experiment={experiment}"])
    check_couplings(cfg)
    if cfg.engine == "lightning":
        assert cfg.model.in_chans == len(cfg.data.input.offsets)


def test_model_follows_the_data_settings():
    vit = compose_train(["experiment=exp2_eva_large_384", "data.input.img_size=448", "data.input.offsets=[-2,-1,0,1,2]"])
    assert vit.model.backbone_kwargs.img_size == 448 and vit.model.in_chans == 5
    check_couplings(vit)


@pytest.mark.parametrize(("override", "keys"), [
    ("model.backbone_kwargs.img_size=224", ("model.backbone_kwargs.img_size=224", "data.input.img_size=384")),
    ("model.in_chans=1", ("model.in_chans=1", "data.input.offsets=[-1, 0, 1]")),
])
def test_contradicting_override_names_both_keys(override, keys):
    with pytest.raises(CouplingError) as err:
        check_couplings(compose_train(["experiment=exp2_vit_large_384", override]))
    assert all(key in str(err.value) for key in keys)


def test_mask_model_needs_masks():
    with pytest.raises(CouplingError, match="data.masks"):
        check_couplings(compose_train(["model=clsseg"]))


def test_train_fails_at_config_time(tmp_path):
    out = run_train(["experiment=exp2_vit_large_384", "model.backbone_kwargs.img_size=224", f"paths.data_dir={tmp_path}/data",
                     f"paths.log_dir={tmp_path}/logs"], timeout=120)
    assert out.returncode != 0
    assert "model.backbone_kwargs.img_size=224 does not match data.input.img_size=384" in out.stderr
    assert not (tmp_path / "data").exists()  # nothing prepared


@pytest.mark.parametrize(("experiment", "base", "stage"), [
    ("exp4_vit_large_384", "exp2_vit_large_384", "reference"), ("exp4_eva_large_384", "exp2_eva_large_384", "reference"),
    ("exp5_mit_b4_fpn_384", "exp3_mit_b4_fpn_384", "reference"), ("demo_exp4_vit", "demo_exp2_vit", "demo"),
    ("demo_exp4_eva", "demo_exp2_eva", "demo"), ("demo_exp5", "demo_exp3", "demo")])
def test_exp4_exp5_are_their_base_plus_cleaned_labels_and_external_data(experiment, base, stage):
    from omegaconf import OmegaConf

    cfg, ref = compose_train([f"experiment={experiment}"]), compose_train([f"experiment={base}"])
    if stage == "demo":  # the demo members are cleaned on the noisy synthetic data
        ref = compose_train([f"experiment={base}", "dataset=synthetic_noisy"])
    added = {"train_labels", "extra_boxes", "external"}
    mine, theirs = (OmegaConf.to_container(c.data, resolve=True) for c in (cfg, ref))
    assert {k: v for k, v in mine.items() if k not in added} == {k: v for k, v in theirs.items() if k not in added}
    assert all(theirs[key] is None for key in added)
    for key in ("model", "trainer", "dataset", "preprocess", "augment"):
        assert OmegaConf.to_container(cfg[key], resolve=True) == OmegaConf.to_container(ref[key], resolve=True), key
    log_dir = cfg.paths.log_dir
    assert mine["train_labels"] == f"{log_dir}/clean/{stage}/train_labels.csv"
    assert mine["extra_boxes"] == f"{log_dir}/clean/{stage}/boxes.csv"
    external = mine["external"]
    assert external["_target_"].endswith("TOFMRADataModule")
    assert external["pseudo_labels"] == f"{log_dir}/pseudo/{stage}/pseudo_labels.csv"
    # its samples batch with the RSNA ones: the same slice input, masks, crop rule and cache
    assert (external["input"], external["masks"], external["head_crop"]) == (mine["input"], mine["masks"], mine["head_crop"])
    assert external["preprocess"] == OmegaConf.to_container(cfg.preprocess, resolve=True)
    assert external["source"]["name"] == ("synthetic" if stage == "demo" else "tofmra")


def test_new_null_data_keys_leave_the_identity_of_earlier_runs_unchanged():
    from iad.utils.config import ABSENT_WHEN_NULL, identity_settings

    plain = identity_settings(compose_train(["experiment=demo"]))
    assert not set(ABSENT_WHEN_NULL) & set(plain)
    cleaned = identity_settings(compose_train(["experiment=demo", "data.train_labels=/x/train_labels.csv"]))
    assert cleaned["data.train_labels"] == "/x/train_labels.csv"
    assert {k: v for k, v in cleaned.items() if k != "data.train_labels"} == plain
