"""Who may pass this door now: an identity's validity, suspension and groups against the door's groups,
their weekly schedules and holiday calendars, in the door's time zone — evaluated on the appliance,
offline.

Where each part lives, and why:

* **Per identity** (in the gallery store, carried in bundles): ``valid_from`` / ``valid_until``
  (ISO 8601 with an offset; a visitor's pass), ``suspended``, ``groups``; and the second factors a
  door may ask for (:mod:`appliance.access.second_factor`): ``cards``, and the hashes of a ``pin`` and a
  ``duress_pin`` (:mod:`appliance.access.credentials`).
* **Groups and holiday calendars** (in the gallery store too, beside the identities they govern):
  operators change them remotely (MQTT commands) and a fleet carries them, so they are data, not
  installation settings. A group has a :class:`~.schedule.WeeklySchedule` and names the holiday
  calendars on which it admits nobody (the whole local calendar day).
* **The door** (``[access]`` in the configuration, an installation fact): which groups it admits and
  its IANA time zone.

The rules, in the order they are checked (the first that fails is the ``reason``):

1. ``suspended`` → ``suspended``.
2. now < ``valid_from`` → ``not_yet_valid``; now ≥ ``valid_until`` → ``expired``.
3. With door groups configured: none of the identity's groups is one of them → ``not_in_group``.
   Without door groups, groups are not checked and rules 4–5 do not apply (every valid identity).
4. Of the identity's groups that this door admits (and that are defined), any whose schedule admits
   the local time and whose calendars do not list today's local date → granted.
5. Otherwise → ``holiday`` when at least one of them was closed by a holiday and would otherwise
   have admitted now, else ``outside_schedule``. A group this door names but nobody defined admits
   nobody (``doctor`` reports it).

A passage the vote denied for liveness keeps the reason ``liveness``. A grant these rules allow at a
camera with a direction is then held to anti-passback (:mod:`appliance.access.passback`), whose
``hard`` mode denies with the reason ``anti_passback``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Callable, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Tuple

from .credentials import MAX_CARDS, check_pin, check_pin_hash, hash_pin, parse_card, verify_pin
from .errors import PolicyError
from .schedule import WeeklySchedule
from .zones import load_zone

#: The reasons a recognised person is denied (``liveness`` comes from the vote, ``anti_passback`` from
#: :mod:`appliance.access.passback`, ``two_person`` from :mod:`appliance.access.two_person`, ``lockout``
#: from :mod:`appliance.attack_guard`, the rest from here).
REASONS = (
    "expired",
    "not_yet_valid",
    "suspended",
    "not_in_group",
    "outside_schedule",
    "holiday",
    "liveness",
    "anti_passback",
    "two_person",
    "lockout",
    "second_factor",
    "wrong_credential",
    "credential_lockout",
)
#: The policy document's keys; the credentials' are left out of it while unset, so a record without
#: them reads the same on a firmware that predates them.
POLICY_KEYS = ("valid_from", "valid_until", "suspended", "groups")
CREDENTIAL_KEYS = ("cards", "pin", "duress_pin")
MAX_GROUPS = 64
MAX_HOLIDAYS = 1000
GROUP_NAME_HELP = "1–64 characters: letters, digits, '_', '.', '-', starting with a letter or digit"


def check_group_name(name: object, what: str = "group") -> str:
    """Return ``name`` if it is a valid group or calendar name, else raise :class:`PolicyError`."""
    import re

    if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z", name):
        raise PolicyError(f"{what} name {name!r:.80} is not valid ({GROUP_NAME_HELP})")
    return name


def check_group_list(names: List[str], what: str = "group") -> List[str]:
    """Return ``names`` if every one is a valid group (or ``what``) name and none is listed twice,
    else raise :class:`PolicyError` (a :class:`ValueError`: the configuration names the key)."""
    for name in names:
        check_group_name(name, what)
    if len(set(names)) != len(names):
        raise PolicyError(f"a {what} is listed twice")
    return names


def parse_instant(text: object, what: str) -> datetime:
    """An ISO 8601 date-time *with* an offset (``2026-12-31T18:00:00+01:00``, ``…Z``) → aware UTC datetime.

    Raises:
        PolicyError: not a string, not ISO 8601, or without an offset (a local time would mean
            different instants at doors in different zones).
    """
    if not isinstance(text, str) or len(text) > 64:
        raise PolicyError(f"{what} must be an ISO 8601 date-time with an offset, got {text!r:.80}")
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise PolicyError(
            f"{what} {text!r} is not an ISO 8601 date-time (e.g. 2026-12-31T18:00:00+01:00 or 2026-12-31T17:00:00Z)"
        ) from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise PolicyError(f"{what} {text!r} has no offset: add one, e.g. {text}Z or {text}+01:00")
    return parsed.astimezone(timezone.utc)


def format_instant(value: Optional[datetime]) -> Optional[str]:
    """An aware datetime as RFC 3339 UTC (``2026-12-31T17:00:00Z``), or ``None``."""
    if value is None:
        return None
    return value.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_day(text: object, what: str) -> date:
    """A calendar date ``YYYY-MM-DD``.

    Raises:
        PolicyError: anything else.
    """
    try:
        if not isinstance(text, str) or len(text) != 10:
            raise ValueError
        return date.fromisoformat(text)
    except ValueError:
        raise PolicyError(f"{what} {text!r:.40} is not a date YYYY-MM-DD") from None


@dataclass(frozen=True)
class IdentityPolicy:
    """One identity's part of the policy. Datetimes are aware, in UTC.

    ``cards`` are canonical card texts (:func:`~appliance.access.credentials.parse_card`), sorted;
    ``pin`` and ``duress_pin`` are PIN hashes (:func:`~appliance.access.credentials.hash_pin`) or ``None``.
    """

    valid_from: Optional[datetime] = None
    valid_until: Optional[datetime] = None
    suspended: bool = False
    groups: Tuple[str, ...] = ()
    cards: Tuple[str, ...] = ()
    pin: Optional[str] = field(default=None, repr=False)
    duress_pin: Optional[str] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if len(self.groups) > MAX_GROUPS:
            raise PolicyError(f"an identity has at most {MAX_GROUPS} groups, got {len(self.groups)}")
        for name in self.groups:
            check_group_name(name)
        if self.valid_from and self.valid_until and self.valid_until <= self.valid_from:
            raise PolicyError(
                f"valid_until ({format_instant(self.valid_until)}) is not after valid_from "
                f"({format_instant(self.valid_from)})"
            )
        if len(self.cards) > MAX_CARDS:
            raise PolicyError(f"an identity holds at most {MAX_CARDS} cards, got {len(self.cards)}")

    def changed(self, changes: Mapping[str, object], where: str = "policy") -> IdentityPolicy:
        """A copy with ``changes`` applied: the keys of :meth:`document`; ``None`` clears a validity bound.

        Also takes ``add_groups`` / ``remove_groups`` and ``add_cards`` / ``remove_cards`` (lists), and
        ``pin`` / ``duress_pin`` as the PIN's digits (hashed here; ``None`` clears it). A duress PIN
        equal to the PIN is refused: it could never raise its alarm.

        Raises:
            PolicyError: an unknown key or a malformed value (named with ``where``).
        """
        document = self.document()
        groups, cards = set(self.groups), set(self.cards)
        pins = {"pin": self.pin, "duress_pin": self.duress_pin}
        for key, value in changes.items():
            if key == "add_groups":
                groups |= set(normalise_groups(_names(value, _at(where, key))))
            elif key == "remove_groups":
                groups -= set(_names(value, _at(where, key)))
            elif key == "groups":
                groups = set(normalise_groups(_names(value, _at(where, key))))
            elif key == "add_cards":
                cards |= set(normalise_cards(_names(value, _at(where, key), "cards"), _at(where, key)))
            elif key == "remove_cards":
                cards -= set(normalise_cards(_names(value, _at(where, key), "cards"), _at(where, key)))
            elif key == "cards":
                cards = set(normalise_cards(_names(value, _at(where, key), "cards"), _at(where, key)))
            elif key in pins:
                pins[key] = None if value is None else hash_pin(_pin(value, _at(where, key)))
            elif key in POLICY_KEYS:
                document[key] = value
            else:
                raise PolicyError(f"{_at(where, str(key)[:40])}: unknown key")
        for key in ("pin", "duress_pin"):
            if key in changes and changes[key] is not None and pins[key] is not None:
                other = pins["duress_pin" if key == "pin" else "pin"]
                if verify_pin(str(changes[key]), other):
                    raise PolicyError(f"{_at(where, key)}: the PIN and the duress PIN must differ")
        document.update(groups=sorted(groups), cards=sorted(cards), **pins)
        return IdentityPolicy.from_document(document, where)

    def document(self) -> Dict[str, object]:
        """JSON-ready form (bundles, fleet records); the credentials' keys only when set."""
        document: Dict[str, object] = {
            "valid_from": format_instant(self.valid_from),
            "valid_until": format_instant(self.valid_until),
            "suspended": self.suspended,
            "groups": list(self.groups),
        }
        if self.cards:
            document["cards"] = list(self.cards)
        for key in ("pin", "duress_pin"):
            if getattr(self, key) is not None:
                document[key] = getattr(self, key)
        return document

    def public_document(self) -> Dict[str, object]:
        """What an operator is shown (CLI ``--json``, MQTT answers): every key, the PINs as whether
        they are set, never their hashes."""
        document = self.document()
        document.update(
            cards=list(self.cards), pin=self.pin is not None, duress_pin=self.duress_pin is not None
        )
        return document

    @classmethod
    def from_document(cls, document: Mapping[str, object], where: str = "policy") -> IdentityPolicy:
        """The inverse of :meth:`document`; missing keys take their defaults.

        Raises:
            PolicyError: a value of the wrong type or form, named with ``where``.
        """
        unknown = set(document) - set(POLICY_KEYS) - set(CREDENTIAL_KEYS)
        if unknown:
            raise PolicyError(f"{where or 'policy'}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
        suspended = document.get("suspended", False)
        if not isinstance(suspended, bool):
            raise PolicyError(f"{_at(where, 'suspended')} must be true or false, got {suspended!r:.40}")
        groups = document.get("groups", [])
        if not isinstance(groups, (list, tuple)):
            raise PolicyError(f"{_at(where, 'groups')} must be a list of group names")
        bounds = {}
        for key in ("valid_from", "valid_until"):
            value = document.get(key)
            bounds[key] = None if value is None else parse_instant(value, _at(where, key))
        cards = normalise_cards(_names(document.get("cards", []), _at(where, "cards"), "cards"), where)
        pins = {
            key: None if document.get(key) is None else check_pin_hash(document[key], _at(where, key))
            for key in ("pin", "duress_pin")
        }
        return cls(
            bounds["valid_from"], bounds["valid_until"], suspended, normalise_groups(groups), cards, **pins
        )


def _at(where: str, key: str) -> str:
    """``where.key``, or ``key`` alone (the command line names its options itself)."""
    return f"{where}.{key}" if where else key


def _names(value: object, where: str, what: str = "group names") -> List[str]:
    if not isinstance(value, (list, tuple)):
        raise PolicyError(f"{where} must be a list of {what}")
    return list(value)


def _pin(value: object, where: str) -> str:
    try:
        return check_pin(value)
    except PolicyError as err:
        raise PolicyError(f"{where}: {err}") from None


def normalise_cards(cards: Iterable[object], where: str = "cards") -> Tuple[str, ...]:
    """Checked, canonical, de-duplicated, sorted cards (:func:`~appliance.access.credentials.parse_card`)."""
    try:
        return tuple(sorted({parse_card(card) for card in cards}))
    except PolicyError as err:
        raise PolicyError(f"{where}: {err}") from None


def normalise_groups(groups: Iterable[object]) -> Tuple[str, ...]:
    """Checked, de-duplicated, sorted group names."""
    return tuple(sorted({check_group_name(name) for name in groups}))


@dataclass(frozen=True)
class AccessGroup:
    """A group: its weekly schedule and the holiday calendars it is closed on."""

    name: str
    schedule: WeeklySchedule = field(default_factory=WeeklySchedule)
    holidays: Tuple[str, ...] = ()

    def document(self) -> Dict[str, object]:
        return {"name": self.name, "schedule": list(self.schedule.texts()), "holidays": list(self.holidays)}

    @classmethod
    def from_parts(cls, name: object, schedule: Iterable[str], holidays: Iterable[object]) -> AccessGroup:
        """A checked group.

        Raises:
            PolicyError: a bad name, window or calendar name.
        """
        calendars = tuple(sorted({check_group_name(c, "holiday calendar") for c in holidays}))
        return cls(check_group_name(name), WeeklySchedule.parse(schedule), calendars)


@dataclass(frozen=True)
class HolidayCalendar:
    """Named days (local calendar dates) on which the groups naming this calendar admit nobody."""

    name: str
    days: FrozenSet[date] = frozenset()

    def document(self) -> Dict[str, object]:
        return {"name": self.name, "days": sorted(day.isoformat() for day in self.days)}

    @classmethod
    def from_parts(cls, name: object, days: Iterable[object]) -> HolidayCalendar:
        """A checked calendar.

        Raises:
            PolicyError: a bad name or date, or more than :data:`MAX_HOLIDAYS` days.
        """
        parsed = frozenset(parse_day(day, f"holiday calendar {name!r:.40}: day") for day in days)
        if len(parsed) > MAX_HOLIDAYS:
            raise PolicyError(f"a holiday calendar holds at most {MAX_HOLIDAYS} days, got {len(parsed)}")
        return cls(check_group_name(name, "holiday calendar"), parsed)


@dataclass(frozen=True)
class PolicyTables:
    """The groups and calendars a gallery defines (a snapshot)."""

    groups: Mapping[str, AccessGroup] = field(default_factory=dict)
    calendars: Mapping[str, HolidayCalendar] = field(default_factory=dict)

    def days_of(self, calendars: Iterable[str]) -> FrozenSet[date]:
        """Every day of the named calendars that are defined (``door.unlock.holidays``)."""
        return frozenset(
            day for name in calendars if name in self.calendars for day in self.calendars[name].days
        )


class AccessPolicy:
    """Judges recognised identities for one door.

    Args:
        door_groups: the groups this door admits (``[access] groups``); empty: groups not checked.
        time_zone: the door's IANA time zone.
        clock: returns the current aware UTC datetime (tests fix it).
    """

    def __init__(
        self,
        door_groups: Sequence[str],
        time_zone: str,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        self.door_groups = frozenset(door_groups)
        self.zone = load_zone(time_zone)
        self.clock = clock

    def judge(
        self, policy: IdentityPolicy, tables: PolicyTables, now: Optional[datetime] = None
    ) -> Optional[str]:
        """``None`` when ``policy`` admits its holder through this door now, else the reason (see module)."""
        now = self.clock() if now is None else now
        if policy.suspended:
            return "suspended"
        if policy.valid_from is not None and now < policy.valid_from:
            return "not_yet_valid"
        if policy.valid_until is not None and now >= policy.valid_until:
            return "expired"
        if not self.door_groups:
            return None
        admitted = [name for name in policy.groups if name in self.door_groups]
        if not admitted:
            return "not_in_group"
        local = now.astimezone(self.zone)
        closed_by_holiday = False
        for name in admitted:
            group = tables.groups.get(name)
            if group is None or not group.schedule.admits(local):
                continue
            if any(local.date() in tables.calendars[c].days for c in group.holidays if c in tables.calendars):
                closed_by_holiday = True
                continue
            return None
        return "holiday" if closed_by_holiday else "outside_schedule"


__all__ = [
    "REASONS",
    "AccessGroup",
    "AccessPolicy",
    "HolidayCalendar",
    "IdentityPolicy",
    "PolicyTables",
    "check_group_list",
    "check_group_name",
    "format_instant",
    "normalise_cards",
    "normalise_groups",
    "parse_day",
    "parse_instant",
]
