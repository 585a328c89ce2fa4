"""DataLoader worker settings shared by the DataModules."""

from __future__ import annotations

import multiprocessing


def worker_context(num_workers: int) -> str | None:
    """The multiprocessing start method for a DataLoader's workers; None keeps the process's default.

    Inside a joblib/loky job (`hydra/launcher=local_folds`) the default start method is loky's own, which
    torch cannot start workers with; spawn and forkserver fail there too (their children re-run loky's
    entry script), so such a job forks its workers.
    """
    standard = multiprocessing.get_all_start_methods()
    if num_workers == 0 or multiprocessing.get_start_method(allow_none=True) in (None, *standard):
        return None
    return "fork" if "fork" in standard else None


def loader_options(num_workers: int, pin_memory: bool) -> dict:
    """DataLoader keyword arguments for `num_workers` worker processes (kept alive between epochs)."""
    return {"num_workers": num_workers, "pin_memory": pin_memory, "persistent_workers": num_workers > 0,
            "multiprocessing_context": worker_context(num_workers)}
