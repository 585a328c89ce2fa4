"""Train a model: `python train.py [experiment=exp2_vit_large_384] [data.fold=0]` (same as `python -m iad.train`).

Sweep the folds with `python train.py -m experiment=X data.fold=0,1,2,3,4`: each fold lands in
`<sweep dir>/fold_<k>/` and the merged `oof.csv` / `cv.json` in the sweep dir.
"""

from iad.train import main

if __name__ == "__main__":
    main()
