"""Training-sample throughput per worker: iad's memory-mapped 2.5D loader vs a seed-style PNG loader.

Both produce the same sample: a 3-channel (t−1, t, t+1) 384² crop of a 512² slice, normalised to a
float tensor. The seed-style loader reads one 3-channel PNG per slice with cv2 (the reference's
export); iad slices a memory-mapped uint8 volume. Measured in one process (= one DataLoader worker),
random slice order, same run. Usage: python benchmarks/loader.py [--samples 400] [--size 384]
"""

from __future__ import annotations

import argparse
from pathlib import Path
import shutil
import time

import cv2
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
import numpy as np
import pandas as pd
import torch

from iad.data import SliceDataset, SliceInput
from iad.labels import LABEL_COLS, UID_COL
from iad.utils.config import CONFIG_DIR

WORK = Path(__file__).resolve().parent / "_work" / "loader"
N_SLICES, SIDE = 200, 512
BOX = (0.1, 0.1, 0.9, 0.9)


def phantom_volume() -> np.ndarray:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, size=(N_SLICES, SIDE // 8, SIDE // 8)).astype(np.uint8)
    return np.stack([cv2.resize(s, (SIDE, SIDE), interpolation=cv2.INTER_CUBIC) for s in small])


def prepare(volume: np.ndarray) -> tuple[Path, Path]:
    volume_path, png_dir = WORK / "volume.npy", WORK / "png"
    if not volume_path.exists() or len(list(png_dir.glob("*.png"))) != N_SLICES:
        shutil.rmtree(WORK, ignore_errors=True)
        png_dir.mkdir(parents=True)
        np.save(volume_path, volume)
        for t in range(N_SLICES):
            stack = np.dstack([volume[max(t - 1, 0)], volume[t], volume[min(t + 1, N_SLICES - 1)]])
            cv2.imwrite(str(png_dir / f"{t:04d}.png"), stack)
    return volume_path, png_dir


class SeedStyleDataset(torch.utils.data.Dataset):
    """The reference's input path: read a 3-channel PNG, crop, resize, normalise."""

    def __init__(self, png_dir: Path, size: int):
        self.files = sorted(png_dir.glob("*.png"))
        self.size = size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = cv2.imread(str(self.files[index]))
        h, w = image.shape[:2]
        x0, y0, x1, y1 = int(BOX[0] * w), int(BOX[1] * h), int(BOX[2] * w), int(BOX[3] * h)
        image = cv2.resize(image[y0:y1, x0:x1], (self.size, self.size), interpolation=cv2.INTER_LINEAR)
        return torch.from_numpy(((image.astype(np.float32) / 255 - 0.5) / 0.5).transpose(2, 0, 1).copy())


def iad_dataset(volume_path: Path, size: int, transform) -> SliceDataset:
    series = pd.DataFrame({UID_COL: ["bench"], **{c: [0] for c in LABEL_COLS}})
    items = pd.DataFrame({"series": np.zeros(N_SLICES, dtype=int), "z": np.arange(N_SLICES)})
    return SliceDataset(series, items, series[list(LABEL_COLS)].to_numpy(np.float32),
                        lambda uid: np.load(volume_path, mmap_mode="r"), SliceInput(size), [BOX], transform=transform)


def reference_augment(size: int):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["augment=reference", f"data.input.img_size={size}", "paths.output_dir=."])
    return instantiate(cfg.augment)


def samples_per_second(dataset, n: int) -> float:
    order = np.random.default_rng(1).integers(0, len(dataset), size=n)
    dataset[int(order[0])]  # open files / warm caches
    start = time.perf_counter()
    for i in order:
        dataset[int(i)]
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--size", type=int, default=384)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)  # one DataLoader worker = one core
    volume_path, png_dir = prepare(phantom_volume())
    rates = {
        "seed-style PNG (cv2)": samples_per_second(SeedStyleDataset(png_dir, args.size), args.samples),
        "iad memmap, no augmentation": samples_per_second(iad_dataset(volume_path, args.size, None), args.samples),
        "iad memmap, reference augmentation": samples_per_second(
            iad_dataset(volume_path, args.size, reference_augment(args.size)), args.samples),
    }
    base = rates["seed-style PNG (cv2)"]
    print(f"{args.samples} samples of {args.size}² from {SIDE}² slices, one worker (1 thread)")
    print(f"{'loader':<38}{'samples/s':>12}{'vs PNG':>10}")
    for name, rate in rates.items():
        print(f"{name:<38}{rate:>12.0f}{rate / base:>9.1f}x")
    print(f"iad without augmentation is {rates['iad memmap, no augmentation'] / base:.1f}x the PNG loader (target >= 5x)")


if __name__ == "__main__":
    main()
