"""Anti-passback across an area's doors: the passages granted at the other appliances of the area,
read from their access events on the broker.

An area (a building, a car park) has several doors, each with its own appliance. With
``access.anti_passback.area_doors`` naming the others' device ids, this appliance subscribes to their
``{mqtt.prefix}/{device_id}/events`` and takes each ``granted`` event that has a ``direction`` as that
identity's last passage, when it is newer than the one kept here. Someone who entered at door B is
then *in* at door A too. No new record type: the events every door already publishes carry the
identity id, the direction and the instant.

What it rests on, and what it cannot do:

* **The site's fleet key** (``area_events = "signed"``, the default): a passage counts only when its
  event carries a valid ``mac`` (:mod:`appliance.event_mac`), which only an appliance holding the
  key can write; so a client that may publish on the broker cannot make people *in* or *out* here.
  With ``"unsigned"`` only the broker's ACL does that: give each door ``write`` on its own topics
  only. Either way this door needs ``read`` on the others' ``…/events``.
* **Identity ids** are compared as they are: the fleet gives an identity the same id at every door
  (:mod:`appliance.fleet`); one enrolled by hand at two doors under two ids is two people here.
* **Clocks**: the newer passage wins by its ``ts``; the doors' clocks must agree (NTP). An event
  stamped more than :data:`MAX_AHEAD_S` ahead of this clock is refused: it would outrank every real
  passage.
* **Offline**: the events come over a persistent MQTT session of their own
  (:mod:`appliance.access.area_link`), so the broker keeps the ones published while this door is
  disconnected or restarting, and delivers them when it is back (within the broker's queue limit;
  a session the broker lost, with the passages made meanwhile, is learnt at each person's next
  passage: a ``hard`` door errs towards letting them through).

Every message is bounded and checked; a bad one is counted and logged (rate-limited), never applied.
Messages are parsed on paho's network thread and queued (bounded); the pipeline thread, which owns the
presence store's writes, applies them between frames (:meth:`AreaFeed.apply`) and only then
acknowledges them to the broker.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

from ..event_mac import EventKey, EventMacError
from ..logs import RateLimitedLog
from .presence import DIRECTIONS, Presence, PresenceError, PresenceStore

logger = logging.getLogger(__name__)

#: The largest event taken (a face crop makes an event a few tens of KiB).
MAX_EVENT_BYTES = 256 * 1024
#: Passages waiting for the pipeline thread at most; beyond, the newest are dropped and counted.
MAX_QUEUED = 1000
#: How far ahead of this appliance's clock another door's event may be stamped: further ahead, it
#: would outrank every real passage until a reset, so it is refused.
MAX_AHEAD_S = 300.0
_IDENTITY = re.compile(r"^[^\x00-\x1f\x7f]{1,64}\Z")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}\Z")


@dataclass(frozen=True)
class AreaPassage:
    """A passage granted at another door of the area (``at``: Unix seconds from the event's ``ts``)."""

    door: str
    identity_id: str
    direction: str
    camera_id: str
    at: float


def parse_passage(door: str, payload: bytes, key: Optional[EventKey] = None) -> Optional[AreaPassage]:
    """The passage of one access event published by ``door``; ``None`` for an event that is not one
    (not ``granted``, or from a camera without a direction).

    Args:
        key: the site's event key: a passage counts only when its event's ``mac`` is valid under it;
            ``None``: unsigned events count (``area_events = "unsigned"``).

    Raises:
        EventMacError: a passage whose event's ``mac`` is missing, under another key, or wrong.
        ValueError: not an access event of ``door`` (too large, not JSON, a key missing or malformed).
    """
    from .policy import parse_instant

    if len(payload) > MAX_EVENT_BYTES:
        raise ValueError(f"{len(payload)} bytes, more than {MAX_EVENT_BYTES}")
    try:
        event = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"not JSON ({err})") from None
    # 1, or 2 for a passage without a face (card and PIN): appliance.events' SCHEMA_VERSION and
    # FACELESS_SCHEMA_VERSION, not imported here for the OpenCV that module brings.
    if not isinstance(event, dict) or event.get("schema") not in (1, 2):
        raise ValueError("not a schema-1 or schema-2 access event")
    if event.get("device_id") != door:
        raise ValueError(f"device_id {str(event.get('device_id'))[:70]!r} is not the door it came from")
    if event.get("decision") != "granted" or event.get("direction") is None:
        return None
    if key is not None:
        key.verify(event)
    direction, identity, camera = event.get("direction"), event.get("identity"), event.get("camera_id")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction {str(direction)[:20]!r} is not in or out")
    if not isinstance(identity, dict) or not isinstance(identity.get("id"), str):
        raise ValueError("a granted event without an identity id")
    if not _IDENTITY.match(identity["id"]):
        raise ValueError("the identity id is not 1–64 printable characters")
    if not isinstance(camera, str) or not _NAME.match(camera):
        raise ValueError(f"camera_id {str(camera)[:70]!r} is not a camera id")
    at = parse_instant(event.get("ts"), "ts").timestamp()  # a PolicyError is a ValueError
    return AreaPassage(door, identity["id"], direction, camera, at)


class AreaFeed:
    """The other doors' passages, from paho's thread (:meth:`offer`) to the pipeline thread (:meth:`apply`).

    Args:
        prefix: ``mqtt.prefix``.
        doors: the other doors' device ids (``access.anti_passback.area_doors``).
        key: the site's event key, when their events must be signed (``area_events = "signed"``).
        clock: Unix seconds (tests fix it).
    """

    def __init__(
        self,
        prefix: str,
        doors: List[str],
        key: Optional[EventKey],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.topics: Dict[str, str] = {f"{prefix}/{door}/events": door for door in doors}
        self._key = key
        self._clock = clock
        #: The state of the persistent session that brings the events (``connected``, ``resumed``,
        #: ``connects``): :meth:`appliance.access.area_link.AreaLink.state`, once a link brings them.
        self.session: Optional[Callable[[], Dict[str, Any]]] = None
        self._queue: queue.Queue = queue.Queue(maxsize=MAX_QUEUED)
        self._log = RateLimitedLog(logger, 60.0)
        self.counts = {
            "received": 0,
            "applied": 0,
            "older": 0,
            "unknown_identity": 0,
            "refused": 0,
            "unauthenticated": 0,
            "dropped": 0,
        }

    def offer(
        self,
        topic: str,
        payload: bytes,
        retained: bool,
        acknowledge: Optional[Callable[[], None]] = None,
        wait_s: float = 0.0,
    ) -> None:
        """paho's thread: check one message of a subscribed topic and queue it, waiting up to ``wait_s``
        for room. ``acknowledge`` is called on the pipeline thread once the message was applied or
        refused, in the order the messages came; a message that found no room is counted as
        ``dropped`` and never acknowledged (the broker sends it again at the next connect)."""
        passage: Optional[AreaPassage] = None
        door = self.topics.get(topic)
        if door is not None and not retained:  # events are never retained: a retained one is no door's event
            passage = self._check(door, payload)
        if passage is None and acknowledge is None:
            return
        try:
            self._queue.put((passage, acknowledge), timeout=wait_s)
        except queue.Full:
            self.counts["dropped"] += 1
            self._log.report(
                "full", "anti-passback: %d passages of other doors wait; one was dropped", MAX_QUEUED
            )

    def _check(self, door: str, payload: bytes) -> Optional[AreaPassage]:
        """The passage of one of ``door``'s events, or ``None`` (not a passage, or refused and counted)."""
        self.counts["received"] += 1
        try:
            passage = parse_passage(door, payload, self._key)
            if passage is not None and passage.at > self._clock() + MAX_AHEAD_S:
                raise ValueError(
                    f"stamped {passage.at - self._clock():.0f} s ahead of this appliance's clock"
                )
        except ValueError as err:
            self.counts["unauthenticated" if isinstance(err, EventMacError) else "refused"] += 1
            self._log.report(
                f"refused {door}", "anti-passback: an event of door %s was refused: %s", door, err
            )
            return None
        return passage

    def apply(self, store: Optional[PresenceStore], known: Callable[[str], bool]) -> int:
        """The pipeline thread: record the queued passages that are newer than the ones kept, for the
        identities ``known`` (in this gallery), and acknowledge each message. With ``store`` ``None``
        (anti-passback off) they are dropped. Returns how many were taken from the queue."""
        taken = 0
        while True:
            try:
                passage, acknowledge = self._queue.get_nowait()
            except queue.Empty:
                return taken
            taken += 1
            if passage is not None and store is not None:
                self._record(passage, store, known)
            if acknowledge is not None:
                acknowledge()

    def _record(self, passage: AreaPassage, store: PresenceStore, known: Callable[[str], bool]) -> None:
        if not known(passage.identity_id):
            self.counts["unknown_identity"] += 1
            return
        try:
            last = store.last(passage.identity_id)
            reset = store.forgotten_since(passage.identity_id)
            kept_newer = last is not None and last.at >= passage.at
            if kept_newer or (reset is not None and reset >= passage.at):  # or an operator's reset of it
                self.counts["older"] += 1
                return
            camera = f"{passage.door}/{passage.camera_id}"
            store.record(Presence(passage.identity_id, passage.direction, camera, passage.at))
        except PresenceError as err:
            self._log.report(
                "store", "anti-passback: a passage of door %s was not recorded: %s", passage.door, err
            )
            return
        self.counts["applied"] += 1

    def state(self) -> Dict[str, Any]:
        """For ``…/state``: the doors followed, whether their events must be signed, the counts and the
        session (``None`` before a link keeps it)."""
        return {
            "doors": sorted(self.topics.values()),
            "signed": self._key is not None,
            **self.counts,
            "session": self.session() if self.session is not None else None,
        }


__all__ = ["MAX_AHEAD_S", "MAX_EVENT_BYTES", "MAX_QUEUED", "AreaFeed", "AreaPassage", "parse_passage"]
