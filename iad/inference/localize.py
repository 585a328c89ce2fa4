"""The aneurysm detector(s) the Predictor runs to say where a finding is (see iad.detection.findings for the
slice and fold rules): loading them from a spec, a sweep, a run or a bundle (sha256-checked), exporting
them into a bundle, and turning one series' detections into a `Finding` in original pixels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from iad.contract import MODEL_FILE_SUFFIX, ContractError, detectors_in, fold_name
from iad.detection.findings import DetectorCost, Finding, detection_slices, scale_box, strongest_detection
from iad.dicom.headers import FrameRef
from iad.ensembling.spec import ALL_FOLDS, ANEURYSM_DETECTOR_KEY
from iad.utils.io import atomic_write
from iad.utils.weights import file_sha256

BUNDLE_DETECTOR_DIR = "detectors/aneurysm"  # a bundle's aneurysm detector files: fold_<i>.pt


@dataclass
class AneurysmLocalizer:
    """Fold aneurysm detectors (all looking at the same cache) and what they may spend per series."""

    detectors: list  # iad.detection.detector.LoadedDetector
    cost: DetectorCost = field(default_factory=DetectorCost)
    files: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.detectors:
            raise ValueError("an aneurysm localizer needs at least one detector")
        specs = [d.spec for d in self.detectors]
        if any(s.preprocess.key != specs[0].preprocess.key or s.classes != specs[0].classes for s in specs):
            raise ContractError(f"aneurysm detectors {[str(f) for f in self.files]} differ in cache or classes")
        if specs[0].image != "slices":
            raise ContractError(f"{self.files[0] if self.files else 'detector'}: an aneurysm detector looks at "
                                f"slices, this one at the {specs[0].image!r} image")

    @property
    def preprocess(self):
        return self.detectors[0].spec.preprocess

    @property
    def classes(self) -> tuple[str, ...]:
        return self.detectors[0].spec.classes

    def locate(self, series_uid: str, volume: np.ndarray, frames: Sequence[FrameRef], original_hw: tuple[int, int],
               probabilities: Mapping[str, float], scores: np.ndarray | None = None) -> Finding:
        """The finding of one series: `volume` is the detectors' Z×H×W cache volume, `frames[z]` where slice z
        came from, `original_hw` the stored (rows, cols), `scores` the classifiers' per-slice present probability."""
        finding = Finding.from_probabilities(series_uid, probabilities)
        zs = detection_slices(volume.shape[0], self.cost, scores)
        per_fold = [d.detect_series_slices(volume, zs, conf=self.cost.conf, batch_size=self.cost.batch_size)
                    for d in self.detectors]
        best = strongest_detection(per_fold, zs)
        if best is None:
            finding.reason = f"no box above conf {self.cost.conf} on {len(zs)} slices"
            return finding
        ref = frames[best.slice_index]
        finding.sop_uid, finding.frame, finding.slice_index = ref.sop_uid, int(ref.frame), best.slice_index
        finding.box = scale_box(best.box, volume.shape[1:], original_hw)
        finding.confidence, finding.class_name = best.confidence, self.classes[best.cls]
        rows, cols = original_hw
        finding.image = cv2.resize(volume[best.slice_index], (cols, rows), interpolation=cv2.INTER_LINEAR)
        return finding


def _check_digests(folder: str | Path, found: Sequence[Path], files: Sequence[Path], digests: Mapping[str, str]) -> None:
    """Every file a digest is recorded for is there, and each of `files` (those loaded) has its recorded digest."""
    missing = sorted(set(digests) - {path.name for path in found})
    if missing:
        raise ContractError(f"{folder}: detector file(s) {missing} recorded with their sha256 are missing")
    for path in files:
        expected = digests.get(path.name)
        if expected is not None and file_sha256(path) != expected:
            raise ContractError(f"{path}: sha256 differs from the one recorded with it (a changed or damaged file)")


def load_localizer(path: str | Path, cost: DetectorCost | None = None, device: str = "cpu",
                   digests: Mapping[str, str] | None = None) -> AneurysmLocalizer:
    """Fold detectors from an exp0 sweep (its folds' detector.pt), a run, a detector file or a bundle's folder."""
    from iad.detection.detector import load_detector
    from iad.inference.predictor import select_folds

    cost = cost or DetectorCost()
    found = detectors_in(path)
    files = select_folds(found, cost.folds, f"aneurysm detector {path}")
    _check_digests(path, found, files, digests or {})
    return AneurysmLocalizer([load_detector(f, device=device) for f in files], cost, files)


def spec_localizer_entry(spec: Mapping, spec_dir: Path) -> dict | None:
    """A spec's aneurysm detector entry with its path resolved against the spec's folder (None: the spec has none)."""
    entry = spec.get(ANEURYSM_DETECTOR_KEY)
    if entry is None:
        return None
    path = Path(entry["path"])
    return {**entry, "path": str(path if path.is_absolute() else spec_dir / path)}


def export_localizer(localizer: AneurysmLocalizer, out_dir: str | Path) -> dict:
    """Copy the detector files into `out_dir/detectors/aneurysm/fold_<i>.pt`; returns the bundle's spec entry."""
    target = Path(out_dir) / BUNDLE_DETECTOR_DIR
    target.mkdir(parents=True, exist_ok=True)
    for stale in target.glob(f"*{MODEL_FILE_SUFFIX}"):
        stale.unlink()
    digests = {}
    for index, source in enumerate(localizer.files):
        name = f"{fold_name(index)}{MODEL_FILE_SUFFIX}"
        with atomic_write(target / name, "wb") as handle:
            handle.write(Path(source).read_bytes())
        digests[name] = file_sha256(target / name)
    return {"path": BUNDLE_DETECTOR_DIR, "sha256": digests, **localizer.cost.to_dict(), "folds": ALL_FOLDS}
