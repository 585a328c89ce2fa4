"""Atomic file writes: readers never see a half-written file (no torch import)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
import json
import math
import os
from pathlib import Path
import tempfile
from typing import IO, Any

import numpy as np
import pandas as pd

# mkstemp creates files with mode 0600; give the result the permissions a plain open() would.
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", *, newline: str | None = None) -> Iterator[IO]:
    """Open a temporary file next to `path`; on success fsync it and move it over `path`.

    `mode` is "w" (UTF-8 text) or "wb". The parent folder is created when missing. If the block
    raises, the temporary file is removed and an existing `path` is left untouched.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        text_options = {"encoding": "utf-8", "newline": newline} if mode == "w" else {}
        with os.fdopen(fd, mode, **text_options) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_csv_atomic(df: pd.DataFrame, path: str | os.PathLike, **to_csv_kwargs: Any) -> None:
    """Write `df` as CSV atomically (without the index unless `index=True` is passed)."""
    to_csv_kwargs.setdefault("index", False)
    with atomic_write(path, newline="") as handle:
        df.to_csv(handle, **to_csv_kwargs)


def write_json_atomic(obj: Any, path: str | os.PathLike, indent: int = 2) -> None:
    """Write `obj` as strict JSON atomically; numpy values become plain numbers, NaN/inf become null."""
    with atomic_write(path) as handle:
        json.dump(_json_compatible(obj), handle, indent=indent, allow_nan=False)
        handle.write("\n")


def _json_compatible(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {key: _json_compatible(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_compatible(value) for value in obj]
    if isinstance(obj, np.ndarray):
        return _json_compatible(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
