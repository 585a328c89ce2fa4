"""Training: one fold run (`train`) and what it leaves behind."""

from iad.training.run import train

__all__ = ["train"]
