"""Per-series detector time against the classifier's, side by side in one run, on one core.

One 200-slice 512×512 CT series (the prepare benchmark's writer), read and normalised once; then,
each the median of `--repeats` after a warm-up, with one torch thread:
- the classifier: the demo experiment's model through the Predictor (model + aggregate, every slice);
- the brain detector (exp1's yolov5n): one mean image;
- the aneurysm detector (a yolo11n-sized net): every slice, and the documented subset (the classifier's
  top_k slices ± neighbours, `iad.detection.findings`), through the localizer the Predictor runs.
Weights are untrained (they do not change the time; `conf=0` keeps NMS busy as a trained net's would be
at worst). The reference's exp0 (yolo11x at 1280 px) is far too slow for one CPU core: its parameters
and FLOPs are printed next to the timed nets' for scale. Times are per fold detector; k folds cost k×.
Usage: python benchmarks/detect.py [--slices 200] [--size 512] [--repeats 3] [--imgsz 640] [--big-imgsz 1280]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile

import cv2
from prepare import ct_series
import torch

from iad.boxes import ANEURYSM_CLASSES, BRAIN_CLASSES
from iad.contract import DetectorSpec
from iad.detection.findings import DetectorCost
from iad.dicom import scan_series
from iad.inference.localize import AneurysmLocalizer
from iad.inference.predictor import LoadedMember, Predictor
from iad.preprocessing.cache import normalised_volume, read_stored
from iad.preprocessing.normalize import PreprocessConfig
from iad.utils.timing import median_seconds
from predict import demo_model

REFERENCE_EXP0 = ("yolo11x.yaml", 1280)  # the reference's aneurysm detector
REFERENCE_EXP1 = ("yolov5n.yaml", 640)   # the reference's brain detector


def detector(yaml: str, task: str, classes, imgsz: int, image: str, preprocess: PreprocessConfig):
    """An untrained detector exported and loaded as inference loads it (weights-only file, fused)."""
    from ultralytics.nn.tasks import DetectionModel

    from iad.detection.detector import export_detector, load_detector

    net = DetectionModel(yaml, nc=len(classes), verbose=False)
    path = f"{tempfile.mkdtemp(prefix='iad-detect-bench-')}/detector.pt"
    export_detector(net, DetectorSpec(task, classes, imgsz, image, preprocess), path)
    return load_detector(path)


def quiet_ultralytics() -> None:
    """No "Overriding model.yaml nc" lines between the figures."""
    from ultralytics.utils import LOGGER

    LOGGER.setLevel(logging.WARNING)


def size_of(yaml: str, imgsz: int, classes) -> tuple[float, float]:
    """(millions of parameters, GFLOPs at imgsz) from ultralytics' own model info."""
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils.torch_utils import get_flops

    net = DetectionModel(yaml, nc=len(classes), verbose=False)
    return sum(p.numel() for p in net.parameters()) / 1e6, get_flops(net, imgsz)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--imgsz", type=int, default=640, help="detector input size timed (the reference's exp1 size)")
    parser.add_argument("--big-imgsz", type=int, default=1280, help="the reference's exp0 size: timed on the subset only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    quiet_ultralytics()
    folder = ct_series(args.slices, args.size)[0].parent
    model = demo_model()
    preprocess = model.input_spec.preprocess
    top = DetectorCost(conf=0.0)
    rows, classifier_s = [], []
    brain = detector(REFERENCE_EXP1[0], "brain", BRAIN_CLASSES, args.imgsz, "mean", preprocess)
    mean_image = normalised_volume(read_stored(scan_series(folder)), preprocess)[1]
    rows.append((f"brain yolov5n@{args.imgsz}, mean image",
                 median_seconds(lambda: brain.detect_mean(mean_image, conf=0.0), args.repeats, warmup=True)))
    for imgsz, subsets in ((args.imgsz, ("top", "all")), (args.big_imgsz, ("top",))):
        aneurysm = detector("yolo11n.yaml", "aneurysm", ANEURYSM_CLASSES, imgsz, "slices", preprocess)
        for slices in subsets:
            counted = SliceCount(aneurysm)
            localizer = AneurysmLocalizer([counted], DetectorCost(slices=slices, conf=0.0))
            predictor = Predictor([LoadedMember("demo", 1.0, [model])], batch_size=64, read_workers=1, localizer=localizer)
            # The classifier and the detector timed in the same calls (the Predictor's stage timings).
            timings = stage_timings(predictor, folder, 1 if slices == "all" else args.repeats)
            classifier_s.append(timings["classifier"])
            what = f"top {top.top_k} ± {top.neighbours}: {counted.n} slices" if slices == "top" else f"all {counted.n} slices"
            rows.append((f"aneurysm yolo11n@{imgsz}, {what}", timings["detect"]))
    rows.insert(0, ("classifier (demo model, every slice)", statistics.median(classifier_s)))
    report(rows, args)


class SliceCount:
    """A detector that remembers how many slices it was last asked about."""

    def __init__(self, detector):
        self.detector, self.spec, self.n = detector, detector.spec, 0

    def detect_series_slices(self, volume, zs, **kwargs):
        self.n = len(zs)
        return self.detector.detect_series_slices(volume, zs, **kwargs)


def stage_timings(predictor: Predictor, folder, repeats: int) -> dict[str, float]:
    """Median classifier (model + aggregate) and detector seconds of `predict_with_timings(localize=True)`."""
    predictor.predict_with_timings(folder, localize=True)  # warm-up
    runs = [predictor.predict_with_timings(folder, localize=True).timings for _ in range(repeats)]
    return {"classifier": statistics.median(t.model + t.aggregate for t in runs),
            "detect": statistics.median(t.detect for t in runs)}


def report(rows: list[tuple[str, float]], args) -> None:
    base = rows[0][1]
    print(f"{args.slices} slices of {args.size}² CT, one core, median of {args.repeats} (the all-slices row: one run "
          f"after a warm-up); per fold detector; classifier: median over the detector rows' runs")
    width = max(len(name) for name, _ in rows) + 2
    print(f"{'per series':<{width}}{'seconds':>9}{'vs classifier':>15}")
    for name, seconds in rows:
        print(f"{name:<{width}}{seconds:>9.3f}{seconds / base:>14.1f}x")
    print("\nsizes from ultralytics (params, GFLOPs at the input size):")
    for yaml, imgsz, classes in (("yolov5n.yaml", 640, BRAIN_CLASSES), ("yolo11n.yaml", 640, ANEURYSM_CLASSES),
                                 ("yolo11n.yaml", 1280, ANEURYSM_CLASSES), (*REFERENCE_EXP0, ANEURYSM_CLASSES)):
        params, gflops = size_of(yaml, imgsz, classes)
        print(f"  {yaml.removesuffix('.yaml')}@{imgsz}: {params:.2f} M params, {gflops:.1f} GFLOPs per image")
    _, small = size_of("yolo11n.yaml", args.big_imgsz, ANEURYSM_CLASSES)
    _, big = size_of(REFERENCE_EXP0[0], args.big_imgsz, ANEURYSM_CLASSES)
    timed = next(seconds for name, seconds in rows if name.startswith(f"aneurysm yolo11n@{args.big_imgsz}"))
    print(f"  yolo11x / yolo11n at {args.big_imgsz}: {big / small:.0f}x the FLOPs; scaling the timed yolo11n@{args.big_imgsz} "
          f"subset row by it (an estimate, not a measurement): ~{timed * big / small:.0f} s per series per fold, "
          f"~{timed * big / small / base:.0f}x the classifier")


if __name__ == "__main__":
    main()
