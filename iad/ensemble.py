"""Blend trained models' OOF predictions into an ensemble spec: `python -m iad.ensemble ensemble=final1`
(or `iad-ensemble`, or `python ensemble.py`).

`ensemble=final2`, or `ensemble=custom 'ensemble.members={a:{path:...},b:{path:...}}'`;
`ensemble.weights=optimize` fits the weights (with a nested-CV estimate), `ensemble.blend=rank` blends ranks.
Writes ensemble.json (the spec a predictor loads), report.json and oof.csv to logs/ensemble/<name>/.
"""

import hydra
from omegaconf import DictConfig, OmegaConf

from iad.utils.config import CONFIG_DIR
from iad.utils.env import setup_env

setup_env()


@hydra.main(config_path=str(CONFIG_DIR), config_name="ensemble", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from iad.preflight import preflight

    if preflight(cfg, "ensemble"):
        return None
    from iad.ensembling import format_ensemble_report, run_ensemble

    report = run_ensemble(**OmegaConf.to_container(cfg.ensemble, resolve=True), output_dir=cfg.paths.output_dir)
    print(f"{format_ensemble_report(report)}\n→ {report['spec']}")
    return report["blends"]["mean"]["weighted_auc"]


if __name__ == "__main__":
    main()
