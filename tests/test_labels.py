"""Label tables, localizers, coordinate parsing, localizer mapping and the left/right flip."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from iad.labels import (
    FLIP_PERM,
    LABEL_COLS,
    LOCATION_COLS,
    MODALITY_COL,
    PRESENT_COL,
    SOP_COL,
    UID_COL,
    SeriesGeometry,
    flip_labels,
    map_localizers,
    parse_coordinates,
    read_localizers,
    read_series_labels,
    validate_series_labels,
)

# Found while checking the real tables (see test_localizer_label_disagreements).
RIGHT_VS_LEFT_SERIES = "1.2.826.0.1.3680043.8.498.40499156229797942175102861717242994172"
BASILAR_WITHOUT_LOCALIZER_SERIES = "1.2.826.0.1.3680043.8.498.75798029534455454939797323020706657426"


@pytest.mark.shared
def test_train_csv_facts(rsna_tables):
    labels = read_series_labels(rsna_tables / "train.csv")
    assert len(labels) == 4348
    assert labels[UID_COL].is_unique
    assert labels[MODALITY_COL].value_counts().to_dict() == {"CTA": 1808, "MRA": 1252, "MRI T2": 983, "MRI T1post": 305}
    assert labels[PRESENT_COL].sum() == 1863
    raw = pd.read_csv(rsna_tables / "train.csv")
    np.testing.assert_array_equal(raw[PRESENT_COL].to_numpy(), raw[list(LOCATION_COLS)].to_numpy().max(axis=1))


@pytest.mark.shared
def test_localizer_facts(rsna_tables):
    localizers = read_localizers(rsna_tables / "train_localizers.csv")
    labels = read_series_labels(rsna_tables / "train.csv")
    assert len(localizers) == 2254
    assert localizers[UID_COL].nunique() == 1863
    assert str(localizers["frame"].dtype) == "Int64"
    raw = pd.read_csv(rsna_tables / "train_localizers.csv")
    has_f = raw["coordinates"].str.contains("'f'")
    assert has_f.sum() == 146
    np.testing.assert_array_equal(localizers["frame"].notna().to_numpy(), has_f.to_numpy())
    assert localizers["frame"].min() == 0 and localizers["frame"].max() == 114
    modality_of = labels.set_index(UID_COL)[MODALITY_COL]
    assert set(localizers.loc[localizers["frame"].notna(), UID_COL].map(modality_of)) == {"MRA", "MRI T2"}
    assert localizers["x"].max() > 512  # some images are wider than 512 (x reaches ~715)
    assert [LABEL_COLS[i] for i in localizers["label_index"]] == localizers["location"].tolist()
    positive = set(labels.loc[labels[PRESENT_COL] == 1, UID_COL])
    assert set(localizers[UID_COL]) == positive


@pytest.mark.shared
def test_localizer_label_disagreements(rsna_tables):
    """Where localizers and train.csv disagree; reported, not fixed, by the readers."""
    localizers = read_localizers(rsna_tables / "train_localizers.csv")
    labels = read_series_labels(rsna_tables / "train.csv").set_index(UID_COL)
    label_at_localizer = [labels.at[uid, loc] for uid, loc in zip(localizers[UID_COL], localizers["location"], strict=True)]
    unlabelled = localizers[np.array(label_at_localizer) == 0]
    # One CTA localizer says right supraclinoid ICA where train.csv says left.
    assert unlabelled[[UID_COL, "location"]].values.tolist() == [
        [RIGHT_VS_LEFT_SERIES, "Right Supraclinoid Internal Carotid Artery"]
    ]
    assert labels.loc[RIGHT_VS_LEFT_SERIES, "Left Supraclinoid Internal Carotid Artery"] == 1
    located = localizers.groupby(UID_COL)["location"].agg(set)
    labelled = {uid: {c for c in LOCATION_COLS if labels.at[uid, c]} for uid in located.index}
    differing = sorted(uid for uid in located.index if located[uid] != labelled[uid])
    assert differing == sorted([RIGHT_VS_LEFT_SERIES, BASILAR_WITHOUT_LOCALIZER_SERIES])
    assert labelled[BASILAR_WITHOUT_LOCALIZER_SERIES] - located[BASILAR_WITHOUT_LOCALIZER_SERIES] == {"Basilar Tip"}
    # Three rows repeat an earlier row exactly; the reader keeps them.
    assert localizers.duplicated().sum() == 3


# --- train.csv validation ----------------------------------------------------------------------


def _labels_table(n: int = 4) -> pd.DataFrame:
    df = pd.DataFrame(0, index=range(n), columns=list(LABEL_COLS))
    df.insert(0, UID_COL, [f"1.2.{i}" for i in range(n)])
    df.insert(1, MODALITY_COL, ["CTA", "MRA", "MRI T2", "MRI T1post"][:n])
    df.loc[0, ["Basilar Tip", PRESENT_COL]] = 1
    return df


def test_read_series_labels_accepts_a_consistent_table(tmp_path):
    path = tmp_path / "train.csv"
    _labels_table().to_csv(path, index=False)
    labels = read_series_labels(path)
    assert labels[PRESENT_COL].tolist() == [1, 0, 0, 0]
    assert all(pd.api.types.is_integer_dtype(labels[c]) for c in LABEL_COLS)


def test_read_series_labels_names_file_and_missing_column(tmp_path):
    path = tmp_path / "train.csv"
    _labels_table().drop(columns=["Basilar Tip"]).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"train\.csv.*Basilar Tip"):
        read_series_labels(path)


def test_read_series_labels_rejects_non_binary_labels(tmp_path):
    path = tmp_path / "train.csv"
    df = _labels_table()
    df.loc[1, "Basilar Tip"] = 2
    df.to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"Basilar Tip.*0/1"):
        read_series_labels(path)


def test_inconsistent_present_raises_or_warns(tmp_path):
    df = _labels_table()
    df.loc[2, "Left Middle Cerebral Artery"] = 1  # a location without "Aneurysm Present"
    path = tmp_path / "train.csv"
    df.to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"train\.csv.*1\.2\.2"):
        read_series_labels(path)
    with pytest.warns(UserWarning, match=r"1\.2\.2"):
        labels = read_series_labels(path, strict=False)
    assert len(labels) == len(df)


def test_duplicate_series_and_unknown_modality_are_rejected():
    df = _labels_table()
    with pytest.raises(ValueError, match="duplicate"):
        validate_series_labels(pd.concat([df, df.iloc[:1]]))
    df.loc[3, MODALITY_COL] = "PET"
    with pytest.raises(ValueError, match="PET"):
        validate_series_labels(df)


# --- coordinates and localizers ----------------------------------------------------------------


def test_parse_coordinates_single_frame():
    assert parse_coordinates("{'x': 258.3621186176837, 'y': 261.359900373599}") == (
        258.3621186176837,
        261.359900373599,
        None,
    )


def test_parse_coordinates_multi_frame():
    x, y, frame = parse_coordinates("{'x': 12, 'y': 30.5, 'f': 57}")
    assert (x, y, frame) == (12.0, 30.5, 57)
    assert isinstance(x, float) and isinstance(frame, int)


@pytest.mark.parametrize(
    "junk",
    [
        "",
        "not a dict",
        "{'x': 1}",
        "{'x': 'a', 'y': 2}",
        "{'x': 1, 'y': 2, 'f': -1}",
        "{'x': 1, 'y': 2, 'f': 1.5}",
        "{'x': 1, 'y': 2, 'f': True}",
        "{'x': 1, 'y': 2, 'z': 3}",
        "{'x': 1e999, 'y': 2}",
        "[1, 2]",
        "__import__('os').getcwd()",
        float("nan"),
    ],
)
def test_parse_coordinates_rejects_junk(junk):
    with pytest.raises(ValueError):
        parse_coordinates(junk)


def _write_localizers(path, rows):
    pd.DataFrame(rows, columns=[UID_COL, SOP_COL, "coordinates", "location"]).to_csv(path, index=False)


def test_read_localizers_columns(tmp_path):
    path = tmp_path / "loc.csv"
    _write_localizers(
        path,
        [
            ["s1", "i1", "{'x': 10.0, 'y': 20.0}", "Basilar Tip"],
            ["s2", "i2", "{'x': 1.5, 'y': 2.5, 'f': 7}", "Left Middle Cerebral Artery"],
        ],
    )
    loc = read_localizers(path)
    assert list(loc.columns) == [UID_COL, SOP_COL, "x", "y", "frame", "location", "label_index"]
    assert loc["frame"].isna().tolist() == [True, False] and loc["frame"].iloc[1] == 7
    assert loc["label_index"].tolist() == [11, 4]
    assert loc[["x", "y"]].values.tolist() == [[10.0, 20.0], [1.5, 2.5]]


def test_read_localizers_errors_name_the_problem(tmp_path):
    path = tmp_path / "loc.csv"
    _write_localizers(path, [["s1", "i1", "{'x': 10.0, 'y': 20.0}", "Left Big Artery"]])
    with pytest.raises(ValueError, match=r"loc\.csv.*Left Big Artery"):
        read_localizers(path)
    _write_localizers(path, [["s1", "i1", "{'x': 1, 'y': 1}", "Basilar Tip"], ["s1", "i2", "oops", "Basilar Tip"]])
    with pytest.raises(ValueError, match=r"loc\.csv, line 3"):
        read_localizers(path)


def test_map_localizers_places_scales_and_reports_missing():
    localizers = pd.DataFrame(
        {
            UID_COL: ["a", "a", "b", "c"],
            SOP_COL: ["a1", "a-gone", "b1", "c1"],
            "x": [10.0, 5.0, 100.0, 1.0],
            "y": [20.0, 5.0, 50.0, 1.0],
            "frame": pd.array([pd.NA, pd.NA, 3, pd.NA], dtype="Int64"),
            "location": ["Basilar Tip"] * 4,
            "label_index": [11] * 4,
        }
    )
    calls = []

    def index_of_a(sop, frame):
        calls.append((sop, frame))
        return {"a1": 4}[sop]

    def index_of_b(sop, frame):
        calls.append((sop, frame))
        return 10 + frame

    geometry = {
        "a": SeriesGeometry(index_of_a, scale_x=0.5, scale_y=0.25),
        "b": SeriesGeometry(index_of_b),
    }
    result = map_localizers(localizers, geometry)
    assert calls == [("a1", None), ("a-gone", None), ("b1", 3)]
    mapped = result.mapped.set_index(SOP_COL)
    assert mapped["slice_index"].to_dict() == {"a1": 4, "b1": 13}
    # Pixel centres aligned: x' = (x + 0.5) * s - 0.5.
    assert mapped.loc["a1", ["x", "y"]].tolist() == [4.75, 4.625]
    assert mapped.loc["b1", ["x", "y"]].tolist() == [100.0, 50.0]
    assert mapped.loc["a1", ["x_orig", "y_orig"]].tolist() == [10.0, 20.0]
    assert result.missing.set_index(SOP_COL)["reason"].to_dict() == {
        "a-gone": "image not in the cached series",
        "c1": "series not in the cache",
    }


# --- left/right flip ---------------------------------------------------------------------------


def _mirror_name(name: str) -> str:
    if name.startswith("Left "):
        return "Right " + name.removeprefix("Left ")
    if name.startswith("Right "):
        return "Left " + name.removeprefix("Right ")
    return name


def test_flip_perm_swaps_left_and_right_names():
    assert [LABEL_COLS[j] for j in FLIP_PERM] == [_mirror_name(name) for name in LABEL_COLS]


def test_flip_labels_is_an_involution():
    y = np.random.default_rng(0).random((3, 5, 14))
    np.testing.assert_array_equal(flip_labels(flip_labels(y)), y)
    assert not np.array_equal(flip_labels(y), y)


def test_flip_labels_moves_left_to_right_and_keeps_midline():
    y = np.zeros(14)
    y[LABEL_COLS.index("Left Middle Cerebral Artery")] = 1
    y[LABEL_COLS.index(PRESENT_COL)] = 1
    flipped = flip_labels(y)
    assert {LABEL_COLS[i] for i in np.flatnonzero(flipped)} == {"Right Middle Cerebral Artery", PRESENT_COL}
    midline_names = ("Anterior Communicating Artery", "Basilar Tip", "Other Posterior Circulation")
    midline = [LABEL_COLS.index(name) for name in midline_names]
    z = np.arange(14.0)
    np.testing.assert_array_equal(flip_labels(z)[midline], z[midline])


def test_flip_labels_rejects_wrong_width():
    with pytest.raises(ValueError, match="14"):
        flip_labels(np.zeros((2, 13)))
