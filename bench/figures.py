"""Figures shared by the vision benchmarks: the pipeline's own work over the model time, and a number
printed with a dash when it is missing."""

from __future__ import annotations

from typing import Dict, Optional


def overhead(end_to_end_ms: float, model_ms: float) -> Dict[str, Optional[float]]:
    """``model_ms``, ``overhead_ms`` (end to end minus model time) and ``overhead_pct`` (of the model
    time; ``None`` when no model ran), rounded as the benchmarks' JSON keeps them."""
    own_ms = end_to_end_ms - model_ms
    return {
        "model_ms": round(model_ms, 2),
        "overhead_ms": round(own_ms, 2),
        "overhead_pct": round(100 * own_ms / model_ms, 1) if model_ms else None,
    }


def fmt(value: Optional[float], digits: int = 2) -> str:
    """``value`` with ``digits`` decimals, or an en dash when there is none."""
    return "–" if value is None else f"{value:.{digits}f}"
