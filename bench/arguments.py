"""Command-line argument types the benchmarks share."""

from __future__ import annotations

import argparse
from typing import List


def positive_int_list(text: str) -> List[int]:
    """``"1000,10000"`` → ``[1000, 10000]``; refuses an empty list, a non-integer or a value below 1."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values
