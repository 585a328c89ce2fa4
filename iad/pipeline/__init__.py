"""The reference solution end to end, one resumable command: `python -m iad.pipeline recipe=demo`."""
