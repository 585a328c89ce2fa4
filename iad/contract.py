"""The run/checkpoint contract: what a run leaves behind and what a model needs as input (no torch).

nnU-Net's "plans" idea: training writes two typed records into every checkpoint and model file, and
inference and bundles read them back, so nothing is re-typed or guessed:

- `ModelSpec`: how to rebuild the network offline (its family in `iad.models.nets` and that
  builder's arguments) and how slice outputs become a series prediction;
- `InputSpec`: the cache's preprocessing, the 2.5D slice input, crops, masks, label order and the
  training prevalence (the fallback row).

It also owns every file and folder name of a run, a sweep and a bundle, and the checkpoint keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from iad.labels import LABEL_COLS
from iad.preprocessing.normalize import PreprocessConfig

# ---- a run folder: <sweep>/fold_<k>/ or <runs>/<name>/fold_<k>/ ---------------------------------
CHECKPOINT_DIR = "checkpoints"
BEST_CKPT = "best.ckpt"
LAST_CKPT = "last.ckpt"
OOF_FILE = "oof.csv"
RESULT_FILE = "result.json"  # its presence marks the run finished
IDENTITY_FILE = "identity.json"  # the settings that define what the run learns, and their hash
ERROR_FILE = "error.txt"
LOGGER_DIRS = ("csv", "wandb")
YOLO_DIR = "yolo"  # a detector run's ultralytics folder: data.yaml, item tables, per-epoch results.csv
DETECTIONS_FILE = "detections.csv"  # a fold's out-of-fold detections; in a sweep folder, all folds merged
RUN_OUTPUTS = (CHECKPOINT_DIR, OOF_FILE, RESULT_FILE, ERROR_FILE, IDENTITY_FILE, *LOGGER_DIRS, YOLO_DIR, DETECTIONS_FILE)
FOLD_PREFIX = "fold_"
FULL_DATA_RUN = "full"  # the run folder of a model trained on every series (data.fold=null)

# ---- a sweep folder: its fold runs plus the merged files ----------------------------------------
CV_FILE = "cv.json"

# ---- a bundle: weights-only model files and the blend -------------------------------------------
BUNDLE_FILE = "bundle.json"
SUBMISSION_FILE = "submission.csv"  # predict.py: one row per series, the 14 label columns
BUNDLE_MEMBERS_DIR = "members"
MODEL_FILE_SUFFIX = ".pt"
MODEL_FILE_FORMAT = "iad-model/2"

# ---- a detector run (exp0 aneurysm, exp1 brain): ultralytics' own weights (resume) + a weights-only export
DETECTOR_FILE = "detector.pt"       # <run>/checkpoints/detector.pt: what inference, bundles and crop tables load
DETECTOR_FORMAT = "iad-detector/1"
DETECTOR_IMAGES = ("slices", "mean")  # what a detector looks at: 2.5D slice stacks, or the series' mean image

# ---- checkpoint and model-file keys --------------------------------------------------------------
FORMAT_KEY = "format"
CONFIG_KEY = "iad_config"    # the resolved run config (a plain dict)
MODEL_KEY = "iad_model"      # ModelSpec.to_dict()
INPUT_KEY = "iad_input"      # InputSpec.to_dict()
WEIGHTS_KEY = "iad_weights"  # state_dict prefix of the inference weights ("net.", "ema.module.", or "")
VARIANT_KEY = "iad_best_variant"  # "raw" or "ema": which weights validation preferred
STATE_DICT_KEY = "state_dict"
DETECTOR_KEY = "iad_detector"  # DetectorSpec.to_dict()
BRAIN_DETECTOR_KEY = "iad_brain_detector"  # model file: the bytes (uint8 tensor) of the brain detector its crops need


def fold_name(fold) -> str:
    """Run folder name of a fold: fold_<k>, or `full` for full-data training."""
    return FULL_DATA_RUN if fold is None or str(fold) in ("None", "null") else f"{FOLD_PREFIX}{fold}"


def fold_runs(sweep_dir: str | Path) -> list[Path]:
    """The fold run folders of a sweep, in name order."""
    return sorted(p for p in Path(sweep_dir).glob(f"{FOLD_PREFIX}*") if p.is_dir())


def best_checkpoint(run_dir: str | Path) -> Path:
    """Where a run keeps its best checkpoint."""
    return Path(run_dir) / CHECKPOINT_DIR / BEST_CKPT


def last_checkpoint(run_dir: str | Path) -> Path:
    """Where a run keeps the checkpoint it resumes from."""
    return Path(run_dir) / CHECKPOINT_DIR / LAST_CKPT


def detector_file(run_dir: str | Path) -> Path:
    """Where a detector run keeps its weights-only export."""
    return Path(run_dir) / CHECKPOINT_DIR / DETECTOR_FILE


def _files_in(path: str | Path, locate, expected: str) -> list[Path]:
    """The files a path stands for: itself, a run's file (`locate(run)`), its sweep's fold files in fold
    order, or a folder of exported files (a bundle's)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if locate(path).exists():
        return [locate(path)]
    folds = [locate(run) for run in fold_runs(path) if locate(run).exists()]
    if folds:
        return folds
    exported = sorted(path.glob(f"*{MODEL_FILE_SUFFIX}"))
    if exported:
        return exported
    raise FileNotFoundError(f"no {expected} in {path} (expected a {expected} file, {locate(Path('.'))} or fold_*/)")


def detectors_in(path: str | Path) -> list[Path]:
    """Detector files a path stands for: a detector file, a run folder, a sweep folder or a bundle's folder."""
    return _files_in(path, detector_file, "detector")


def checkpoints_in(path: str | Path) -> list[Path]:
    """Fold checkpoints a path stands for: a checkpoint/model file, a run folder, or a sweep folder."""
    return _files_in(path, best_checkpoint, "checkpoint")


class ContractError(ValueError):
    """A checkpoint, model file or run folder does not hold what the contract says."""


def _from_mapping(cls, blob: Mapping, what: str):
    if not isinstance(blob, Mapping):
        raise ContractError(f"{what}: expected a mapping, got {type(blob).__name__}")
    names = {f.name for f in fields(cls)}
    required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
    missing, unknown = required - set(blob), set(blob) - names
    if missing or unknown:
        raise ContractError(f"{what}: missing {sorted(missing)}, unknown {sorted(unknown)}")
    return cls(**blob)


@dataclass(frozen=True)
class ModelSpec:
    """How to rebuild a trained network offline and turn its slice outputs into a series prediction.

    family: a builder registered in `iad.models.nets.NET_FAMILIES`; every builder takes
        `pretrained` and `pretrained_file`, which inference sets to False / None.
    net_args: the builder's other arguments as trained (backbone name, channels, decoder, ...).
    aggregation / topk: series prediction = max over slices, or mean of the top-k.
    """

    family: str
    net_args: dict
    aggregation: str = "max"
    topk: int = 3

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, blob: Mapping, source: str = "model spec") -> ModelSpec:
        return _from_mapping(cls, blob, source)


@dataclass(frozen=True)
class SliceInputSpec:
    """The 2.5D slice input: channels = slices z + offsets, resized to img_size², normalised by mean/std."""

    img_size: int
    offsets: tuple[int, ...] = (-1, 0, 1)
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        object.__setattr__(self, "img_size", int(self.img_size))
        for name, kind in (("offsets", int), ("mean", float), ("std", float)):
            object.__setattr__(self, name, tuple(kind(v) for v in getattr(self, name)))

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class InputSpec:
    """Everything inference needs to rebuild a model's input exactly as training saw it.

    head_crop: crop slices to the head box of the mean image when no crop box is given.
    val_center_crop: centred crop ratio after the series box, as validated.
    masks: the segmentation-target settings (None for classifiers); kept for completeness.
    brain_crop: the brain detector whose crop table training used ({"detector": its file, "sha256",
        "min_confidence"}, from the table's sidecar; `iad.detection.crops`): inference crops with the
        same detector and rule. None: the head box (`head_crop`) or no crop.
    label_prevalence: training share of each label: the fallback row of an unreadable series.
    """

    preprocess: PreprocessConfig
    slice_input: SliceInputSpec
    head_crop: bool = True
    val_center_crop: float = 1.0
    masks: dict | None = None
    label_cols: tuple[str, ...] = tuple(LABEL_COLS)
    label_prevalence: tuple[float, ...] = field(default_factory=lambda: (0.5,) * len(LABEL_COLS))
    brain_crop: dict | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "label_cols", tuple(self.label_cols))
        object.__setattr__(self, "label_prevalence", tuple(float(v) for v in self.label_prevalence))
        if len(self.label_prevalence) != len(self.label_cols):
            raise ContractError(f"{len(self.label_prevalence)} prevalences for {len(self.label_cols)} labels")

    def to_dict(self) -> dict:
        return {"preprocess": self.preprocess.to_dict(), "slice_input": self.slice_input.to_dict(),
                "head_crop": self.head_crop, "val_center_crop": self.val_center_crop,
                "masks": dict(self.masks) if self.masks else None, "label_cols": list(self.label_cols),
                "label_prevalence": list(self.label_prevalence),
                "brain_crop": dict(self.brain_crop) if self.brain_crop else None}

    @classmethod
    def from_dict(cls, blob: Mapping, source: str = "input spec") -> InputSpec:
        blob = dict(blob)
        try:
            blob["preprocess"] = PreprocessConfig(**blob["preprocess"])
            blob["slice_input"] = SliceInputSpec(**blob["slice_input"])
        except (KeyError, TypeError) as err:
            raise ContractError(f"{source}: bad preprocess / slice_input ({err})") from err
        return _from_mapping(cls, blob, source)

    def check_labels(self, source: str = "model") -> None:
        """Raise when the model was trained with another label order than this code uses."""
        if list(self.label_cols) != list(LABEL_COLS):
            raise ContractError(f"{source}: trained with another label order ({list(self.label_cols)[:2]}...)")


@dataclass(frozen=True)
class DetectorSpec:
    """What a detector looks at and what it finds; written by training into `detector.pt`.

    task: "aneurysm" (exp0) or "brain" (exp1).
    classes: class names in index order (`iad.boxes.ANEURYSM_CLASSES` / `BRAIN_CLASSES`).
    imgsz: ultralytics' (letterboxed) input size.
    image: one of DETECTOR_IMAGES: "slices" = cache slices z + offsets as channels (the classifiers'
        2.5D stacking), "mean" = the series' cached mean image in every channel.
    preprocess: the cache the images come from.
    """

    task: str
    classes: tuple[str, ...]
    imgsz: int
    image: str
    preprocess: PreprocessConfig
    offsets: tuple[int, ...] = (-1, 0, 1)

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        object.__setattr__(self, "offsets", tuple(int(o) for o in self.offsets))
        object.__setattr__(self, "imgsz", int(self.imgsz))
        if self.image not in DETECTOR_IMAGES:
            raise ContractError(f"detector image {self.image!r}: expected one of {DETECTOR_IMAGES}")

    def to_dict(self) -> dict:
        return {"task": self.task, "classes": list(self.classes), "imgsz": self.imgsz, "image": self.image,
                "preprocess": self.preprocess.to_dict(), "offsets": list(self.offsets)}

    @classmethod
    def from_dict(cls, blob: Mapping, source: str = "detector spec") -> DetectorSpec:
        blob = dict(blob)
        try:
            blob["preprocess"] = PreprocessConfig(**blob["preprocess"])
        except (KeyError, TypeError) as err:
            raise ContractError(f"{source}: bad preprocess ({err})") from err
        return _from_mapping(cls, blob, source)
