"""Labelling stages between the first models and exp4 / exp5: cleaning the RSNA labels with out-of-fold
predictions (`iad.labelling.cleaning`, the rule; `python -m iad.labelling.clean`, the stage)."""
