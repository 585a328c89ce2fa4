"""The BIDS reader of the external TOF-MRA datasets: the real listings and a small synthetic tree."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from iad.external.bids import COLUMNS, discover

MRA_VOLUMES = {"ds003949": 296, "ds005096": 126}  # issue 10


def listing(folder: Path, dataset: str) -> list[str]:
    return [line.strip() for line in (folder / f"{dataset}_files.txt").read_text().splitlines() if line.strip()]


def controls_in(folder: Path, dataset: str) -> set[str]:
    with open(folder / dataset / "participants.tsv", newline="") as handle:
        return {row["participant_id"].removeprefix("sub-") for row in csv.DictReader(handle, delimiter="\t")
                if row.get("group") == "control"}


def problem_paths(table) -> set[str]:
    return {problem.split(": ")[0] for problem in table.attrs["problems"]}


@pytest.mark.shared
@pytest.mark.parametrize("dataset", sorted(MRA_VOLUMES))
def test_every_angio_volume_and_nothing_else(external_layouts, dataset):
    paths = listing(external_layouts, dataset)
    table = discover(external_layouts / f"{dataset}_files.txt")
    expected = sorted(p for p in paths if p.startswith("sub-") and p.endswith("_angio.nii.gz") and "/anat/" in p)
    assert list(table.columns) == COLUMNS
    assert sorted(table["volume"]) == expected
    assert len(table) == MRA_VOLUMES[dataset]
    assert (table["dataset"] == dataset).all()
    assert table["volume"].is_unique
    # every volume's entities are the ones its file name carries
    for row in table.itertuples():
        assert row.volume.rsplit("/", 1)[-1].startswith(f"sub-{row.subject}_ses-{row.session}_")


@pytest.mark.shared
def test_lausanne_masks_and_controls(external_layouts):
    paths = listing(external_layouts, "ds003949")
    table = discover(external_layouts / "ds003949_files.txt").set_index("volume")
    lesions = [p for p in paths if p.startswith("derivatives/manual_masks/") and "_desc-Lesion_" in p
               and p.endswith(".nii.gz")]
    first = [p for p in lesions if "_desc-Lesion_1_" in p]
    assert (table["n_lesions"] > 0).sum() == len(first) == 167
    assert (table["n_lesions"] > 1).sum() == sum("_desc-Lesion_2_" in p for p in lesions) == 25
    assert sorted(p for masks in table["lesion_masks"] for p in masks) == sorted(lesions)
    for volume, row in table.iterrows():  # each mask pairs with the volume of its own subject and session
        stem = volume.rsplit("/", 1)[-1].removesuffix("_angio.nii.gz")
        assert row["brain_mask"].endswith(f"/{stem}_desc-brain_mask.nii.gz")
        assert [m.rsplit("/", 1)[-1] for m in row["lesion_masks"]] == [
            f"{stem}_desc-Lesion_{n}_mask.nii.gz" for n in range(1, row["n_lesions"] + 1)]
    controls = controls_in(external_layouts, "ds003949")
    assert set(table.loc[table["control"] == True, "subject"]) == controls  # noqa: E712
    assert table["control"].notna().all()
    assert not table.loc[table["control"] == True, "n_lesions"].any()  # noqa: E712
    # the one patient without a lesion mask is reported, not hidden
    patients_without = table.index[(table["control"] == False) & (table["n_lesions"] == 0)]  # noqa: E712
    assert set(patients_without) <= problem_paths(table)


@pytest.mark.shared
def test_brisbane_masks_paired_by_entities_or_reported(external_layouts):
    paths = listing(external_layouts, "ds005096")
    table = discover(external_layouts / "ds005096_files.txt")
    masks = [p for p in paths if "/Nifti Aneurysm Only/" in p and p.endswith(".nii")]
    assert sum("/anat/Nifti Aneurysm Only/" in p for p in masks) == 78  # the 78: mask files under anat/
    paired = [p for ps in table["lesion_masks"] for p in ps]
    assert len(paired) == len(set(paired))
    assert set(paired) | problem_paths(table) >= set(masks)  # never silently dropped
    assert not set(paired) & problem_paths(table)
    # a paired mask lies in its volume's derivatives folder and its file name names the same session
    volumes_per_session = table.groupby(["subject", "session"]).size()
    for row in table[table["n_lesions"] > 0].itertuples():
        session = f"sub-{row.subject}/ses-{row.session}/"
        assert volumes_per_session[row.subject, row.session] == 1
        for mask in row.lesion_masks:
            assert mask.startswith(f"derivatives/{session}")
            assert mask.rsplit("/", 1)[-1].startswith(f"sub-{row.subject}_ses-{row.session}_")
    assert (table["n_lesions"] > 0).sum() == len({p.split("/anat/")[0] for p in paired})
    assert table["control"].isna().all()  # ds005096 has no control column: unknown, not guessed
    assert table["brain_mask"].isna().all()


def write_image(path: Path, shape=(4, 5, 3)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros(shape, np.uint8), np.eye(4)), str(path))


def brisbane_tree(root: Path) -> None:
    for name in ["sub-01/ses-1/anat/sub-01_ses-1_acq-tra_angio.nii.gz",
                 "sub-02/ses-1/anat/sub-02_ses-1_acq-multislab_angio.nii.gz",
                 "sub-02/ses-1/anat/sub-02_ses-1_acq-highres_angio.nii.gz",
                 "sub-01/ses-2/anat/sub-01_ses-2_angio.nii.gz",
                 "sub-01/ses-2/func/sub-01_ses-2_angio.nii.gz",  # an angio image of the wrong kind
                 ".datalad/sub-01_ses-1_angio.nii.gz",
                 "derivatives/sub-01/ses-1/anat/Nifti Aneurysm Only/sub-01_ses-1_acq-Segmentation_Aneurysm2.nii",
                 "derivatives/sub-01/ses-1/anat/Nifti Aneurysm Only/sub-01_ses-1_acq-Segmentation_Aneurysm1.nii",
                 "derivatives/sub-01/ses-1/anat/Nifti with Parent Artery/sub-01_ses-1_acq-Segmentation_A.nii",
                 "derivatives/sub-02/ses-1/anat/Nifti Aneurysm Only/sub-02_ses-1_acq-multislab_Aneurysm.nii",
                 "derivatives/sub-03/ses-1/anat/Nifti Aneurysm Only/sub-03_ses-1_acq-Segmentation_Aneurysm.nii"]:
        write_image(root / name)
    (root / "README").write_text("stray\n")
    (root / "sub-01/ses-1/anat/sub-01_ses-1_acq-tra_angio.json").write_text("{}")
    (root / "participants.tsv").write_text("participant_id\texam_dates\nsub-01\t1,2\nsub-02\t1\n")


def test_synthetic_tree_walk_pairs_by_entities_and_reports_problems(tmp_path):
    root = tmp_path / "my ds005096 copy"
    brisbane_tree(root)
    table = discover(root)
    assert list(table["volume"]) == ["sub-01/ses-1/anat/sub-01_ses-1_acq-tra_angio.nii.gz",
                                     "sub-01/ses-2/anat/sub-01_ses-2_angio.nii.gz",
                                     "sub-02/ses-1/anat/sub-02_ses-1_acq-highres_angio.nii.gz",
                                     "sub-02/ses-1/anat/sub-02_ses-1_acq-multislab_angio.nii.gz"]
    rows = table.set_index("volume")["lesion_masks"]
    folder = "derivatives/sub-01/ses-1/anat/Nifti Aneurysm Only/"
    assert rows.iloc[0] == [folder + "sub-01_ses-1_acq-Segmentation_Aneurysm1.nii",
                            folder + "sub-01_ses-1_acq-Segmentation_Aneurysm2.nii"]
    assert rows.iloc[1] == []
    # two volumes in one session: the mask naming acq-multislab goes to that one, not to the first listed
    assert rows.iloc[2] == []
    assert rows.iloc[3] == ["derivatives/sub-02/ses-1/anat/Nifti Aneurysm Only/sub-02_ses-1_acq-multislab_Aneurysm.nii"]
    assert list(table["n_lesions"]) == [2, 0, 0, 1]
    assert problem_paths(table) == {
        "sub-01/ses-2/func/sub-01_ses-2_angio.nii.gz",
        "derivatives/sub-03/ses-1/anat/Nifti Aneurysm Only/sub-03_ses-1_acq-Segmentation_Aneurysm.nii"}
    assert table["control"].isna().all()

    listed = tmp_path / "ds005096_files.txt"  # the same tree as a listing gives the same table
    listed.write_text("\n".join(sorted(str(p.relative_to(root)) for p in root.rglob("*")
                                       if p.is_file() and ".datalad" not in p.parts)) + "\n")
    from_listing = discover(listed, participants=root / "participants.tsv")
    assert from_listing.equals(table)
    assert from_listing.attrs["problems"] == table.attrs["problems"]


def test_synthetic_lausanne_tree_brain_lesion_masks_and_controls(tmp_path):
    root = tmp_path / "ds003949"
    masks = root / "derivatives/manual_masks"
    for name in ["sub-1/ses-9/anat/sub-1_ses-9_angio.nii.gz", "sub-2/ses-8/anat/sub-2_ses-8_angio.nii.gz",
                 "sub-1/ses-9/anat/sub-1_ses-9_T1w.nii.gz"]:
        write_image(root / name)
    for name in ["sub-1/ses-9/anat/sub-1_ses-9_desc-brain_mask.nii.gz",
                 "sub-1/ses-9/anat/sub-1_ses-9_desc-Lesion_2_mask.nii.gz",
                 "sub-1/ses-9/anat/sub-1_ses-9_desc-Lesion_1_mask.nii.gz",
                 "sub-2/ses-8/anat/sub-2_ses-8_desc-brain_mask.nii.gz",
                 "sub-2/ses-7/anat/sub-2_ses-7_desc-Lesion_1_mask.nii.gz"]:  # no such session: an orphan
        write_image(masks / name)
    write_image(root / "derivatives/N4_bias_field_corrected/sub-1/ses-9/anat/sub-1_ses-9_desc-angio_N4bfc_mask.nii.gz")
    (root / "participants.tsv").write_text("participant_id\texam_date\tgroup\nsub-1\t9\tpatient\nsub-2\t8\tcontrol\n")
    table = discover(root).set_index("subject")
    assert list(table.index) == ["1", "2"]
    assert table.loc["1", "lesion_masks"] == [f"derivatives/manual_masks/sub-1/ses-9/anat/sub-1_ses-9_desc-Lesion_{n}_mask.nii.gz"
                                              for n in (1, 2)]
    assert table.loc["2", "brain_mask"] == "derivatives/manual_masks/sub-2/ses-8/anat/sub-2_ses-8_desc-brain_mask.nii.gz"
    assert list(table["control"]) == [False, True]
    assert problem_paths(table) == {"derivatives/manual_masks/sub-2/ses-7/anat/sub-2_ses-7_desc-Lesion_1_mask.nii.gz"}


def test_bad_sources_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        discover(tmp_path / "ds003949_missing")
    with pytest.raises(ValueError, match="cannot tell"):
        discover(tmp_path)
    (tmp_path / "participants.tsv").write_text("participant_id\tgroup\nsub-1\tmaybe\n")
    with pytest.raises(ValueError, match="maybe"):
        discover(tmp_path, "ds003949")
