"""Anti-passback: an area's door lets a person in once, and out once, in turn.

An appliance with an entry camera (``direction = "in"``) and an exit camera (``"out"``) keeps each
identity's last granted passage (:mod:`appliance.access.presence`). A grant the access policy allows
is then held to one more rule, ``[access.anti_passback]``:

* a grant at an entry camera for someone whose last passage was *in*, or at an exit camera for
  someone whose last passage was *out*, is a **passback** (they left without being seen leaving, or
  someone is using their face twice);
* unless it is the **same passage**: the same direction within ``same_passage_s`` of the last one
  (the face stayed at the door and its track was lost and found again, or re-announced);
* someone with no kept passage (new, or forgotten by a reset) passes either way;
* members of ``exempt_groups`` are never passbacks.

``soft``: a passback is granted and its event says ``"anti_passback": "violation"``. ``hard``: it is
``denied`` with the reason ``anti_passback``; the state stays as it was, so the person is refused
until security resets them (``access presence reset``, the MQTT ``presence_reset`` command) or the
daily ``reset_at`` forgets everyone. Every admitted grant at a camera with a direction is recorded,
exempt or not: ``access presence`` lists who is inside (a muster list).

The instants are the wall clock. A passage recorded before the last daily reset counts as none; a
clock set back (a device booting before NTP answers) makes a recorded passage lie in the future,
which is then not the same passage, only a passage.

The decisions are made on the pipeline thread, which owns the writes; a store that cannot be read
or written (a full disk) lets the grant through — a door must not lock everyone out because of its
bookkeeping — and says so in the log.
"""

from __future__ import annotations

import logging
from datetime import datetime, time, timedelta, timezone, tzinfo
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Protocol, Sequence

from ..logs import RateLimitedLog
from .presence import DIRECTIONS, PRESENCE_FILE, Presence, PresenceError, PresenceStore
from .settings import AntiPassbackConfig

if TYPE_CHECKING:
    from ..config import ApplianceConfig

logger = logging.getLogger(__name__)

#: The reason a ``hard`` passback is denied with.
PASSBACK = "anti_passback"
#: An event's ``anti_passback`` when ``soft`` granted a passback.
VIOLATION = "violation"


def last_reset(now: datetime, reset_at: Optional[str], zone: tzinfo) -> Optional[datetime]:
    """The latest daily reset at or before ``now``: ``reset_at`` (``HH:MM``) in ``zone`` today, or
    yesterday when today's is still ahead; ``None`` without a daily reset."""
    if reset_at is None:
        return None
    hours, minutes = (int(part) for part in reset_at.split(":"))
    local = now.astimezone(zone)
    today = datetime.combine(local.date(), time(hours, minutes), tzinfo=zone)
    return (
        today
        if today <= local
        else datetime.combine(local.date() - timedelta(days=1), time(hours, minutes), tzinfo=zone)
    )


class AntiPassback:
    """The rule for one appliance's cameras (see the module).

    Args:
        settings: ``[access.anti_passback]`` (``mode`` other than ``off``).
        directions: camera id → ``in`` / ``out`` (cameras without a direction are left out).
        store: the identities' last passages.
        zone: the door's time zone (``reset_at`` is local).
    """

    def __init__(
        self, settings: AntiPassbackConfig, directions: Mapping[str, str], store: PresenceStore, zone: tzinfo
    ) -> None:
        self.settings = settings
        self.directions = {camera: way for camera, way in directions.items() if way in DIRECTIONS}
        self.store = store
        self.zone = zone
        self._exempt = frozenset(settings.exempt_groups)
        self._forgotten_before: Optional[float] = None
        self._failures = RateLimitedLog(logger, 60.0)

    @property
    def hard(self) -> bool:
        return self.settings.mode == "hard"

    def is_passback(self, identity_id: str, groups: Sequence[str], camera_id: str, now: datetime) -> bool:
        """Whether a grant at ``camera_id`` (``now``: aware) is a passback (see the module). Never at a
        camera without a direction, nor when the store cannot be read (logged; the grant stands)."""
        direction = self.directions.get(camera_id)
        if direction is None or self._exempt.intersection(groups):
            return False
        try:
            last = self._last(identity_id, now)
        except PresenceError as err:
            self._failures.report("read", "anti-passback not checked: %s", err)
            return False
        if last is None or last.direction != direction:
            return False
        return not 0.0 <= now.timestamp() - last.at <= self.settings.same_passage_s  # not the same passage

    def record(self, identity_id: str, camera_id: str, now: datetime) -> None:
        """Keep a granted passage at ``camera_id`` (a camera without a direction: nothing)."""
        direction = self.directions.get(camera_id)
        if direction is None:
            return
        try:
            self.store.record(Presence(identity_id, direction, camera_id, now.timestamp()))
        except PresenceError as err:
            self._failures.report("write", "a passage was not recorded for anti-passback: %s", err)

    def present(
        self, known: Callable[[str], bool], now: datetime, direction: Optional[str] = None
    ) -> List[Presence]:
        """The passages kept since the last reset, oldest first (in ``direction`` only, if given).
        Those of identities ``known`` no longer knows (removed from the gallery) are forgotten.

        Raises:
            PresenceError: the store cannot be read.
        """
        self._forget_before_reset(now)
        forget_removed(self.store, known)
        return self.store.entries(direction, self._since(now))

    def _last(self, identity_id: str, now: datetime) -> Optional[Presence]:
        self._forget_before_reset(now)
        last = self.store.last(identity_id)
        since = self._since(now)
        return None if last is None or (since is not None and last.at < since) else last

    def _since(self, now: datetime) -> Optional[float]:
        reset = last_reset(now, self.settings.reset_at, self.zone)
        return None if reset is None else reset.timestamp()

    def _forget_before_reset(self, now: datetime) -> None:
        """Once per daily reset: delete what it forgot (the store keeps nothing it no longer uses)."""
        since = self._since(now)
        if since is None or since == self._forgotten_before:
            return
        forgotten = self.store.reset(before=since)
        self._forgotten_before = since
        if forgotten:
            logger.info("anti-passback: the daily reset forgot %d passages", forgotten)


class NameSource(Protocol):
    """The gallery store, as :func:`presence_document` reads it."""

    def names(self) -> Dict[str, str]: ...


def presence_document(
    passback: AntiPassback,
    source: NameSource,
    direction: Optional[str] = None,
    limit: int = 1000,
    now: Optional[datetime] = None,
) -> Dict[str, Any]:
    """Who passed in or out last, since the last reset: the ``presence`` command's answer and
    ``access presence list --json``.

    Returns:
        ``{"mode", "reset_at", "in", "out", "truncated", "passages": [{"id", "name", "direction",
        "camera_id", "since"}, …]}``: the counts of every kept passage (in ``direction`` only, when
        given), the newest ``limit`` passages first.
    """
    now = datetime.now(timezone.utc) if now is None else now
    names = source.names()
    entries = passback.present(names.__contains__, now, direction)
    newest = sorted(entries, key=lambda entry: (-entry.at, entry.identity_id))[:limit]
    return {
        "mode": passback.settings.mode,
        "reset_at": passback.settings.reset_at,
        "in": sum(entry.direction == "in" for entry in entries),
        "out": sum(entry.direction == "out" for entry in entries),
        "truncated": len(entries) > limit,
        "passages": [dict(entry.document(), name=names[entry.identity_id]) for entry in newest],
    }


def open_presence(config: ApplianceConfig) -> Optional[PresenceStore]:
    """The presence store of an appliance with a camera that has a direction, else ``None``.

    With anti-passback off it is emptied (also one left from before by cameras that have no direction
    now): nothing is kept about who is in unless the door needs it.

    Raises:
        PresenceError: the store cannot be opened.
    """
    path = config.storage.dir / PRESENCE_FILE
    directions = config.camera_directions
    if not directions and not path.exists():
        return None
    store = PresenceStore.open(path)
    try:
        forget_when_off(store, config.access.anti_passback.mode)
    except BaseException:
        store.close()
        raise
    if not directions:
        store.close()
        return None
    return store


def forget_removed(store: PresenceStore, known: Callable[[str], bool]) -> int:
    """Delete the passages of identities ``known`` does not know (removed from the gallery); returns
    how many.

    Raises:
        PresenceError: the store cannot be read or written.
    """
    gone = [identity_id for identity_id in store.identity_ids() if not known(identity_id)]
    if not gone:
        return 0
    forgotten = store.reset(gone)
    logger.info("anti-passback: forgot the passages of %d identities no longer in the gallery", forgotten)
    return forgotten


def forget_when_off(store: PresenceStore, mode: str) -> None:
    """Empty ``store`` when anti-passback is ``off`` (at start, and at a reload that turns it off)."""
    if mode == "off":
        forgotten = store.reset()
        if forgotten:
            logger.info("anti-passback is off: forgot the last passages of %d identities", forgotten)


__all__ = [
    "PASSBACK",
    "VIOLATION",
    "AntiPassback",
    "forget_removed",
    "forget_when_off",
    "last_reset",
    "open_presence",
    "presence_document",
]
