"""Per-epoch subsampling of negative slices (positive slices are always kept)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from torch.utils.data import Sampler


class NegativeSubsampler(Sampler[int]):
    """Every positive item plus a fresh random `negative_fraction` of negative items each epoch.

    Lightning calls `set_epoch` before each epoch, so the negatives change per epoch and the
    order is reproducible for a seed. Under DDP Lightning wraps the sampler and sets the wrapper's
    epoch only; `epoch_source` (e.g. the trainer's current epoch) then supplies it.
    """

    def __init__(self, positive: np.ndarray, negative_fraction: float = 1.0, seed: int = 0,
                 epoch_source: Callable[[], int] | None = None):
        if not 0 < negative_fraction <= 1:
            raise ValueError(f"negative_fraction must be in (0, 1], got {negative_fraction}")
        positive = np.asarray(positive, dtype=bool)
        self.positive_items = np.flatnonzero(positive)
        self.negative_items = np.flatnonzero(~positive)
        self.n_negative = int(round(len(self.negative_items) * negative_fraction))
        self.seed = seed
        self.epoch = 0
        self.epoch_source = epoch_source

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.positive_items) + self.n_negative

    def __iter__(self) -> Iterator[int]:
        epoch = self.epoch if self.epoch_source is None else self.epoch_source()
        rng = np.random.default_rng((self.seed, epoch))
        negatives = rng.choice(self.negative_items, size=self.n_negative, replace=False)
        order = np.concatenate([self.positive_items, negatives])
        rng.shuffle(order)
        return iter(order.tolist())
