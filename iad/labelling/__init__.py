"""Label stages: cleaning the RSNA labels and pseudo-labelling external TOF-MRA data."""
