"""[fleet] — this door as a member of a fleet (see :mod:`appliance.fleet.member`)."""

from __future__ import annotations

from typing import Optional

from pydantic import Field, model_validator

from ..config_types import ConfigPath, StrictModel

_LEVEL = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class FleetConfig(StrictModel):
    """[fleet] — Take identities from the site's enrolment authority through the MQTT broker. Off by default."""

    enabled: bool = Field(False, description="Subscribe to the site's fleet records and apply them.")
    site: str = Field(
        "site", pattern=_LEVEL, description="The site whose records this door applies (a topic level)."
    )
    prefix: str = Field(
        "face-appliance-fleet",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,127}$",
        description="Topic prefix of the fleet: records under {prefix}/{site}/records/+.",
    )
    fleet_key_file: Optional[ConfigPath] = Field(
        None,
        description="The site's fleet key (64 hex characters), e.g. ${CREDENTIALS_DIRECTORY}/fleet_key.",
        json_schema_extra={"example": "${CREDENTIALS_DIRECTORY}/fleet_key"},
    )
    previous_fleet_key_file: Optional[ConfigPath] = Field(
        None,
        description="The fleet key before the site's last rotation (`fleet rotate-key`), e.g. "
        "${CREDENTIALS_DIRECTORY}/fleet_key_previous: records and area events sealed under it are still "
        "opened while the authority reseals them. An empty file: none.",
        json_schema_extra={"example": "${CREDENTIALS_DIRECTORY}/fleet_key_previous"},
    )
    trusted_keys_dir: Optional[ConfigPath] = Field(
        None,
        description="Folder of the enrolment authorities' public keys (.pub); records signed otherwise are refused.",
        json_schema_extra={"example": "/etc/face-appliance/fleet-authorities"},
    )
    max_pending: int = Field(
        20000,
        ge=100,
        le=1_000_000,
        description="Records received and not yet applied, at most (more are counted and dropped; the broker sends them again at the next connect).",
    )

    max_pending_mb: int = Field(
        128,
        ge=8,
        le=4096,
        description="Megabytes of records received and not yet applied, at most (a record with its crops is "
        "about 50 KB; what does not fit is fetched again later).",
    )

    in_view_job_ms: float = Field(
        10.0,
        ge=0,
        le=1000,
        description="While a camera tracks a face, a catch-up job embeds as many crops as fit in this many "
        "milliseconds between two frames, at the cost per crop measured here (at least one record; the "
        "embedder batch otherwise).",
    )

    @model_validator(mode="after")
    def _needs_keys(self) -> FleetConfig:
        if self.enabled and (self.fleet_key_file is None or self.trusted_keys_dir is None):
            raise ValueError("fleet.enabled needs fleet.fleet_key_file and fleet.trusted_keys_dir")
        return self


__all__ = ["FleetConfig"]
