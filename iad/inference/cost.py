"""The cost table: seconds per series of each stage and model on this machine, under the spec's settings.

`python predict.py mode=cost model_path=<spec|bundle|sweep|run> [input=<series or folder of series>]`
times one representative series (the input's first series, else a synthetic 200-slice 512² CT) and
prints read, preprocess and every member's and fold model's seconds, then the expected seconds per
series and for `n_series` series (the hidden test set holds about 2,500).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
import tempfile

from iad.dicom import scan_series
from iad.inference.predictor import LoadedMember, Predictor
from iad.preprocessing.cache import normalised_volume, read_stored
from iad.utils.timing import median_seconds

COST_FILE = "cost.json"
HIDDEN_TEST_SERIES = 2500  # about the competition's hidden test set
PHANTOM_SHAPE = (200, 512)  # slices, size of the synthetic series timed when no input is given


@dataclass
class CostTable:
    """Median seconds per series: `stages` (read, preprocess), `members` (each member, its folds run together)
    and `models` (each fold model alone, as (member, fold) → seconds)."""

    series: str
    n_slices: int
    stages: dict[str, float] = field(default_factory=dict)
    members: dict[str, float] = field(default_factory=dict)
    models: dict[tuple[str, int], float] = field(default_factory=dict)

    @property
    def per_series(self) -> float:
        return sum(self.stages.values()) + sum(self.members.values())

    def as_dict(self) -> dict:
        """JSON-ready: what `cost.json` holds (models keyed "<member>/<fold index>")."""
        return {"series": self.series, "n_slices": self.n_slices, "per_series_s": self.per_series,
                "stages": self.stages, "members": self.members,
                "models": {f"{name}/{index}": seconds for (name, index), seconds in self.models.items()}}

    def format(self, n_series: int = HIDDEN_TEST_SERIES) -> str:
        rows = [(stage, seconds) for stage, seconds in self.stages.items()]
        for member, seconds in self.members.items():
            rows.append((f"member {member}", seconds))
            rows += [(f"  fold model {index}", seconds) for (name, index), seconds in self.models.items() if name == member]
        total = f"expected for {n_series} series"
        width = max(len(label) for label, _ in [*rows, (total, 0)]) + 2
        lines = [f"cost of {self.series} ({self.n_slices} slices), median seconds per series",
                 f"{'stage / member / model':<{width}}{'seconds':>10}"]
        lines += [f"{label:<{width}}{seconds:>10.3f}" for label, seconds in rows]
        lines.append(f"{'expected per series':<{width}}{self.per_series:>10.3f}")
        hours = self.per_series * n_series / 3600
        lines.append(f"{total:<{width}}{self.per_series * n_series:>10.0f} s ({hours:.2f} h)")
        return "\n".join(lines)


def _member_seconds(predictor: Predictor, member: LoadedMember, volumes: dict, repeats: int) -> float:
    """Seconds of one member's input crops, forward passes and aggregation (its own cost controls)."""
    single = Predictor([replace(member, weight=1.0)], batch_size=predictor.batch_size, device=str(predictor.device))
    key = member.models[0].input_spec.preprocess.key
    means = {other: mean for other, (_, mean) in volumes.items()}  # brain detectors' inputs
    return median_seconds(lambda: single.predict_volume(*volumes[key], key, means), repeats, warmup=True)


def measure_cost(predictor: Predictor, series_dir: str | Path, repeats: int = 3) -> CostTable:
    """Time every stage of `predictor` on one series folder (median of `repeats` after one warm-up)."""
    predictor.warm_read_pool()
    stored = read_stored(scan_series(series_dir, predictor.read_limits))
    table = CostTable(str(series_dir), len(stored.slices))
    read = lambda: read_stored(scan_series(series_dir, predictor.read_limits))  # noqa: E731
    table.stages["read"] = median_seconds(read, repeats, warmup=True)
    configs = {model.input_spec.preprocess.key: model.input_spec.preprocess
               for member in predictor.members for model in member.models}
    configs.update(predictor.brain_detector_configs())  # a brain detector's cache is preprocessed too
    table.stages["preprocess"] = sum(median_seconds(lambda c=config: normalised_volume(stored, c), repeats, warmup=True)
                                     for config in configs.values())
    volumes = {key: normalised_volume(stored, config) for key, config in configs.items()}
    for member in predictor.members:
        table.members[member.name] = _member_seconds(predictor, member, volumes, repeats)
        for index, model in enumerate(member.models):
            table.models[(member.name, index)] = _member_seconds(predictor, replace(member, models=[model]), volumes,
                                                                 repeats)
    return table


def representative_series(input_path: str | Path | None, work_dir: str | Path | None = None) -> Path:
    """The input's first series, or a synthetic CT phantom (PHANTOM_SHAPE) written under `work_dir`."""
    if input_path is not None:
        from iad.inference.submission import series_folders_in

        return series_folders_in(input_path)[0]
    from iad.synthetic.writer import write_ct_phantom

    folder = Path(work_dir or tempfile.mkdtemp(prefix="iad-cost-")) / "phantom"
    n_slices, size = PHANTOM_SHAPE
    if len(list(folder.glob("*.dcm"))) != n_slices:
        write_ct_phantom(folder, n_slices, size)
    return folder
