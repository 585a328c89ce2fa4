"""Predict with trained models: `python -m iad.predict model_path=<bundle|spec|sweep|run> input=<series folder(s)>`
(or `iad-predict ...`, or `python predict.py ...`).

Modes: `mode=submission` (default) writes submission.csv and timings.csv (with `localize=true` also
findings.csv and findings/<SeriesInstanceUID>.png per positive series); `mode=bundle` exports a
self-contained bundle; `mode=oof` re-scores a sweep's held-out series (e.g. `tta.center_crop=0.75`,
`cost.slice_stride=2`); `mode=cost` prints the seconds per series of each stage and model.
"""

import hydra
from omegaconf import DictConfig, OmegaConf

from iad.utils.config import CONFIG_DIR
from iad.utils.env import setup_env

setup_env()


def load_predictor(cfg: DictConfig):
    """The Predictor of `model_path` with every setting of predict.yaml applied."""
    from iad.inference import Predictor

    return Predictor.load(cfg.model_path, device=cfg.device, batch_size=cfg.batch_size, hflip=cfg.tta.hflip,
                          center_crop=cfg.tta.center_crop, time_budget_s=cfg.time_budget_s,
                          max_series_mb=cfg.get("max_series_mb"), cost=_container(cfg.get("cost")),
                          devices=_container(cfg.get("devices")), read_workers=cfg.get("read_workers"),
                          read_pool=cfg.get("read_pool", "processes"), **_detector_settings(cfg, cfg.get("localize")))


def _detector_settings(cfg: DictConfig, localize: bool) -> dict:
    """Predictor.load's aneurysm detector arguments from `localize` and the `aneurysm_detector` node."""
    detector = _container(cfg.get("aneurysm_detector")) or {}
    return {"localize": bool(localize), "aneurysm_detector": detector.pop("path", None), "aneurysm_cost": detector}


def _container(node):
    return OmegaConf.to_container(node, resolve=True) if node is not None else None


def submission(cfg: DictConfig) -> None:
    from iad.inference import predict_folder

    predictor = load_predictor(cfg)
    frame = predict_folder(predictor, cfg.input, cfg.output_dir, localize=bool(cfg.get("localize")),
                           localize_threshold=cfg.get("localize_threshold", 0.5))
    print(f"{len(frame)} series → {cfg.output_dir}/submission.csv")
    if cfg.get("localize"):
        print(f"findings → {cfg.output_dir}/findings.csv, {cfg.output_dir}/findings/")


def bundle(cfg: DictConfig) -> None:
    from iad.inference import Predictor, export_bundle

    # The aneurysm detector (aneurysm_detector.path, else the spec's) travels with the bundle whenever there is one.
    predictor = Predictor.load(cfg.model_path, hflip=cfg.tta.hflip, center_crop=cfg.tta.center_crop,
                               cost=_container(cfg.get("cost")), **_detector_settings(cfg, True))
    print(f"bundle → {export_bundle(predictor, cfg.output_dir)}")


def oof(cfg: DictConfig) -> None:
    from iad.evaluation.cv import format_cv_report
    from iad.inference.rescore import rescore_sweep

    _, report, path = rescore_sweep(cfg.model_path, hflip=bool(cfg.tta.hflip), center_crop=cfg.tta.center_crop,
                                    batch_size=cfg.batch_size, device=cfg.device, cost=_container(cfg.get("cost")))
    print(f"{format_cv_report(report)}\nmodel seconds per series: {report['model_s_per_series']:.4f}\n→ {path}")


def cost(cfg: DictConfig) -> None:
    from pathlib import Path

    from iad.inference.cost import COST_FILE, measure_cost, representative_series
    from iad.utils.io import write_json_atomic

    predictor = load_predictor(cfg)
    series = representative_series(cfg.input, cfg.output_dir)
    table = measure_cost(predictor, series, repeats=cfg.cost_repeats)
    write_json_atomic(table.as_dict(), Path(cfg.output_dir) / COST_FILE)
    print(f"{table.format(cfg.n_series)}\n→ {Path(cfg.output_dir) / COST_FILE}")


MODES = {"submission": submission, "bundle": bundle, "oof": oof, "cost": cost}


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
