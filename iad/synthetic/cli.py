"""Command line: `python -m iad.synthetic OUT --n-series N --seed S [--size-range MIN MAX] [--workers W]`."""

from __future__ import annotations

import argparse

from iad.synthetic.dataset import make_dataset
from iad.synthetic.plan import SIZE_RANGE


def main(argv: list[str] | None = None) -> None:
    """Generate a synthetic dataset and print its summary."""
    parser = argparse.ArgumentParser(prog="python -m iad.synthetic", description=main.__doc__)
    parser.add_argument("out", help="dataset folder (created; complete series already there are kept)")
    parser.add_argument("--n-series", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--size-range", type=int, nargs=2, default=SIZE_RANGE, metavar=("MIN", "MAX"), help="in-plane image size range in pixels"
    )
    parser.add_argument("--workers", type=int, default=1, help="parallel processes")
    args = parser.parse_args(argv)
    summary = make_dataset(args.out, args.n_series, args.seed, size_range=tuple(args.size_range), workers=args.workers)
    print(summary.format())
