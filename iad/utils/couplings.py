"""Settings that two config groups must agree on, checked when a run's config is composed (no torch import).

Experiment configs state each of them once and interpolate the other (`model.backbone_kwargs.img_size:
${data.input.img_size}`); an override that breaks the link fails here, before any data is prepared, with a
message naming both keys.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

# (model key, data key, how the data value becomes the model's): the model side must equal the data side.
COUPLINGS: tuple[tuple[str, str, str], ...] = (
    ("model.backbone_kwargs.img_size", "data.input.img_size", "same"),
    ("model.in_chans", "data.input.offsets", "len"),
)
_DERIVE = {"same": lambda value: value, "len": len}
MASK_MODELS = ("iad.models.ClsSegModel",)


class CouplingError(ValueError):
    """Two config keys that must agree do not."""


def coupling_problems(cfg: DictConfig) -> list[tuple[str, str]]:
    """(config key, message) for every model setting that contradicts the data setting it is tied to."""
    problems = []
    for model_key, data_key, how in COUPLINGS:
        model_value = OmegaConf.select(cfg, model_key, default=None)
        data_value = OmegaConf.select(cfg, data_key, default=None)
        if model_value is None or data_value is None:
            continue
        wanted = _DERIVE[how](data_value)
        if model_value != wanted:
            shown = f"{data_key}={OmegaConf.to_container(data_value) if OmegaConf.is_config(data_value) else data_value}"
            problems.append((model_key, f"{model_key}={model_value} does not match {shown}"
                                        f"{f' (len {wanted})' if how == 'len' else ''}: set {data_key} only "
                                        f"({model_key} follows it by interpolation)"))
    target = OmegaConf.select(cfg, "model._target_", default=None)
    if target in MASK_MODELS and OmegaConf.select(cfg, "data.masks", default=None) is None:
        problems.append(("data.masks", f"model._target_={target} trains on masks but data.masks is null: set data.masks "
                                       "(e.g. {_target_: iad.data.MaskSpec, radius_mm: 4.0, kind: disk})"))
    return problems


def check_couplings(cfg: DictConfig) -> None:
    """Raise CouplingError when a model setting contradicts the data setting it is tied to."""
    problems = [message for _, message in coupling_problems(cfg)]
    if problems:
        raise CouplingError("inconsistent config:\n  " + "\n  ".join(problems))
