"""Blend trained models' OOF predictions into an ensemble spec: `python ensemble.py ensemble=final1`
(same as `python -m iad.ensemble`)."""

from iad.ensemble import main

if __name__ == "__main__":
    main()
