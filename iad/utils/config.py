"""Hydra/OmegaConf glue shared by the entry points (no torch import)."""

from __future__ import annotations

from omegaconf import OmegaConf

from iad.utils.env import CONFIG_DIR, PROJECT_ROOT  # noqa: F401 - CONFIG_DIR: the entry points import it from here


def fold_name(fold) -> str:
    """Run folder name of a fold: fold_<k>, or `full` for full-data training."""
    return "full" if fold is None or str(fold) in ("None", "null") else f"fold_{fold}"


def on_gpu(accelerator: str, gpu_value=True, cpu_value=False):
    """`gpu_value` when a trainer with this accelerator runs on GPUs (`auto`: when CUDA is available), else `cpu_value`."""
    if accelerator == "auto":
        import torch

        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    return gpu_value if accelerator in ("gpu", "cuda") else cpu_value


def register_resolvers() -> None:
    """`${iad_root:}`: the project folder; `${fold_name:${data.fold}}`: a fold's run folder name."""
    if not OmegaConf.has_resolver("iad_root"):
        OmegaConf.register_new_resolver("iad_root", lambda: str(PROJECT_ROOT))
    if not OmegaConf.has_resolver("fold_name"):
        OmegaConf.register_new_resolver("fold_name", fold_name)
    if not OmegaConf.has_resolver("len"):  # `${len:${data.input.offsets}}`: input channels from the 2.5D offsets
        OmegaConf.register_new_resolver("len", len)
    if not OmegaConf.has_resolver("on_gpu"):  # `${on_gpu:${.accelerator},bf16-mixed,32-true}`: per-device settings
        OmegaConf.register_new_resolver("on_gpu", on_gpu)


register_resolvers()
