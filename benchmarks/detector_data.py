"""Detector sample throughput: ultralytics fed from the series cache vs the PNG-per-slice way, same run.

Both sides are ultralytics' own YOLODataset with the same augmentation settings (the exp0 trainer's:
flips, no mosaic/mixup) on the same 2.5D stacks and boxes of a 200×512² CT series; one side reads
memory-mapped cache slices (`iad.detection.dataset.CachedSliceDataset`), the other one 3-channel PNG
per slice plus a YOLO label file (the reference's export). One process (= one loader worker), random
order, alternating rounds. Usage: python benchmarks/detector_data.py [--samples 300] [--imgsz 640] [--rounds 3]
"""

from __future__ import annotations

import argparse
from pathlib import Path
import shutil
import time

import cv2
import numpy as np
import pandas as pd

from iad.utils.env import setup_env

setup_env(offline=True)

from iad.detection.labels import LABELS_COL, SLICE_COL, SPLIT_COL  # noqa: E402
from iad.labels import UID_COL  # noqa: E402
from iad.preprocessing import PreprocessConfig, SeriesCache  # noqa: E402
from iad.synthetic.writer import write_ct_phantom  # noqa: E402

WORK = Path(__file__).resolve().parent / "_work" / "detector_data"
N_SLICES, SIDE = 200, 512
LABEL = "0 0.500000 0.450000 0.040000 0.050000"  # one aneurysm-sized box per slice


def cached_series() -> tuple[SeriesCache, str]:
    config = PreprocessConfig()
    cache = SeriesCache(WORK / "cache", config)
    dicom = WORK / "dicom"
    if not dicom.is_dir():
        shutil.rmtree(WORK, ignore_errors=True)
        write_ct_phantom(dicom, N_SLICES, SIDE)
    cache.build({"bench": dicom}, progress=False)
    return cache, "bench"


def item_table(uid: str, path: Path) -> Path:
    items = pd.DataFrame({UID_COL: uid, SLICE_COL: np.arange(N_SLICES), SPLIT_COL: "train", LABELS_COL: LABEL})
    path.parent.mkdir(parents=True, exist_ok=True)
    items.to_csv(path, index=False)
    return path


def png_export(cache: SeriesCache, uid: str) -> Path:
    """The reference's way: one 3-channel PNG per slice and a YOLO label file beside it."""
    from iad.detection.images import slice_stack

    images, labels = WORK / "png" / "images", WORK / "png" / "labels"
    if len(list(images.glob("*.png"))) != N_SLICES:
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        volume = cache.volume(uid)
        for z in range(N_SLICES):
            cv2.imwrite(str(images / f"{z:04d}.png"), slice_stack(volume, z, (-1, 0, 1))[..., ::-1])
            (labels / f"{z:04d}.txt").write_text(LABEL + "\n")
    return images


def hyp(imgsz: int):
    from ultralytics.cfg import get_cfg

    return get_cfg(overrides={"imgsz": imgsz, "mosaic": 0.0, "mixup": 0.0, "fliplr": 0.5, "hsv_h": 0.0, "hsv_s": 0.0})


def datasets(cache: SeriesCache, uid: str, imgsz: int) -> dict:
    from ultralytics.data.dataset import YOLODataset

    from iad.detection.dataset import CachedSliceDataset

    data = {"names": {0: "aneurysm"}, "nc": 1, "channels": 3}
    common = {"imgsz": imgsz, "batch_size": 1, "augment": True, "hyp": hyp(imgsz), "rect": False, "cache": None,
              "stride": 32, "pad": 0.0, "task": "detect", "classes": None, "data": data, "fraction": 1.0}
    source = {"root": str(cache.root), "preprocess": cache.config.to_dict(), "image": "slices", "offsets": [-1, 0, 1]}
    return {
        "PNG per slice (ultralytics YOLODataset)": YOLODataset(img_path=str(png_export(cache, uid)), **common),
        "series cache (CachedSliceDataset)": CachedSliceDataset(img_path=str(item_table(uid, WORK / "items.csv")),
                                                                cache_source=source, **common),
    }


def samples_per_second(fetch, n: int, size: int) -> float:
    order = np.random.default_rng(1).integers(0, size, size=n)
    fetch(int(order[0]))
    start = time.perf_counter()
    for i in order:
        fetch(int(i))
    return n / (time.perf_counter() - start)


def measures(dataset) -> dict:
    """The image read alone (file decode vs memory-mapped slices), and the whole augmented sample."""
    def read(i: int):
        dataset.ims[i] = None  # past ultralytics' in-memory buffer: every read hits the source
        return dataset.load_image(i)

    return {"image read": read, "augmented sample": dataset.__getitem__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    cache, uid = cached_series()
    sources = datasets(cache, uid, args.imgsz)
    rates: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):  # alternate the sources, so a busy machine slows both alike
        for name, dataset in sources.items():
            for what, fetch in measures(dataset).items():
                rates.setdefault((what, name), []).append(samples_per_second(fetch, args.samples, len(dataset)))
    print(f"{args.samples} detector samples at {args.imgsz} px from {SIDE}² slices, one worker (1 thread), "
          f"median of {args.rounds} alternating rounds")
    print(f"{'':<20}{'source':<44}{'samples/s':>12}{'vs PNG':>9}")
    for what in ("image read", "augmented sample"):
        base = float(np.median(rates[(what, "PNG per slice (ultralytics YOLODataset)")]))
        for name in sources:
            rate = float(np.median(rates[(what, name)]))
            print(f"{what:<20}{name:<44}{rate:>12.0f}{rate / base:>8.2f}x")
    png_mb = sum(p.stat().st_size for p in (WORK / "png").rglob("*")) / 2**20
    print(f"disk: PNG export {png_mb:.0f} MiB written besides the cache; the cache-fed dataset writes an item table only")


if __name__ == "__main__":
    main()
