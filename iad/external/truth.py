"""Training labels from a synthetic source's truth (no torch): the pseudo-label table an oracle would write.

Real external data has no locations; the synthetic generator keeps each lesion's location in truth.csv.
`truth_labels` turns it into a `pseudo_labels.csv`-shaped table (PSEUDO_COLS): every slice a lesion's
mask touches, with hard labels (present 1, the locations of the lesions on that slice 1) and one row per
mask box (box_source "mask"), plus every `control_stride`-th slice of each control volume as an
all-zero row. It lets the external DataModule train, and tests check it, without the pseudo-label stage.
"""

from __future__ import annotations

import os

import pandas as pd

from iad.boxes import XYXY_COLS
from iad.external.tables import (
    BOX_SOURCE_COL,
    CONTROL,
    LESION_COL,
    LOCATION_COL,
    POSITIVE,
    PSEUDO_COLS,
    SLICE_COL,
    TRUTH_COLS,
    control_label_rows,
    read_table,
    usable_series,
)
from iad.labels import LABEL_COLS, LOCATION_COLS, PRESENT_COL, UID_COL


def truth_labels(series: pd.DataFrame, lesion_boxes: pd.DataFrame, truth: str | os.PathLike,
                 control_stride: int = 4) -> pd.DataFrame:
    """PSEUDO_COLS rows from truth.csv and the lesion boxes (cache pixels) of `prepare_external`'s tables."""
    located = read_table(truth, TRUTH_COLS)
    unknown = sorted(set(located[LOCATION_COL]) - set(LOCATION_COLS))
    if unknown:
        raise ValueError(f"{truth}: unknown locations {unknown}")
    boxes = lesion_boxes[lesion_boxes[UID_COL].isin(set(usable_series(series, POSITIVE)))].merge(
        located, on=[UID_COL, LESION_COL], how="left", validate="many_to_one")
    if boxes[LOCATION_COL].isna().any():
        missing = boxes[boxes[LOCATION_COL].isna()][[UID_COL, LESION_COL]].drop_duplicates().head(3).values.tolist()
        raise ValueError(f"{truth}: no location for lesions {missing}")
    rows = []
    for (uid, z), group in boxes.groupby([UID_COL, SLICE_COL], sort=True):
        labels = dict.fromkeys(LABEL_COLS, 0.0) | dict.fromkeys(group[LOCATION_COL], 1.0) | {PRESENT_COL: 1.0}
        for box in group[list(XYXY_COLS)].itertuples(index=False):
            rows.append({UID_COL: uid, SLICE_COL: int(z), **labels, **dict(zip(XYXY_COLS, box)), BOX_SOURCE_COL: "mask"})
    lesion_rows = pd.DataFrame(rows, columns=PSEUDO_COLS)
    controls = series[series[UID_COL].isin(set(usable_series(series, CONTROL)))]
    stride = max(int(control_stride), 1)
    slices = [(uid, z) for uid, n in zip(controls[UID_COL], controls["n_slices"]) for z in range(0, int(n), stride)]
    control_rows = control_label_rows([uid for uid, _ in slices], [z for _, z in slices])
    return pd.concat([lesion_rows, control_rows], ignore_index=True) if len(control_rows) else lesion_rows
