"""Hydra/OmegaConf glue shared by the entry points (no torch import)."""

from __future__ import annotations

import hashlib
from pathlib import Path
import re
from typing import Any

from omegaconf import OmegaConf

from iad.contract import fold_name
from iad.utils.env import CONFIG_DIR, PROJECT_ROOT  # noqa: F401 - CONFIG_DIR: the entry points import it from here

# Settings that never change what a run learns: they stay out of its identity and its folder name.
# An entry matches the key itself and everything under it ("paths" covers paths.data_dir).
NOT_IDENTITY = ("experiment", "name", "data.fold", "overwrite", "logger", "tags", "task_name", "paths",
                "hydra", "hydra/launcher", "callbacks.rich_progress_bar", "data.num_workers", "data.prepare_workers",
                "data.pin_memory", "data.eval_batch_size", "trainer.enable_progress_bar", "preflight_only",
                # the pipeline command's: which stages to run and how to show them (its folder is named by the recipe)
                "recipe", "stages", "plan_only", "echo",
                "cleaning")  # the cleaning stage's preset is its name, as an experiment is a run's
# Settings added after runs were made whose null default means "as before": left out of a run's identity
# while null, so the runs made before them keep their identity (and are found finished, or resumed).
ABSENT_WHEN_NULL = ("data.train_labels", "data.extra_boxes", "data.external")
MAX_TAG_CHARS = 80
# <name>@<key>:<value>+<key>:<value>: characters a Hydra override takes unquoted (model_path=<that folder>)
TAG_SEP, ITEM_SEP, KEY_VALUE_SEP = "@", "+", ":"


def is_identity_key(key: str) -> bool:
    """Whether a (dotted) config key can change what a run learns."""
    return not any(key == k or key.startswith(f"{k}.") or key.startswith(f"{k}/") for k in NOT_IDENTITY)


def run_tag(overrides) -> str:
    """The result-changing command-line overrides as an order-free tag (`key:value+key:value`, "" when none).

    Sweep lists (`lr=1e-3,2e-3`, as the launcher sees them before expanding) are left out: each job
    gets its own value. Characters a path or a Hydra override cannot take unquoted become `_`; long
    tags keep their start and a hash of the whole.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType

    parsed = OverridesParser.create().parse_overrides([str(o) for o in (overrides or [])])
    last = {o.key_or_group: o for o in parsed}  # a key given twice: the last value wins, as in Hydra
    items = []
    for override in last.values():
        if override.is_sweep_override() or not is_identity_key(override.key_or_group):
            continue
        # Hydra's canonical text of the value, as each launched job sees it (false → False, 1e-3 → 0.001),
        # so the multirun's folder and its jobs' folders agree
        value = "deleted" if override.type == OverrideType.DEL else override.get_value_element_as_str()
        items.append(f"{override.key_or_group}{KEY_VALUE_SEP}{value}")  # sanitised below
    tag = ITEM_SEP.join(sorted(re.sub(r"[^A-Za-z0-9_.:\-]", "_", item) for item in items))
    if len(tag) > MAX_TAG_CHARS:
        tag = f"{tag[:MAX_TAG_CHARS - 9]}-{hashlib.sha1(tag.encode()).hexdigest()[:8]}"
    return tag


def run_name(name: str, overrides) -> str:
    """A configuration's folder name: the experiment name, then `@<tag>` of its result-changing overrides."""
    tag = run_tag(overrides)
    return f"{name}{TAG_SEP}{tag}" if tag else str(name)


def run_group(output_dir: str) -> str:
    """The configuration a run folder (<...>/<run name>/fold_<k>) belongs to: its W&B group."""
    return Path(output_dir).parent.name


def identity_settings(cfg) -> dict[str, Any]:
    """The flattened, unresolved settings that define what a run learns (see NOT_IDENTITY, ABSENT_WHEN_NULL)."""
    flat: dict[str, Any] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        elif is_identity_key(prefix) and not (node is None and prefix in ABSENT_WHEN_NULL):
            flat[prefix] = node

    walk(OmegaConf.to_container(cfg, resolve=False) if OmegaConf.is_config(cfg) else cfg, "")
    return flat


def plain(value: Any) -> Any:
    """A config node (or anything holding one) as plain dicts and lists: safe in a weights-only checkpoint."""
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value




def on_gpu(accelerator: str, gpu_value=True, cpu_value=False):
    """`gpu_value` when a trainer with this accelerator runs on GPUs (`auto`: when CUDA is available), else `cpu_value`."""
    if accelerator == "auto":
        import torch

        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    return gpu_value if accelerator in ("gpu", "cuda") else cpu_value


RESOLVERS = {
    "iad_root": lambda: str(PROJECT_ROOT),  # ${iad_root:}: the project folder
    "fold_name": fold_name,                 # ${fold_name:${data.fold}}: fold_<k> or full
    "run_name": run_name,                   # ${run_name:${name},${hydra.overrides.task}}: a configuration's folder
    "run_group": run_group,                 # ${run_group:${paths.output_dir}}: that folder's name, from a run
    "len": len,                             # ${len:${data.input.offsets}}: input channels from the 2.5D offsets
    "on_gpu": on_gpu,                       # ${on_gpu:${.accelerator},bf16-mixed,32-true}: per-device settings
}


def register_resolvers() -> None:
    """Register the project's OmegaConf resolvers (RESOLVERS) once."""
    for name, resolver in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


register_resolvers()
