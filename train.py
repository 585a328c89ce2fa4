"""Train a model: `python train.py [experiment=exp2_vit_large_384] [data.fold=0]`.

Sweep the folds with `python train.py -m experiment=X data.fold=0,1,2,3,4`: each fold lands in
`<sweep dir>/fold_<k>/` and the merged `oof.csv` / `cv.json` in the sweep dir.
"""

import hydra
from omegaconf import DictConfig

from iad.utils.config import CONFIG_DIR
from iad.utils.env import setup_env

setup_env()


@hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from iad.training import train

    return train(cfg).get("weighted_auc")


if __name__ == "__main__":
    main()
