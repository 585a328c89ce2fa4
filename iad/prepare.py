"""Build the series cache alone: `python -m iad.prepare` (or `iad-prepare`, or `python -m iad.preprocessing`)
`[dataset=rsna] [preprocess.image_size=384] [workers=8]`."""

from __future__ import annotations

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from iad.utils.config import CONFIG_DIR
from iad.utils.env import setup_env

setup_env()


@hydra.main(config_path=str(CONFIG_DIR), config_name="prepare", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from iad.preflight import preflight

    if preflight(cfg, "prepare"):
        return
    from iad.preprocessing import prepare_dataset

    source = instantiate(cfg.dataset)
    cache, report = prepare_dataset(source, cfg.paths.cache_dir, instantiate(cfg.preprocess), workers=cfg.workers,
                                    max_series_mb=cfg.get("max_series_mb"), read_workers=cfg.get("read_workers", 1))
    print(f"cache {cache.dir}: {report}")
    for uid, reason in report.failed.items():
        print(f"  failed {uid}: {reason}")


if __name__ == "__main__":
    main()
