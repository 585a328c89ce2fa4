"""Hydra/OmegaConf glue shared by the entry points (no torch import)."""

from __future__ import annotations

from omegaconf import OmegaConf

from iad.utils.env import PROJECT_ROOT

CONFIG_DIR = PROJECT_ROOT / "conf"


def fold_name(fold) -> str:
    """Run folder name of a fold: fold_<k>, or `full` for full-data training."""
    return "full" if fold is None or str(fold) in ("None", "null") else f"fold_{fold}"


def register_resolvers() -> None:
    """`${iad_root:}`: the project folder; `${fold_name:${data.fold}}`: a fold's run folder name."""
    if not OmegaConf.has_resolver("iad_root"):
        OmegaConf.register_new_resolver("iad_root", lambda: str(PROJECT_ROOT))
    if not OmegaConf.has_resolver("fold_name"):
        OmegaConf.register_new_resolver("fold_name", fold_name)


register_resolvers()
