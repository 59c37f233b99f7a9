"""What the appliance's two OSDP roles share — a panel's reader (:mod:`.reader`) and the control panel
of card readers (:mod:`.card_reader`): one owner thread for the serial port and libosdp's object
(:class:`SerialOwner`), the port watched and reopened, door events stored from a small thread of their
own, and ``close()`` within its deadline; and, for a peripheral with one link on its port,
:class:`OsdpOwner`.
"""

from __future__ import annotations

import abc
import logging
import queue
import threading
import time
from datetime import datetime, timezone
from typing import Any, Dict, Optional

from typing_extensions import Protocol

from ..peripherals import EmitDoorEvent, Peripheral
from .channel import SerialChannel
from .errors import OsdpError

logger = logging.getLogger(__name__)

#: Owner-loop period: libosdp wants ``refresh()`` at least every 50 ms.
TICK_S = 0.01
#: Door events waiting to be stored; more are dropped with a WARNING.
EVENT_QUEUE = 256
#: Seconds between checks of the serial port for a hang-up.
CHECK_S = 0.25
#: Seconds between attempts to reopen a failed serial port.
REOPEN_S = 2.0
#: How long the link may be unusable before it is reported down (a Secure Channel restart takes ~0.2 s).
LINK_GRACE_S = 1.0


def utc_now() -> str:
    """RFC 3339 UTC with milliseconds, for ``…/state``."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class EventSender:
    """Hands door events to their ``emit`` on a thread of its own, in order.

    Args:
        emit: where :meth:`send` hands an event that names no ``emit`` of its own (``None``: every
            event names one — the card readers of one line, each started with its own).
    """

    def __init__(self, emit: Optional[EmitDoorEvent] = None) -> None:
        self._emit = emit
        self._queue: queue.Queue = queue.Queue(EVENT_QUEUE)  # of (emit, kind, details), None to stop
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="osdp-events", daemon=True)
        self._thread.start()

    def send(self, kind: str, details: Dict[str, Any], emit: Optional[EmitDoorEvent] = None) -> None:
        """Queue one door event for ``emit`` (else the sender's own); never blocks."""
        target = emit if emit is not None else self._emit
        if target is None:
            logger.error("OSDP door event %s has nowhere to go (no emit); dropped", kind)
            return
        try:
            self._queue.put_nowait((target, kind, details))
        except queue.Full:
            self.dropped += 1
            logger.warning(
                "OSDP door event %s dropped: %d events are waiting to be stored", kind, EVENT_QUEUE
            )

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            emit, kind, details = item
            try:
                emit(kind, details)
            except Exception:  # emit never raises by contract; a bug must not end the thread
                logger.exception("storing the OSDP door event %s failed", kind)

    def close(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        try:
            self._queue.put(None, timeout=max(0.0, timeout))
        except queue.Full:
            pass
        self._thread.join(max(0.0, deadline - time.monotonic()))


class LinkSettings(Protocol):
    """What both ends' configurations say about their line (``[osdp]``, ``[credential_reader]``)."""

    port: Optional[str]
    baud_rate: int
    address: int
    secure_channel: bool


def link_of(online: bool, secure: bool) -> str:
    """libosdp's view of one link as ``…/state`` names it: ``offline``, ``online`` or ``secure``."""
    return "secure" if secure else "online" if online else "offline"


class SerialOwner(abc.ABC):
    """The one thread that owns a serial port and libosdp's object on it (see the module).

    A subclass opens libosdp's object and then calls :meth:`_start_owner`; its :meth:`_run` loop calls
    :meth:`_keep_port` before each ``refresh()``; :meth:`_release` drops libosdp's object once the
    owner thread is gone. :meth:`close` stops the thread, closes the port and the event thread.

    Args:
        port: the serial device.
        baud_rate: the line's speed.
        port_key: the configuration key of the port, for the messages.
        describe: how the logs name the owner (``OSDP reader``, ``credential reader line /dev/ttyUSB1``).
        channel_id: libosdp's id of the port's channel (:class:`~appliance.osdp.channel.SerialChannel`).
    """

    def __init__(self, port: str, baud_rate: int, port_key: str, describe: str, channel_id: int = 0) -> None:
        self._channel = SerialChannel(port, baud_rate, port_key, channel_id)
        self._describe = describe
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._sender: Optional[EventSender] = None
        self._closed = False
        self._next_reopen = 0.0
        self._next_check = 0.0

    def _start_owner(self, emit: Optional[EmitDoorEvent], thread_name: str) -> None:
        self._sender = EventSender(emit)
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)
        self._thread.start()

    @abc.abstractmethod
    def _run(self) -> None:
        """The owner thread's loop, until ``_stop`` is set."""

    @abc.abstractmethod
    def _release(self) -> None:
        """Drop libosdp's object (its teardown), once the owner thread has ended."""

    @property
    def running(self) -> bool:
        """The owner thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def _port_state(self) -> Dict[str, Any]:
        """The port's part of ``…/state``: its errors, and the door events dropped."""
        return {
            "serial": {"errors": self._channel.errors, "error": self._channel.error},
            "events_dropped": self._sender.dropped if self._sender is not None else 0,
        }

    def close(self, timeout: float) -> None:
        """Stop the owner thread, release the port and stop the event thread within ``timeout`` s."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                logger.error("the %s thread did not stop within %.1f s", self._describe, timeout)
                return
        self._release()
        self._channel.close()
        if self._sender is not None:
            self._sender.close(max(0.0, deadline - time.monotonic()))

    def _keep_port(self) -> None:
        """Check the port for a hang-up now and then, and reopen a failed one (an unplugged adapter)."""
        channel = self._channel
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + CHECK_S
            channel.check()
        if channel.error is not None or not channel.is_open:
            if now >= self._next_reopen:
                self._next_reopen = now + REOPEN_S
                try:
                    channel.open()
                    logger.info("%s: serial port %s reopened", self._describe, channel.path)
                except OsdpError as err:
                    logger.debug("%s: serial port still unusable: %s", self._describe, err)

    def _send(self, kind: str, details: Dict[str, Any], emit: Optional[EmitDoorEvent] = None) -> None:
        if self._sender is not None:
            self._sender.send(kind, details, emit)


class OsdpOwner(SerialOwner, Peripheral):
    """A peripheral with one link on its own OSDP line: the owner thread, the port, the link, the door
    events (see the module).

    A subclass opens libosdp's object in ``start`` and then calls :meth:`_start_owner`; its
    :meth:`_run` loop calls :meth:`_keep_port` before each ``refresh()`` and :meth:`_note_link` with
    what libosdp says of the link, and :meth:`_end_link` when it ends; :meth:`_announce` reports the
    link up or down; :meth:`_release` drops libosdp's object once the owner thread is gone.

    Args:
        settings: the line's configuration (its ``port`` set).
        port_key: the configuration key of the port, for the messages.
        describe: how the logs name this peripheral (``OSDP reader``).
    """

    def __init__(self, settings: LinkSettings, port_key: str, describe: str) -> None:
        super().__init__(str(settings.port), settings.baud_rate, port_key, describe)
        self._settings = settings
        # Owner-thread state.
        self._usable = False
        self._announced = False  # the last door event said the link is up
        # Shared with state() (under _lock).
        self._link = "offline"
        self._link_since: Optional[str] = None

    @abc.abstractmethod
    def _announce(self, up: bool, reason: str) -> None:
        """Report the link up (``reason`` empty) or down (``reason`` why) as a door event."""

    def _note_link(self, online: bool, secure: bool) -> bool:
        """Record the link as libosdp sees it (``offline`` / ``online`` / ``secure``; logged when it
        changes); whether it is usable: secure, or online where no Secure Channel is required."""
        link = link_of(online, secure)
        if link != self._link:
            logger.info("%s: link %s → %s", self._describe, self._link, link)
            with self._lock:
                self._link, self._link_since = link, utc_now()
        return secure if self._settings.secure_channel else online

    def _end_link(self) -> None:
        """At the owner thread's end: the link is unusable, and reported down if it was reported up."""
        self._usable = False
        if self._announced:
            self._announce(False, "closed" if self._stop.is_set() else "reader_failed")

    def _link_state(self) -> Dict[str, Any]:
        """The line's part of ``…/state`` (under ``_lock``): its settings, the thread, the link."""
        settings = self._settings
        return {
            "port": settings.port,
            "address": settings.address,
            "baud_rate": settings.baud_rate,
            "running": self.running,
            "link": self._link,
            "link_since": self._link_since,
            "usable": self._usable,
            "secure_channel": settings.secure_channel,
            **self._port_state(),
        }


__all__ = [
    "CHECK_S",
    "LINK_GRACE_S",
    "REOPEN_S",
    "TICK_S",
    "EventSender",
    "LinkSettings",
    "OsdpOwner",
    "SerialOwner",
    "link_of",
    "utc_now",
]
