"""The reference solution as an ordered list of stages, each a command of this project (no torch).

Each stage knows the command that runs it and the file whose presence says it is finished, so a
rerun skips finished stages and reruns the others; the commands themselves resume (a sweep skips
its finished folds and resumes an interrupted one). Training sweeps live where `train.py -m` puts
them (`<log_dir>/train/sweeps/<run name>`, named by their configuration, so another pipeline with
the same settings reuses them); what only this pipeline makes (crop table, cleaned labels, pseudo
labels, ensemble, bundle, predictions) lives in the pipeline's own folder.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
import sys

from iad.contract import BUNDLE_FILE, CV_FILE, FULL_DATA_RUN, RESULT_FILE, SUBMISSION_FILE, fold_name
from iad.detection.crops import external_crop_table_name
from iad.ensembling.run import SPEC_FILE
from iad.synthetic.dataset import SERIES_DIR, SETTINGS_JSON
from iad.utils.config import run_name
from iad.utils.env import PROJECT_ROOT

# The reference's members, in the order they are trained (keys of a recipe's `experiments`).
DETECTOR_MEMBERS = ("exp0",)  # 5-fold aneurysm detector: out-of-fold detections feed cleaning and pseudo labels
BRAIN_MEMBER = "exp1"  # brain detector, one full-data run: the crop table
BASE_MEMBERS = ("exp2_vit", "exp2_eva", "exp3")  # trained on the RSNA labels as given
CLEANED_MEMBERS = ("exp4_vit", "exp4_eva", "exp5")  # retrained on cleaned labels + pseudo-labelled external data
CLEANING_MEMBERS = ("exp2_vit", "exp3")  # whose out-of-fold predictions clean and pseudo-label (0.5 ViT + 0.5 mit_b4)
CLASSIFIER_MEMBERS = BASE_MEMBERS + CLEANED_MEMBERS

CLEANING_STAGE, PSEUDO_STAGE = "cleaning", "pseudo_labels"
CROP_DIR, CLEAN_DIR, PSEUDO_DIR = "crops", "clean", "pseudo"
ENSEMBLE_DIR, BUNDLE_DIR, PREDICTIONS_DIR, TEST_DIR = "ensemble", "bundle", "predictions", "test_data"
CLEAN_REPORT = PSEUDO_REPORT = "report.json"
CLEANED_LABELS, CLEANED_BOXES = "train_labels.csv", "boxes.csv"
PSEUDO_LABELS = "pseudo_labels.csv"


def crop_oof_file(center_crop: float) -> str:
    """The OOF file `predict.py mode=oof tta.center_crop=<ratio>` writes in a sweep folder."""
    return f"oof_crop{center_crop:g}.csv"


@dataclass(frozen=True)
class Stage:
    """One step: the command that runs it (argv) and the file that marks it finished."""

    name: str
    argv: list[str]
    done_file: Path
    done: Callable[[], bool] = field(repr=False, default=None)  # default: done_file exists

    def finished(self) -> bool:
        return self.done() if self.done is not None else self.done_file.exists()


@dataclass
class Recipe:
    """What a pipeline runs (`conf/recipe/*.yaml`); see `plan_stages`."""

    experiments: Mapping[str, str]
    dataset: str
    external: str
    folds: Sequence[int]
    center_crop: float
    ensemble: str
    overrides: Mapping[str, Sequence[str]] = field(default_factory=dict)  # member or stage → its extra overrides
    dataset_overrides: Sequence[str] = ()  # every command reading the dataset (training, crops, cleaning)
    external_overrides: Sequence[str] = ()  # every command reading the external data (pseudo labels, exp4/exp5)
    test_input: str | None = None
    test_data: Mapping | None = None  # synthetic test series generated for the predictions stage
    device: str = "cpu"


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


def _script(name: str) -> str:
    return str(PROJECT_ROOT / name)


class Planner:
    """Builds the stages of one pipeline run: where each output is and the command that makes it."""

    def __init__(self, recipe: Recipe, out_dir: Path, log_dir: Path, common: Sequence[str]):
        self.recipe = recipe
        self.out = Path(out_dir)
        self.sweeps = Path(log_dir) / "train" / "sweeps"
        self.runs = Path(log_dir) / "train" / "runs"
        self.common = list(common)  # every command: paths.root_dir=..., etc.

    # ---- where things are --------------------------------------------------------------------
    def crop_table(self) -> Path:
        return self.out / CROP_DIR / f"{self.recipe.dataset}.csv"

    def external_crop_table(self) -> Path:
        return self.out / CROP_DIR / f"{external_crop_table_name(self.recipe.external)}.csv"

    def clean_dir(self) -> Path:
        return self.out / CLEAN_DIR

    def pseudo_dir(self) -> Path:
        return self.out / PSEUDO_DIR

    def member_overrides(self, member: str) -> list[str]:
        """A training run's identity overrides: dataset, the recipe's extras, and the inputs earlier stages made."""
        extra = list(self.recipe.overrides.get(member, []))
        own = self.dataset_args()
        if member in CLASSIFIER_MEMBERS:
            own.append(f"data.crop_table={self.crop_table()}")
        if member in CLEANED_MEMBERS:
            own += [f"data.train_labels={self.clean_dir() / CLEANED_LABELS}",
                    f"data.extra_boxes={self.clean_dir() / CLEANED_BOXES}",
                    *self.external_args(),
                    f"data.external.pseudo_labels={self.pseudo_dir() / PSEUDO_LABELS}",
                    f"data.external.crop_table={self.external_crop_table()}"]
        return [*own, *extra]

    def dataset_args(self) -> list[str]:
        return [f"dataset={self.recipe.dataset}", *self.recipe.dataset_overrides]

    def external_args(self) -> list[str]:
        return [f"external={self.recipe.external}", *self.recipe.external_overrides]

    def sweep_dir(self, member: str) -> Path:
        """The sweep folder `train.py -m` gives this member's configuration (iad.utils.config.run_name)."""
        return self.sweeps / run_name(self.recipe.experiments[member], self.member_overrides(member))

    def brain_run(self) -> Path:
        return self.runs / run_name(self.recipe.experiments[BRAIN_MEMBER], self.member_overrides(BRAIN_MEMBER)) / FULL_DATA_RUN

    # ---- the stages --------------------------------------------------------------------------
    def sweep_stage(self, member: str) -> Stage:
        folds = ",".join(str(f) for f in self.recipe.folds)
        sweep = self.sweep_dir(member)
        argv = _python(_script("train.py"), "-m", f"experiment={self.recipe.experiments[member]}",
                       f"data.fold={folds}", *self.member_overrides(member), *self.common)
        expected = [sweep / fold_name(f) / RESULT_FILE for f in self.recipe.folds]
        return Stage(member, argv, sweep / CV_FILE, done=lambda: all(p.exists() for p in [*expected, sweep / CV_FILE]))

    def brain_stage(self) -> Stage:
        argv = _python(_script("train.py"), f"experiment={self.recipe.experiments[BRAIN_MEMBER]}",
                       *self.member_overrides(BRAIN_MEMBER), *self.common)
        return Stage(BRAIN_MEMBER, argv, self.brain_run() / RESULT_FILE)

    def crop_stage(self) -> Stage:
        argv = _python("-m", "iad.detection.crop_table", f"detector={self.brain_run()}",
                       *self.dataset_args(), f"out={self.crop_table()}", f"device={self.recipe.device}",
                       *self.common)
        return Stage("brain_crops", argv, self.crop_table())

    def external_crop_stage(self) -> Stage:
        argv = _python("-m", "iad.detection.crop_table", f"detector={self.brain_run()}", *self.external_args(),
                       f"out={self.external_crop_table()}", f"device={self.recipe.device}", *self.common)
        return Stage("external_brain_crops", argv, self.external_crop_table())

    def crop_oof_stage(self, member: str) -> Stage:
        sweep = self.sweep_dir(member)
        argv = _python(_script("predict.py"), "mode=oof", f"model_path={sweep}",
                       f"tta.center_crop={self.recipe.center_crop}", f"device={self.recipe.device}", *self.common)
        return Stage(f"{member}_crop{self.recipe.center_crop:g}", argv, sweep / crop_oof_file(self.recipe.center_crop))

    def _members_overrides(self, members: Sequence[str], crop: bool) -> list[str]:
        out = []
        for member in members:
            sweep = self.sweep_dir(member)
            path = sweep / crop_oof_file(self.recipe.center_crop) if crop else sweep
            out += [f"members.{member}.path={path}"]
        return out

    def clean_stage(self) -> Stage:
        argv = _python("-m", "iad.labelling.clean", *self.dataset_args(),
                       *self._members_overrides(CLEANING_MEMBERS, crop=False),
                       f"detections={self.sweep_dir('exp0')}", f"hydra.run.dir={self.clean_dir()}",
                       *self.recipe.overrides.get(CLEANING_STAGE, []), *self.common)
        return Stage(CLEANING_STAGE, argv, self.clean_dir() / CLEAN_REPORT)

    def pseudo_stage(self) -> Stage:
        argv = _python("-m", "iad.labelling.pseudo", *self.external_args(),
                       *self._members_overrides(CLEANING_MEMBERS, crop=False),
                       f"detector={self.sweep_dir('exp0')}", f"device={self.recipe.device}",
                       f"hydra.run.dir={self.pseudo_dir()}", *self.recipe.overrides.get(PSEUDO_STAGE, []), *self.common)
        return Stage(PSEUDO_STAGE, argv, self.pseudo_dir() / PSEUDO_REPORT)

    def ensemble_stage(self) -> Stage:
        members = []
        for member in CLASSIFIER_MEMBERS:
            sweep = self.sweep_dir(member)
            members += [f"ensemble.members.{member}.path={sweep / crop_oof_file(self.recipe.center_crop)}",
                        f"++ensemble.members.{member}.checkpoints={sweep}"]
        argv = _python(_script("ensemble.py"), f"ensemble={self.recipe.ensemble}", *members,
                       f"reference.center_crop={self.recipe.center_crop}",
                       f"hydra.run.dir={self.out / ENSEMBLE_DIR}", *self.common)
        return Stage(self.recipe.ensemble, argv, self.out / ENSEMBLE_DIR / SPEC_FILE)

    def bundle_stage(self) -> Stage:
        argv = _python(_script("predict.py"), "mode=bundle", f"model_path={self.out / ENSEMBLE_DIR / SPEC_FILE}",
                       f"output_dir={self.out / BUNDLE_DIR}", *self.common)
        return Stage("bundle", argv, self.out / BUNDLE_DIR / BUNDLE_FILE)

    def test_input(self) -> Path | None:
        if self.recipe.test_data:
            return self.out / TEST_DIR / SERIES_DIR
        return Path(self.recipe.test_input) if self.recipe.test_input else None

    def test_data_stage(self) -> Stage:
        settings = dict(self.recipe.test_data)
        argv = _python("-m", "iad.synthetic", str(self.out / TEST_DIR), *[
            arg for key, value in settings.items() for arg in (f"--{key.replace('_', '-')}", *_cli_values(value))])
        return Stage("test_data", argv, self.out / TEST_DIR / SETTINGS_JSON)

    def predictions_stage(self) -> Stage:
        argv = _python(_script("predict.py"), f"model_path={self.out / BUNDLE_DIR}", f"input={self.test_input()}",
                       f"output_dir={self.out / PREDICTIONS_DIR}", f"device={self.recipe.device}", *self.common)
        return Stage("predictions", argv, self.out / PREDICTIONS_DIR / SUBMISSION_FILE)

    def stages(self) -> list[Stage]:
        """exp0 → exp1 → brain crops (dataset, external source) → exp2 ViT/EVA, exp3 → cleaning + pseudo labels →
        exp4 ViT/EVA, exp5 → the centre-crop OOF of every classifier → ensemble → bundle → predictions."""
        plan = [self.sweep_stage("exp0"), self.brain_stage(), self.crop_stage(), self.external_crop_stage()]
        plan += [self.sweep_stage(m) for m in BASE_MEMBERS]
        plan += [self.clean_stage(), self.pseudo_stage()]
        plan += [self.sweep_stage(m) for m in CLEANED_MEMBERS]
        plan += [self.crop_oof_stage(m) for m in CLASSIFIER_MEMBERS]
        plan += [self.ensemble_stage(), self.bundle_stage()]
        if self.recipe.test_data:
            plan.append(self.test_data_stage())
        if self.test_input() is not None:
            plan.append(self.predictions_stage())
        return plan


def _cli_values(value) -> list[str]:
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
