"""Weights-only model files: read them without running pickled code, write them atomically (torch)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
import pickle
from typing import Any

import torch

from iad.contract import ContractError
from iad.utils.io import atomic_write


class UnsafeModelFile(ContractError):
    """A model file holds pickled objects beyond tensors and plain data; it is not loaded."""


def load_weights_only(path: str | Path, what: str = "model file", data: bytes | None = None) -> Any:
    """A file's contents via `torch.load(weights_only=True)`; refuses pickled code, naming the file.

    `data`: the file's bytes when they are held in memory (`path` then only names them in errors).
    """
    try:
        return torch.load(io.BytesIO(data) if data is not None else Path(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeModelFile(
            f"{path}: refused, it holds pickled objects beyond tensors and plain data and may run code when "
            f"loaded ({str(err).splitlines()[0]}). Only load such a file with torch.load(weights_only=False) "
            "if you trust where it came from.") from err
    except (RuntimeError, EOFError, OSError) as err:
        raise ContractError(f"{path}: not a readable {what} ({type(err).__name__}: {err})") from err


def save_weights_only(blob: dict, path: str | Path) -> Path:
    """`torch.save` a dict of tensors and plain data atomically (readers never see half a file)."""
    path = Path(path)
    with atomic_write(path, "wb") as fh:
        torch.save(blob, fh)
    return path


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
