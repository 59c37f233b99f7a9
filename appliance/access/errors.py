"""Errors of the access policy."""

from __future__ import annotations

from ..errors import ApplianceError


class PolicyError(ApplianceError, ValueError):
    """A policy value is malformed (a date, a schedule window, a group name), or refers to nothing.

    Also a :class:`ValueError`, so the configuration's validators report it with its key path."""


__all__ = ["PolicyError"]
