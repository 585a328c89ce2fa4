"""Train a model: `python -m iad.train` (or `iad-train`, or `python train.py`) `[experiment=X] [data.fold=k]`.

Sweep the folds with `-m experiment=X data.fold=0,1,2,3,4`: each fold lands in `<sweep dir>/fold_<k>/` and
the merged `oof.csv` / `cv.json` in the sweep dir. `hydra/launcher=local_folds` runs the folds in parallel,
`hydra/launcher=slurm` submits them to a SLURM cluster.
"""

from __future__ import annotations

import warnings

import hydra
from omegaconf import DictConfig

from iad.utils.config import CONFIG_DIR
from iad.utils.env import setup_env

setup_env()
# torch 2.14 deprecates the LeafSpec that Lightning 2.6's loops still build for every batch: nothing to act on.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


@hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Train one run as configured; returns its validation score (the sweep objective)."""
    from iad.preflight import preflight

    if preflight(cfg, "train"):
        return None
    from iad.training import train
    from iad.training.ddp import ddp_relaunches_this_job
    from iad.training.run import objective

    with ddp_relaunches_this_job():
        return objective(train(cfg))


if __name__ == "__main__":
    main()
