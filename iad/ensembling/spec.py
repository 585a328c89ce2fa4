"""The ensemble spec: the JSON file a predictor loads to know which models to run and how to blend them.

    {"format": "iad-ensemble/1",
     "label_cols": [the 14 labels, in LABEL_COLS order],
     "members": [{"name": str, "path": sweep/run dir holding the checkpoints (a relative path
                  resolves against the spec's folder, as in a self-contained bundle),
                  "weight": float >= 0, "hflip_tta": bool, "center_crop": float in (0, 1],
                  cost controls, optional (COST_DEFAULTS when absent, so older specs load):
                  "slice_stride": int >= 1 (score every k-th slice), "folds": "all" or [fold indices],
                  "batch_size": int >= 1 or null (the predictor's), "precision": "32" | "bf16" | "fp16"
                  (autocast), "channels_last": bool (CUDA only)}, ...],
     "blend": "mean",
     "oof": {"n_series", "weighted_auc", "per_label", "by_group"},
     "nested_cv": {...},                       # only when the weights were optimised
     "aneurysm_detector": {"path": exp0 sweep/run folder, detector file or a bundle's folder of them
                           (relative: to the spec's folder), "sha256": {file name: hex digest}
                           (a bundle's; checked when loaded), detector cost controls
                           (iad.detection.findings.DetectorCost: slices, top_k, neighbours, stride,
                           folds, conf, batch_size)}}   # optional: what `localize` runs

Member weights sum to 1 and the blend is always their weighted mean of probabilities: a rank blend
needs the whole population of series, and a predictor sees one series at a time.
"""

from __future__ import annotations

from collections.abc import Mapping
import json
import math
from numbers import Real
import os

from iad.labels import LABEL_COLS
from iad.utils.io import write_json_atomic

SPEC_FORMAT = "iad-ensemble/1"
SPEC_BLEND = "mean"
WEIGHT_SUM_TOLERANCE = 1e-6
MEMBER_KEYS = ("name", "path", "weight", "hflip_tta", "center_crop")
ALL_FOLDS = "all"
PRECISIONS = ("32", "bf16", "fp16")
# What each member costs to run; optional in a spec, these when absent (the settings before they existed).
COST_DEFAULTS = {"slice_stride": 1, "folds": ALL_FOLDS, "batch_size": None, "precision": "32", "channels_last": False}
_REQUIRED_KEYS = ("format", "label_cols", "members", "blend")
ANEURYSM_DETECTOR_KEY = "aneurysm_detector"


def make_spec(members: list[Mapping], oof: Mapping, nested_cv: Mapping | None = None,
              aneurysm_detector: Mapping | None = None) -> dict:
    """A validated spec from member entries (MEMBER_KEYS), the blend's OOF report, the nested-CV report and
    the aneurysm detector entry."""
    spec = {
        "format": SPEC_FORMAT,
        "label_cols": list(LABEL_COLS),
        "members": [{**{key: member[key] for key in MEMBER_KEYS}, **cost_settings(member)} for member in members],
        "blend": SPEC_BLEND,
        "oof": dict(oof),
    }
    if nested_cv is not None:
        spec["nested_cv"] = dict(nested_cv)
    if aneurysm_detector is not None:
        spec[ANEURYSM_DETECTOR_KEY] = dict(aneurysm_detector)
    return validate_spec(spec)


def write_spec(spec: Mapping, path: str | os.PathLike) -> None:
    """Validate `spec` and write it as JSON atomically."""
    write_json_atomic(validate_spec(spec, source=str(path)), path)


def read_spec(path: str | os.PathLike) -> dict:
    """Read and validate a spec file (ValueError naming the file and the problem)."""
    with open(path, encoding="utf-8") as handle:
        return validate_spec(json.load(handle), source=str(path))


class SpecError(ValueError):
    """An invalid ensemble spec; the message names the file (or `<spec>`) and the problem."""

    def __init__(self, source: str, problem: str):
        super().__init__(f"ensemble spec {source}: {problem}")


def validate_spec(spec: Mapping, source: str = "<spec>") -> dict:
    """Check a spec's format, labels, members and weights (SpecError otherwise); returns it as a dict."""
    if not isinstance(spec, Mapping):
        raise SpecError(source, f"expected a JSON object, got {type(spec).__name__}")
    missing = [key for key in _REQUIRED_KEYS if key not in spec]
    if missing:
        raise SpecError(source, f"missing key(s) {missing}")
    if spec["format"] != SPEC_FORMAT:
        raise SpecError(source, f"format {spec['format']!r}, expected {SPEC_FORMAT!r}")
    _check_labels(spec["label_cols"], source)
    if spec["blend"] != SPEC_BLEND:
        raise SpecError(source, f"blend {spec['blend']!r}: a predictor sees one series at a time, only {SPEC_BLEND!r} works")
    members = spec["members"]
    if not isinstance(members, list) or not members:
        raise SpecError(source, "members must be a non-empty list")
    for member in members:
        _check_member(member, source)
    names = [member["name"] for member in members]
    if len(set(names)) != len(names):
        raise SpecError(source, f"duplicate member names in {names}")
    total = math.fsum(member["weight"] for member in members)
    if abs(total - 1.0) > WEIGHT_SUM_TOLERANCE:
        raise SpecError(source, f"member weights sum to {total:.8g}, expected 1 (within {WEIGHT_SUM_TOLERANCE:g})")
    if ANEURYSM_DETECTOR_KEY in spec:
        problem = aneurysm_detector_problem(spec[ANEURYSM_DETECTOR_KEY])
        if problem:
            raise SpecError(source, f"{ANEURYSM_DETECTOR_KEY}: {problem}")
    return dict(spec)


def aneurysm_detector_problem(entry) -> str | None:
    """Why a spec's aneurysm detector entry is invalid, or None when it is valid."""
    from iad.detection.findings import detector_cost_problem

    if not isinstance(entry, Mapping):
        return f"expected an object, got {type(entry).__name__}"
    if not isinstance(entry.get("path"), str) or not entry["path"]:
        return f"path {entry.get('path')!r} must be a non-empty string"
    digests = entry.get("sha256", {})
    if not isinstance(digests, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in digests.items()):
        return "sha256 must map file names to hex digests"
    return detector_cost_problem(entry)


def _check_labels(label_cols, source: str) -> None:
    if not isinstance(label_cols, list):
        raise SpecError(source, "label_cols must be a list")
    unknown = [label for label in label_cols if label not in LABEL_COLS]
    if unknown:
        raise SpecError(source, f"unknown label(s) {unknown}")
    if label_cols != list(LABEL_COLS):
        raise SpecError(source, f"label_cols must be the {len(LABEL_COLS)} labels in LABEL_COLS order, got {label_cols}")


def _check_member(member, source) -> None:
    if not isinstance(member, Mapping):
        raise SpecError(source, f"member {member!r} is not an object")
    missing = [key for key in MEMBER_KEYS if key not in member]
    if missing:
        raise SpecError(source, f"member {member.get('name', member)!r}: missing key(s) {missing}")
    name, weight = member["name"], member["weight"]
    if not isinstance(name, str) or not name:
        raise SpecError(source, f"member name {name!r} must be a non-empty string")
    if not isinstance(member["path"], str) or not member["path"]:
        raise SpecError(source, f"member {name!r}: path {member['path']!r} must be a non-empty string")
    if not _is_number(weight) or not math.isfinite(weight) or weight < 0:
        raise SpecError(source, f"member {name!r}: weight {weight!r} must be a finite number >= 0")
    problem = tta_settings_problem(member["hflip_tta"], member["center_crop"]) or cost_settings_problem(member)
    if problem:
        raise SpecError(source, f"member {name!r}: {problem}")


def tta_settings_problem(hflip_tta, center_crop) -> str | None:
    """Why a member's test-time settings are invalid, or None when they are valid."""
    if not isinstance(hflip_tta, bool):
        return f"hflip_tta {hflip_tta!r} must be true or false"
    if not _is_number(center_crop) or not 0 < center_crop <= 1:
        return f"center_crop {center_crop!r} must be a number in (0, 1] (1: no crop)"
    return None


def cost_settings(member: Mapping) -> dict:
    """A member's cost controls, COST_DEFAULTS filling the ones it does not set."""
    return {key: member.get(key, default) for key, default in COST_DEFAULTS.items()}


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


_COST_CHECKS = {
    "slice_stride": (_positive_int, "must be an integer >= 1"),
    "folds": (lambda v: v == ALL_FOLDS or (isinstance(v, list) and v and all(isinstance(i, int) and not isinstance(i, bool)
                                                                               and i >= 0 for i in v)),
              f"must be {ALL_FOLDS!r} or a non-empty list of fold indices"),
    "batch_size": (lambda v: v is None or _positive_int(v), "must be an integer >= 1 or null"),
    "precision": (lambda v: str(v) in PRECISIONS, f"must be one of {list(PRECISIONS)}"),
    "channels_last": (lambda v: isinstance(v, bool), "must be true or false"),
}


def cost_settings_problem(member: Mapping) -> str | None:
    """Why a member's cost controls are invalid, or None when they are valid (absent ones are defaults)."""
    for key, value in cost_settings(member).items():
        valid, rule = _COST_CHECKS[key]
        if not valid(value):
            return f"{key} {value!r} {rule}"
    return None


def _is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)
