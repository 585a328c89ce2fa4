"""Detection: the ultralytics YOLO detectors (exp0 aneurysm on 2.5D slices, exp1 brain on the mean image).

Their images come from the series cache, their runs follow the classifiers' run contract, their
weights are exported weights-only (`iad.contract.DETECTOR_FILE`), and their outputs are
out-of-fold detections, brain crop tables and findings.
"""
