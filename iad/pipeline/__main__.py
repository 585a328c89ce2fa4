"""`python -m iad.pipeline [recipe=reference|demo|smoke] [stages=[...]]`: exp0 → exp1 → brain crops (dataset and
external volumes) → exp2/exp3 → cleaning + pseudo labels → exp4/exp5 → the ensemble → a bundle → predictions,
each stage skipped when finished; then the reference's table for this run."""

from pathlib import Path
import time

import hydra
from omegaconf import DictConfig, OmegaConf

from iad.utils.config import CONFIG_DIR
from iad.utils.env import setup_env

setup_env()


def planner_from(cfg: DictConfig):
    """The stages of the configured pipeline (every command gets the same `paths.root_dir`)."""
    from iad.pipeline.stages import Planner, Recipe

    recipe = Recipe(**OmegaConf.to_container(cfg.recipe, resolve=True))
    common = [f"paths.root_dir={cfg.paths.root_dir}", f"paths.data_dir={cfg.paths.data_dir}",
              f"paths.log_dir={cfg.paths.log_dir}"]
    return Planner(recipe, Path(cfg.paths.output_dir), Path(cfg.paths.log_dir), common)


@hydra.main(config_path=str(CONFIG_DIR), config_name="pipeline", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from iad.pipeline.run import report_table, run_pipeline

    planner = planner_from(cfg)
    if cfg.plan_only:
        stages = planner.stages()
        width = max(len(stage.name) for stage in stages) + 2
        for stage in stages:
            print(f"{stage.name:<{width}}{'finished' if stage.finished() else 'to run':<10}{' '.join(stage.argv[1:])}")
        return
    start = time.perf_counter()
    run_pipeline(planner, only=cfg.stages, echo=cfg.echo)
    print(report_table(planner, OmegaConf.to_container(cfg.reference_scores, resolve=True)))
    print(f"pipeline {planner.out}: {time.perf_counter() - start:.0f} s this call")


if __name__ == "__main__":
    main()
