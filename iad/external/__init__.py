"""External TOF-MRA datasets (BIDS): discovery, masks, orientation."""
