"""Guessing at the reader: wrong cards and PINs counted per person, and the lockout they earn.

A wait for a card or PIN gives a few tries (``max_attempts``), but a wait can start again and again —
the face comes back, the card is shown again. :class:`GuessCounter` counts the wrong ones across
waits: ``limit`` of them within ``window_s`` lock the person out (reason ``credential_lockout``)
until ``window_s`` has passed since the last, so a 4-digit PIN takes years to guess at the door, not
hours. The counts live in memory, on the pipeline thread: a restart forgets them.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Deque, Dict

logger = logging.getLogger(__name__)

#: Identities whose wrong credentials are counted at once (the oldest count goes first).
MAX_COUNTED = 256


class GuessCounter:
    """Wrong credentials per identity.

    Args:
        limit: wrong ones within ``window_s`` that lock an identity out (0: never).
        window_s: the window of those, and how long the lockout lasts after the last one.
        what: what is locked out, for the log (``their face``, ``their card``).
    """

    def __init__(self, limit: int, window_s: float, what: str) -> None:
        self.limit = limit
        self.window_s = window_s
        self.what = what
        #: identity id → the times (Unix seconds) of its recent wrong credentials, at most ``limit``
        self._wrong: Dict[str, Deque[float]] = {}

    def locked_out(self, identity_id: str, at: float) -> bool:
        """Whether ``identity_id`` collected ``limit`` wrong credentials, the last one less than
        ``window_s`` before ``at`` (Unix seconds)."""
        wrong = self._wrong.get(identity_id)
        if not self.limit or wrong is None or len(wrong) < self.limit:
            return False
        if 0.0 <= at - wrong[-1] <= self.window_s and wrong[-1] - wrong[0] <= self.window_s:
            return True
        if not 0.0 <= at - wrong[-1] <= self.window_s:
            del self._wrong[identity_id]  # served (or a clock set back): a fresh count
        return False

    def note(self, identity_id: str, at: float) -> None:
        """One wrong card or PIN tried on ``identity_id``'s wait at ``at`` (Unix seconds)."""
        if not self.limit:
            return
        wrong = self._wrong.setdefault(identity_id, deque(maxlen=self.limit))
        wrong.append(at)
        if len(wrong) == self.limit and wrong[-1] - wrong[0] <= self.window_s:
            logger.warning(
                "%d wrong cards or PINs on one person's waits within %.0f s; %s is refused for %.0f s "
                "(credential_lockout)",
                self.limit,
                self.window_s,
                self.what,
                self.window_s,
            )
        while len(self._wrong) > MAX_COUNTED:
            del self._wrong[next(iter(self._wrong))]


__all__ = ["MAX_COUNTED", "GuessCounter"]
