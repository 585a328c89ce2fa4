"""Discover the angio volumes of the external TOF-MRA datasets and pair them with their masks (no torch).

Two BIDS layouts are known (see FACTS.md, "External TOF-MRA data"):

- ds003949 (Lausanne): `sub-X/ses-Y/anat/sub-X_ses-Y_angio.nii.gz`; masks in
  `derivatives/manual_masks/sub-X/ses-Y/anat/`: `*_desc-brain_mask.nii.gz` and `*_desc-Lesion_<n>_mask.nii.gz`;
  `participants.tsv` column `group` marks controls.
- ds005096 (Royal Brisbane): `sub-X/ses-Y/anat/sub-X_ses-Y[_acq-Z]_angio.nii.gz` (several sessions per
  subject, sometimes two acquisitions per session); one aneurysm per file in
  `derivatives/sub-X/ses-Y/<folder>/Nifti Aneurysm Only/*.nii`; no control column.

A source is a dataset folder (walked) or a file listing with one relative path a line (`*_files.txt`).
Masks are paired with volumes by BIDS entities (subject, session, and acquisition when the mask names
one a volume has), never by position. Anything that looks like a volume or mask but does not fit —
an orphan mask, a session with several volumes and a mask naming none, folder and file names that
disagree, an angio image outside `anat/` — is reported in `problems`, never silently dropped.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
import logging
import os
from pathlib import Path, PurePosixPath
import re

import pandas as pd

log = logging.getLogger(__name__)

DATASETS = ("ds003949", "ds005096")
PARTICIPANTS_FILE = "participants.tsv"
CONTROL_COLUMN, CONTROL_VALUE, PATIENT_VALUE = "group", "control", "patient"
COLUMNS = ["dataset", "subject", "session", "acq", "volume", "brain_mask", "lesion_masks", "n_lesions", "control"]

_LABEL = r"[A-Za-z0-9]+"
_VOLUME = re.compile(rf"^sub-(?P<fsub>{_LABEL})/ses-(?P<fses>{_LABEL})/anat/"
                     rf"sub-(?P<sub>{_LABEL})_ses-(?P<ses>{_LABEL})(?:_acq-(?P<acq>{_LABEL}))?_angio\.nii\.gz$")
_ANGIO_LIKE = re.compile(r"_angio\.nii(\.gz)?$")
_LAUSANNE_MASK = re.compile(
    rf"^derivatives/manual_masks/sub-(?P<fsub>{_LABEL})/ses-(?P<fses>{_LABEL})/anat/"
    rf"sub-(?P<sub>{_LABEL})_ses-(?P<ses>{_LABEL})_desc-(?:(?P<brain>brain)|Lesion_(?P<lesion>\d+))_mask\.nii\.gz$")
_LAUSANNE_MASK_DIR = "derivatives/manual_masks/"
_BRISBANE_LESION_DIR = "Nifti Aneurysm Only"
_BRISBANE_MASK = re.compile(rf"^derivatives/sub-(?P<fsub>{_LABEL})/ses-(?P<fses>{_LABEL})/[^/]+/"
                            rf"{_BRISBANE_LESION_DIR}/(?P<file>[^/]+\.nii)$")
_FILE_ENTITIES = re.compile(rf"^sub-(?P<sub>{_LABEL})_ses-(?P<ses>{_LABEL})(?:_acq-(?P<acq>{_LABEL}))?")
_SKIPPED_DIRS = (".datalad", ".git")


@dataclass(frozen=True)
class _Mask:
    path: str
    subject: str
    session: str
    acq: str | None
    kind: str  # "brain" or "lesion"
    order: int


def discover(root_or_listing: str | os.PathLike, dataset: str | None = None, *,
             participants: str | os.PathLike | None = None) -> pd.DataFrame:
    """One row per angio volume (columns `COLUMNS`, paths relative to the dataset root, sorted).

    `root_or_listing` is a dataset folder or a `*_files.txt` listing; `dataset` defaults to the
    `ds00NNNN` name in that path. `participants` defaults to `<root>/participants.tsv` (for a listing:
    `<listing folder>/<dataset>/participants.tsv`). Problems are logged and kept in `table.attrs["problems"]`.
    """
    source = Path(root_or_listing)
    name = dataset or infer_dataset(source)
    if name not in DATASETS:
        raise ValueError(f"{source}: unknown external dataset {name!r} (known: {', '.join(DATASETS)})")
    paths = list_paths(source)
    if participants is None:
        participants = (source if source.is_dir() else source.parent / name) / PARTICIPANTS_FILE
    table, problems = pair(name, paths, read_controls(Path(participants)))
    for problem in problems:
        log.warning("%s: %s", source, problem)
    table.attrs["problems"] = problems
    return table


def infer_dataset(source: Path) -> str:
    """The `ds00NNNN` name found in the source's path (its own name first)."""
    for part in (source.name, *reversed(source.resolve().parts)):
        found = re.search(r"ds\d{6}", part)
        if found:
            return found.group(0)
    raise ValueError(f"{source}: cannot tell which external dataset this is; pass dataset= ({', '.join(DATASETS)})")


def list_paths(source: Path) -> list[str]:
    """Relative POSIX paths of every file of a dataset folder (dot folders skipped) or of a listing."""
    if source.is_dir():
        found = []
        for folder, dirs, files in os.walk(source):
            dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS)
            found += [Path(folder, file).relative_to(source).as_posix() for file in files]
        return sorted(found)
    if source.is_file():
        return [line.strip() for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    raise FileNotFoundError(f"{source}: no such dataset folder or file listing")


def read_controls(path: Path) -> dict[str, bool] | None:
    """participant → is a control, from `participants.tsv`; None when the file or its group column is absent."""
    if not path.is_file():
        return None
    table = pd.read_csv(path, sep="\t", dtype=str)
    if CONTROL_COLUMN not in table.columns:
        return None
    groups = table.set_index("participant_id")[CONTROL_COLUMN].str.strip().str.lower()
    unknown = sorted(set(groups) - {CONTROL_VALUE, PATIENT_VALUE})
    if unknown:
        raise ValueError(f"{path}: unknown {CONTROL_COLUMN} values {unknown} (expected {CONTROL_VALUE}/{PATIENT_VALUE})")
    return {pid.removeprefix("sub-"): group == CONTROL_VALUE for pid, group in groups.items()}


def pair(dataset: str, paths: list[str], controls: dict[str, bool] | None) -> tuple[pd.DataFrame, list[str]]:
    """The volume table and the problems found, from the dataset's relative paths."""
    problems: list[str] = []
    volumes = _volumes(paths, problems)
    masks = _lausanne_masks(paths, problems) if dataset == "ds003949" else _brisbane_masks(paths, problems)
    by_session: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for volume in volumes:
        by_session[volume["subject"], volume["session"]].append(volume)
    for mask in masks:
        target = _target(mask, by_session.get((mask.subject, mask.session), []), problems)
        if target is None:
            continue
        if mask.kind == "brain":
            if target["brain_mask"] is not None:
                problems.append(f"{mask.path}: a second brain mask for {target['volume']}")
                continue
            target["brain_mask"] = mask.path
        else:
            target["_lesions"].append(mask)
    for volume in volumes:
        volume["lesion_masks"] = [m.path for m in sorted(volume.pop("_lesions"), key=lambda m: (m.order, m.path))]
        volume["n_lesions"] = len(volume["lesion_masks"])
        volume["dataset"] = dataset
        volume["control"] = _control(volume, controls, problems)
    table = pd.DataFrame(volumes, columns=COLUMNS)
    return table.sort_values(["subject", "session", "volume"], ignore_index=True), problems


def _volumes(paths: list[str], problems: list[str]) -> list[dict]:
    volumes = []
    for path in paths:
        if not _ANGIO_LIKE.search(path) or path.startswith("derivatives/"):
            continue
        found = _VOLUME.match(path)
        if found is None:
            problems.append(f"{path}: an angio image outside the sub-*/ses-*/anat/*_angio.nii.gz layout; not used")
        elif _folder_disagrees(path, found, problems):
            continue
        else:
            volumes.append({"subject": found["sub"], "session": found["ses"], "acq": found["acq"], "volume": path,
                            "brain_mask": None, "_lesions": []})
    return volumes


def _folder_disagrees(path: str, found: re.Match, problems: list[str]) -> bool:
    """True (and the problem noted) when the folders and the file name name different subjects/sessions."""
    if (found["fsub"], found["fses"]) == (found["sub"], found["ses"]):
        return False
    problems.append(f"{path}: folder and file name name different subjects/sessions; not used")
    return True


def _lausanne_masks(paths: list[str], problems: list[str]) -> list[_Mask]:
    masks = []
    for path in paths:
        if not (path.startswith(_LAUSANNE_MASK_DIR) and path.endswith((".nii", ".nii.gz"))):
            continue
        found = _LAUSANNE_MASK.match(path)
        if found is None:
            problems.append(f"{path}: an image in {_LAUSANNE_MASK_DIR} that is neither a brain nor a lesion mask")
        elif _folder_disagrees(path, found, problems):
            continue
        else:
            kind, order = ("brain", 0) if found["brain"] else ("lesion", int(found["lesion"]))
            masks.append(_Mask(path, found["sub"], found["ses"], None, kind, order))
    return masks


def _brisbane_masks(paths: list[str], problems: list[str]) -> list[_Mask]:
    masks = []
    for path in paths:
        if f"/{_BRISBANE_LESION_DIR}/" not in path or not path.endswith(".nii"):
            continue
        found = _BRISBANE_MASK.match(path)
        if found is None:
            problems.append(f"{path}: an aneurysm mask outside derivatives/sub-*/ses-*/*/{_BRISBANE_LESION_DIR}/; not used")
            continue
        named = _FILE_ENTITIES.match(found["file"])
        if named and (named["sub"], named["ses"]) != (found["fsub"], found["fses"]):
            problems.append(f"{path}: file name says sub-{named['sub']}_ses-{named['ses']}, its folder "
                            f"sub-{found['fsub']}/ses-{found['fses']}; not used")
            continue
        order = int(m.group(1)) if (m := re.search(r"Aneurysm(\d+)", found["file"])) else 0
        masks.append(_Mask(path, found["fsub"], found["fses"], named["acq"] if named else None, "lesion", order))
    return masks


def _target(mask: _Mask, candidates: list[dict], problems: list[str]) -> dict | None:
    """The one volume of the mask's session (narrowed by acquisition when the mask names a volume's)."""
    matching = [v for v in candidates if mask.acq is not None and v["acq"] == mask.acq]
    if len(candidates) == 1 or len(matching) == 1:
        return matching[0] if matching else candidates[0]
    if not candidates:
        problems.append(f"{mask.path}: no angio volume for sub-{mask.subject} ses-{mask.session}; not used")
    else:
        names = ", ".join(PurePosixPath(v["volume"]).name for v in candidates)
        problems.append(f"{mask.path}: sub-{mask.subject} ses-{mask.session} has {len(candidates)} volumes "
                        f"({names}) and the mask names none of them; not used")
    return None


def _control(volume: dict, controls: dict[str, bool] | None, problems: list[str]) -> bool | None:
    if controls is None:
        return None
    if volume["subject"] not in controls:
        problems.append(f"{volume['volume']}: sub-{volume['subject']} is not in {PARTICIPANTS_FILE}")
        return None
    control = controls[volume["subject"]]
    if control and volume["lesion_masks"]:
        problems.append(f"{volume['volume']}: a control with {len(volume['lesion_masks'])} lesion mask(s)")
    if not control and not volume["lesion_masks"]:
        problems.append(f"{volume['volume']}: a patient without a lesion mask")
    return control
