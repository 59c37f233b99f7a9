"""[access] — this door's part of the access policy (see :mod:`appliance.access.policy`)."""

from __future__ import annotations

from typing import List

from pydantic import Field, field_validator

from ..config_types import StrictModel


class AccessConfig(StrictModel):
    """[access] — Which access groups this door admits, and the time zone its schedules are read in."""

    time_zone: str = Field(
        "UTC",
        description="IANA time zone of the group schedules and holiday dates at this door, e.g. Europe/Berlin.",
        json_schema_extra={"example": "Europe/Berlin"},
    )
    groups: List[str] = Field(
        default_factory=list,
        max_length=64,
        description="Access groups this door admits (defined with `face-appliance access group set`). "
        "Empty: groups and schedules are not checked; every recognised identity within its validity passes.",
        json_schema_extra={"example": ["staff", "visitors"]},
    )

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from .zones import load_zone

        load_zone(value)  # a PolicyError is a ValueError: reported with the key path
        return value

    @field_validator("groups")
    @classmethod
    def _group_names(cls, value: List[str]) -> List[str]:
        from .policy import check_group_name

        for name in value:
            check_group_name(name)
        if len(set(value)) != len(value):
            raise ValueError("a group is listed twice")
        return value


__all__ = ["AccessConfig"]
