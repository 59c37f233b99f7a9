"""[credential_reader] — a card-and-keypad reader beside the camera, the appliance its OSDP control panel.

A face completed by a card or a PIN (the second factor, :mod:`appliance.access.second_factor`): the
appliance polls the reader over RS-485 (:mod:`appliance.osdp.card_reader`), takes its card reads and
key presses, and drives its LED and buzzer to tell the person what happened.

Example::

    [credential_reader]
    enabled = true
    id = "entry-reader"            # its key in …/state → door, and `reader` of what it presents
    port = "/dev/ttyUSB1"          # the reader's RS-485 adapter (not the panel's, [osdp].port)
    baud_rate = 9600               # as set on the reader
    address = 0                    # the reader's OSDP address, 0-126
    secure_channel = true          # AES-128 Secure Channel with the key below
    scbk_file = "${CREDENTIALS_DIRECTORY}/reader_scbk"   # 32 hex digits, the key the reader holds
    cameras = ["entry"]            # the cameras it stands at; empty: every camera
    pin_timeout_s = 5.0            # a pause longer than this between keys discards a partial PIN
    feedback = true                # green: granted; blinking amber: present your card or PIN; red: denied

Cross-field rules (each error names its key): ``credential_reader.port`` is needed when
``credential_reader.enabled``; ``credential_reader.scbk_file`` when ``credential_reader.secure_channel``.

Several readers (``[[credential_readers]]``) may share one ``port``, an RS-485 line that one control
panel polls (OSDP multi-drop): each at an ``address`` of its own, all at the line's ``baud_rate``, at
most :data:`MAX_READERS_PER_LINE`; everything else (``id``, ``secure_channel``, ``scbk_file``,
``cameras``, ``feedback``, ``pin_timeout_s``) is each reader's own. The daemon's root model
(``appliance.config``) checks the readers together.
"""

from __future__ import annotations

from typing import Optional

from pydantic import AfterValidator, Field, model_validator
from typing_extensions import Annotated, Literal

from ..config_types import ID_PATTERN, CameraIds, ConfigPath, StrictModel, check_peripheral_id
from .settings import MAX_ADDRESS

#: Most cameras one reader may stand at.
MAX_CAMERAS = 64
#: Most readers on one serial port: libosdp's Python binding reports the control panel's links as a
#: 32-bit mask (``ControlPanel.status`` / ``sc_status``), one bit per reader.
MAX_READERS_PER_LINE = 32


class CredentialReaderConfig(StrictModel):
    """[credential_reader] — Poll a card-and-keypad reader as its OSDP control panel. Off by default.

    Each card read and each PIN (digits then ``#``) is offered to the pipeline as the second factor of a
    face; the reader's LED and buzzer answer each decision at its cameras.
    """

    enabled: bool = Field(False, description="Poll an OSDP card-and-keypad reader on a serial port.")
    id: Annotated[str, AfterValidator(check_peripheral_id)] = Field(
        "reader",
        pattern=ID_PATTERN,
        description="The reader's id: `reader` of the cards and PINs it presents, and its key in …/state → "
        "door. Letters, digits, '_', '.', '-'; not 'osdp'.",
    )
    port: Optional[str] = Field(
        None,
        pattern=r"^/",
        description="Serial device of the reader's RS-485 line (needed when enabled); readers sharing a "
        "line name the same port, each at an address of its own.",
        json_schema_extra={"example": "/dev/ttyUSB1"},
    )
    # The values of osdp.settings.BAUD_RATES, written out as a Literal needs (a unit test keeps them equal).
    baud_rate: Literal[9600, 19200, 38400, 57600, 115200, 230400] = Field(
        9600, description="Line speed, as set on the reader (the same for every reader on one port)."
    )
    address: int = Field(
        0, ge=0, le=MAX_ADDRESS, description="The reader's OSDP address (0-126; its own on a shared port)."
    )
    secure_channel: bool = Field(
        True,
        description="Require OSDP Secure Channel (AES-128) with the key in scbk_file; off: card numbers "
        "and PINs cross the line in the clear.",
    )
    scbk_file: Optional[ConfigPath] = Field(
        None,
        description="File holding the reader's Secure Channel Base Key: 32 hex digits (16 bytes) on its "
        "first line (needed with secure_channel).",
        json_schema_extra={"example": "${CREDENTIALS_DIRECTORY}/reader_scbk"},
    )
    cameras: CameraIds = Field(
        default_factory=list,
        max_length=MAX_CAMERAS,
        description="The cameras (their ids) this reader stands at: their decisions light its LED, and "
        "its cards and PINs complete their faces; empty: every camera.",
        json_schema_extra={"example": ["entry"]},
    )
    pin_timeout_s: float = Field(
        5.0,
        ge=1.0,
        le=60.0,
        description="A pause longer than this between two key presses discards the digits entered so far.",
    )
    feedback: bool = Field(
        True,
        description="Drive the reader's LED and buzzer: green and a beep when granted, blinking amber "
        "while a card or PIN is awaited, red and two beeps when denied.",
    )

    @model_validator(mode="after")
    def _check(self) -> CredentialReaderConfig:
        if self.enabled and self.port is None:
            raise ValueError(
                "credential_reader.port is needed when credential_reader.enabled is true "
                "(e.g. /dev/ttyUSB1, the reader's RS-485 adapter)"
            )
        if self.enabled and self.secure_channel and self.scbk_file is None:
            raise ValueError(
                "credential_reader.scbk_file is needed when credential_reader.secure_channel is true "
                "(a file with the 32-hex-digit key the reader holds; or set secure_channel = false "
                "to send card numbers and PINs in the clear)"
            )
        return self

    def stands_at(self, camera_id: Optional[str]) -> bool:
        """Whether the reader stands at ``camera_id``: every camera when ``cameras`` is empty (``None``: a
        camera-less caller, e.g. a test, as :meth:`appliance.door.settings.DoorConfig.opens_for`)."""
        return not self.cameras or camera_id is None or camera_id in self.cameras


class CredentialReaderEntryConfig(CredentialReaderConfig):
    """[[credential_readers]] — One of several card readers (a turnstile's two ways): the keys of
    [credential_reader], on by default; readers may share a serial port at addresses of their own."""

    enabled: bool = Field(True, description="Poll this reader (false: keep its table, leave it alone).")


__all__ = ["MAX_CAMERAS", "MAX_READERS_PER_LINE", "CredentialReaderConfig", "CredentialReaderEntryConfig"]
