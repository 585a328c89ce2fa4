"""Where an external TOF-MRA source lives (the `external` config group's target), and making it exist (no torch)."""

from __future__ import annotations

from dataclasses import dataclass
import logging
from pathlib import Path

from iad.external.bids import DATASETS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExternalSource:
    """External BIDS datasets under one name.

    roots: dataset id (`ds003949` / `ds005096`) → its BIDS folder.
    exclude_acq: acquisitions (`acq-<label>`) never cached (venography by default), recorded in series.csv.
    synthetic: settings of `iad.synthetic.bids.make_bids`; the datasets are generated into the roots
        when missing or made with other settings (the roots must then be `<folder>/<dataset id>`).
    truth: synthetic only: the generator's truth.csv (each lesion's location).
    """

    name: str
    roots: dict[str, str]
    exclude_acq: tuple[str, ...] = ("MRV",)
    synthetic: dict | None = None
    truth: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "roots", {str(k): str(v) for k, v in dict(self.roots).items()})
        object.__setattr__(self, "exclude_acq", tuple(str(a) for a in self.exclude_acq or ()))
        unknown = sorted(set(self.roots) - set(DATASETS))
        if unknown:
            raise ValueError(f"external source '{self.name}': unknown datasets {unknown} (known: {', '.join(DATASETS)})")
        if not self.roots:
            raise ValueError(f"external source '{self.name}': no dataset roots")

    @property
    def synthetic_root(self) -> Path:
        """The folder the synthetic generator writes both datasets into (the roots' common parent)."""
        parents = {Path(root).parent for root in self.roots.values()}
        names_ok = all(Path(root).name == dataset for dataset, root in self.roots.items())
        if len(parents) != 1 or not names_ok:
            raise ValueError(f"external source '{self.name}': synthetic roots must be <folder>/<dataset id>, got {self.roots}")
        return parents.pop()


def ensure_external(source: ExternalSource) -> None:
    """Generate the synthetic datasets when configured and missing or made with other settings; otherwise
    check every root exists (a clear error naming the dataset and the path)."""
    if source.synthetic is not None:
        from iad.synthetic.bids import bids_settings, is_current_bids, make_bids

        root = source.synthetic_root
        wanted = bids_settings(**dict(source.synthetic))
        if not is_current_bids(root, wanted):
            log.info("generating synthetic external data in %s (%s)", root, wanted)
            make_bids(root, **wanted)
    for dataset, root in source.roots.items():
        if not Path(root).is_dir():
            raise FileNotFoundError(f"external source '{source.name}': {dataset} folder {root} not found "
                                    "(set external.roots or paths.data_dir)")
