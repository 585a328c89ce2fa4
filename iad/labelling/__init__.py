"""Label stages between the first models and exp4 / exp5: cleaning the RSNA labels with out-of-fold predictions
(`iad.labelling.cleaning`, the rule; `python -m iad.labelling.clean`, the stage) and pseudo-labelling external
TOF-MRA slices (`iad.labelling.pseudo_labels`, the rule; `python -m iad.labelling.pseudo`, the stage)."""
