"""The door controller: the :class:`~appliance.peripherals.Peripheral` that owns the door's lines.

One owner thread (``door``) touches the lines: it sleeps in :meth:`DoorLines.wait` until an input
edge, a grant (woken through a pipe), or the next timer of :class:`~appliance.door.logic.DoorLogic`
(relay pulse end, debounce, held-open) — and at least every :data:`MAX_WAIT_S`, to re-read the
levels should an edge have been lost. After every wake it reads the levels, feeds the logic, sets
the relay if its wanted state changed, and emits the door events. The lines are requested in
:meth:`DoorController.start` on the caller's thread (so a bad line fails the start with the key
named) and touched only by the owner thread afterwards; it releases the relay and the lines when it
stops.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import Any, Callable, Dict, Optional

from ..events import rfc3339_now
from ..logs import RateLimitedLog
from ..peripherals import EmitDoorEvent, Passage, Peripheral
from .errors import DoorError
from .lines import DoorLines, open_lines
from .logic import DOOR_FORCED, DOOR_HELD, DoorEvent, DoorLogic
from .settings import DoorConfig

logger = logging.getLogger(__name__)

#: The longest the owner thread sleeps without reading the levels (a lost edge is seen by then).
MAX_WAIT_S = 1.0
#: The pause after a failed GPIO call before the next try.
ERROR_BACKOFF_S = 1.0


class DoorController(Peripheral):
    """The door's relay, contact and request-to-exit; see the module docstring.

    Args:
        config: ``[door]``.
        open_lines: requests the lines (tests pass one that builds them on a double of the chip).
        clock: monotonic seconds.
    """

    name = "door"

    def __init__(
        self,
        config: DoorConfig,
        open_lines: Callable[[DoorConfig], DoorLines] = open_lines,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._open_lines = open_lines
        self._clock = clock
        self._logic = DoorLogic(config)
        self._lock = threading.Lock()
        self._grants: queue.SimpleQueue = queue.SimpleQueue()  # of access event ids
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._lines: Optional[DoorLines] = None
        self._emit: Optional[EmitDoorEvent] = None
        self._wake_r: Optional[int] = None
        self._wake_w: Optional[int] = None
        self._closed = False
        self._backend = ""
        self._relay: Optional[bool] = None
        self._errors = 0
        self._last_error: Optional[str] = None
        self._last_event: Optional[Dict[str, str]] = None
        self._log = RateLimitedLog(logger, interval_s=60.0)

    # -- Peripheral ---------------------------------------------------------------------------------------------

    def start(self, emit: EmitDoorEvent) -> None:
        """Request the lines (relay released), read the inputs, and start the owner thread.

        Raises:
            DoorError: started before, or a back-end, chip or line cannot be had (the key is named).
        """
        with self._lock:
            if self._thread is not None or self._closed:
                raise DoorError("door: start() called on a controller that was started or closed before")
        lines = self._open_lines(self._config)
        try:
            lines.set_relay(False)
            inputs = lines.read_inputs()
        except OSError as err:
            lines.close()
            raise DoorError(
                f"door: the lines were requested through {lines.backend} but cannot be set or read ({err}); "
                f"check the wiring and `gpioinfo`"
            ) from err
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        thread = threading.Thread(target=self._run, name="door", daemon=True)
        with self._lock:
            self._lines, self._emit, self._backend, self._relay = lines, emit, lines.backend, False
            self._wake_r, self._wake_w, self._thread = wake_r, wake_w, thread
            self._logic.begin(self._clock(), inputs)
            snapshot = self._logic.snapshot()
        thread.start()
        logger.info(
            "door: started through %s (door %s, exit %s; pulse %.1f s, held-open limit %.0f s)",
            lines.backend,
            snapshot["door"] or "not wired",
            snapshot["exit"] or "not wired",
            self._config.relay.pulse_s,
            self._config.contact.held_open_s,
        )

    def on_passage(self, passage: Passage) -> None:
        """Pulse the relay for a granted passage (queued for the owner thread; returns at once)."""
        if passage.decision != "granted":
            return
        self._grants.put(passage.event_id)
        self._wake()

    def state(self) -> Dict[str, Any]:
        """The door's document in ``…/state`` → ``door`` → ``door`` (any thread)::

        {"backend": "gpiod", "running": true, "relay": "on" | "off",
         "door": "open" | "closed" | null (no contact), "exit": "pressed" | "released" | null,
         "alarm": "door_forced" | "door_held" | null,
         "counts": {"grants", "exit_requests", "openings", "forced", "held"},
         "last_event": {"kind", "ts"} | null, "errors": int, "last_error": str | null}
        """
        with self._lock:
            document = self._logic.snapshot()
            thread = self._thread
            document.update(
                backend=self._backend,
                running=bool(thread and thread.is_alive()) and not self._stop.is_set(),
                relay="on" if self._relay else "off",
                last_event=dict(self._last_event) if self._last_event else None,
                errors=self._errors,
                last_error=self._last_error,
            )
        return document

    def close(self, timeout: float) -> None:
        """Stop the owner thread (it releases the relay and the lines) within ``timeout`` s; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if thread is None:
            return
        self._stop.set()
        self._wake()
        thread.join(max(0.0, timeout))
        if thread.is_alive():
            # The pipe stays open: the thread may still select() on it.
            logger.warning(
                "door: the owner thread did not stop within %.1f s (blocked in the %s back-end?); the "
                "lines are released when the process exits",
                timeout,
                self._backend,
            )
            return
        with self._lock:
            for fd in (self._wake_r, self._wake_w):
                if fd is not None:
                    os.close(fd)
            self._wake_r = self._wake_w = None

    # -- the owner thread -----------------------------------------------------------------------------------------

    def _wake(self) -> None:
        with self._lock:
            if self._wake_w is None:
                return
            try:
                os.write(self._wake_w, b"\0")
            except BlockingIOError:
                pass  # the pipe is full: a wake-up is pending anyway

    def _run(self) -> None:
        lines = self._lines
        if lines is None:  # pragma: no cover - start() sets it before starting the thread
            return
        try:
            while not self._stop.is_set():
                try:
                    self._step(lines)
                except Exception as err:  # the owner thread must outlive a failing GPIO call
                    self._failed(err)
                    self._stop.wait(ERROR_BACKOFF_S)
        finally:
            self._release(lines)

    def _step(self, lines: DoorLines) -> None:
        with self._lock:
            deadline = self._logic.next_deadline()
            wake_r = self._wake_r
        if wake_r is None:  # pragma: no cover - closed under us
            self._stop.set()
            return
        timeout = MAX_WAIT_S if deadline is None else min(MAX_WAIT_S, deadline - self._clock())
        if not self._grants.empty():
            timeout = 0.0
        lines.wait(max(0.0, timeout), wake_r)
        self._drain_wake(wake_r)
        if self._stop.is_set():
            return
        inputs = lines.read_inputs()
        now = self._clock()
        with self._lock:
            while True:
                try:
                    event_id = self._grants.get_nowait()
                except queue.Empty:
                    break
                self._logic.grant(now, event_id)
            events = self._logic.update(now, inputs)
            relay = self._logic.relay_on
            changed = relay != self._relay
        if changed:
            lines.set_relay(relay)
            with self._lock:
                self._relay = relay
            logger.debug("door: relay %s", "on" if relay else "off")
        for event in events:
            self._publish(event)

    @staticmethod
    def _drain_wake(fd: int) -> None:
        try:
            while os.read(fd, 64):
                pass
        except BlockingIOError:
            pass

    def _publish(self, event: DoorEvent) -> None:
        level = logging.WARNING if event.kind in (DOOR_FORCED, DOOR_HELD) else logging.INFO
        logger.log(level, "door: %s %s", event.kind, event.details)
        with self._lock:
            self._last_event = {"kind": event.kind, "ts": rfc3339_now()}
            emit = self._emit
        if emit is None:  # pragma: no cover - set before the thread starts
            return
        try:
            emit(event.kind, event.details)
        except Exception:  # emit never raises by contract; a bug there must not stop the door
            logger.exception("door: storing the %s event failed", event.kind)

    def _failed(self, err: Exception) -> None:
        with self._lock:
            self._errors += 1
            self._last_error = f"{type(err).__name__}: {err}"
        self._log.report("gpio", "door: the %s back-end failed: %s; retrying", self._backend, err)

    def _release(self, lines: DoorLines) -> None:
        try:
            lines.set_relay(False)
        except Exception as err:
            logger.warning("door: releasing the relay at stop failed: %s", err)
        with self._lock:
            self._relay = False
        lines.close()
        logger.info("door: stopped; relay released, lines freed")


__all__ = ["ERROR_BACKOFF_S", "MAX_WAIT_S", "DoorController"]
