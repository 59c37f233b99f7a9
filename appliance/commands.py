"""Remote commands: schemas, and their results.

A command arrives as JSON on ``{prefix}/{device_id}/cmd/{name}`` and is answered on
``…/cmd/{name}/result`` with ``{"request_id", "ok": true, "result", "ts"}`` or
``{"request_id", "ok": false, "error": {"code", "message"}, "ts"}``; error codes: ``invalid_json``,
``unknown_command``, ``invalid``, ``refused`` (valid but not possible: unknown id, no face, a change
at a fleet door to an identity the site's authority owns…; ``not_this`` has finer ones, below),
``busy``, ``stale``, ``failed``, and from the MQTT link ``payload_too_large``, ``retained``, ``handler_failed``. Payloads are
validated strictly (unknown keys, wrong types and out-of-range values are refused with the key
path) before anything is done; a refused command changes nothing.

=============== ================================================================ ==================
command         payload                                                          result
=============== ================================================================ ==================
``enroll``      ``request_id``, ``name``, ``image`` (base64 JPEG/PNG) or          identity id,
                ``event_id`` (an ``unknown`` access event's kept face: walk-up    templates, photo
                enrolment) or ``no_face``: true (neither: a person without a      verdict, duplicates
                face, card and PIN only), optional ``id``, ``external_id``,       (``no_face``: id,
                ``consent_at``, ``face`` (1-based, with ``image``), and the       0 templates, the
                policy keys of ``set_policy`` for a new identity                  policy)
``remove``      ``request_id``, ``id``                                           templates removed
``forget_face`` ``request_id``, ``id``: consent withdrawn, every template and    identity id,
                crop of the identity deleted for real; it stays, with its        ``removed``
                cards and PIN                                                    (templates)
``reload``      ``request_id``                                                   gallery size,
                                                                                 threshold
``status``      ``request_id``                                                   the state document
``set_threshold`` ``request_id``, ``threshold`` (0.2 ≤ t ≤ 0.95)                 old and new value
``set_policy``  ``request_id``, ``id``, any of ``valid_from``, ``valid_until``    the identity's
                (ISO 8601 with an offset; ``null`` removes the bound),            policy
                ``suspended``, ``groups`` (replaces), ``add_groups``,
                ``remove_groups``, ``cards`` (replaces), ``add_cards``,
                ``remove_cards`` (``w26:7:12345`` …), ``pin``, ``duress_pin``
                (4–8 digits, hashed on the door; ``null`` clears; the answer
                says only whether each is set)
``set_group``   ``request_id``, ``name``, ``schedule`` (windows, e.g.            the group
                ``"mon-fri 08:00-18:00"``), optional ``holidays`` (calendars)
``remove_group`` ``request_id``, ``name``                                        removed or not
``set_calendar`` ``request_id``, ``name``, ``days`` (``YYYY-MM-DD`` …)           the day count
``remove_calendar`` ``request_id``, ``name``                                     removed or not
``access``      ``request_id``                                                   the door's groups,
                                                                                 every group and
                                                                                 calendar
``not_this``    ``request_id``, ``event_id``, optional ``id``: the event's face  the impostor
                is not that identity ("this is not X"; needs                      example's id, the
                ``events.keep_crops_h``)                                          identity's count
``distinct``    ``request_id``, ``ids`` (two identity ids, one enrolled at this   the pair, marked
                door), optional ``undo``: a look-alike pair is two people         or not, changed
``presence``    ``request_id``, optional ``direction`` (``in``/``out``), ``limit``  counts, the last
                (1–5000, default 1000): anti-passback's state                      passages listed
``presence_reset`` ``request_id``, ``ids`` (identity ids) or ``all``: true       how many forgotten
``door_open``   ``request_id``: pulse the relay once                             the pulse's length
``door_mode``   ``request_id``, ``mode`` (``schedule``, ``unlocked``,             the mode, minutes
                ``locked``), optional ``minutes`` (1–10080)
``learn_card``  ``request_id``, ``id``, optional ``within_s`` (5–300, default     the identity, the
                30), ``reader``: the next card read at the reader becomes one     card, whether it
                of the identity's cards (answered when it comes)                  was added
``learn_pin``   ``request_id``, ``id``, optional ``within_s`` (5–300, default     the identity,
                60), ``reader``, ``duress``: the PIN then typed twice at one      ``pin`` (or
                reader becomes the identity's PIN (or duress PIN)                 ``duress_pin``):
                                                                                  ``set``
=============== ================================================================ ==================

Both take ``for_fleet``: true at a door in a fleet, for an identity of the site's records (sent by the
authority's ``fleet learn-card`` / ``fleet learn-pin``): nothing is stored here — the identity is the
authority's — and the answer carries what was learned for the authority to publish: the card
(``{"id", "card", "for_fleet": true}``), or the PIN's hash sealed with the fleet key (``{"id", "pin":
"sealed", "sealed"}``). Without it, a fleet identity is ``refused`` there; with it, a local one is.

``presence`` and ``presence_reset`` are refused when anti-passback is off (``[access.anti_passback]``);
``door_open`` and ``door_mode`` when the door's own I/O is not running (``[door]``); ``learn_card``
and ``learn_pin`` without a card reader (``[credential_reader]``), while another learning waits
(``busy``), and, once armed, with ``timeout`` when nothing came, ``invalid`` when the card is another
identity's, the two PINs differ or the duress PIN would be the PIN (:mod:`appliance.access.learning`).

``enroll`` with ``event_id`` is refused as ``not_kept`` (no face kept for that event, as below) or
``not_unknown`` (the door knew the face: granted, or denied by the policy or by liveness). It enrols
the event's face and the other views kept with it (``events.walk_up_views``); its result adds
``photos``, each view's ``source``, ``accepted`` and ``reason``.

``not_this`` is refused with its own codes: ``not_kept`` (no face kept for that event: keeping is off,
it expired, or not this appliance's event), ``not_a_grant`` (the event was denied or unknown),
``wrong_identity`` (granted to another identity than ``id``), ``no_identity`` (removed since),
``too_many`` (the identity's impostor examples are full), ``other_model``.

``enroll`` also takes the policy keys of ``set_policy`` for a new identity (``valid_from``,
``valid_until``, ``groups``, ``cards``, ``pin``, …; see :mod:`appliance.access.policy`); an identity
that exists keeps its policy. With ``no_face`` it takes no ``image``, ``event_id`` or ``face``
(``invalid``), loads no model, and its answer adds ``warning`` when the person holds no card (they
cannot pass until one is learned, ``learn_card``, or set, ``set_policy``). An id that exists is
``refused``.

``forget_face`` (and ``remove``, ``remove_template``) run off the pipeline thread: they write the
index's snapshot, so that no file keeps the removed face. An unknown id is ``refused``; an identity
without a template answers ``removed`` 0.

Every command may carry ``ts``, when it was sent (RFC 3339 with an offset): a command stamped more
than ``commands.max_age_s`` before (or ahead of) the appliance's clock is refused as ``stale``.

``set_threshold`` lasts until the next reload or restart (the configuration file stays the source
of truth); ``reload`` (or SIGHUP) re-reads the thresholds from the file and the gallery from disk.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional, Tuple, Type

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from typing_extensions import Literal

from .access.credentials import MAX_CARDS
from .access.policy import AccessGroup, HolidayCalendar, IdentityPolicy
from .config import MATCH_THRESHOLD_MAX, MATCH_THRESHOLD_MIN
from .config_load import ConfigIssue
from .errors import ApplianceError
from .events import rfc3339_now
from .gallery.text import MAX_NAME, text_problem

MAX_IMAGE_BYTES = 8 * 2**20


class CommandError(ApplianceError):
    """A command that cannot be carried out; ``code`` and the message go into the error result."""

    def __init__(self, message: str, code: str = "refused", request_id: Optional[str] = None) -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id


_RFC3339 = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-]\d{2}:\d{2}))$"
)


def parse_rfc3339(text: str) -> datetime:
    """An RFC 3339 date-time with its offset (``2026-12-03T18:00:00Z``, ``…+01:00``, fractions).

    Raises:
        ValueError: not such a time (no offset, out of range…).
    """
    match = _RFC3339.match(text)
    if match is None:
        raise ValueError("must be an RFC 3339 time with an offset, e.g. 2026-12-03T18:00:00Z")
    day, clock, fraction, zulu, offset = match.groups()
    micro = (fraction or "0")[:6].ljust(6, "0")
    return datetime.fromisoformat(f"{day}T{clock}.{micro}{'+00:00' if zulu else offset}")


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    request_id: str = Field(min_length=1, max_length=128)
    ts: Optional[str] = Field(
        None, min_length=1, max_length=40, description="when it was sent (RFC 3339): the freshness check"
    )

    @field_validator("ts")
    @classmethod
    def _check_ts(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            parse_rfc3339(value)
        return value


#: An access event's id (a UUID as the events carry it), as ``not_this`` and ``enroll`` take it.
EVENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9-]*$"


class _PolicyKeys(_Command):
    """The access-policy keys of ``set_policy``, which ``enroll`` takes too (for a new identity)."""

    valid_from: Optional[str] = Field(None, min_length=1, max_length=64)
    valid_until: Optional[str] = Field(None, min_length=1, max_length=64)
    suspended: Optional[bool] = None
    groups: Optional[List[str]] = Field(None, max_length=64)
    add_groups: Optional[List[str]] = Field(None, max_length=64)
    remove_groups: Optional[List[str]] = Field(None, max_length=64)
    cards: Optional[List[str]] = Field(None, max_length=MAX_CARDS)
    add_cards: Optional[List[str]] = Field(None, max_length=MAX_CARDS)
    remove_cards: Optional[List[str]] = Field(None, max_length=MAX_CARDS)
    #: The PIN's digits (hashed on the door; ``null`` clears it); never echoed in the answer.
    pin: Optional[str] = Field(None, max_length=8, repr=False)
    duress_pin: Optional[str] = Field(None, max_length=8, repr=False)

    def changes(self) -> Dict[str, object]:
        """The policy keys the sender gave (``null`` clears a validity bound; an absent key keeps its value)."""
        return {key: getattr(self, key) for key in sorted(self.model_fields_set) if key in _POLICY_KEYS}


class EnrollCommand(_PolicyKeys):
    """``enroll``: a person from a photo (``image``), or from the face kept for an access event the
    door decided ``unknown`` (``event_id``: walk-up enrolment; needs ``events.keep_crops_h``), or with
    ``no_face`` and neither a person without a face, who passes with the cards and PIN given. The
    policy keys of ``set_policy`` give a new identity its access policy."""

    name: str = Field(min_length=1, max_length=200)
    image: Optional[str] = Field(None, min_length=4, description="base64 of a JPEG, PNG or WebP photo")
    event_id: Optional[str] = Field(None, min_length=1, max_length=64, pattern=EVENT_ID_PATTERN)
    id: Optional[str] = Field(None, min_length=1, max_length=64)
    external_id: Optional[str] = Field(None, min_length=1, max_length=200)
    consent_at: Optional[str] = Field(None, min_length=1, max_length=40)
    face: Optional[int] = Field(None, ge=1, le=100)
    no_face: bool = False

    @model_validator(mode="after")
    def _policy(self) -> EnrollCommand:
        if self.no_face:
            given = [key for key in ("image", "event_id", "face") if getattr(self, key) is not None]
            if given:
                raise ValueError(
                    f"no_face: a person without a face takes no {', '.join(given)} (card and PIN only)"
                )
        elif (self.image is None) == (self.event_id is None):
            raise ValueError(
                "give image (a photo) or event_id (an unknown visitor's access event), one of them, or "
                "no_face: true for a person without a face"
            )
        if self.event_id is not None and self.face is not None:
            raise ValueError("face chooses among a photo's faces; an event has one")
        self.policy()  # a malformed date, group, card or PIN is refused before anything is done
        return self

    def policy(self) -> IdentityPolicy:
        """The new identity's access policy."""
        return IdentityPolicy().changed(self.changes())

    @field_validator("name", "external_id")
    @classmethod
    def _person_text(cls, value: Optional[str], info: ValidationInfo) -> Optional[str]:
        """No control characters or bidi overrides: the gallery's own check (:mod:`.gallery.text`)."""
        if value is None:
            return None
        problem = text_problem(value, (info.field_name or "name").replace("_", " "), MAX_NAME)
        if problem is not None:
            raise ValueError(problem)
        return value

    def image_bytes(self) -> bytes:
        try:
            data = base64.b64decode(self.image or "", validate=True)
        except (binascii.Error, ValueError) as err:
            raise CommandError(f"image: not valid base64 ({err})", "invalid") from err
        if len(data) > MAX_IMAGE_BYTES:
            raise CommandError(f"image: {len(data)} bytes is more than {MAX_IMAGE_BYTES}", "invalid")
        return data


class RemoveCommand(_Command):
    id: str = Field(min_length=1, max_length=64)


class TemplatesCommand(_Command):
    """``templates``: an identity's templates (no biometric data), as ``gallery templates ID`` lists them."""

    id: str = Field(min_length=1, max_length=64)


class RemoveTemplateCommand(_Command):
    """``remove_template``: delete one template of an identity (e.g. an adaptive one learnt by mistake);
    the last enrolled template is refused."""

    id: str = Field(min_length=1, max_length=64)
    template_id: int = Field(ge=1)


class SetPolicyCommand(_PolicyKeys):
    id: str = Field(min_length=1, max_length=64)

    @model_validator(mode="after")
    def _something(self) -> SetPolicyCommand:
        if not self.changes():
            raise ValueError("nothing to change: give one of " + ", ".join(_POLICY_KEYS))
        IdentityPolicy().changed(self.changes())  # malformed values are refused before anything is done
        return self


class ForgetFaceCommand(_Command):
    """``forget_face``: consent withdrawn: every template of identity ``id`` (and its crops, impostor
    examples) deleted for real; the identity stays, with its cards and PIN."""

    id: str = Field(min_length=1, max_length=64)


_POLICY_KEYS = (
    "valid_from",
    "valid_until",
    "suspended",
    "groups",
    "add_groups",
    "remove_groups",
    "cards",
    "add_cards",
    "remove_cards",
    "pin",
    "duress_pin",
)


class SetGroupCommand(_Command):
    name: str = Field(min_length=1, max_length=64)
    schedule: List[str] = Field(max_length=64)
    holidays: List[str] = Field(default_factory=list, max_length=64)

    @model_validator(mode="after")
    def _valid(self) -> SetGroupCommand:
        self.group()
        return self

    def group(self) -> AccessGroup:
        return AccessGroup.from_parts(self.name, self.schedule, self.holidays)


class SetCalendarCommand(_Command):
    name: str = Field(min_length=1, max_length=64)
    days: List[str] = Field(max_length=1000)

    @model_validator(mode="after")
    def _valid(self) -> SetCalendarCommand:
        self.calendar()
        return self

    def calendar(self) -> HolidayCalendar:
        return HolidayCalendar.from_parts(self.name, self.days)


class RemoveGroupCommand(_Command):
    name: str = Field(min_length=1, max_length=64)


class RemoveCalendarCommand(_Command):
    name: str = Field(min_length=1, max_length=64)


class AccessCommand(_Command):
    pass


class ReloadCommand(_Command):
    pass


class StatusCommand(_Command):
    pass


class SetThresholdCommand(_Command):
    threshold: float = Field(ge=MATCH_THRESHOLD_MIN, le=MATCH_THRESHOLD_MAX)  # as match.threshold


class NotThisCommand(_Command):
    """``not_this`` ("this is not X"): the face of access event ``event_id`` becomes an impostor example of the identity
    it was granted to (``id``, optional, must be that identity)."""

    event_id: str = Field(min_length=1, max_length=64, pattern=EVENT_ID_PATTERN)
    id: Optional[str] = Field(None, min_length=1, max_length=64)


class DistinctCommand(_Command):
    """``distinct``: two identities, one of them enrolled at this door, are two people (twins): their
    look-alike pair is listed no more (``undo``: listed again); as ``gallery distinct``."""

    ids: List[str] = Field(min_length=2, max_length=2)
    undo: bool = False

    @model_validator(mode="after")
    def _two(self) -> DistinctCommand:
        if not all(1 <= len(identity_id) <= 64 for identity_id in self.ids):
            raise ValueError("ids: identity ids of 1 to 64 characters")
        if self.ids[0] == self.ids[1]:
            raise ValueError("ids: two different identities, not the same one twice")
        return self


#: The most passages a ``presence`` answer lists (its counts are always whole).
MAX_PRESENCE_LISTED = 5000


class PresenceCommand(_Command):
    """``presence``: who passed in or out last (anti-passback's state since the last reset): a muster
    list; as ``access presence list``."""

    direction: Optional[Literal["in", "out"]] = None
    limit: int = Field(1000, ge=1, le=MAX_PRESENCE_LISTED)


class PresenceResetCommand(_Command):
    """``presence_reset``: forget the last passage of ``ids``, or of everyone (``all``), so their next
    passage passes either way; as ``access presence reset``."""

    ids: Optional[List[str]] = Field(None, min_length=1, max_length=1000)
    all: bool = False

    @model_validator(mode="after")
    def _whom(self) -> PresenceResetCommand:
        if (self.ids is None) == (not self.all):
            raise ValueError("give ids (a list of identity ids) or all: true, not both")
        if self.ids is not None and not all(1 <= len(identity_id) <= 64 for identity_id in self.ids):
            raise ValueError("ids: identity ids of 1 to 64 characters")
        return self


class _DoorCommand(_Command):
    door: Optional[str] = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class DoorOpenCommand(_DoorCommand):
    """``door_open``: pulse the door's relay once, as a grant does (a buzz-in from reception); ``door``
    names one of several doors."""


class DoorModeCommand(_DoorCommand):
    """``door_mode``: hold the door ``unlocked``, keep it ``locked`` through its unlock windows, or give
    it back to the ``schedule``; for ``minutes``, or until the next ``door_mode`` or a restart."""

    mode: Literal["schedule", "unlocked", "locked"]
    minutes: Optional[int] = Field(None, ge=1, le=10080)


class LearnCardCommand(_Command):
    """``learn_card``: the next card read at the reader becomes one of ``id``'s cards; with
    ``for_fleet``, for a fleet identity, it is answered for the site's authority and not stored here
    (``fleet learn-card``)."""

    id: str = Field(min_length=1, max_length=64)
    within_s: float = Field(30.0, ge=5, le=300)
    reader: Optional[str] = Field(None, min_length=1, max_length=64)
    for_fleet: bool = False


class LearnPinCommand(LearnCardCommand):
    """``learn_pin``: the PIN then typed twice at one reader becomes ``id``'s PIN (``duress``: its duress
    PIN); the digits never travel (:mod:`appliance.access.learning`). With ``for_fleet``, its hash is
    answered sealed for the site's authority (:mod:`appliance.fleet.sealed_pin`) and not stored here."""

    within_s: float = Field(60.0, ge=5, le=300)
    duress: bool = False


COMMANDS: Dict[str, Type[_Command]] = {
    "enroll": EnrollCommand,
    "remove": RemoveCommand,
    "reload": ReloadCommand,
    "status": StatusCommand,
    "set_threshold": SetThresholdCommand,
    "set_policy": SetPolicyCommand,
    "set_group": SetGroupCommand,
    "remove_group": RemoveGroupCommand,
    "set_calendar": SetCalendarCommand,
    "remove_calendar": RemoveCalendarCommand,
    "access": AccessCommand,
    "not_this": NotThisCommand,
    "templates": TemplatesCommand,
    "remove_template": RemoveTemplateCommand,
    "distinct": DistinctCommand,
    "presence": PresenceCommand,
    "presence_reset": PresenceResetCommand,
    "door_open": DoorOpenCommand,
    "door_mode": DoorModeCommand,
    "learn_card": LearnCardCommand,
    "learn_pin": LearnPinCommand,
    "forget_face": ForgetFaceCommand,
}


def parse(name: str, payload: bytes, max_age_s: Optional[float] = None) -> Tuple[Optional[str], _Command]:
    """Validate a command; with ``max_age_s``, also its freshness (see :func:`check_fresh`).

    Returns:
        ``(request_id, command)``.

    Raises:
        CommandError: unknown command, not JSON, or invalid; carries the request id when it could
            be read (``.request_id``) so the error result can quote it.
    """
    request_id: Optional[str] = None
    try:
        document = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise CommandError(f"not valid JSON: {err}", "invalid_json") from None
    except RecursionError:
        raise CommandError("not valid JSON: nested too deeply", "invalid_json") from None
    try:
        # JSON may escape an unpaired surrogate ("\ud800"): not text, and it could go neither into
        # the answer nor into the gallery's database.
        json.dumps(document, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise CommandError(
            "the payload holds an unpaired surrogate escape (\\ud800-\\udfff): not valid Unicode", "invalid"
        ) from None
    if isinstance(document, dict) and isinstance(document.get("request_id"), str):
        request_id = document["request_id"][:128]
    model = COMMANDS.get(name)
    if model is None:
        raise CommandError(
            f"unknown command {name!r}; known: {', '.join(sorted(COMMANDS))}", "unknown_command", request_id
        )
    if not isinstance(document, dict):
        raise CommandError("the payload must be a JSON object", "invalid", request_id)
    try:
        command = model.model_validate(document)
    except ValidationError as err:
        problems = "; ".join(str(_issue(error)) for error in err.errors())
        raise CommandError(f"invalid {name} command: {problems}", "invalid", request_id) from None
    if max_age_s is not None:
        check_fresh(command, max_age_s)
    return request_id, command


def check_fresh(command: _Command, max_age_s: float, now: Optional[datetime] = None) -> None:
    """Refuse a stamped command sent more than ``max_age_s`` ago, or stamped that far ahead of this
    clock (one of the clocks is wrong). A command without ``ts`` is not checked.

    Raises:
        CommandError: ``stale``.
    """
    if command.ts is None:
        return
    age = ((now or datetime.now(timezone.utc)) - parse_rfc3339(command.ts)).total_seconds()
    if age > max_age_s:
        raise CommandError(
            f"sent {age:.0f} s ago (ts {command.ts}), more than commands.max_age_s = {max_age_s:g} s: "
            "not carried out; send it again if it is still wanted",
            "stale",
            command.request_id,
        )
    if age < -max_age_s:
        raise CommandError(
            f"ts {command.ts} is {-age:.0f} s ahead of the appliance's clock (more than commands.max_age_s = "
            f"{max_age_s:g} s): check the sender's and the appliance's clocks (NTP)",
            "stale",
            command.request_id,
        )


def _issue(error: Dict[str, Any]) -> ConfigIssue:
    path = ".".join(str(part) for part in error.get("loc", ()))
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        return ConfigIssue(path, "unknown key")
    if kind == "missing":
        return ConfigIssue(path, "required")
    return ConfigIssue(path, str(error.get("msg", "invalid")).replace("Input should be", "must be"))


def result(request_id: Optional[str], outcome: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """A success document."""
    return {"request_id": request_id, "ok": True, "result": outcome or {}, "ts": rfc3339_now()}


def failure(request_id: Optional[str], code: str, message: str) -> Dict[str, Any]:
    """An error document (the same shape the MQTT link uses for its own refusals)."""
    return {
        "request_id": request_id,
        "ok": False,
        "error": {"code": code, "message": message},
        "ts": rfc3339_now(),
    }
