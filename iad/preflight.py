"""Preflight: check what a run needs before it builds a model or touches data (no torch import here).

Every entry point (`iad.train`, `iad.predict`, `iad.ensemble`, `iad.prepare`) calls `preflight(cfg, entry)`
right after Hydra composes its config. The checks in `CHECKS` that apply to the entry each return the
problems they find (`Problem`: config key, path, message); all of them are reported at once and the run
stops with a non-zero exit before anything heavy runs. `preflight_only=true` prints the checks and what the
run would do, and stops there. torch, timm and smp are imported only by the checks that need them
(a GPU asked for, pretrained weights asked for, the checkpoint size asked for or disk running short).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
import logging
import os
from pathlib import Path
import shutil
import socket
import time
from urllib.parse import urlparse

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

ENTRIES = ("train", "predict", "ensemble", "prepare")
GIB = 1024**3
# Counting a model's parameters costs a torch + timm import (seconds). With this much free space no
# checkpoint pair of a model up to ~2.5 B parameters (24 bytes each with EMA and Adam) can fill the disk,
# so the count is skipped unless the plan is asked for (`preflight_only=true`).
PLENTY_OF_DISK = 64 * GIB
BYTES_PER_PARAM = 4  # fp32 weights and optimiser moments in a checkpoint
CHECKPOINTS_KEPT = 2  # best.ckpt and last.ckpt, each with the optimiser state
OPTIMIZER_STATES = {"torch.optim.Adam": 2, "torch.optim.AdamW": 2, "torch.optim.SGD": 1}  # tensors per parameter
DEFAULT_OPTIMIZER_STATES = 2
NETWORK_TIMEOUT_S = 3.0
GPU_ACCELERATORS = ("gpu", "cuda")


@dataclass(frozen=True)
class Problem:
    """Something a run needs and does not have: the config key, the path it names (if any), what is wrong.

    `fatal=False` marks a note: the run goes on without it (e.g. optional box annotations missing).
    """

    key: str
    path: str | None
    message: str
    fatal: bool = True

    def __str__(self) -> str:
        where = f"{self.key}={self.path}" if self.path is not None else self.key
        return f"{where}: {self.message}"


@dataclass
class Context:
    """What the checks share: the config, the entry point, and the facts they found for the plan."""

    cfg: DictConfig
    entry: str
    want_plan: bool = False
    facts: dict[str, str] = field(default_factory=dict)

    def get(self, key: str, default=None):
        """A config value by dotted key; `default` when absent or not resolvable here (e.g. `${hydra:...}`)."""
        value = OmegaConf.select(self.cfg, key, default=default, throw_on_resolution_failure=False)
        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


@dataclass(frozen=True)
class Check:
    name: str
    entries: tuple[str, ...]
    run: Callable[[Context], list[Problem]]


CHECKS: dict[str, Check] = {}


def check(name: str, *entries: str):
    """Register a check for the given entry points (in registration order)."""
    assert set(entries) <= set(ENTRIES), entries

    def register(fn: Callable[[Context], list[Problem]]):
        CHECKS[name] = Check(name, entries, fn)
        return fn
    return register


# ---- helpers ------------------------------------------------------------------------------------------
def nearest_existing(path: str | Path) -> Path:
    """The path itself or its nearest existing parent."""
    path = Path(path).expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def folder_problem(key: str, path) -> Problem | None:
    """A folder the run writes must exist writable or be creatable under a writable parent."""
    if path is None:
        return None
    found = nearest_existing(path)
    if not found.is_dir():
        return Problem(key, str(path), f"{found} is a file, not a folder")
    if not os.access(found, os.W_OK | os.X_OK):
        return Problem(key, str(path), f"cannot be written: {found} is not writable by this user")
    return None


def human_bytes(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 10 else f"{n / 1024**2:.1f} MiB"


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


# ---- what the config is about -------------------------------------------------------------------------
@check("couplings", "train")
def check_couplings(ctx: Context) -> list[Problem]:
    """Settings two config groups share must agree (iad.utils.couplings)."""
    from iad.utils.couplings import coupling_problems

    return [Problem(key, None, message) for key, message in coupling_problems(ctx.cfg)]


@check("dataset", "train", "prepare")
def check_dataset(ctx: Context) -> list[Problem]:
    """A real dataset's tables and series folder must exist; a synthetic one is generated, so its root must be writable."""
    if ctx.get("dataset.synthetic") is not None:
        problem = folder_problem("dataset.root", ctx.get("dataset.root"))
        ctx.facts["dataset"] = f"synthetic, generated on first use in {ctx.get('dataset.root')}"
        return [problem] if problem else []
    problems = []
    for key, what in (("dataset.train_csv", "the label table"), ("dataset.series_dir", "the DICOM series folder")):
        path = ctx.get(key)
        if path is None or not Path(path).exists():
            problems.append(Problem(key, path, f"{what} does not exist (put the competition download under "
                                               "paths.data_dir, or set dataset.root)"))
    localizers = ctx.get("dataset.localizers_csv")
    if localizers and not Path(localizers).exists():
        problems.append(Problem("dataset.localizers_csv", localizers, "not found: training uses no localizers "
                                "(positive series without drawn boxes give no slice)", fatal=False))
    boxes = ctx.get("dataset.boxes")
    if ctx.entry == "train" and ctx.get("data.use_boxes") and boxes and not Path(boxes).exists():
        problems.append(Problem("dataset.boxes", boxes, "not found: training goes on without drawn boxes "
                                "(set data.use_boxes=false to silence this)", fatal=False))
    ctx.facts["dataset"] = f"{ctx.get('dataset.name')} in {ctx.get('dataset.root')}"
    return problems


@check("crop_table", "train")
def check_crop_table(ctx: Context) -> list[Problem]:
    path = ctx.get("data.crop_table")
    if path and not Path(path).is_file():
        return [Problem("data.crop_table", path, "the crop table (brain-detector boxes) does not exist")]
    if path:
        from iad.detection.crops import read_sidecar, sidecar_path

        try:
            sidecar = read_sidecar(path)
        except ValueError as err:
            return [Problem("data.crop_table", path, str(err))]
        if sidecar is None:
            return [Problem("data.crop_table", path, f"no sidecar {sidecar_path(path).name} naming its detector: "
                            "training uses the table, inference will use the head box", fatal=False)]
    return []


@check("cleaned_labels", "train")
def check_cleaned_labels(ctx: Context) -> list[Problem]:
    """The label-cleaning stage's outputs an exp4/exp5 run trains on (python -m iad.labelling.clean)."""
    problems = []
    for key, what in (("data.train_labels", "the training label table"), ("data.extra_boxes", "the extra box table")):
        path = ctx.get(key)
        if path and not Path(path).is_file():
            problems.append(Problem(key, path, f"{what} does not exist (run python -m iad.labelling.clean first)"))
    return problems


@check("folders", "train", "predict", "ensemble", "prepare")
def check_folders(ctx: Context) -> list[Problem]:
    """Every folder the entry writes must be writable or creatable."""
    keys = {"train": ("paths.cache_dir", "paths.log_dir", "paths.output_dir"),
            "prepare": ("paths.cache_dir",),
            "predict": ("output_dir",),
            "ensemble": ("paths.output_dir",)}[ctx.entry]
    return [p for p in (folder_problem(key, ctx.get(key)) for key in keys) if p]


# ---- device -------------------------------------------------------------------------------------------
def _device_key(ctx: Context) -> str:
    if ctx.entry != "train":
        return "device"
    return "trainer.device" if ctx.get("engine") == "ultralytics" else "trainer.accelerator"


def _asked_device(ctx: Context, key: str) -> str:
    """The device kind a config asks for; ultralytics names GPUs by index ("0", "0,1")."""
    value = str(ctx.get(key, "cpu")).split(":")[0]
    return "cuda" if key == "trainer.device" and value not in ("cpu", "mps") else value


@check("device", "train", "predict")
def check_device(ctx: Context) -> list[Problem]:
    """A GPU asked for must be there (torch is imported only then: it is what Lightning will ask)."""
    key = _device_key(ctx)
    asked = _asked_device(ctx, key)
    ctx.facts["device"] = f"{key}={ctx.get(key)}" + (f", trainer.devices={ctx.get('trainer.devices')}"
                                                     if key == "trainer.accelerator" else "")
    if asked not in GPU_ACCELERATORS:
        return []
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        return [Problem(key, None, f"{asked} asked for but no CUDA GPU is visible (torch {torch.__version__}, "
                                   f"CUDA build {torch.version.cuda}); use trainer=cpu / device=cpu or run on a GPU node")]
    devices = ctx.get("trainer.devices") if ctx.entry == "train" else None
    if isinstance(devices, int) and devices > count:
        return [Problem("trainer.devices", None, f"{devices} GPUs asked for, {count} visible")]
    return []


# ---- pretrained weights -------------------------------------------------------------------------------
@dataclass(frozen=True)
class NetOf:
    """How a model config becomes a network of `iad.models.nets` (for the weights and the parameter count)."""

    family: str
    name_key: str  # the key naming the pretrained network
    arg_keys: tuple[str, ...]  # the builder's arguments besides pretrained / pretrained_file


NETS = {
    "iad.models.SliceClassifier": NetOf("timm_classifier", "backbone", ("backbone", "in_chans", "backbone_kwargs")),
    "iad.models.ClsSegModel": NetOf("smp_fpn", "encoder_name",
                                    ("encoder_name", "in_chans", "classes", "decoder", "cls_head")),
}


@dataclass(frozen=True)
class WeightSource:
    """Where a library fetches pretrained weights: a hub repo (any one of `alternatives` per entry of
    `files`) or a URL into torch's hub cache."""

    repo_id: str | None = None
    files: tuple[tuple[str, ...], ...] = ()
    revision: str | None = None
    url: str | None = None

    def __str__(self) -> str:
        if self.url:
            return self.url
        return f"{self.repo_id}/{' + '.join(' or '.join(f) for f in self.files)}" + (f"@{self.revision}" if self.revision else "")


def timm_weight_source(name: str) -> WeightSource | None:
    """timm's source for a model name (a hub repo, else a URL); None when timm names none; LookupError when
    timm has no such weights."""
    import timm

    pretrained_cfg = timm.models.get_pretrained_cfg(name)
    if pretrained_cfg is None:
        raise LookupError(f"timm has no pretrained weights named {name!r}")
    if pretrained_cfg.hf_hub_id:
        repo, _, revision = pretrained_cfg.hf_hub_id.partition("@")
        if pretrained_cfg.hf_hub_filename:
            stem = pretrained_cfg.hf_hub_filename.rsplit(".", 1)[0]
            return WeightSource(repo, ((pretrained_cfg.hf_hub_filename, f"{stem}.safetensors"),), revision or None)
        return WeightSource(repo, (("model.safetensors", "pytorch_model.bin"),), revision or None)
    if pretrained_cfg.url:
        return WeightSource(url=pretrained_cfg.url)
    return None


def smp_weight_source(encoder: str, weights) -> WeightSource | None:
    """smp's source for an encoder's weights (`tu-` encoders: timm's); None when smp does not say; LookupError
    when smp has no such weights."""
    if encoder.startswith("tu-"):
        return timm_weight_source(encoder[3:])
    from segmentation_models_pytorch.encoders import encoders

    weights = "imagenet" if weights is True else weights
    settings = encoders.get(encoder, {}).get("pretrained_settings", {}).get(weights)
    if settings is None:
        raise LookupError(f"smp knows no {weights!r} weights for encoder {encoder!r}")
    if "repo_id" not in settings:
        return None
    return WeightSource(settings["repo_id"], (("config.json",), ("model.safetensors",)), settings.get("revision"))


def cache_dir(source: WeightSource) -> Path:
    """Where the library keeps the source's files: torch's hub cache for a URL, else the Hugging Face cache."""
    if source.url:
        import torch

        return Path(torch.hub.get_dir()) / "checkpoints"
    from huggingface_hub.constants import HF_HUB_CACHE

    return Path(HF_HUB_CACHE)


def cached_weights(source: WeightSource) -> bool:
    """Whether every file of the source is in the local Hugging Face (or torch hub) cache."""
    if source.url:
        return (cache_dir(source) / Path(urlparse(source.url).path).name).is_file()
    from huggingface_hub import try_to_load_from_cache

    return all(any(isinstance(try_to_load_from_cache(source.repo_id, name, revision=source.revision), str)
                   for name in alternatives) for alternatives in source.files)


def reachable(url: str) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 443), timeout=NETWORK_TIMEOUT_S):
            return True
    except OSError:
        return False


@check("pretrained", "train")
def check_pretrained(ctx: Context) -> list[Problem]:
    """Pretrained weights asked for must be a local file, in the cache, or (online) downloadable."""
    file = ctx.get("model.pretrained_file")
    if file:
        ctx.facts["pretrained weights"] = str(file)
        return [] if Path(file).is_file() else [Problem("model.pretrained_file", file, "does not exist")]
    pretrained = ctx.get("model.pretrained")
    if pretrained and ctx.get("engine") == "ultralytics":
        return _ultralytics_weights(ctx)
    net = NETS.get(ctx.get("model._target_"))
    if not pretrained or net is None:
        ctx.facts["pretrained weights"] = "none (trained from scratch)" if not pretrained else "not checked"
        return []
    key = f"model.{net.name_key}"
    name = ctx.get(key)
    try:
        source = timm_weight_source(name) if net.family == "timm_classifier" else smp_weight_source(name, pretrained)
    except LookupError as err:
        return [Problem(key, name, str(err))]
    if source is None:
        ctx.facts["pretrained weights"] = "not checked"
        return [Problem(key, name, "the library does not say where these weights come from: not checked", fatal=False)]
    if cached_weights(source):
        ctx.facts["pretrained weights"] = f"{source} (cached)"
        return []
    from huggingface_hub.constants import ENDPOINT

    hint = (f"pretrained weights for {name!r} ({source}) are not in the local cache ({cache_dir(source)}); "
            "download them where you have a network, or set model.pretrained_file=<local weights file>")
    if hub_offline():
        return [Problem(key, name, f"{hint} (offline: HF_HUB_OFFLINE=1)")]
    endpoint = source.url or ENDPOINT
    if not reachable(endpoint):
        return [Problem(key, name, f"{hint} ({urlparse(endpoint).hostname} is not reachable)")]
    ctx.facts["pretrained weights"] = f"{source} (downloaded at the start of the run)"
    return []


def _ultralytics_weights(ctx: Context) -> list[Problem]:
    """A detector's COCO weights: in ultralytics' weights folder, or downloadable (online only)."""
    from ultralytics.utils import SETTINGS

    stem = Path(str(ctx.get("model.arch"))).stem
    local = [Path(SETTINGS["weights_dir"]) / f"{stem}.pt", Path(f"{stem}.pt")]
    found = next((p for p in local if p.is_file()), None)
    if found:
        ctx.facts["pretrained weights"] = f"{found} (cached)"
        return []
    if os.environ.get("YOLO_OFFLINE") == "1" or hub_offline():
        return [Problem("model.pretrained_file", None, f"{stem}.pt is not in {local[0].parent} and cannot be downloaded "
                        "offline: set model.pretrained_file=<local .pt> or model.pretrained=false")]
    ctx.facts["pretrained weights"] = f"{stem}.pt (downloaded by ultralytics at the start of the run)"
    return []


# ---- disk ---------------------------------------------------------------------------------------------
def parameter_count(ctx: Context) -> int | None:
    """The network's parameter count, built without weights on torch's meta device (no memory; on the CPU for
    networks whose constructor computes with tensors, e.g. smp's mit encoders); None if the family is unknown."""
    net = NETS.get(ctx.get("model._target_"))
    if net is None:
        return None
    import torch

    from iad.models.nets import net_family

    args = {key: value for key in net.arg_keys if (value := ctx.get(f"model.{key}")) is not None}
    try:
        with torch.device("meta"):
            module = net_family(net.family).build(**args)
    except (RuntimeError, NotImplementedError):
        module = net_family(net.family).build(**args)
    return sum(p.numel() for p in module.parameters())


def checkpoint_bytes(ctx: Context, params: int) -> int:
    """best.ckpt + last.ckpt: weights, the EMA copy when `model.ema_decay`, and the optimiser's moments."""
    ema = 1 if ctx.get("model.ema_decay") else 0
    states = OPTIMIZER_STATES.get(ctx.get("model.optimizer._target_"), DEFAULT_OPTIMIZER_STATES)
    return params * BYTES_PER_PARAM * (1 + ema + states) * CHECKPOINTS_KEPT


@check("disk", "train")
def check_disk(ctx: Context) -> list[Problem]:
    """The run folder's disk must hold the run's checkpoints."""
    key = "paths.output_dir" if ctx.get("paths.output_dir") else "paths.log_dir"
    folder = ctx.get(key)
    free = shutil.disk_usage(nearest_existing(folder)).free
    ctx.facts["free disk"] = f"{human_bytes(free)} at {nearest_existing(folder)}"
    if free >= PLENTY_OF_DISK and not ctx.want_plan:
        return []
    params = parameter_count(ctx)
    if params is None:
        ctx.facts["checkpoints"] = "unknown size (model family not known to the preflight)"
        return []
    need = checkpoint_bytes(ctx, params)
    ctx.facts["checkpoints"] = f"about {human_bytes(need)} (best + last; {params / 1e6:.1f} M parameters)"
    if need > free:
        return [Problem(key, folder, f"{human_bytes(free)} free, the checkpoints need about {human_bytes(need)}")]
    return []


# ---- predict and ensemble inputs ----------------------------------------------------------------------
def checkpoint_problem(key: str, path: Path) -> Problem | None:
    """Whether a path holds the checkpoints inference loads (`iad.contract.checkpoints_in`), without loading them."""
    from iad.contract import checkpoints_in

    if not path.exists():
        return Problem(key, str(path), "does not exist")
    try:
        checkpoints_in(path)
    except FileNotFoundError as err:
        return Problem(key, str(path), str(err).replace(f"no checkpoint in {path}", "holds no checkpoint"))
    return None


def spec_problems(key: str, spec_path: Path) -> list[Problem]:
    """An ensemble spec / bundle.json must be readable and each member's path must hold checkpoints."""
    import json

    try:
        members = json.loads(spec_path.read_text())["members"]
        paths = [(item["name"], Path(item["path"])) for item in members]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return [Problem(key, str(spec_path), f"not a readable ensemble spec ({type(err).__name__}: {err})")]
    return [p for p in (checkpoint_problem(f"{key} member {name}", path if path.is_absolute() else spec_path.parent / path)
                        for name, path in paths) if p]


@check("model_path", "predict")
def check_model_path(ctx: Context) -> list[Problem]:
    from iad.contract import BUNDLE_FILE, fold_runs

    raw = ctx.get("model_path")
    if raw is None:
        return [Problem("model_path", None, "not set (a bundle, ensemble spec, sweep, run or checkpoint)")]
    path = Path(raw)
    if ctx.get("mode") == "oof":
        if not fold_runs(path):
            return [Problem("model_path", raw, "mode=oof re-scores a sweep: no fold_*/ run folders here")]
        return []
    if path.is_dir() and (path / BUNDLE_FILE).exists():
        return spec_problems("model_path", path / BUNDLE_FILE)
    if path.suffix == ".json":
        return spec_problems("model_path", path) if path.is_file() else [Problem("model_path", raw, "does not exist")]
    problem = checkpoint_problem("model_path", path)
    return [problem] if problem else []


@check("aneurysm_detector", "predict")
def check_aneurysm_detector(ctx: Context) -> list[Problem]:
    """The aneurysm detector `localize=true` (or a bundle export) loads must hold detector files: `aneurysm_detector.path`,
    else the spec's or bundle's entry (`iad.contract.detectors_in`)."""
    import json

    from iad.contract import BUNDLE_FILE, detectors_in

    key, raw = "aneurysm_detector.path", ctx.get("aneurysm_detector.path")
    if raw is None:
        if not ctx.get("localize") and ctx.get("mode") != "bundle":  # a bundle carries the spec's detector
            return []
        model_path = Path(ctx.get("model_path") or "")
        spec_path = model_path / BUNDLE_FILE if (model_path / BUNDLE_FILE).exists() else model_path
        try:
            entry = json.loads(spec_path.read_text()).get("aneurysm_detector") if spec_path.suffix == ".json" else None
        except (OSError, ValueError, AttributeError):
            return []  # model_path's own check reports an unreadable spec
        if entry is None or not isinstance(entry.get("path"), str):
            note = Problem(key, None, "localize=true without an aneurysm detector (set it, or use a spec or bundle that "
                                      "names one): findings get no boxes", fatal=False)
            return [note] if ctx.get("localize") else []
        key, raw = f"model_path {spec_path.name} aneurysm_detector", entry["path"]
        raw = raw if Path(raw).is_absolute() else str(spec_path.parent / raw)
    try:
        detectors_in(raw)
    except FileNotFoundError as err:
        return [Problem(key, raw, str(err))]
    return []


@check("input", "predict")
def check_input(ctx: Context) -> list[Problem]:
    if ctx.get("mode") != "submission":
        return []
    from iad.datasets import NoSeriesError, series_folders_in

    path = ctx.get("input")
    if path is None:
        return [Problem("input", None, "mode=submission needs input=<series folder or folder of series>")]
    try:
        series = series_folders_in(path)  # empty or ambiguous input
    except NoSeriesError as err:
        return [Problem("input", path, str(err))]
    ctx.facts["series"] = str(len(series))
    return []


@check("members", "ensemble")
def check_members(ctx: Context) -> list[Problem]:
    """Each member's path must be an OOF/prediction CSV or a sweep folder with its oof.csv."""
    from iad.contract import OOF_FILE

    members = ctx.get("ensemble.members")
    if not members:
        return [Problem("ensemble.members", None, "the ensemble has no members")]
    problems = []
    for name, settings in members.items():
        key, path = f"ensemble.members.{name}.path", (settings or {}).get("path")
        if path is None:
            problems.append(Problem(key, None, "not set"))
        elif not Path(path).exists():
            problems.append(Problem(key, path, "does not exist (train it: train.py -m experiment=... data.fold=0,1,2,3,4)"))
        elif Path(path).is_dir() and not (Path(path) / OOF_FILE).is_file():
            problems.append(Problem(key, path, f"has no {OOF_FILE} (no fold finished, or rebuild it: "
                                               f"python -m iad.evaluation.cv {path})"))
    return problems


# ---- running and reporting ----------------------------------------------------------------------------
def run_checks(ctx: Context) -> dict[str, list[Problem]]:
    """Every check that applies to the entry point → the problems it found."""
    if ctx.entry not in ENTRIES:
        raise ValueError(f"unknown entry point {ctx.entry!r} (known: {ENTRIES})")
    return {c.name: c.run(ctx) for c in CHECKS.values() if ctx.entry in c.entries}


def run_preflight(cfg: DictConfig, entry: str) -> list[Problem]:
    """All problems (fatal ones and notes) the checks for `entry` find in a composed config."""
    return [p for problems in run_checks(Context(cfg, entry)).values() for p in problems]


def plan_lines(ctx: Context) -> list[str]:
    """What the run will do, as far as the config says."""
    lines = []
    if ctx.entry == "train":
        epochs = ctx.get("trainer.max_epochs", ctx.get("trainer.epochs"))  # Lightning's, ultralytics'
        lines += [f"experiment: {ctx.get('name')}", f"fold: {ctx.get('data.fold')}",
                  f"run folder: {ctx.get('paths.output_dir')}", f"epochs: {epochs}"]
    elif ctx.entry == "predict":
        lines += [f"mode: {ctx.get('mode')}", f"models: {ctx.get('model_path')}", f"output: {ctx.get('output_dir')}"]
    else:
        lines += [f"output: {ctx.get('paths.output_dir') or ctx.get('paths.cache_dir')}"]
    return lines + [f"{name}: {value}" for name, value in ctx.facts.items()]


def format_preflight_report(ctx: Context, results: dict[str, list[Problem]], seconds: float) -> str:
    lines = [f"preflight ({ctx.entry}): {len(results)} checks in {seconds:.2f} s"]
    for name, problems in results.items():
        if not problems:
            lines.append(f"  ok       {name}")
        lines += [f"  {'PROBLEM' if p.fatal else 'note':8} {name}: {p}" for p in problems]
    return "\n".join([*lines, "plan:", *(f"  {line}" for line in plan_lines(ctx))])


def preflight(cfg: DictConfig, entry: str) -> bool:
    """Run the entry's checks; exit non-zero listing every problem. True when `preflight_only` asks to stop here."""
    only = bool(cfg.get("preflight_only", False))
    ctx = Context(cfg, entry, want_plan=only)
    start = time.perf_counter()
    results = run_checks(ctx)
    seconds = time.perf_counter() - start
    problems = [p for found in results.values() for p in found]
    if only:
        print(format_preflight_report(ctx, results, seconds), flush=True)
    else:
        for note in (p for p in problems if not p.fatal):
            log.warning("preflight: %s", note)
    fatal = [p for p in problems if p.fatal]
    if fatal:
        raise SystemExit(f"preflight: {len(fatal)} problem(s), nothing was started:\n  "
                         + "\n  ".join(map(str, fatal)))
    return only
