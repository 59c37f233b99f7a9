"""[access] — this door's part of the access policy (see :mod:`appliance.access.policy`)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from pydantic import AfterValidator, Field, field_validator, model_validator
from typing_extensions import Annotated, Literal

from ..config_types import StrictModel


def _group_names(value: List[str]) -> List[str]:
    from .policy import check_group_list  # lazily: the configuration loads without the policy's modules

    return check_group_list(value)


def _calendar_names(value: List[str]) -> List[str]:
    from .policy import check_group_list

    return check_group_list(value, "holiday calendar")


#: Access group names, each valid and none listed twice (a :class:`PolicyError`, a ValueError, names
#: the key otherwise).
GroupNames = Annotated[List[str], AfterValidator(_group_names)]
#: Holiday calendar names, the same way.
CalendarNames = Annotated[List[str], AfterValidator(_calendar_names)]


class AntiPassbackConfig(StrictModel):
    """[access.anti_passback] — Who is in, who is out: a grant at an entry camera (direction 'in') for someone whose last passage was in, or at an exit camera for someone already out, is a passback."""

    mode: Literal["off", "soft", "hard"] = Field(
        "off",
        description="off: nothing is kept about who is in; soft: a passback is granted and its event "
        "carries anti_passback = 'violation'; hard: a passback is denied with the reason "
        "'anti_passback' until the state is reset. Needs a camera with direction 'in' and one with "
        "'out' here, or a camera with a direction and area_doors.",
    )
    same_passage_s: float = Field(
        60.0,
        ge=0,
        le=3600,
        description="A grant in the direction of the same identity's last one, within this many "
        "seconds of it, is the same passage (the face stayed at the door, its track was lost and found "
        "again), not a passback.",
    )
    reset_at: Optional[str] = Field(
        None,
        pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$",
        description="Local time (access.time_zone), HH:MM, at which everyone's state is forgotten each "
        "day (nobody is in or out until their next passage); unset: only a reset command forgets.",
        json_schema_extra={"example": "03:00"},
    )
    exempt_groups: GroupNames = Field(
        default_factory=list,
        max_length=64,
        description="Members of these access groups are never held to anti-passback (security staff); "
        "their passages are still recorded.",
        json_schema_extra={"example": ["security"]},
    )
    area_doors: List[str] = Field(
        default_factory=list,
        max_length=64,
        description="Device ids of the area's other appliances (same broker and mqtt.prefix): the "
        "passages granted there (their …/events) count here too, so someone who entered at one door is "
        "in at all of them. Needs read on their …/events in the broker's ACL.",
        json_schema_extra={"example": ["door-2", "garage-1"]},
    )
    area_events: Literal["signed", "unsigned"] = Field(
        "signed",
        description="signed: an area door's event counts only with a valid mac under the site's fleet "
        "key (every door of the area sets fleet.fleet_key_file, and signs its own events with it); "
        "unsigned: any well-formed event on their …/events counts, and only the broker's ACL keeps "
        "others from publishing there.",
    )

    @field_validator("area_doors")
    @classmethod
    def _door_ids(cls, value: List[str]) -> List[str]:
        import re

        for door in value:
            if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z", door):
                raise ValueError(f"{door!r:.80} is not a device id (letters, digits, '_', '.', '-')")
        if len(set(value)) != len(value):
            raise ValueError("a door is listed twice")
        return value


class TwoPersonConfig(StrictModel):
    """[access.two_person] — Members of some groups pass only with a second person granted here soon after (dual authentication)."""

    groups: GroupNames = Field(
        default_factory=list,
        max_length=64,
        description="Members of these access groups need a companion: their grant is held (denied, "
        "reason 'two_person') until a second person is granted here within within_s. Empty: off.",
        json_schema_extra={"example": ["vault"]},
    )
    companions: GroupNames = Field(
        default_factory=list,
        max_length=64,
        description="The groups a companion must be in; empty: anyone granted here.",
        json_schema_extra={"example": ["supervisors"]},
    )
    within_s: float = Field(30.0, ge=1, le=600, description="How long a held grant waits for its companion.")

    @model_validator(mode="after")
    def _check(self) -> TwoPersonConfig:
        if self.companions and not self.groups:
            raise ValueError("access.two_person.companions is set but access.two_person.groups is empty")
        return self


class SecondFactorConfig(StrictModel):
    """[access.second_factor] — A recognised face completed by a card or a PIN at the reader beside the
    camera ([credential_reader]): multi-factor, per group. See :mod:`appliance.access.second_factor`."""

    require: Literal["off", "card", "pin", "card_or_pin"] = Field(
        "off",
        description="What a face grant must add before the door opens: 'card', 'pin', 'card_or_pin', or "
        "'off' (the face alone). Needs [credential_reader]. A duress PIN counts wherever a PIN does.",
    )
    groups: GroupNames = Field(
        default_factory=list,
        description="Whose grants need it: members of these groups. Empty: everyone's.",
    )
    within_s: float = Field(
        15.0,
        ge=2,
        le=120,
        description="How long a face grant waits for the card or PIN, and a card or PIN presented first "
        "waits for the face.",
    )
    max_attempts: int = Field(
        3, ge=1, le=10, description="Wrong cards or PINs before a waiting face grant is given up."
    )
    lockout_after: int = Field(
        10,
        ge=0,
        le=100,
        description="Wrong cards or PINs on one person's waits within lockout_s after which their face is "
        "refused at once (reason 'credential_lockout') until lockout_s has passed since the last one; "
        "0: never (the face may come again and again, max_attempts tries each time).",
    )
    lockout_s: float = Field(
        900.0, ge=60, le=86400, description="The window of lockout_after, and how long a lockout lasts."
    )


class WithoutFaceConfig(StrictModel):
    """[access.without_face] — A card and PIN (or the card alone) for the people enrolled without a face:
    the non-biometric way in. See :mod:`appliance.access.without_face`."""

    require: Literal["off", "card_and_pin", "card"] = Field(
        "off",
        description="How people without a face (no templates: `enroll --no-face`, `gallery set "
        "--forget-face`) pass at a card reader that stands at one camera: 'card_and_pin', 'card' (the "
        "card alone), or 'off' (they cannot). People with a face pass by their face. Needs "
        "[credential_reader].",
    )
    within_s: float = Field(10.0, ge=2, le=60, description="How long after the card its PIN may come.")
    max_attempts: int = Field(3, ge=1, le=10, description="Wrong PINs before the card must be shown again.")
    lockout_after: int = Field(
        5,
        ge=0,
        le=100,
        description="Wrong PINs on one person's card within lockout_s after which the card is refused at "
        "once (reason 'credential_lockout') until lockout_s has passed since the last one; 0: never.",
    )
    lockout_s: float = Field(
        900.0, ge=60, le=86400, description="The window of lockout_after, and how long a lockout lasts."
    )
    face_optional_groups: GroupNames = Field(
        default_factory=list,
        max_length=64,
        description="Access groups whose members, though enrolled with a face, may pass here by `require` "
        "too, when the camera cannot see them (a mask, a helmet, a camera fault: 'face or card and PIN'). "
        "Their stolen card and a watched PIN then replace their face: name only groups that need it. "
        "Where [access.second_factor] holds their face, their card still completes it. Empty: only "
        "people without a face pass by card.",
        json_schema_extra={"example": ["maintenance"]},
    )

    @model_validator(mode="after")
    def _check(self) -> WithoutFaceConfig:
        if self.face_optional_groups and self.require == "off":
            raise ValueError(
                "access.without_face.face_optional_groups is set but access.without_face.require is 'off': "
                "set require to 'card_and_pin' (or 'card'), or empty the groups"
            )
        return self


class AccessConfig(StrictModel):
    """[access] — Which access groups this door admits, and the time zone its schedules are read in."""

    time_zone: str = Field(
        "UTC",
        description="IANA time zone of the group schedules and holiday dates at this door, e.g. Europe/Berlin.",
        json_schema_extra={"example": "Europe/Berlin"},
    )
    groups: GroupNames = Field(
        default_factory=list,
        max_length=64,
        description="Access groups this door admits (defined with `face-appliance access group set`). "
        "Empty: groups and schedules are not checked; every recognised identity within its validity passes.",
        json_schema_extra={"example": ["staff", "visitors"]},
    )

    anti_passback: AntiPassbackConfig = Field(default_factory=AntiPassbackConfig)
    two_person: TwoPersonConfig = Field(default_factory=TwoPersonConfig)
    second_factor: SecondFactorConfig = Field(default_factory=SecondFactorConfig)
    without_face: WithoutFaceConfig = Field(default_factory=WithoutFaceConfig)

    def door_document(self) -> Dict[str, Any]:
        """What this door applies, for ``access show`` and the ``access`` command: its groups and time
        zone, the second factor when it asks for one, and how people without a face pass when they may."""
        document: Dict[str, Any] = {"groups": list(self.groups), "time_zone": self.time_zone}
        if self.second_factor.require != "off":
            document["second_factor"] = {
                "require": self.second_factor.require,
                "groups": list(self.second_factor.groups),
            }
        if self.without_face.require != "off":
            document["without_face"] = {
                "require": self.without_face.require,
                "face_optional_groups": list(self.without_face.face_optional_groups),
            }
        return document

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from .zones import load_zone

        load_zone(value)  # a PolicyError is a ValueError: reported with the key path
        return value


__all__ = [
    "AccessConfig",
    "AntiPassbackConfig",
    "CalendarNames",
    "GroupNames",
    "SecondFactorConfig",
    "TwoPersonConfig",
    "WithoutFaceConfig",
]
