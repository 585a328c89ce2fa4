"""DDP under a Hydra multirun: Lightning's launcher must relaunch the job, not the whole sweep."""

from __future__ import annotations

from contextlib import contextmanager
import os
import sys

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
