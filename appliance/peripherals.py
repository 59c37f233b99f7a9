"""What the daemon drives at the door besides MQTT: the door's own I/O and an OSDP link to a panel.

A :class:`Peripheral` is told about every access decision (:meth:`Peripheral.on_passage`, on the
pipeline thread, after the event is stored) and reports what happens at the door through the
``emit`` callback it is started with: a door forced or held open, a request-to-exit, the panel's own
verdict. Each emitted *door event* is stored in the durable outbox like an access event and
published on ``{prefix}/{device.id}/door`` (not on ``…/events``, whose schema-1 consumers expect a
recognition decision in every document)::

    {"schema": 1, "event_id": UUID, "ts": RFC 3339 UTC, "device_id", "source": "door" | "osdp",
     "kind": "door_forced" | "door_held" | "door_closed" | "exit_request" | "panel_granted" | …,
     …details}

Rules every peripheral keeps:

* :meth:`~Peripheral.on_passage` returns at once (it hands the work to the peripheral's own thread):
  the pipeline must never wait on a relay or a serial port.
* The peripheral owns its resource (GPIO lines, the serial port) and the one thread that touches it;
  :meth:`~Peripheral.close` stops that thread within the time it is given.
* :meth:`~Peripheral.state` may be called from any thread; it feeds ``…/state`` under
  ``"door"`` → ``{peripheral name: document}``.
* Nothing emitted or logged holds a face, an embedding or a secret. A credential number is sent to
  the panel and never logged above DEBUG.

:func:`create_peripherals` builds what the configuration enables, importing each back-end lazily
(``gpiod`` or ``Jetson.GPIO``, ``osdp``) so a daemon without door hardware never loads them.
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Tuple

if TYPE_CHECKING:
    from .access.credentials import CredentialInbox
    from .config import ApplianceConfig
    from .event_mac import EventKey

logger = logging.getLogger(__name__)

#: ``emit(kind, details)``: store and publish one door event; thread-safe, never raises.
EmitDoorEvent = Callable[[str, Mapping[str, Any]], None]


@dataclass(frozen=True)
class Passage:
    """One access decision, as the door-side devices need it.

    Attributes:
        event_id: the access event's id (``…/events``), to correlate door events with it.
        decision: ``granted``, ``denied`` or ``unknown``.
        reason: why a recognised person was denied (``expired``, ``outside_schedule``, …), else ``None``.
        identity_id: the recognised identity, or ``None``.
        credential: the identity's ``external_id`` (a badge number for a panel), or ``None``.
        groups: the identity's access groups (the door's first person in), or ``()``.
        camera_id: the camera that saw it (a door opens for its own cameras), or ``None``.
    """

    event_id: str
    decision: str
    reason: Optional[str]
    identity_id: Optional[str]
    credential: Optional[str]
    groups: Tuple[str, ...] = ()
    camera_id: Optional[str] = None


class Peripheral(abc.ABC):
    """A door-side device owned by one thread of its own; see the module docstring for the rules."""

    #: Key of this device's document in ``…/state`` → ``door``.
    name: str = "peripheral"

    @property
    def source(self) -> str:
        """The ``source`` of its door events: its name, unless several of a kind share one (doors)."""
        return self.name

    @abc.abstractmethod
    def start(self, emit: EmitDoorEvent) -> None:
        """Open the resource and start the owner thread.

        Raises:
            appliance.errors.ApplianceError: the resource cannot be opened (a message naming the
                configuration key and what to try).
        """

    @abc.abstractmethod
    def on_passage(self, passage: Passage) -> None:
        """React to one access decision (pulse the relay, report a card read); must not block."""

    def on_door_event(self, kind: str, details: Mapping[str, Any]) -> None:  # noqa: B027 - optional hook
        """Another device's door event, once stored (a door's ``tamper``, which a panel's reader
        reports); any thread, must not block. Ignored unless a device needs it."""

    @abc.abstractmethod
    def state(self) -> Dict[str, Any]:
        """A JSON-ready summary for ``…/state`` (any thread)."""

    @abc.abstractmethod
    def close(self, timeout: float) -> None:
        """Stop the owner thread and release the resource within ``timeout`` seconds; idempotent."""


class PeripheralHub:
    """The daemon's peripherals: started together, told of every passage, closed within one deadline.

    Args:
        peripherals: from :func:`create_peripherals`.
        device_id: this appliance's id (in each door event).
        store: ``store(event_id, payload)`` writes a door event to the durable outbox (topic ``door``);
            it may raise :class:`appliance.outbox.OutboxError` (counted, logged).
        notify: tells the MQTT link that events are waiting.
        event_key: signs each door event (its ``mac``, :mod:`appliance.event_mac`) when the site's
            fleet key is set, as the access events are.
    """

    def __init__(
        self,
        peripherals: List[Peripheral],
        device_id: str,
        store: Callable[[str, bytes], None],
        notify: Callable[[], None],
        event_key: Optional[EventKey] = None,
    ) -> None:
        self.peripherals = list(peripherals)
        self._event_key = event_key
        self.device_id = device_id
        self._store = store
        self._notify = notify
        #: Start-up failures, as sentences for ``…/state``'s ``degraded``.
        self.failures: List[str] = []
        self.events_total = 0
        self.events_lost = 0

    def start(self) -> None:
        """Start each peripheral; one that cannot start is left out and reported (the door still gets
        its events over MQTT), never the end of the daemon."""
        started: List[Peripheral] = []
        for peripheral in self.peripherals:
            try:
                peripheral.start(self._emitter(peripheral.source))
            except Exception as err:
                logger.error("%s: cannot start (%s); running without it", peripheral.name, err)
                self.failures.append(f"{peripheral.name} unavailable: {err}")
                continue
            started.append(peripheral)
        self.peripherals = started

    def emitter(self, source: str) -> EmitDoorEvent:
        """The ``emit(kind, details)`` of a door-event source that is not a peripheral (``board``:
        :class:`appliance.board_health.BoardMonitor` reports throttling with it); counted with the
        peripherals' events."""
        return self._emitter(source)

    def _emitter(self, source: str) -> EmitDoorEvent:
        from .events import door_event, encode

        def emit(kind: str, details: Mapping[str, Any]) -> None:
            try:
                event = door_event(self.device_id, source, kind, details)
                if self._event_key is not None:
                    self._event_key.sign(event)
                self._store(event["event_id"], encode(event))
            except Exception as err:  # a full disk: counted; the peripheral's thread goes on
                self.events_lost += 1
                logger.warning("%s event %s lost: %s", source, kind, err)
            else:
                self.events_total += 1
                logger.info("door event: %s %s", source, kind)
                self._notify()
            self._tell_others(source, kind, details)  # stored or not: a tamper still reaches the panel

        return emit

    def _tell_others(self, source: str, kind: str, details: Mapping[str, Any]) -> None:
        for peripheral in self.peripherals:
            if peripheral.source != source:
                try:
                    peripheral.on_door_event(kind, details)
                except Exception:
                    logger.exception("%s: on_door_event failed", peripheral.name)

    def on_passage(self, passage: Passage) -> None:
        """Tell every peripheral (pipeline thread); a peripheral's error is logged, never raised."""
        for peripheral in self.peripherals:
            try:
                peripheral.on_passage(passage)
            except Exception:
                logger.exception("%s: on_passage failed", peripheral.name)

    def state(self) -> Dict[str, Any]:
        """``{name: document}`` for ``…/state`` → ``door``."""
        documents: Dict[str, Any] = {}
        for peripheral in self.peripherals:
            try:
                documents[peripheral.name] = peripheral.state()
            except Exception as err:
                documents[peripheral.name] = {"error": str(err)}
        return documents

    def close(self, deadline: Callable[[], float]) -> None:
        """Close every peripheral; ``deadline()`` gives the seconds left of the shared stop budget."""
        for peripheral in self.peripherals:
            try:
                peripheral.close(deadline())
            except Exception:
                logger.exception("%s: close failed", peripheral.name)


def create_peripherals(
    config: ApplianceConfig, credentials: Optional[CredentialInbox] = None
) -> List[Peripheral]:
    """The peripherals ``config`` enables (``[door]`` or each of ``[[doors]]``, ``[osdp]``,
    ``[credential_reader]`` or each of ``[[credential_readers]]`` — those sharing a serial port polled
    by one control panel — whose cards and PINs go to ``credentials``), not yet started."""
    peripherals: List[Peripheral] = []
    if config.configured_doors:
        from .door import create_door

        peripherals.extend(create_door(door, config.access.time_zone) for door in config.configured_doors)
    if config.osdp.enabled:
        from .osdp import create_reader

        peripherals.append(create_reader(config.osdp))
    if config.configured_readers:
        from .osdp import create_card_readers

        if credentials is None:
            raise ValueError("a credential reader needs the inbox its cards and PINs go to")
        peripherals.extend(create_card_readers(config.configured_readers, credentials.offer))
    return peripherals


__all__ = ["EmitDoorEvent", "Passage", "Peripheral", "PeripheralHub", "create_peripherals"]
