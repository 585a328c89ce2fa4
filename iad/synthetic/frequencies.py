"""How often things occur in the real competition table, so the synthetic data matches it.

Counted once from /work/shared/data/rsna/train.csv (4,348 series, 1,863 positive); a test recounts
them from the real table when it is present.
"""

from __future__ import annotations

from iad.labels import LOCATION_COLS, MODALITIES

LOCATION_COUNTS: dict[str, int] = {
    "Left Infraclinoid Internal Carotid Artery": 78,
    "Right Infraclinoid Internal Carotid Artery": 98,
    "Left Supraclinoid Internal Carotid Artery": 330,
    "Right Supraclinoid Internal Carotid Artery": 278,
    "Left Middle Cerebral Artery": 219,
    "Right Middle Cerebral Artery": 294,
    "Anterior Communicating Artery": 363,
    "Left Anterior Cerebral Artery": 46,
    "Right Anterior Cerebral Artery": 56,
    "Left Posterior Communicating Artery": 86,
    "Right Posterior Communicating Artery": 101,
    "Basilar Tip": 110,
    "Other Posterior Circulation": 113,
}
MODALITY_COUNTS: dict[str, int] = {"CTA": 1808, "MRA": 1252, "MRI T2": 983, "MRI T1post": 305}
POSITIVE_COUNTS: dict[str, int] = {"CTA": 973, "MRA": 555, "MRI T2": 258, "MRI T1post": 77}
POSITIVE_SERIES = 1863
MULTI_LOCATION_POSITIVES = 249  # positive series with two or more location labels
FEMALE_SERIES = 3005
AGE_MEAN, AGE_SD, AGE_MIN, AGE_MAX = 58.5, 15.8, 18, 89

# How often each location is drawn for a positive series: "real" follows the competition table;
# "uniform" gives every location the same share, so a small dataset has positives at all 13 (a
# 100-series set drawn with the real shares has 1-3 positives at 8 locations, which caps the
# per-location AUCs and makes a learning check measure the draw, not the model).
LOCATION_WEIGHTS: dict[str, dict[str, float]] = {
    "real": {name: float(count) for name, count in LOCATION_COUNTS.items()},
    "uniform": {name: 1.0 for name in LOCATION_COUNTS},
}

assert tuple(LOCATION_COUNTS) == LOCATION_COLS and tuple(MODALITY_COUNTS) == MODALITIES
TOTAL_SERIES = sum(MODALITY_COUNTS.values())
