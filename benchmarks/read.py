"""Reading a compressed series: iad's parallel decode against its serial path and plain pydicom, same run.

Transcodes the prepare benchmark's 200-slice 512×512 CT series once to JPEG lossless (process 14,
SV1) and JPEG 2000 lossless with GDCM, then times, warm page cache, median of several repeats:
  pydicom          dcmread + pixel_array per file, sorted by position, stacked (a plain reader)
  iad serial       scan_series + read_stored with read_workers=1
  iad <pool> ×N    the same with N workers of the process pool (default) and of the thread pool
Pools are started before timing (a predictor starts its pool once for every series).
Usage: python benchmarks/read.py [--slices 200] [--size 512] [--repeats 3] [--workers N]
"""

from __future__ import annotations

import argparse
import shutil

import numpy as np
from prepare import WORK, ct_series
import pydicom
from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1

from iad.dicom import POOL_KINDS, ReadLimits, resolve_workers, scan_series, warm_pool
from iad.dicom.decode_pool import DEFAULT_POOL
from iad.preprocessing.cache import read_stored
from iad.synthetic.writer import transcode
from iad.utils.timing import median_seconds

SYNTAXES = {"JPEG lossless": JPEGLosslessSV1, "JPEG 2000": JPEG2000Lossless}
GOAL_SPEEDUP = 3.0  # the goal on 4 cores


def compressed_series(slices: int, size: int, name: str, syntax: str):
    folder = WORK / f"ct_{slices}x{size}_{syntax}"
    paths = sorted(folder.glob("*.dcm")) if folder.exists() else []
    if len(paths) != slices:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for source in ct_series(slices, size):
            transcode(source, folder / source.name, syntax)
        paths = sorted(folder.glob("*.dcm"))
    return folder, paths


def plain_pydicom(paths) -> np.ndarray:
    datasets = sorted((pydicom.dcmread(p) for p in paths), key=lambda ds: float(ds.ImagePositionPatient[2]))
    return np.stack([ds.pixel_array for ds in datasets])


def iad_read(folder, workers: int, pool: str):
    return read_stored(scan_series(folder, ReadLimits(workers=workers, pool=pool)))


def time_methods(folder, paths, workers: int, repeats: int) -> dict[str, float]:
    """Median seconds of plain pydicom, iad serial and iad on each pool kind, for one series."""
    times = {"plain pydicom": median_seconds(lambda: plain_pydicom(paths), repeats),
             "iad serial": median_seconds(lambda: iad_read(folder, 1, DEFAULT_POOL), repeats)}
    for pool in POOL_KINDS:
        times[f"iad {pool} ×{workers}"] = median_seconds(lambda pool=pool: iad_read(folder, workers, pool), repeats)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="default: every core")
    args = parser.parse_args()
    workers = resolve_workers(args.workers)
    for pool in POOL_KINDS:
        warm_pool(pool, workers)
    print(f"{args.slices} slices of {args.size}² CT, median of {args.repeats}, {workers} workers")
    print(f"{'syntax':<15}{'method':<22}{'seconds':>9}{'vs serial':>11}{'vs pydicom':>12}")
    for name, syntax in SYNTAXES.items():
        folder, paths = compressed_series(args.slices, args.size, name, syntax)
        reference = plain_pydicom(paths)
        stored = iad_read(folder, workers, DEFAULT_POOL)
        assert np.array_equal(np.stack(stored.slices), reference), "parallel read differs from pydicom"
        times = time_methods(folder, paths, workers, args.repeats)
        for method, seconds in times.items():
            print(f"{name:<15}{method:<22}{seconds:>9.3f}{times['iad serial'] / seconds:>10.2f}x"
                  f"{times['plain pydicom'] / seconds:>11.2f}x")
    print(f"goal: >= {GOAL_SPEEDUP:g}x the serial path on 4 cores")


if __name__ == "__main__":
    main()
