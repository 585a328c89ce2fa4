"""Train a model: `python -m iad.train` (or `iad-train`, or `python train.py`) `[experiment=X] [data.fold=k]`.

Sweep the folds with `-m experiment=X data.fold=0,1,2,3,4`: each fold lands in `<sweep dir>/fold_<k>/` and
the merged `oof.csv` / `cv.json` in the sweep dir. `hydra/launcher=local_folds` runs the folds in parallel,
`hydra/launcher=slurm` submits them to a SLURM cluster.
"""

from __future__ import annotations

from contextlib import contextmanager
import os
import sys
import warnings

import hydra
from omegaconf import DictConfig

from iad.utils.config import CONFIG_DIR
from iad.utils.env import setup_env

setup_env()
# torch 2.14 deprecates the LeafSpec that Lightning 2.6's loops still build for every batch: nothing to act on.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


# What Lightning's DDP launcher leaves in the environment of rank 0; the next job of a sweep must not see it.
DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "PL_GLOBAL_SEED")


@contextmanager
def ddp_relaunches_this_job():
    """Under `-m`, make Lightning's DDP launcher start ranks > 0 on this job alone, in this job's folder.

    Lightning relaunches `sys.argv` (the whole sweep, with `-m`) into `hydra.run.dir` (the single-run
    folder); this narrows both to the job: its own overrides and its output folder. Afterwards the
    process group and the launcher's environment are cleared, so the next job launches its own ranks.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import read_write

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        yield
        return
    argv, env = sys.argv, {name: os.environ.get(name) for name in DDP_ENV}
    sys.argv = [argv[0], *hydra_cfg.overrides.task]
    with read_write(hydra_cfg.run):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    try:
        yield
    finally:
        sys.argv = argv
        if env["LOCAL_RANK"] is None:  # this process launched the ranks (not a rank started by torchrun)
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
            for name, value in env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


@hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Train one run as configured; returns its validation weighted AUC (the sweep objective)."""
    from iad.preflight import preflight

    if preflight(cfg, "train"):
        return None
    from iad.training import train

    with ddp_relaunches_this_job():
        return train(cfg).get("weighted_auc")


if __name__ == "__main__":
    main()
