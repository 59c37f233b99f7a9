"""Where model updates stand: one record, owned by the swap manager, rendered for UDS and MQTT.

Every event of an update — a transfer refused by the UDS server, a package verified or refused, a
swap's steps, its end — changes this one record (:class:`UpdateState`), under one lock, and both the
UDS status identifiers (FD01 staged, FD02 swap state, FD06 last error, through
:meth:`UpdateSnapshot.status`) and the retained ``…/model`` document (:meth:`UpdateSnapshot.document`)
are rendered from one snapshot of it, so they never disagree and never mix two events.

The record:

``state``, ``step``, ``progress``
    What the swap machinery is doing (:class:`SwapState`) and a sentence about it. A refused
    verify leaves ``idle`` ("nothing staged"): the staged package is dropped, so FD02 never says
    ``verified`` while FD01 is empty.
``staged``
    The verified package waiting for ``activate`` (``None`` once a swap took it, or a verify failed).
``swap_error``
    Why the last swap failed or was rolled back; kept with ``failed``/``rolled_back`` until the
    next verify or swap starts.
``error``, ``error_source``, ``error_at``
    The latest refusal or failure, whatever refused it (:data:`SOURCES`), and when. A transfer or
    activate refusal changes only these: the swap's state and step stay those of the swap. When the
    latest error is not the swap's own while the swap ended ``failed``/``rolled_back``, FD06 still
    names the swap's reason after it (:meth:`UpdateSnapshot.last_error`), so a later refusal never
    hides why the swap failed.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, Optional

from ..events import rfc3339_now
from .errors import UpdateError
from .handler import UpdateStatus

#: Who refused or failed: the CAN transfer, verify, activate/rollback requests, the swap itself.
SOURCE_TRANSFER = "transfer"
SOURCE_VERIFY = "verify"
SOURCE_ACTIVATE = "activate"
SOURCE_ROLLBACK = "rollback"
SOURCE_SWAP = "swap"
SOURCES = frozenset({SOURCE_TRANSFER, SOURCE_VERIFY, SOURCE_ACTIVATE, SOURCE_ROLLBACK, SOURCE_SWAP})

#: Longest error text kept (FD06 carries 255 bytes; ``…/model`` the whole text up to this).
MAX_ERROR_CHARS = 500


class SwapState(str, enum.Enum):
    """Where the swap stands (``swap.state`` in ``…/model`` and the UDS identifier FD02)."""

    IDLE = "idle"
    VERIFIED = "verified"
    STAGING = "staging"
    PREPARING = "preparing"
    VALIDATING = "validating"
    REEMBEDDING = "reembedding"
    SWITCHING = "switching"
    HEALTH_CHECK = "health_check"
    DONE = "done"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


#: States in which a swap is under way (no second one may start, no verify may replace the staged one).
BUSY = frozenset(
    {
        SwapState.STAGING,
        SwapState.PREPARING,
        SwapState.VALIDATING,
        SwapState.REEMBEDDING,
        SwapState.SWITCHING,
        SwapState.HEALTH_CHECK,
    }
)

#: The ends of a swap that carry a reason.
_UNSUCCESSFUL = frozenset({SwapState.FAILED, SwapState.ROLLED_BACK})


@dataclass(frozen=True)
class Staged:
    """A verified package waiting for ``activate``.

    Attributes:
        name: the registry model it replaces.
        version: its version.
        release: its release counter.
        package: the :class:`~appliance.updates.package.VerifiedPackage` (its own kept file).
    """

    name: str
    version: str
    release: int
    package: Any = None

    @property
    def label(self) -> str:
        """``name@version``, as FD01 reports it."""
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class UpdateSnapshot:
    """One consistent view of :class:`UpdateState` (see the module's notes for each field)."""

    state: SwapState = SwapState.IDLE
    step: str = ""
    progress: Optional[float] = None
    staged: Optional[Staged] = None
    swap_error: str = ""
    error: str = ""
    error_source: str = ""
    error_at: str = ""

    @property
    def busy(self) -> bool:
        """A swap is under way."""
        return self.state in BUSY

    def last_error(self) -> str:
        """FD06's text: the latest error, then the swap's own reason when that is another one."""
        text = self.error
        if self.state in _UNSUCCESSFUL and self.swap_error and self.error_source != SOURCE_SWAP:
            ending = f"the last swap {self.state.value}: {self.swap_error}"
            text = f"{text}; {ending}" if text else ending
        return text

    def status(self, active_version: str) -> UpdateStatus:
        """What the UDS status identifiers report."""
        return UpdateStatus(
            active_version=active_version,
            staged_version=self.staged.label if self.staged is not None else "",
            swap_state=self.state.value,
            last_error=self.last_error(),
        )

    def document(self) -> Dict[str, Any]:
        """The update part of ``…/model``."""
        staged = self.staged
        return {
            "staged": (
                {"model": staged.name, "version": staged.version, "release": staged.release}
                if staged is not None
                else None
            ),
            "swap": {
                "state": self.state.value,
                "step": self.step,
                "progress": self.progress,
                "error": self.swap_error or None,
            },
            "last_error": self.last_error() or None,
            "last_error_source": self.error_source or None,
            "last_error_at": self.error_at or None,
        }


class UpdateState:
    """The update record: every change goes through a method here, under one lock. Thread-safe.

    The checks that decide a change (a swap under way, nothing staged) are made under the same lock
    as the change; ``on_change`` runs after the lock is released.

    Args:
        on_change: called after each change (outside the lock), e.g. to republish ``…/model``.
        clock: the time stamp of an error (RFC 3339).
    """

    def __init__(
        self, on_change: Optional[Callable[[], None]] = None, clock: Callable[[], str] = rfc3339_now
    ) -> None:
        self._lock = threading.Lock()
        self._on_change = on_change
        self._clock = clock
        self._current = UpdateSnapshot()

    def snapshot(self) -> UpdateSnapshot:
        """The record as it is now."""
        with self._lock:
            return self._current

    # -- changes ----------------------------------------------------------------------------------------

    def verified(self, staged: Staged, step: str) -> None:
        """A package passed verify and waits for ``activate``; earlier events are forgotten.

        Raises:
            UpdateError: a rollback started meanwhile (the package is not staged).
        """
        with self._lock:
            self._check_not_busy()
            self._current = UpdateSnapshot(SwapState.VERIFIED, step, staged=staged)
        self._changed()

    def refused(self, source: str, text: str, step: str) -> None:
        """A verify refused the package: nothing is staged (``idle``), the reason is the error.

        A rollback started meanwhile keeps its state and step; only the error is recorded.
        """
        error = {"error": _cut(text), "error_source": _source(source), "error_at": self._clock()}
        with self._lock:
            if self._current.busy:
                self._current = replace(self._current, **error)
            else:
                self._current = UpdateSnapshot(SwapState.IDLE, step, **error)
        self._changed()

    def start_verify(self, step: str) -> None:
        """A verify starts: the staged package, if any, is dropped (``idle``).

        Raises:
            UpdateError: a swap is under way (it reads the staged package).
        """
        with self._lock:
            self._check_not_busy()
            self._current = replace(
                self._current, state=SwapState.IDLE, step=step, staged=None, progress=None
            )
        self._changed()

    def begin(self, state: SwapState, step: str, need_staged: bool) -> Optional[Staged]:
        """A swap (``need_staged``) or a rollback starts; returns the staged package. Old errors go.

        Raises:
            UpdateError: a swap is under way, or ``need_staged`` and nothing is staged.
        """
        with self._lock:
            self._check_not_busy()
            staged = self._current.staged
            if need_staged and staged is None:
                raise UpdateError("no verified package to activate; transfer and verify one first")
            self._current = UpdateSnapshot(state, step, staged=staged)
        self._changed()
        return staged

    def advance(self, state: SwapState, step: str) -> None:
        """The running swap reached its next step."""
        self._change(state=state, step=step, progress=None)

    def set_progress(self, progress: Optional[float]) -> None:
        """Progress of the current step (0–1), not republished on its own."""
        with self._lock:
            self._current = replace(self._current, progress=progress)

    def finish(self, state: SwapState, step: str, error: str = "", keep_staged: bool = False) -> None:
        """The swap ended (``done``, ``failed`` or ``rolled_back``); the package it took is no longer
        staged (``keep_staged``: a rollback, which took none)."""
        changes: Dict[str, Any] = {"state": state, "progress": None, "swap_error": ""}
        if not keep_staged:
            changes["staged"] = None
        if step:
            changes["step"] = step
        if error:
            changes.update(
                swap_error=_cut(error), error=_cut(error), error_source=SOURCE_SWAP, error_at=self._clock()
            )
        self._change(**changes)

    def record_error(self, source: str, text: str) -> None:
        """A refusal that changes nothing else (a transfer, an activate or rollback request)."""
        self._change(error=_cut(text), error_source=_source(source), error_at=self._clock())

    def clear_error(self, source: str) -> None:
        """Forget the latest error if ``source`` gave it (e.g. a new download starts)."""
        with self._lock:
            if self._current.error_source != source:
                return
        self._change(error="", error_source="", error_at="")

    # -- internals -------------------------------------------------------------------------------------

    def _check_not_busy(self) -> None:
        if self._current.busy:
            raise UpdateError(f"a swap is under way ({self._current.state.value}); wait for it to finish")

    def _change(self, **changes: Any) -> None:
        with self._lock:
            self._current = replace(self._current, **changes)
        self._changed()

    def _set(self, snapshot: UpdateSnapshot) -> None:
        with self._lock:
            self._current = snapshot
        self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()


def _cut(text: str) -> str:
    return text[:MAX_ERROR_CHARS]


def _source(source: str) -> str:
    if source not in SOURCES:
        raise ValueError(f"unknown error source {source!r}; one of {sorted(SOURCES)}")
    return source


__all__ = [
    "BUSY",
    "SOURCES",
    "SOURCE_ACTIVATE",
    "SOURCE_ROLLBACK",
    "SOURCE_SWAP",
    "SOURCE_TRANSFER",
    "SOURCE_VERIFY",
    "Staged",
    "SwapState",
    "UpdateSnapshot",
    "UpdateState",
]
