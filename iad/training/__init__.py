"""Training: one fold run (`train`) and what it leaves behind."""

from iad.training.run import BEST_CKPT, CHECKPOINT_DIR, LAST_CKPT, train

__all__ = ["BEST_CKPT", "CHECKPOINT_DIR", "LAST_CKPT", "train"]
