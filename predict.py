"""Predict with trained models: `python predict.py model_path=<bundle|spec|sweep|run> input=<series folder(s)>`
(same as `python -m iad.predict`); `mode=bundle` exports a bundle, `mode=oof` re-scores a sweep."""

from iad.predict import main

if __name__ == "__main__":
    main()
