"""The door controller: the :class:`~appliance.peripherals.Peripheral` that owns the door's lines.

One owner thread (``door``) touches the lines: it sleeps in :meth:`DoorLines.wait` until an input
edge, a grant (woken through a pipe), or the next timer of :class:`~appliance.door.logic.DoorLogic`
(relay pulse end, debounce, held-open) — and at least every :data:`MAX_WAIT_S`, to re-read the
levels should an edge have been lost. After every wake it reads the levels, feeds the logic, sets
the relay if its wanted state changed, and emits the door events. The lines are requested in
:meth:`DoorController.start` on the caller's thread (so a bad line fails the start with the key
named) and touched only by the owner thread afterwards; it releases the relay and the lines when it
stops.

**Unlocked** (remain open, :class:`~appliance.door.settings.DoorUnlockConfig`): at each wake the
thread reads the wall clock in the door's time zone against ``door.unlock.schedule``. Within a
window the door is held unlocked — with ``first_person_groups``, only once a member of one of them
was granted here within that window (a snow day, when nobody comes, leaves the door locked); on a
day of ``door.unlock.holidays`` (:meth:`DoorController.set_closed_days`) no window opens. A
remote ``door_mode`` (:meth:`DoorController.set_mode`) overrides the schedule: ``unlocked`` holds
it, ``locked`` keeps it locked through the windows (a grant still opens it for one passage), for a
time or until ``schedule`` gives it back; a restart gives it back too. The wake-ups of at most
:data:`MAX_WAIT_S` see a window's edge within a second.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from datetime import date, datetime, timezone
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple

from ..access.schedule import WeeklySchedule
from ..access.zones import load_zone
from ..events import rfc3339_now
from ..logs import RateLimitedLog
from ..peripherals import EmitDoorEvent, Passage, Peripheral
from .errors import DoorError
from .lines import DoorLines, open_lines
from .logic import DOOR_FORCED, DOOR_HELD, TAMPERED, DoorEvent, DoorLogic
from .settings import DEFAULT_DOOR_ID, DoorConfig

logger = logging.getLogger(__name__)

#: The longest the owner thread sleeps without reading the levels (a lost edge is seen by then).
MAX_WAIT_S = 1.0
#: The pause after a failed GPIO call before the next try.
ERROR_BACKOFF_S = 1.0
#: The modes of :meth:`DoorController.set_mode`.
MODES = ("schedule", "unlocked", "locked")


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class DoorController(Peripheral):
    """The door's relay, contact and request-to-exit; see the module docstring.

    Args:
        config: ``[door]``.
        open_lines: requests the lines (tests pass one that builds them on a double of the chip).
        clock: monotonic seconds.
        time_zone: the IANA zone of ``door.unlock.schedule`` (``access.time_zone``).
        wall_clock: the current aware datetime (tests fix it).
    """

    #: Every door's events have the source ``door`` (and their ``door_id``); :attr:`name` is the door's id.
    source = "door"

    def __init__(
        self,
        config: DoorConfig,
        open_lines: Callable[[DoorConfig], DoorLines] = open_lines,
        clock: Callable[[], float] = time.monotonic,
        time_zone: str = "UTC",
        wall_clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._config = config
        self.name = config.id
        #: How the log names this door: "door", or "door ID" when it has an id of its own (several doors).
        self._tag = "door" if config.id == DEFAULT_DOOR_ID else f"door {config.id}"
        self._open_lines = open_lines
        self._clock = clock
        self._logic = DoorLogic(config)
        self._lock = threading.Lock()
        #: For the owner thread: ``("grant", event id, groups)``, ``("open", request id)``,
        #: ``("mode", mode, seconds or None)``.
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._schedule = WeeklySchedule.parse(config.unlock.schedule)
        self._zone = load_zone(time_zone)
        self._wall_clock = wall_clock
        self._first_groups: FrozenSet[str] = frozenset(config.unlock.first_person_groups)
        #: The access event of the first person in, in the current window (``None``: not yet).
        self._first_in: Optional[str] = None
        #: The remote mode and when it gives way to the schedule (monotonic; ``None``: never).
        self._mode: Tuple[str, Optional[float]] = ("schedule", None)
        #: The local days of ``door.unlock.holidays`` (:meth:`set_closed_days`): no window opens on them.
        self._closed_days: FrozenSet[date] = frozenset()
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

    @property
    def config(self) -> DoorConfig:
        """This door's settings (``[door]`` or its ``[[doors]]`` table)."""
        return self._config

    # -- Peripheral ---------------------------------------------------------------------------------------------

    def start(self, emit: EmitDoorEvent) -> None:
        """Request the lines (relay released), read the inputs, and start the owner thread.

        Raises:
            DoorError: started before, or a back-end, chip or line cannot be had (the key is named).
        """
        with self._lock:
            if self._thread is not None or self._closed:
                raise DoorError(
                    f"{self._tag}: start() called on a controller that was started or closed before"
                )
        lines = self._open_lines(self._config)
        try:
            lines.set_relay(False)
            inputs = lines.read_inputs()
        except OSError as err:
            lines.close()
            raise DoorError(
                f"{self._tag}: the lines were requested through {lines.backend} but cannot be set or read ({err}); "
                f"check the wiring and `gpioinfo`"
            ) from err
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        thread = threading.Thread(target=self._run, name=self._tag.replace(" ", "-"), daemon=True)
        with self._lock:
            self._lines, self._emit, self._backend, self._relay = lines, emit, lines.backend, False
            self._wake_r, self._wake_w, self._thread = wake_r, wake_w, thread
            self._logic.begin(self._clock(), inputs)
            snapshot = self._logic.snapshot()
        thread.start()
        logger.info(
            "%s: started through %s (door %s, exit %s; pulse %.1f s, held-open limit %.0f s)",
            self._tag,
            lines.backend,
            snapshot["door"] or "not wired",
            snapshot["exit"] or "not wired",
            self._config.relay.pulse_s,
            self._config.contact.held_open_s,
        )

    def on_passage(self, passage: Passage) -> None:
        """Pulse the relay for a granted passage at one of this door's cameras (queued for the owner
        thread; returns at once)."""
        if passage.decision != "granted" or not self._config.opens_for(passage.camera_id):
            return
        self._requests.put(("grant", passage.event_id, passage.groups))
        self._wake()

    def remote_open(self, request_id: Optional[str]) -> None:
        """Pulse the relay once, as a grant does (the ``door_open`` command; returns at once)."""
        self._requests.put(("open", request_id))
        self._wake()

    def set_closed_days(self, days: FrozenSet[date]) -> None:
        """The local dates of ``door.unlock.holidays`` (from the gallery's calendars, which the pipeline
        thread reads): no unlock window opens on them. Any thread; takes effect at once."""
        with self._lock:
            self._closed_days = frozenset(days)
        self._wake()

    def set_mode(self, mode: str, for_s: Optional[float] = None) -> None:
        """``unlocked`` (held open), ``locked`` (never by schedule) or ``schedule`` (the configured
        windows), for ``for_s`` seconds or until changed again (the ``door_mode`` command).

        Raises:
            ValueError: an unknown mode, or a duration that is not positive.
        """
        if mode not in MODES:
            raise ValueError(f"door mode must be one of {', '.join(MODES)}, not {mode!r}")
        if for_s is not None and not for_s > 0:
            raise ValueError(f"a door mode lasts a positive number of seconds, not {for_s!r}")
        self._requests.put(("mode", mode, for_s))
        self._wake()

    def state(self) -> Dict[str, Any]:
        """The door's document in ``…/state`` → ``door`` → ``door`` (any thread)::

        {"backend": "gpiod", "running": true, "relay": "on" | "off",
         "door": "open" | "closed" | null (no contact), "exit": "pressed" | "released" | null,
         "tamper": "active" | "normal" | null (no tamper switch),
         "alarm": "door_forced" | "door_held" | null,
         "unlocked_by": "schedule" | "first_person" | "remote" | null,
         "mode": "schedule" | "unlocked" | "locked", "mode_left_s": float | null, "first_person_in": bool,
         "closed_today": bool (a day of ``door.unlock.holidays``),
         "counts": {"grants", "exit_requests", "remote_opens", "openings", "forced", "held", "tampers"},
         "last_event": {"kind", "ts"} | null, "errors": int, "last_error": str | null}
        """
        with self._lock:
            document = self._logic.snapshot()
            thread = self._thread
            mode, until = self._mode
            document.update(
                mode=mode,
                mode_left_s=None if until is None else round(max(0.0, until - self._clock()), 1),
                first_person_in=self._first_in is not None,
                closed_today=self._wall_clock().astimezone(self._zone).date() in self._closed_days,
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
                "%s: the owner thread did not stop within %.1f s (blocked in the %s back-end?); the "
                "lines are released when the process exits",
                self._tag,
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
        if not self._requests.empty():
            timeout = 0.0
        lines.wait(max(0.0, timeout), wake_r)
        self._drain_wake(wake_r)
        if self._stop.is_set():
            return
        inputs = lines.read_inputs()
        now = self._clock()
        local = self._wall_clock().astimezone(self._zone)
        with self._lock:
            window = (
                bool(self._schedule.windows)
                and self._schedule.admits(local)
                and local.date() not in self._closed_days
            )
            events = []
            if not window:
                self._first_in = None
            while True:
                try:
                    request = self._requests.get_nowait()
                except queue.Empty:
                    break
                events.extend(self._take(request, now, window))
            events.extend(self._logic.hold(now, *self._wanted_hold(now, window)))
            events.extend(self._logic.update(now, inputs))
            relay = self._logic.relay_on
            changed = relay != self._relay
        if changed:
            lines.set_relay(relay)
            with self._lock:
                self._relay = relay
            logger.debug("%s: relay %s", self._tag, "on" if relay else "off")
        for event in events:
            self._publish(event)

    def _take(self, request: Tuple[Any, ...], now: float, window: bool) -> List[DoorEvent]:
        """One request of another thread (under the lock)."""
        kind = request[0]
        if kind == "grant":
            _, event_id, groups = request
            self._logic.grant(now, event_id)
            if window and self._first_in is None and self._first_groups.intersection(groups):
                self._first_in = event_id
            return []
        if kind == "open":
            return [self._logic.remote_open(now, request[1])]
        _, mode, for_s = request
        self._mode = (mode, None if for_s is None else now + for_s)
        logger.info("%s: mode %s%s", self._tag, mode, "" if for_s is None else f" for {for_s:g} s")
        return []

    def _wanted_hold(self, now: float, window: bool) -> Tuple[Optional[str], Dict[str, Any]]:
        """Why the door should be held unlocked now, and the details of its ``door_unlocked`` (under the lock)."""
        mode, until = self._mode
        if until is not None and now >= until:
            mode, self._mode = "schedule", ("schedule", None)
            logger.info("%s: the remote mode ended; back to the schedule", self._tag)
        if mode == "unlocked":
            return "remote", {}
        if mode == "locked" or not window:
            return None, {}
        if not self._first_groups:
            return "schedule", {}
        if self._first_in is None:
            return None, {}
        return "first_person", {"access_event_id": self._first_in}

    @staticmethod
    def _drain_wake(fd: int) -> None:
        try:
            while os.read(fd, 64):
                pass
        except BlockingIOError:
            pass

    def _publish(self, event: DoorEvent) -> None:
        level = logging.WARNING if event.kind in (DOOR_FORCED, DOOR_HELD, TAMPERED) else logging.INFO
        logger.log(level, "%s: %s %s", self._tag, event.kind, event.details)
        with self._lock:
            self._last_event = {"kind": event.kind, "ts": rfc3339_now()}
            emit = self._emit
        if emit is None:  # pragma: no cover - set before the thread starts
            return
        try:
            emit(event.kind, {**event.details, "door_id": self.name})
        except Exception:  # emit never raises by contract; a bug there must not stop the door
            logger.exception("%s: storing the %s event failed", self._tag, event.kind)

    def _failed(self, err: Exception) -> None:
        with self._lock:
            self._errors += 1
            self._last_error = f"{type(err).__name__}: {err}"
        self._log.report("gpio", "%s: the %s back-end failed: %s; retrying", self._tag, self._backend, err)

    def _release(self, lines: DoorLines) -> None:
        try:
            lines.set_relay(False)
        except Exception as err:
            logger.warning("%s: releasing the relay at stop failed: %s", self._tag, err)
        with self._lock:
            self._relay = False
        lines.close()
        logger.info("%s: stopped; relay released, lines freed", self._tag)


__all__ = ["ERROR_BACKOFF_S", "MAX_WAIT_S", "MODES", "DoorController"]
