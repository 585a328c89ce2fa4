"""Predict with trained models: `python -m iad.predict model_path=<bundle|spec|sweep|run> input=<series folder(s)>`
(or `iad-predict ...`, or `python predict.py ...`).

Modes: `mode=submission` (default) writes submission.csv and timings.csv; `mode=bundle` exports a
self-contained bundle; `mode=oof` re-scores a sweep's held-out series (e.g. `tta.center_crop=0.75`).
"""

import hydra
from omegaconf import DictConfig

from iad.utils.config import CONFIG_DIR
from iad.utils.env import setup_env

setup_env()


def submission(cfg: DictConfig) -> None:
    from iad.inference import Predictor, predict_folder

    predictor = Predictor.load(cfg.model_path, device=cfg.device, batch_size=cfg.batch_size, hflip=cfg.tta.hflip,
                               center_crop=cfg.tta.center_crop, time_budget_s=cfg.time_budget_s,
                               max_series_mb=cfg.get("max_series_mb"))
    frame = predict_folder(predictor, cfg.input, cfg.output_dir)
    print(f"{len(frame)} series → {cfg.output_dir}/submission.csv")


def bundle(cfg: DictConfig) -> None:
    from iad.inference import Predictor, export_bundle

    predictor = Predictor.load(cfg.model_path, hflip=cfg.tta.hflip, center_crop=cfg.tta.center_crop)
    print(f"bundle → {export_bundle(predictor, cfg.output_dir)}")


def oof(cfg: DictConfig) -> None:
    from iad.evaluation.cv import format_cv_report
    from iad.inference.rescore import rescore_sweep

    _, report, path = rescore_sweep(cfg.model_path, hflip=bool(cfg.tta.hflip), center_crop=cfg.tta.center_crop,
                                    batch_size=cfg.batch_size, device=cfg.device)
    print(f"{format_cv_report(report)}\n→ {path}")


MODES = {"submission": submission, "bundle": bundle, "oof": oof}


@hydra.main(config_path=str(CONFIG_DIR), config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from iad.preflight import preflight

    if cfg.mode not in MODES:
        raise SystemExit(f"mode must be one of {sorted(MODES)}, got {cfg.mode!r}")
    if preflight(cfg, "predict"):
        return
    MODES[cfg.mode](cfg)


if __name__ == "__main__":
    main()
