"""Command line: `python -m iad.synthetic OUT --n-series N --seed S [--size-range MIN MAX]
[--locations real|uniform] [--positive-share P] [--max-slices K] [--hidden-positive-share H] [--workers W]`."""

from __future__ import annotations

import argparse

from iad.synthetic.dataset import make_dataset
from iad.synthetic.frequencies import LOCATION_WEIGHTS
from iad.synthetic.plan import SIZE_RANGE, SLICES_RANGE


def main(argv: list[str] | None = None) -> None:
    """Generate a synthetic dataset and print its summary."""
    parser = argparse.ArgumentParser(prog="python -m iad.synthetic", description=main.__doc__)
    parser.add_argument("out", help="dataset folder (created; complete series already there are kept)")
    parser.add_argument("--n-series", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--size-range", type=int, nargs=2, default=SIZE_RANGE, metavar=("MIN", "MAX"), help="in-plane image size range in pixels"
    )
    parser.add_argument("--locations", choices=sorted(LOCATION_WEIGHTS), default="real",
                        help="aneurysm location shares: the competition's (real) or equal (uniform)")
    parser.add_argument("--positive-share", type=float, default=None,
                        help="share of positive series in every modality (default: the real per-modality shares)")
    parser.add_argument("--max-slices", type=int, default=SLICES_RANGE[1], help="at most this many slices per series")
    parser.add_argument("--hidden-positive-share", type=float, default=0.0,
                        help="share of positive series written as negative (truth in hidden_positives.csv)")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes")
    args = parser.parse_args(argv)
    summary = make_dataset(args.out, args.n_series, args.seed, size_range=tuple(args.size_range),
                           locations=args.locations, positive_share=args.positive_share,
                           max_slices=args.max_slices, hidden_positive_share=args.hidden_positive_share,
                           workers=args.workers)
    print(summary.format())
