"""[osdp] — the appliance as an OSDP reader on an access panel's RS-485 bus (see :mod:`appliance.osdp`).

Example::

    [osdp]
    enabled = true
    port = "/dev/ttyUSB0"          # an RS-485 adapter (or a UART with a transceiver)
    baud_rate = 9600               # what the panel is set to for this reader
    address = 1                    # this reader's address on the bus, 0-126
    secure_channel = true          # AES-128 Secure Channel with the key below
    scbk_file = "${CREDENTIALS_DIRECTORY}/osdp_scbk"   # 32 hex digits

    [osdp.credential]
    format = "wiegand26"           # or "wiegand34", "raw"
    facility_code = 7

Cross-field rules (each error names its key): ``osdp.port`` is needed when ``osdp.enabled``;
``osdp.scbk_file`` when ``osdp.secure_channel``; ``osdp.install_mode`` only with ``secure_channel``; the
credential format's limits on ``facility_code``, ``facility_bits`` and ``bits``.
"""

from __future__ import annotations

import re
from typing import Optional

from pydantic import Field, field_validator, model_validator
from typing_extensions import Literal

from ..config_types import ConfigPath, StrictModel

#: The speeds an OSDP bus runs at (OSDP 2.2 names 9600 to 115200; 230400 is common on newer panels).
BAUD_RATES = (9600, 19200, 38400, 57600, 115200, 230400)
#: Highest PD address; 0x7F is the broadcast address.
MAX_ADDRESS = 126
#: Highest bit count of a ``raw`` credential (16 bytes: a 128-bit card serial number).
MAX_RAW_BITS = 128
#: Facility-code width of each Wiegand format when ``facility_bits`` is not given.
DEFAULT_FACILITY_BITS = {"wiegand26": 8, "wiegand34": 16}
#: Data bits between the two parity bits of each Wiegand format.
WIEGAND_DATA_BITS = {"wiegand26": 24, "wiegand34": 32}

_FIRMWARE = re.compile(r"^(\d{1,3})\.(\d{1,3})\.(\d{1,3})$")


class OsdpIdentityConfig(StrictModel):
    """[osdp.identity] — What the reader tells the panel about itself (``osdp_PDID``)."""

    vendor_code: int = Field(
        0, ge=0, le=0xFFFFFF, description="IEEE OUI of the vendor (24 bits); 0 when you have none."
    )
    model: int = Field(1, ge=0, le=255, description="Model number.")
    version: int = Field(1, ge=0, le=255, description="Model version.")
    serial_number: int = Field(0, ge=0, le=0xFFFFFFFF, description="Serial number (32 bits).")
    firmware_version: str = Field("1.0.0", description="Firmware version as major.minor.build, each 0-255.")

    @field_validator("firmware_version")
    @classmethod
    def _check_firmware(cls, value: str) -> str:
        match = _FIRMWARE.match(value)
        if match is None or any(int(part) > 255 for part in match.groups()):
            raise ValueError(
                f"osdp.identity.firmware_version {value!r} is not major.minor.build with each part 0-255"
            )
        return value

    def firmware_number(self) -> int:
        """The firmware version as libosdp takes it: ``major << 16 | minor << 8 | build``."""
        major, minor, build = (int(part) for part in self.firmware_version.split("."))
        return major << 16 | minor << 8 | build


class OsdpCredentialConfig(StrictModel):
    """[osdp.credential] — How a person's ``external_id`` becomes the card data of a card read.

    ``wiegand26`` (HID H10301): ``E FFFFFFFF CCCCCCCCCCCCCCCC O`` — 26 bits: even parity over bits 2-13,
    8-bit facility code, 16-bit card number, odd parity over bits 14-25. ``wiegand34``: ``E`` + 32 data
    bits + ``O``, even parity over data bits 1-16, odd over 17-32; the data bits are the facility code
    (``facility_bits`` wide, 16 by default: HID H10306) then the card number (the rest; with
    ``facility_bits = 0`` a 32-bit card number, as many readers' "Wiegand 34"). ``raw``: the number
    itself in ``bits`` bits, no parity. Bits are sent most significant first, packed from the first
    byte's top bit (OSDP's raw card-data layout).
    """

    format: Literal["wiegand26", "wiegand34", "raw"] = Field(
        "wiegand26", description="Card-data format: wiegand26, wiegand34 or raw."
    )
    facility_code: int = Field(
        0, ge=0, le=0xFFFFFF, description="Facility (site) code of the Wiegand formats."
    )
    facility_bits: Optional[int] = Field(
        None,
        ge=0,
        le=24,
        description="Facility-code width of wiegand34 (default 16; 0 for a 32-bit card number); wiegand26 is 8.",
        json_schema_extra={"example": 16},
    )
    bits: Optional[int] = Field(
        None,
        ge=1,
        le=MAX_RAW_BITS,
        description="Bit length of a raw credential (needed for raw).",
        json_schema_extra={"example": 32},
    )
    number_base: Literal[10, 16] = Field(
        10, description="How external_id is read: 10 (decimal digits) or 16 (hex digits, e.g. a card UID)."
    )

    @model_validator(mode="after")
    def _check(self) -> OsdpCredentialConfig:
        if self.format == "raw":
            if self.bits is None:
                raise ValueError("osdp.credential.bits is needed when osdp.credential.format is raw")
            if self.facility_code or self.facility_bits is not None:
                raise ValueError(
                    "osdp.credential.facility_code and facility_bits apply to the Wiegand formats, not raw"
                )
            return self
        if self.bits is not None:
            raise ValueError(f"osdp.credential.bits applies to raw; {self.format} has a fixed length")
        if self.format == "wiegand26" and self.facility_bits not in (None, 8):
            raise ValueError("osdp.credential.facility_bits of wiegand26 is 8 (leave it out)")
        width = self.facility_width()
        if self.facility_code >= 1 << width:
            raise ValueError(
                f"osdp.credential.facility_code {self.facility_code} does not fit the {width} facility "
                f"bits of {self.format} (0-{(1 << width) - 1})"
            )
        return self

    def facility_width(self) -> int:
        """Facility-code bits of the Wiegand format (0 for raw)."""
        if self.format == "raw":
            return 0
        return self.facility_bits if self.facility_bits is not None else DEFAULT_FACILITY_BITS[self.format]


class OsdpConfig(StrictModel):
    """[osdp] — Appear to an existing access panel as an OSDP reader (peripheral device). Off by default.

    On ``granted`` the reader reports the person's ``external_id`` as a card read; the panel decides
    and its LED answer is surfaced as ``panel_granted`` / ``panel_denied`` door events.
    """

    enabled: bool = Field(False, description="Act as an OSDP reader on a serial port.")
    port: Optional[str] = Field(
        None,
        pattern=r"^/",
        description="Serial device of the RS-485 bus (needed when enabled).",
        json_schema_extra={"example": "/dev/ttyUSB0"},
    )
    baud_rate: Literal[9600, 19200, 38400, 57600, 115200, 230400] = Field(
        9600, description="Bus speed, as set on the panel for this reader."
    )
    address: int = Field(0, ge=0, le=MAX_ADDRESS, description="This reader's address on the bus (0-126).")
    secure_channel: bool = Field(
        True,
        description="Require OSDP Secure Channel (AES-128) with the key in scbk_file; no card data is sent without it.",
    )
    scbk_file: Optional[ConfigPath] = Field(
        None,
        description="File holding the Secure Channel Base Key: 32 hex digits (16 bytes) on its first line.",
        json_schema_extra={"example": "${CREDENTIALS_DIRECTORY}/osdp_scbk"},
    )
    install_mode: bool = Field(
        False,
        description="Accept the well-known install key SCBK-D and the panel's KEYSET (stored in scbk_file); "
        "for commissioning only.",
    )
    report_denied: bool = Field(
        False,
        description="Also report a recognised person denied by the local policy (never a liveness failure "
        "or a spoof lockout, nor a face held for its card or PIN), so the panel decides; off: "
        "only granted produces a card read.",
    )
    unknown_card: Optional[str] = Field(
        None,
        min_length=1,
        max_length=64,
        description="Card number reported for an unknown face (e.g. so the panel logs it); none: nothing is sent.",
        json_schema_extra={"example": "0"},
    )
    card_read_ttl_s: float = Field(
        2.0,
        ge=0.2,
        le=30.0,
        description="A card read the panel has not collected within this time is withdrawn, never sent late.",
    )
    panel_decision_s: float = Field(
        5.0,
        ge=0.0,
        le=60.0,
        description="How long after a card read the panel's green/red LED counts as its decision (0: never).",
    )
    identity: OsdpIdentityConfig = Field(default_factory=OsdpIdentityConfig)
    credential: OsdpCredentialConfig = Field(default_factory=OsdpCredentialConfig)

    @model_validator(mode="after")
    def _check(self) -> OsdpConfig:
        if self.enabled and self.port is None:
            raise ValueError("osdp.port is needed when osdp.enabled is true (e.g. /dev/ttyUSB0)")
        if self.secure_channel and self.enabled and self.scbk_file is None:
            raise ValueError(
                "osdp.scbk_file is needed when osdp.secure_channel is true (a file with the 32-hex-digit key; "
                "with osdp.install_mode the panel's key is stored there)"
            )
        if self.install_mode and not self.secure_channel:
            raise ValueError("osdp.install_mode needs osdp.secure_channel = true")
        if self.unknown_card is not None:
            from .credential import UnfitCredentialError, encode

            try:
                encode(self.unknown_card, self.credential)
            except UnfitCredentialError as err:
                raise ValueError(f"osdp.unknown_card cannot be sent as osdp.credential says: {err}") from None
        return self


__all__ = [
    "BAUD_RATES",
    "MAX_ADDRESS",
    "MAX_RAW_BITS",
    "OsdpConfig",
    "OsdpCredentialConfig",
    "OsdpIdentityConfig",
]
