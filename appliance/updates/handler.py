"""What the UDS server asks of whoever installs models: the update handler interface.

The UDS server (:mod:`appliance.updates.uds_server`) receives a package over the CAN bus and then
calls a handler — the swap manager in the daemon, a recording stand-in in tests — through the four
methods of :class:`UpdateHandler`. The server calls them from its own thread, one call at a time;
the handler must be thread-safe towards the rest of its owner (the pipeline, MQTT).

The received file
-----------------
``verify(package_path)`` gets the path of the complete, hash-checked package
(``{updates staging dir}/received.pkg``). The server leaves that file alone until the *next*
transfer completes, which replaces it atomically (``os.replace``: a reader that opened it keeps the
old contents). A handler that needs the payload after that — while a swap runs — must keep what it
verified: the swap manager gives the file a name of its own (a hard link) in ``verify`` and verifies
that, so the next transfer cannot change what is activated.

How refusals reach the tester
-----------------------------
``verify`` raising :class:`~appliance.updates.errors.PackageError` becomes the negative response
0x72 (generalProgrammingFailure) to the verify routine; any other
:class:`~appliance.updates.errors.UpdateError` from ``verify``, ``activate`` or ``rollback`` becomes
0x22 (conditionsNotCorrect). In both cases the text ``"{reason}: {message}"`` (``reason`` only for a
``PackageError``) is what the tester reads from the last-error data identifier.

``swap_state``
--------------
A short word read by ``push-model`` from the swap-state identifier. ``"idle"`` when nothing has
happened or a verify refused the package (nothing is staged then), ``"verified"`` when a package was just
staged, a step name while a swap runs (``"staging"``, ``"preparing"``, …), then one of the
terminal words :data:`SWAP_DONE`, :data:`SWAP_FAILED` or :data:`SWAP_ROLLED_BACK`. ``activate`` and
``rollback`` must move ``swap_state`` away from a terminal word *before they return*, so that a
tester polling right after the positive response does not read the previous swap's outcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

#: ``swap_state`` when the last swap (or rollback) committed.
SWAP_DONE = "done"
#: ``swap_state`` when the last swap failed before its commit (the previous model stayed active).
SWAP_FAILED = "failed"
#: ``swap_state`` when the last swap was undone after its commit (the health check failed).
SWAP_ROLLED_BACK = "rolled_back"
#: ``swap_state`` with nothing under way and nothing attempted yet.
SWAP_IDLE = "idle"
#: The words that end a swap; ``push-model --activate`` polls until it reads one of them.
TERMINAL_SWAP_STATES = frozenset({SWAP_DONE, SWAP_FAILED, SWAP_ROLLED_BACK})


@dataclass(frozen=True)
class UpdateStatus:
    """Where updates stand, as the UDS status identifiers report it.

    Attributes:
        active_version: the model version(s) serving now, e.g. ``"embedder=1.2.0"``; ``""`` if unknown.
        staged_version: the verified package waiting for ``activate``; ``""`` if none.
        swap_state: see the module's notes (``"idle"``, a step, ``"done"``, ``"failed"``, …).
        last_error: why the last verify, swap or rollback failed; ``""`` if it did not.
    """

    active_version: str
    staged_version: str
    swap_state: str
    last_error: str


class UpdateHandler(Protocol):
    """The calls the UDS server makes; see the module's notes for the contract."""

    def verify(self, package_path: Path) -> str:
        """Check a received package (signature, digests, compatibility) and stage it.

        Returns:
            The staged version (a short text, reported to the tester).

        Raises:
            PackageError: the package is refused; ``reason`` is a short code.
            UpdateError: it cannot be verified now (e.g. a swap is under way).
        """
        ...

    def activate(self) -> None:
        """Start the swap to the staged package in the background.

        Raises:
            UpdateError: nothing is staged, or a swap is under way.
        """
        ...

    def rollback(self) -> None:
        """Go back to the previous committed model (in the background or at once).

        Raises:
            UpdateError: there is no previous model, or a swap is under way.
        """
        ...

    def status(self) -> UpdateStatus:
        """The current versions, swap state and last error (cheap; called for every status read)."""
        ...


@runtime_checkable
class UpdateRecorder(Protocol):
    """A handler that keeps the one update record (the swap manager) also takes the transport's
    refusals, so that the last-error identifier and ``…/model`` are rendered from that record alone.

    ``source`` is ``"transfer"`` for a refused download, transfer or transfer exit, else the routine
    (``"verify"``, ``"activate"``, ``"rollback"``) that failed unexpectedly. A handler without these
    methods keeps the older behaviour: the server's own last error, else the handler's.
    """

    def record_error(self, source: str, text: str) -> None:
        """``text`` (``"{reason}: {message}"``) is now the latest error, given by ``source``."""
        ...

    def clear_error(self, source: str) -> None:
        """The latest error, if ``source`` gave it, is over (a new download started)."""
        ...


__all__ = [
    "SWAP_DONE",
    "SWAP_FAILED",
    "SWAP_IDLE",
    "SWAP_ROLLED_BACK",
    "TERMINAL_SWAP_STATES",
    "UpdateHandler",
    "UpdateRecorder",
    "UpdateStatus",
]
