"""Series → cache throughput against a seed-style PNG export and the raw-read floor, one process.

Writes an uncompressed 200-slice 512×512 int16 CT series (RescaleIntercept −1024) once, then times,
with a warm page cache, the median of several repeats of:
  floor      read every file's bytes
  pydicom    dcmread + pixel_array per file, stack, np.save (a plain exporter)
  seed-style dcmread + pixel_array per file, window, 3-channel (t−1, t, t+1) PNG per slice with cv2
  iad        iad.preprocessing.cache_series (headers, direct pixel read, LUT window, memmap .npy)
and iad's peak Python heap (tracemalloc) against the cached volume's bytes.
Usage: python benchmarks/prepare.py [--slices 200] [--size 512] [--repeats 5]
"""

from __future__ import annotations

import argparse
from pathlib import Path
import shutil
import tempfile
import tracemalloc

import cv2
import numpy as np
import pydicom

from iad.preprocessing import PreprocessConfig, cache_series
from iad.synthetic.writer import write_ct_phantom
from iad.utils.timing import median_seconds

WORK = Path(__file__).resolve().parent / "_work"


def read_floor(paths: list[Path]) -> None:
    for path in paths:
        path.read_bytes()


def plain_pydicom(paths: list[Path], out: Path) -> None:
    datasets = [pydicom.dcmread(p) for p in paths]
    datasets.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    np.save(out / "plain.npy", np.stack([ds.pixel_array for ds in datasets]))


def seed_style(paths: list[Path], out: Path, centre: float = 40, width: float = 450) -> None:
    datasets = [pydicom.dcmread(p) for p in paths]
    datasets.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    images = []
    for ds in datasets:
        img = np.clip(ds.pixel_array.astype(np.float32), centre - width / 2, centre + width / 2)
        img = (img - img.min()) / max(img.max() - img.min(), 1e-6) * 255
        images.append(img.astype(np.uint8))
    for t in range(len(images)):
        prev, nxt = images[max(t - 1, 0)], images[min(t + 1, len(images) - 1)]
        cv2.imwrite(str(out / f"{t:04d}.png"), np.dstack([prev, images[t], nxt]))


def run_iad(folder: Path, out: Path) -> None:
    target = out / "iad" / "series"
    shutil.rmtree(target, ignore_errors=True)
    cache_series(folder, target, PreprocessConfig())


def ct_series(slices: int, size: int) -> list[Path]:
    """The benchmark's CT series files, written once into the work folder (a partial folder is rewritten)."""
    folder = WORK / f"ct_{slices}x{size}"
    paths = sorted(folder.glob("*.dcm")) if folder.exists() else []
    if len(paths) != slices:
        shutil.rmtree(folder, ignore_errors=True)
        paths = write_ct_phantom(folder, slices, size)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    paths = ct_series(args.slices, args.size)
    folder = paths[0].parent
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        out = Path(tmp)
        (out / "iad").mkdir()
        read_floor(paths)  # warm the page cache
        timings = {
            "floor (read bytes)": median_seconds(lambda: read_floor(paths), args.repeats),
            "plain pydicom → .npy": median_seconds(lambda: plain_pydicom(paths, out), args.repeats),
            "seed-style PNG export": median_seconds(lambda: seed_style(paths, out), max(1, args.repeats // 2)),
            "iad cache_series": median_seconds(lambda: run_iad(folder, out), args.repeats),
        }
        tracemalloc.start()
        run_iad(folder, out)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()

    ours = timings["iad cache_series"]
    floor = timings["floor (read bytes)"]
    print(f"series: {args.slices} slices of {args.size}x{args.size} int16 CT, uncompressed; median of {args.repeats}")
    print(f"{'method':<24}{'seconds':>10}{'vs iad':>10}")
    for name, seconds in timings.items():
        print(f"{name:<24}{seconds:>10.4f}{seconds / ours:>9.2f}x")
    volume_bytes = args.slices * args.size * args.size
    print(f"iad is {timings['seed-style PNG export'] / ours:.1f}x faster than the seed-style export (target >= 10x)")
    print(f"iad is {ours / floor:.1f}x the read floor (target <= 10x)")
    print(f"iad peak heap {peak / 2**20:.1f} MiB = {peak / volume_bytes:.2f}x the cached uint8 volume "
          f"({volume_bytes / 2**20:.0f} MiB; target <= 3x)")


if __name__ == "__main__":
    main()
