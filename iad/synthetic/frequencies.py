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

assert tuple(LOCATION_COUNTS) == LOCATION_COLS and tuple(MODALITY_COUNTS) == MODALITIES
TOTAL_SERIES = sum(MODALITY_COUNTS.values())
