"""A synthetic external TOF-MRA dataset in both real BIDS layouts, rendered by the phantom (no torch).

`make_bids(root, ...)` writes `root/ds003949/` (Lausanne layout: one session per subject,
`participants.tsv` with `group`, `derivatives/manual_masks/.../*_desc-brain_mask.nii.gz` and
`*_desc-Lesion_<n>_mask.nii.gz`) and `root/ds005096/` (Royal Brisbane layout: two sessions per subject,
`*_acq-tra_angio.nii.gz`, one `.nii` per aneurysm in `derivatives/sub-X/ses-Y/anat/Nifti Aneurysm Only/`
— spaces in the folder name — next to decoy folders a reader must ignore; no control column, so its
volumes without masks are "unknown"). Volumes alternate between the two datasets by index.

Each volume is an MRA-style phantom (`iad.synthetic.plan.plan_series(modality="MRA")`, the same
drawing the RSNA-like synthetic series use), stored as int16 under one of `ORIENTATIONS`: axis codes
(RAS, LPS, permuted axes...) and sometimes an oblique tilt, so readers must take the orientation
from the affine. Positives (`positive_share` of the volumes, spread evenly over any run of indices)
have 1 or 2 aneurysms (`multi_share`), each with its own binary mask (sac and bleb voxels); controls
have none. Volume `i` depends only on (seed, i). `root/truth.csv` (`TRUTH_COLS`) gives each lesion's
location, `root/volumes.csv` what was drawn (orientation, lesions), `root/synthetic_bids.json` the
settings (written last with `complete: true`, so a folder whose settings match is complete).

Defaults keep it small for tests: 64-96 pixels in-plane, at most 40 slices (24 at least, see
`plan.SLICES_RANGE`), about 0.2 s per volume. Command line:
`python -m iad.synthetic.bids OUT --n-volumes 24 [--seed S --size-range 64 96 --max-slices 40
--positive-share 0.6 --multi-share 0.3]`; the `external=synthetic` config generates it on first use.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
import shutil

import nibabel as nib
from nibabel.orientations import axcodes2ornt, ornt_transform
import numpy as np
import pandas as pd

from iad.external.bids import CONTROL_COLUMN, CONTROL_VALUE, DATASETS, PARTICIPANTS_FILE, PATIENT_VALUE, discover
from iad.external.tables import LESION_COL, TRUTH_COLS, TRUTH_TABLE, external_series_uid
from iad.labels import UID_COL
from iad.synthetic import anatomy
from iad.synthetic.dataset import LOCK_FILE, _exclusive
from iad.synthetic.phantom import render_volume
from iad.synthetic.plan import SLICES_RANGE, SeriesPlan, plan_series, render_rng
from iad.utils.io import atomic_write, write_csv_atomic, write_json_atomic

BIDS_GENERATOR_VERSION = 1  # bumped whenever the drawing or the layout changes
SETTINGS_JSON = "synthetic_bids.json"
VOLUMES_TABLE = "volumes.csv"
LAUSANNE, BRISBANE = DATASETS
SIZE_RANGE: tuple[int, int] = (64, 96)
MAX_SLICES = 40
# (axis codes of the stored voxel axes, oblique tilt in degrees), cycled over the volumes' indices.
ORIENTATIONS: tuple[tuple[str, float], ...] = (
    ("RAS", 0.0), ("LPS", 0.0), ("LAS", 8.0), ("PIR", 0.0), ("RAI", 0.0), ("ASL", 6.0),
)
_RENDER_AXCODES = ("L", "P", "S")  # the phantom's grid (z, y, x) transposed to (x, y, z): DICOM LPS
_GOLDEN = (math.sqrt(5) - 1) / 2
_BRISBANE_MASK_DIR = "Nifti Aneurysm Only"
_DECOY_DIRS = ("Nifti with Parent Artery", "Mask")  # real ds005096 folders a reader must not take as lesions


def bids_settings(n_volumes: int = 12, seed: int = 0, size_range: tuple[int, int] = SIZE_RANGE,
                  max_slices: int = MAX_SLICES, positive_share: float = 0.6, multi_share: float = 0.3,
                  generator: int = BIDS_GENERATOR_VERSION) -> dict:
    """The full settings of a synthetic BIDS dataset (defaults filled in), as `make_bids` records them."""
    if int(generator) != BIDS_GENERATOR_VERSION:
        raise ValueError(f"synthetic BIDS generator={generator}: this code generates version {BIDS_GENERATOR_VERSION}")
    if int(n_volumes) < 2:
        raise ValueError(f"n_volumes must be at least 2 (one per layout), got {n_volumes}")
    for name, share in (("positive_share", positive_share), ("multi_share", multi_share)):
        if not 0.0 <= float(share) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {share}")
    return {"n_volumes": int(n_volumes), "seed": int(seed), "size_range": [int(v) for v in size_range],
            "max_slices": int(max_slices), "positive_share": float(positive_share),
            "multi_share": float(multi_share), "generator": BIDS_GENERATOR_VERSION}


def read_bids_settings(root: str | os.PathLike) -> dict | None:
    """The settings recorded in `root` (with their `complete` flag), None when there are none."""
    path = Path(root) / SETTINGS_JSON
    return json.loads(path.read_text()) if path.exists() else None


def is_current_bids(root: str | os.PathLike, settings: dict) -> bool:
    """Whether `root` holds a complete dataset made with `settings` (a `bids_settings` dict)."""
    return read_bids_settings(root) == {**settings, "complete": True}


def volume_entities(index: int, settings: dict) -> dict:
    """Dataset, BIDS entities, positive flag and storage orientation of volume `index`."""
    pair, dataset = divmod(index, 2)
    dataset = DATASETS[dataset]
    if dataset == LAUSANNE:
        subject, session_number, acq = f"{pair:03d}", 0, None
    else:
        (subject, session_number), acq = divmod(pair, 2), "tra"
        subject = f"{subject:03d}"
    offset = np.random.default_rng(np.random.SeedSequence([settings["seed"], 0xB1D5])).random()
    codes, tilt = ORIENTATIONS[index % len(ORIENTATIONS)]
    return {"dataset": dataset, "subject": subject, "session": f"{20100101 + 10000 * session_number + index:08d}",
            "acq": acq, "positive": bool((offset + index * _GOLDEN) % 1.0 < settings["positive_share"]),
            "axcodes": codes, "oblique_deg": tilt}


def plan_volume(index: int, settings: dict) -> SeriesPlan:
    """The phantom plan of volume `index` (MRA style; aneurysms only for positives)."""
    entities = volume_entities(index, settings)
    return plan_series(_plan_seed(settings["seed"]), index, tuple(settings["size_range"]), "uniform",
                       1.0 if entities["positive"] else 0.0, settings["max_slices"], modality="MRA",
                       multi_share=settings["multi_share"])


def _plan_seed(seed: int) -> int:
    """Plans drawn apart from the RSNA-like series of the same seed (no shared anatomy)."""
    return int(np.random.SeedSequence([seed, 0xB1D5]).generate_state(1)[0])


def lesion_masks(plan: SeriesPlan) -> list[np.ndarray]:
    """One boolean (z, y, x) mask per aneurysm of the plan, on its render grid: the sac and bleb voxels
    (at least the voxel holding the sac's centre)."""
    xs, ys, zs = plan.geometry.axes()
    masks = []
    for aneurysm in plan.aneurysms:
        mask = np.zeros(plan.geometry.shape, dtype=bool)
        for sphere in (aneurysm.sac, aneurysm.bleb):
            if sphere is not None:
                cx, cy, cz = sphere.centre
                mask |= ((xs[None, None, :] - cx) ** 2 + (ys[None, :, None] - cy) ** 2
                         + (zs[:, None, None] - cz) ** 2) <= sphere.radius ** 2
        centre = np.clip(np.rint(plan.geometry.to_voxel(aneurysm.sac.centre)).astype(int), 0,
                         np.array(plan.geometry.shape) - 1)
        mask[tuple(centre)] = True
        masks.append(mask)
    return masks


def brain_mask(plan: SeriesPlan) -> np.ndarray:
    """Boolean (z, y, x) mask of the phantom's brain ellipsoid on the render grid."""
    xs, ys, zs = plan.geometry.axes()
    ax, ay, az = plan.pose.to_anatomical(xs[None, :], ys[:, None], zs)
    inset = anatomy.SCALP_MM + anatomy.SKULL_MM + anatomy.SUBARACHNOID_MM
    (cx, cy, cz), (a, b, c) = anatomy.HEAD_CENTRE, (s - inset for s in anatomy.HEAD_SEMI_AXES)
    return (((ax - cx) / a) ** 2 + ((ay - cy) / b) ** 2)[None] + (((az - cz) / c) ** 2)[:, None, None] <= 1.0


def render_affine(plan: SeriesPlan) -> np.ndarray:
    """RAS affine of the render grid transposed to (x, y, z) voxel axes (LPS-coded voxel axes)."""
    (ox, oy, oz), (dx, dy, dz) = plan.geometry.origin, plan.geometry.spacing
    return np.array([[-dx, 0, 0, -ox], [0, -dy, 0, -oy], [0, 0, dz, oz], [0, 0, 0, 1]], dtype=float)


def stored_image(grid: np.ndarray, plan: SeriesPlan, axcodes: str, oblique_deg: float,
                 dtype=np.int16) -> nib.Nifti1Image:
    """A (z, y, x) render-grid array as a NIfTI image stored with voxel axes `axcodes`, tilted by `oblique_deg`."""
    image = nib.Nifti1Image(np.asarray(grid).transpose(2, 1, 0).astype(dtype), render_affine(plan))
    image = image.as_reoriented(ornt_transform(axcodes2ornt(_RENDER_AXCODES), axcodes2ornt(tuple(axcodes))))
    affine = _tilt(oblique_deg) @ image.affine
    out = nib.Nifti1Image(np.asarray(image.dataobj).astype(dtype), affine)
    out.header.set_xyzt_units("mm")
    return out


def _tilt(degrees: float) -> np.ndarray:
    """A world rotation about the superior axis then the left-right axis (an oblique acquisition)."""
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    about_z = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    c, s = math.cos(a / 2), math.sin(a / 2)
    about_x = np.array([[1, 0, 0, 0], [0, c, -s, 0], [0, s, c, 0], [0, 0, 0, 1]])
    return about_x @ about_z


def save_nifti(image: nib.Nifti1Image, path: Path) -> None:
    """Write a NIfTI file atomically (`.nii` or `.nii.gz` from the name)."""
    with atomic_write(path, "wb") as handle:
        handle.write(image.to_bytes() if path.suffix == ".nii" else _gzipped(image))


def _gzipped(image: nib.Nifti1Image) -> bytes:
    import gzip

    return gzip.compress(image.to_bytes(), compresslevel=1, mtime=0)


def _paths(entities: dict, n_lesions: int) -> dict:
    """Relative paths of a volume, its brain mask and its lesion masks in its dataset's layout."""
    sub, ses, acq = entities["subject"], entities["session"], entities["acq"]
    stem = f"sub-{sub}_ses-{ses}"
    volume = f"sub-{sub}/ses-{ses}/anat/{stem}{f'_acq-{acq}' if acq else ''}_angio.nii.gz"
    if entities["dataset"] == LAUSANNE:
        folder = f"derivatives/manual_masks/sub-{sub}/ses-{ses}/anat"
        return {"volume": volume, "brain": f"{folder}/{stem}_desc-brain_mask.nii.gz", "decoys": [],
                "lesions": [f"{folder}/{stem}_desc-Lesion_{n}_mask.nii.gz" for n in range(1, n_lesions + 1)]}
    folder = f"derivatives/sub-{sub}/ses-{ses}/anat"
    names = (["Aneurysm-Only"] if n_lesions == 1 else [f"Aneurysm{n}-Only" for n in range(1, n_lesions + 1)])
    lesions = [f"{folder}/{_BRISBANE_MASK_DIR}/{stem}_acq-Segmentation_{name}.nii" for name in names]
    decoys = [f"{folder}/{_DECOY_DIRS[0]}/{stem}_acq-Segmentation_Aneurysm-with-Parent-Artery.nii"] if n_lesions else []
    return {"volume": volume, "brain": f"{folder}/{_DECOY_DIRS[1]}/{stem}_acq-{acq}_mask.nii", "decoys": decoys,
            "lesions": lesions}


def write_volume(root: Path, index: int, settings: dict) -> dict:
    """Render volume `index` and write it with its masks (volume file last); returns its record."""
    entities = volume_entities(index, settings)
    plan = plan_volume(index, settings)
    masks = lesion_masks(plan)
    paths = _paths(entities, len(masks))
    folder = root / entities["dataset"]
    codes, tilt = entities["axcodes"], entities["oblique_deg"]
    # ds005096's masks are stored RAS whatever the volume's voxel order: same world, other voxel axes.
    mask_codes = "RAS" if entities["dataset"] == BRISBANE else codes
    mask_type = np.float32 if entities["dataset"] == BRISBANE else np.uint8
    if not (folder / paths["volume"]).exists():
        for path, mask in zip(paths["lesions"], masks):
            save_nifti(stored_image(mask, plan, mask_codes, tilt, mask_type), folder / path)
        for path in paths["decoys"]:
            save_nifti(stored_image(np.logical_or.reduce(masks), plan, mask_codes, tilt, mask_type), folder / path)
        save_nifti(stored_image(brain_mask(plan), plan, mask_codes, tilt, np.uint8), folder / paths["brain"])
        volume = render_volume(plan, render_rng(_plan_seed(settings["seed"]), index))
        stored = np.rint(np.clip(volume, *plan.style.value_range))  # as the DICOM writer stores MRA (12 bits)
        save_nifti(stored_image(stored, plan, codes, tilt), folder / paths["volume"])
    lesion_locations = {path: a.location for path, a in zip(paths["lesions"], plan.aneurysms)}
    return {"index": index, **entities, "volume": paths["volume"], "n_lesions": len(masks),
            "shape": list(plan.geometry.shape), "locations": lesion_locations}


def _participants(records: list[dict], dataset: str) -> pd.DataFrame:
    rows = [r for r in records if r["dataset"] == dataset]
    if dataset == LAUSANNE:
        return pd.DataFrame({"participant_id": [f"sub-{r['subject']}" for r in rows],
                             "exam_date": [r["session"] for r in rows],
                             CONTROL_COLUMN: [PATIENT_VALUE if r["positive"] else CONTROL_VALUE for r in rows]})
    sessions: dict[str, list[str]] = {}
    for r in rows:
        sessions.setdefault(f"sub-{r['subject']}", []).append(r["session"])
    return pd.DataFrame({"participant_id": list(sessions),
                         "single_multiple_scans": ["multiple" if len(s) > 1 else "single" for s in sessions.values()],
                         "exam_dates": [",".join(s) for s in sessions.values()]})


def truth_table(root: Path, records: list[dict]) -> pd.DataFrame:
    """Each lesion's location, numbered as `discover` orders the volume's lesion masks."""
    where = {(r["dataset"], path): location for r in records for path, location in r["locations"].items()}
    rows = []
    for dataset in DATASETS:
        for volume in discover(root / dataset, dataset).itertuples(index=False):
            uid = external_series_uid(dataset, volume.subject, volume.session, volume.acq)
            rows += [(uid, n, where[dataset, path]) for n, path in enumerate(volume.lesion_masks, start=1)]
    return pd.DataFrame(rows, columns=TRUTH_COLS).sort_values([UID_COL, LESION_COL], ignore_index=True)


def make_bids(root: str | os.PathLike, n_volumes: int = 12, seed: int = 0, *, size_range: tuple[int, int] = SIZE_RANGE,
              max_slices: int = MAX_SLICES, positive_share: float = 0.6, multi_share: float = 0.3,
              generator: int = BIDS_GENERATOR_VERSION) -> pd.DataFrame:
    """Write (or complete) the synthetic BIDS datasets under `root`; returns the volumes table (`volumes.csv`).

    Volumes already on disk are kept; a folder made with other settings is regenerated from scratch,
    and a non-empty folder this generator did not make is refused (nothing is overwritten).
    """
    if not SLICES_RANGE[0] <= max_slices <= SLICES_RANGE[1]:
        raise ValueError(f"max_slices must be in {list(SLICES_RANGE)}, got {max_slices}")
    settings = bids_settings(n_volumes, seed, size_range, max_slices, positive_share, multi_share, generator)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive(root / LOCK_FILE):  # parallel jobs: the first generates, the others then find it done
        _claim(root, settings)
        records = [write_volume(root, index, settings) for index in range(settings["n_volumes"])]
        for dataset in DATASETS:
            write_json_atomic({"Name": f"synthetic {dataset} (iad phantom)", "BIDSVersion": "1.8.0",
                               "DatasetType": "raw"}, root / dataset / "dataset_description.json")
            write_csv_atomic(_participants(records, dataset), root / dataset / PARTICIPANTS_FILE, sep="\t")
        write_csv_atomic(truth_table(root, records), root / TRUTH_TABLE)
        volumes = pd.DataFrame([{k: v for k, v in r.items() if k != "locations"}
                                | {"locations": ";".join(r["locations"].values())} for r in records])
        write_csv_atomic(volumes, root / VOLUMES_TABLE)
        write_json_atomic({**settings, "complete": True}, root / SETTINGS_JSON)
    return volumes


def _claim(root: Path, settings: dict) -> None:
    """Make `root` ours for `settings`: keep a matching (possibly partial) dataset, wipe one made with other settings."""
    recorded = read_bids_settings(root)
    if recorded is None and any(p.name != LOCK_FILE for p in root.iterdir()):
        raise FileExistsError(f"{root}: not empty and not made by the synthetic BIDS generator (no {SETTINGS_JSON}); "
                              "refusing to write into it")
    if recorded is not None and {k: v for k, v in recorded.items() if k != "complete"} != settings:
        for name in (*DATASETS, TRUTH_TABLE, VOLUMES_TABLE):
            target = root / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    write_json_atomic({**settings, "complete": False}, root / SETTINGS_JSON)


def main(argv: list[str] | None = None) -> None:
    """`python -m iad.synthetic.bids OUT [--n-volumes N] [--seed S] ...`: write a synthetic external dataset."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m iad.synthetic.bids", description=main.__doc__)
    parser.add_argument("out", help="folder for ds003949/, ds005096/, truth.csv (volumes already there are kept)")
    parser.add_argument("--n-volumes", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size-range", type=int, nargs=2, default=SIZE_RANGE, metavar=("MIN", "MAX"))
    parser.add_argument("--max-slices", type=int, default=MAX_SLICES)
    parser.add_argument("--positive-share", type=float, default=0.6)
    parser.add_argument("--multi-share", type=float, default=0.3)
    args = parser.parse_args(argv)
    volumes = make_bids(args.out, args.n_volumes, args.seed, size_range=tuple(args.size_range),
                        max_slices=args.max_slices, positive_share=args.positive_share, multi_share=args.multi_share)
    counts = volumes.groupby("dataset")["n_lesions"].agg(["size", lambda n: int((n > 0).sum()), "sum"])
    counts.columns = ["volumes", "positive", "lesions"]
    print(f"synthetic external data in {args.out}:\n{counts.to_string()}")


if __name__ == "__main__":
    main()
