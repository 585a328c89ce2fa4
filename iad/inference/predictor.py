"""Predictor: series folder → 14 probabilities, from one run, a sweep (fold average) or an ensemble."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
import itertools
import logging
from pathlib import Path
import time

import numpy as np
import torch

from iad.contract import BUNDLE_FILE
from iad.data.crops import FULL_BOX, center_crop, head_box
from iad.detection.crops import CropDecision, brain_crop
from iad.detection.findings import DetectorCost, Finding
from iad.dicom import ReadLimits, SeriesTimeout, resolve_workers, scan_series, warm_pool
from iad.dicom.decode_pool import DEFAULT_POOL
from iad.ensembling.spec import ALL_FOLDS, cost_settings, cost_settings_problem
from iad.inference.loading import LoadedModel, checkpoints_in, load_model
from iad.inference.localize import AneurysmLocalizer, load_localizer, spec_localizer_entry
from iad.labels import FLIP_PERM, LABEL_COLS, PRESENT_COL
from iad.models.aggregation import aggregate_series
from iad.preprocessing.cache import normalised_volume, read_stored
from iad.preprocessing.normalize import PreprocessConfig

log = logging.getLogger(__name__)

TIMING_STAGES = ("read", "preprocess", "model", "aggregate", "detect")
PRESENT_INDEX = LABEL_COLS.index(PRESENT_COL)
# autocast dtype per precision setting (None: plain float32); the spec's PRECISIONS
AUTOCAST_DTYPES = {"32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class CostControls:
    """What a member spends per series: every `slice_stride`-th slice scored (max-aggregated as usual),
    `batch_size` slices per forward pass (None: the predictor's), autocast `precision`, and
    channels-last memory format (CUDA only). Which folds run is chosen when loading."""

    slice_stride: int = 1
    batch_size: int | None = None
    precision: str = "32"
    channels_last: bool = False

    @classmethod
    def from_settings(cls, settings: Mapping) -> CostControls:
        """From a spec member's (or an override's) keys; unknown keys such as `folds` are ignored."""
        controls = cls(**{key: settings[key] for key in cls.__dataclass_fields__ if key in settings})
        return replace(controls, precision=str(controls.precision))  # `precision=32` from YAML is an int


@dataclass
class LoadedMember:
    """One ensemble member as the predictor runs it: its loaded fold models (averaged), test-time settings."""

    name: str
    weight: float
    models: list[LoadedModel]
    hflip: bool = False
    center_crop: float | None = None  # None: the ratio the models were validated with
    cost: CostControls = field(default_factory=CostControls)


@dataclass
class Timings:
    """Seconds spent per stage for one series."""

    read: float = 0.0
    preprocess: float = 0.0
    model: float = 0.0
    aggregate: float = 0.0
    detect: float = 0.0  # the aneurysm detector (localize only)

    def as_dict(self) -> dict[str, float]:
        return {f"{stage}_s": round(getattr(self, stage), 4) for stage in TIMING_STAGES}


@dataclass
class Prediction:
    """Probabilities for one series, how long each stage took, why it fell back if it did, and where the
    finding is (when asked to localize)."""

    probabilities: dict[str, float]
    timings: Timings = field(default_factory=Timings)
    fallback_reason: str | None = None
    finding: Finding | None = None
    crops: dict[str, CropDecision] = field(default_factory=dict)  # member name → the series box its models used


class Predictor:
    """Loads models once; `predict(series_dir)` reads, normalises, crops, batches, aggregates, blends."""

    def __init__(self, members: list[LoadedMember], batch_size: int = 64, device: str = "cpu",
                 time_budget_s: float | None = None, max_series_mb: float | None = None,
                 read_workers: int | None = None, read_pool: str = DEFAULT_POOL,
                 localizer: AneurysmLocalizer | None = None):
        """`read_workers` decode a series' compressed files (None: every core, 0/1: serial); each model
        runs on the device its weights are on (`device` for models loaded elsewhere); `localizer`: the
        aneurysm detectors `localize` runs (None: findings carry no box)."""
        total = sum(m.weight for m in members)
        if not members or total <= 0:
            raise ValueError("a predictor needs at least one member with positive weight")
        self.members = [replace(m, weight=m.weight / total) for m in members]
        self.batch_size = batch_size
        self.localizer = localizer
        self.device = torch.device(device)
        self.time_budget_s = time_budget_s
        max_bytes = ReadLimits().max_series_bytes if max_series_mb is None else int(max_series_mb * 2**20)
        self.read_limits = ReadLimits(max_bytes, workers=resolve_workers(read_workers), pool=read_pool)
        for member in self.members:
            for model in member.models:
                if member.cost.channels_last and model_device(model).type == "cuda":
                    model.net.to(memory_format=torch.channels_last)
        self.prevalence = np.mean([model.input_spec.label_prevalence for m in self.members for model in m.models], axis=0)

    # ---- loading -----------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", batch_size: int = 64, hflip: bool | None = None,
             center_crop: float | None = None, time_budget_s: float | None = None,
             max_series_mb: float | None = None, cost: Mapping | None = None,
             devices: list[str] | None = None, read_workers: int | None = None,
             read_pool: str = DEFAULT_POOL, localize: bool = False,
             aneurysm_detector: str | Path | None = None, aneurysm_cost: Mapping | None = None) -> Predictor:
        """From an ensemble spec (.json), a bundle folder, a sweep folder, a run folder or a checkpoint.

        `hflip` / `center_crop` override every member's test-time settings when given, and the
        non-null entries of `cost` (COST_DEFAULTS keys: slice_stride, folds, batch_size, precision,
        channels_last) its cost controls. `devices` (default [device]) spreads the fold models of
        every member over several devices, round-robin.

        `localize` also loads the aneurysm detector: `aneurysm_detector` (an exp0 sweep, a run or a
        detector file), else the spec's or bundle's; the non-null entries of `aneurysm_cost`
        (DetectorCost keys) override its recorded cost controls. Without `localize` none is loaded.
        """
        path = Path(path)
        overrides = {key: value for key, value in (cost or {}).items() if value is not None}
        problem = cost_settings_problem(overrides)
        if problem:
            raise ValueError(f"cost override: {problem}")
        placement = _round_robin(devices or [device])
        spec_path = path / BUNDLE_FILE if path.is_dir() and (path / BUNDLE_FILE).exists() else path
        if spec_path.suffix == ".json":
            members = _members_from_spec(spec_path, placement, overrides)
        else:
            members = [_load_member(path.name, 1.0, checkpoints_in(path), placement, overrides)]
        localizer = _load_localizer(spec_path, aneurysm_detector, aneurysm_cost, device) if localize else None
        for member in members:
            member.hflip = member.hflip if hflip is None else hflip
            member.center_crop = member.center_crop if center_crop is None else center_crop
        return cls(members, batch_size=batch_size, device=device, time_budget_s=time_budget_s,
                   max_series_mb=max_series_mb, read_workers=read_workers, read_pool=read_pool, localizer=localizer)

    def warm_read_pool(self) -> None:
        """Start the decode pool's workers now, so that the first compressed series does not pay for it."""
        if self.read_limits.workers > 1:
            warm_pool(self.read_limits.pool, self.read_limits.workers)

    # ---- prediction --------------------------------------------------------------------------
    def predict(self, series_dir: str | Path) -> dict[str, float]:
        """The 14 probabilities of one series folder (raises on unreadable input)."""
        return self.predict_with_timings(series_dir).probabilities

    def predict_safe(self, series_dir: str | Path, log_fallback: bool = True, localize: bool = False) -> Prediction:
        """Like `predict`, but never raises: a series that fails gets the training prevalence and a reason
        (and, with `localize`, a finding without a box)."""
        try:
            return self.predict_with_timings(series_dir, localize=localize)
        except Exception as err:  # noqa: BLE001 - one bad series must not stop a submission
            reason = f"{type(err).__name__}: {err}"
            if log_fallback:
                log.warning("series %s: fallback row (%s)", series_dir, reason)
            probabilities = dict(zip(LABEL_COLS, self.prevalence.tolist()))
            finding = Finding.from_probabilities(Path(series_dir).name, probabilities, reason) if localize else None
            return Prediction(probabilities, fallback_reason=reason, finding=finding)

    def localize(self, series_dir: str | Path) -> Finding:
        """Where the finding of one series folder is (never raises: a failure leaves the box empty, with its reason)."""
        return self.predict_safe(series_dir, localize=True).finding

    def predict_with_timings(self, series_dir: str | Path, localize: bool = False) -> Prediction:
        """Probabilities and per-stage timings of one series folder (the time budget covers reading);
        `localize` adds its `Finding`."""
        timings = Timings()
        deadline = None if self.time_budget_s is None else time.perf_counter() + self.time_budget_s
        start = time.perf_counter()
        stored = read_stored(scan_series(series_dir, replace(self.read_limits, deadline=deadline)))
        timings.read = time.perf_counter() - start
        volumes: dict[str, tuple[np.ndarray, np.ndarray]] = {}

        def volume_for(config: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
            if config.key not in volumes:
                begin = time.perf_counter()
                volumes[config.key] = normalised_volume(stored, config)
                timings.preprocess += time.perf_counter() - begin
            return volumes[config.key]

        crops: dict[str, CropDecision] = {}
        scores = SliceScores(len(stored.slices)) if localize else None
        probabilities = self._blend(volume_for, timings, deadline, crops, scores)
        finding = self._locate(series_dir, stored, volume_for, probabilities, scores, timings, deadline) if localize else None
        return Prediction(probabilities, timings, crops=crops, finding=finding)

    def _locate(self, series_dir, stored, volume_for, probabilities: dict[str, float], scores: SliceScores,
                timings: Timings, deadline: float | None) -> Finding:
        """The series' finding; a detector failure or an exceeded budget leaves the box empty with its reason."""
        name = Path(series_dir).name
        if self.localizer is None:
            return Finding.from_probabilities(name, probabilities, "no aneurysm detector loaded")
        try:
            _check_deadline(deadline)
            volume, _ = volume_for(self.localizer.preprocess)
            start = time.perf_counter()
            layout = stored.layout
            finding = self.localizer.locate(name, volume, layout.frames, (layout.rows, layout.cols), probabilities,
                                            scores.values[:, PRESENT_INDEX])
            timings.detect += time.perf_counter() - start
            return finding
        except Exception as err:  # noqa: BLE001 - the probabilities stand without a box
            reason = f"{type(err).__name__}: {err}"
            log.warning("series %s: no finding box (%s)", series_dir, reason)
            return Finding.from_probabilities(name, probabilities, reason)

    def predict_volume(self, volume: np.ndarray, mean_image: np.ndarray, preprocess_key: str,
                       mean_images: Mapping[str, np.ndarray] | None = None) -> dict[str, float]:
        """Probabilities from an already normalised (e.g. cached) volume; every model must share its preprocessing.

        `mean_images`: the series' mean images of other caches (by preprocessing key), for brain
        detectors that look at another cache than their classifier (`brain_detector_configs`).
        """
        return self.predict_volume_with_timings(volume, mean_image, preprocess_key, mean_images).probabilities

    def predict_volume_with_timings(self, volume: np.ndarray, mean_image: np.ndarray, preprocess_key: str,
                                    mean_images: Mapping[str, np.ndarray] | None = None) -> Prediction:
        """`predict_volume` with the model and aggregate timings."""
        volumes = {**{key: (None, mean) for key, mean in (mean_images or {}).items()}, preprocess_key: (volume, mean_image)}
        timings, crops = Timings(), {}
        return Prediction(self._blend(_cached_lookup(volumes), timings, None, crops), timings, crops=crops)

    def predict_volume_slices(self, volumes: Mapping[str, tuple[np.ndarray | None, np.ndarray]]) -> np.ndarray:
        """Blended per-slice probabilities (Z×14, LABEL_COLS order) of one cached series.

        `volumes` maps a preprocessing key to that cache's (volume, mean image) of the series (volume None
        where only a brain detector looks at that cache). Each model gets the input `predict_volume` gives
        it (crop rule, slice input, TTA); folds are averaged and members weighted as for the series
        probabilities; a slice no member scored (slice_stride) is NaN.
        """
        lookup = _cached_lookup(volumes)
        n_slices = {len(volume) for volume, _ in volumes.values() if volume is not None}
        if len(n_slices) != 1:
            raise ValueError(f"the cached volumes of one series must share their slice count, got {sorted(n_slices)}")
        scores = SliceScores(n_slices.pop())
        self._blend(lookup, Timings(), None, {}, scores)
        return scores.values

    def brain_detector_configs(self) -> dict[str, PreprocessConfig]:
        """The caches (by preprocessing key) the members' brain detectors look at."""
        return {model.brain_detector.spec.preprocess.key: model.brain_detector.spec.preprocess
                for member in self.members for model in member.models if model.brain_detector is not None}

    def _blend(self, volume_for, timings: Timings, deadline: float | None,
               crops: dict[str, CropDecision], scores: SliceScores | None = None) -> dict[str, float]:
        stacks: dict[tuple, torch.Tensor] = {}  # the fold models of a member usually share one input
        decisions: dict[tuple, CropDecision] = {}  # one series box per (cache, crop rule): one detector run

        def series_crop(model: LoadedModel) -> CropDecision:
            spec, detector = model.input_spec, model.brain_detector
            key = crop_key(spec)
            if key not in decisions:
                if detector is not None:  # the brain detector and rule its crop table came from
                    _, mean_image = volume_for(detector.spec.preprocess)
                    start = time.perf_counter()
                    decisions[key] = brain_crop(detector.detect_mean(mean_image), detector.spec.classes, mean_image,
                                                float(spec.brain_crop["min_confidence"]))
                    timings.model += time.perf_counter() - start
                elif spec.head_crop:
                    decisions[key] = CropDecision(head_box(volume_for(spec.preprocess)[1]), "", 0.0, "head_box")
                else:
                    decisions[key] = CropDecision(FULL_BOX, "", 0.0, "none")
            return decisions[key]

        def input_for(model: LoadedModel, member: LoadedMember) -> torch.Tensor:
            spec = model.input_spec
            ratio = spec.val_center_crop if member.center_crop is None else member.center_crop
            stride = member.cost.slice_stride
            crops[member.name] = series_crop(model)
            key = (spec.preprocess.key, spec.slice_input, crop_key(spec), ratio, stride)
            if key not in stacks:
                pixels, _ = volume_for(spec.preprocess)
                start = time.perf_counter()
                box = center_crop(crops[member.name].box, ratio)
                stacks[key] = torch.stack([model.slice_input(pixels, z, box) for z in range(0, pixels.shape[0], stride)])
                timings.model += time.perf_counter() - start
            return stacks[key]

        blended = np.zeros(len(LABEL_COLS))
        for member in self.members:
            fold_probs = []
            for model in member.models:
                stack = input_for(model, member)
                _check_deadline(deadline)
                series_probs, slice_probs = self._model_series(model, member, stack, timings, deadline)
                fold_probs.append(series_probs)
                if scores is not None:
                    scores.add(member.cost.slice_stride, slice_probs, member.weight / len(member.models))
            blended += member.weight * np.mean(fold_probs, axis=0)
        return dict(zip(LABEL_COLS, np.clip(blended, 0.0, 1.0).tolist()))

    def _model_series(self, model: LoadedModel, member: LoadedMember, stack: torch.Tensor,
                      timings: Timings, deadline: float | None) -> tuple[np.ndarray, np.ndarray]:
        """Series probabilities (14) and slice probabilities (Z'×14) of one model from its uint8 slice inputs (Z'×C×H×W)."""
        start = time.perf_counter()
        slice_probs = []
        device, cost = model_device(model), member.cost
        channels_last = cost.channels_last and device.type == "cuda"
        for batch in stack.split(cost.batch_size or self.batch_size):
            images = model.slice_input.normalize(batch.to(device))
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast(cost.precision, device):
                slice_probs.append(self._tta_probabilities(model, images, member.hflip))
            _check_deadline(deadline)
        timings.model += time.perf_counter() - start
        start = time.perf_counter()
        probs = torch.cat(slice_probs)
        _, series_probs = aggregate_series(torch.zeros(len(probs), dtype=torch.long), probs, model.model_spec.aggregation,
                                           model.model_spec.topk)
        timings.aggregate += time.perf_counter() - start
        return series_probs[0].numpy(), probs.numpy()

    def _tta_probabilities(self, model: LoadedModel, images: torch.Tensor, hflip: bool) -> torch.Tensor:
        probs = model.slice_probabilities(images)
        if hflip:
            # A flipped image shows left as right: column i of its output describes column FLIP_PERM[i].
            flipped = model.slice_probabilities(images.flip(-1))[:, list(FLIP_PERM)]
            probs = (probs + flipped) / 2
        return probs.cpu()


def crop_key(spec) -> tuple:
    """What decides a series box: the cache, and the brain detector and threshold (or the head-box switch)."""
    if spec.brain_crop:
        return (spec.preprocess.key, spec.brain_crop["sha256"], float(spec.brain_crop["min_confidence"]))
    return (spec.preprocess.key, bool(spec.head_crop))


class SliceScores:
    """Per-slice probabilities (Z×14) blended as the series prediction is (member weights, folds averaged);
    a slice a member skips (its slice_stride) is scored by the members that saw it, NaN by none."""

    def __init__(self, n_slices: int):
        self.total = np.zeros((n_slices, len(LABEL_COLS)))
        self.weight = np.zeros((n_slices, 1))

    def add(self, stride: int, probabilities: np.ndarray, weight: float) -> None:
        """One model's probabilities (Z'×14) of slices 0, stride, 2·stride, ..."""
        self.total[::stride] += weight * probabilities
        self.weight[::stride] += weight

    @property
    def values(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.weight > 0, self.total / self.weight, np.nan)


def _cached_lookup(volumes: Mapping[str, tuple[np.ndarray | None, np.ndarray]]):
    """`volume_for` of `_blend` over already normalised volumes (by preprocessing key)."""
    def volume_for(config: PreprocessConfig) -> tuple[np.ndarray | None, np.ndarray]:
        if config.key in volumes:
            return volumes[config.key]
        raise ValueError(f"no cached volume for preprocessing {config.key} (a model or its brain detector expects it); "
                         f"given: {sorted(volumes)}")
    return volume_for


def _check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.perf_counter() > deadline:
        raise SeriesTimeout("per-series time budget exceeded")


def model_device(model: LoadedModel) -> torch.device:
    """The device a model's weights are on."""
    return next(model.net.parameters()).device


def autocast(precision: str, device: torch.device):
    """The autocast context of a precision setting ("32": none)."""
    dtype = AUTOCAST_DTYPES[str(precision)]
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def _round_robin(devices: list[str]):
    """A function giving the next device of `devices` on each call."""
    cycle = itertools.cycle(devices)
    return lambda: next(cycle)


def select_folds(checkpoints: list[Path], folds, name: str) -> list[Path]:
    """The checkpoints of `folds` ("all" or indices into the member's fold list)."""
    if folds in (None, ALL_FOLDS):
        return checkpoints
    missing = [index for index in folds if not 0 <= index < len(checkpoints)]
    if missing:
        raise ValueError(f"member {name}: folds {missing} not among its {len(checkpoints)} fold models")
    return [checkpoints[index] for index in folds]


def _load_member(name: str, weight: float, checkpoints: list[Path], placement, settings: Mapping,
                 **tta) -> LoadedMember:
    chosen = select_folds(checkpoints, settings.get("folds"), name)
    return LoadedMember(name, weight, [load_model(p, placement()) for p in chosen], **tta,
                        cost=CostControls.from_settings(settings))


def _load_localizer(spec_path: Path, detector: str | Path | None, overrides: Mapping | None,
                    device: str) -> AneurysmLocalizer | None:
    """The aneurysm detector `detector` names, else the spec's (None when neither has one)."""
    from iad.ensembling.spec import read_spec

    entry = spec_localizer_entry(read_spec(spec_path), spec_path.parent) if spec_path.suffix == ".json" else None
    if detector is not None:
        entry = {**(entry or {}), "path": str(detector), "sha256": {}}
    if entry is None:
        return None
    settings = {**entry, **{key: value for key, value in (overrides or {}).items() if value is not None}}
    return load_localizer(entry["path"], DetectorCost.from_settings(settings), device, entry.get("sha256"))


def _members_from_spec(spec_path: Path, placement, overrides: Mapping) -> list[LoadedMember]:
    from iad.ensembling.spec import read_spec

    spec = read_spec(spec_path)
    members = []
    for item in spec["members"]:
        path = Path(item["path"])
        if not path.is_absolute():
            path = spec_path.parent / path
        members.append(_load_member(item["name"], float(item["weight"]), checkpoints_in(path), placement,
                                    {**cost_settings(item), **overrides}, hflip=bool(item.get("hflip_tta", False)),
                                    center_crop=item.get("center_crop")))
    return members


