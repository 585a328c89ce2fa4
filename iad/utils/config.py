"""Hydra/OmegaConf glue shared by the entry points (no torch import)."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from iad.contract import fold_name
from iad.utils.env import PROJECT_ROOT

CONFIG_DIR = PROJECT_ROOT / "conf"


def plain(value: Any) -> Any:
    """A config node (or anything holding one) as plain dicts and lists: safe in a weights-only checkpoint."""
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


def register_resolvers() -> None:
    """`${iad_root:}`: the project folder; `${fold_name:${data.fold}}`: a fold's run folder name."""
    if not OmegaConf.has_resolver("iad_root"):
        OmegaConf.register_new_resolver("iad_root", lambda: str(PROJECT_ROOT))
    if not OmegaConf.has_resolver("fold_name"):
        OmegaConf.register_new_resolver("fold_name", fold_name)


register_resolvers()
