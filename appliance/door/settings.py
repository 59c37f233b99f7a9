"""[door] — the door's own I/O: relay, door contact, request-to-exit (see :mod:`appliance.door`).

Lines are addressed the libgpiod way, a chip (``/dev/gpiochipN``) and a line offset or line name, for
the ``gpiod`` (libgpiod v2) and ``gpiod1`` (libgpiod v1) back-ends; the ``jetson-gpio`` back-end
(NVIDIA's Jetson.GPIO) addresses pins by number or name in ``door.jetson_pin_mode`` instead.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, Union

from pydantic import AfterValidator, BeforeValidator, Field, field_validator, model_validator
from typing_extensions import Annotated, Literal

from ..access.settings import CalendarNames, GroupNames
from ..config_types import ID_PATTERN, CameraIds, StrictModel, check_peripheral_id

#: The back-ends; ``auto`` picks whichever libgpiod binding ``import gpiod`` finds (never Jetson.GPIO,
#: whose pin numbers are not chip offsets).
DoorBackendName = Literal["auto", "gpiod", "gpiod1", "jetson-gpio"]
#: Pull resistors; Jetson.GPIO cannot set them and libgpiod v1 only from 1.5 on.
BiasName = Literal["as-is", "disabled", "pull-up", "pull-down"]
DriveName = Literal["push-pull", "open-drain", "open-source"]
JetsonPinMode = Literal["BOARD", "BCM", "TEGRA_SOC", "CVM"]

DEFAULT_CHIP = "/dev/gpiochip0"


def _line_id(value: Any) -> Any:
    """A line offset (an integer ≥ 0) or a line name; anything else fails with one clear message."""
    if value is None or (isinstance(value, str) and value.strip() and len(value) <= 64):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1024:
        return value
    raise ValueError(
        f"expected a line offset (an integer from 0 to 1023) or a line name (1 to 64 characters), "
        f"found {value!r}"
    )


def _chip_path(value: Any) -> Any:
    """A GPIO chip's device path (libgpiod v2 opens chips by path only)."""
    if value is None or (isinstance(value, str) and value.startswith("/dev/") and len(value) > 5):
        return value
    raise ValueError(
        f"expected a GPIO chip's device path such as {DEFAULT_CHIP} (`gpiodetect` or "
        f"`ls /dev/gpiochip*` lists them), found {value!r}"
    )


#: A line offset on its chip, or the line's name (``gpioinfo`` lists both); a pin for jetson-gpio.
LineId = Annotated[Optional[Union[int, str]], BeforeValidator(_line_id)]
ChipPath = Annotated[Optional[str], BeforeValidator(_chip_path)]


class DoorRelayConfig(StrictModel):
    """[door.relay] — The output that drives the strike's relay, pulsed on each granted passage."""

    line: LineId = Field(
        None,
        description="The relay's line: an offset on its chip or a line name (jetson-gpio: a pin in "
        "door.jetson_pin_mode). Required when door.enabled is true.",
        json_schema_extra={"example": 12},
    )
    chip: ChipPath = Field(
        None,
        description="The chip of this line; default door.chip.",
        json_schema_extra={"example": "/dev/gpiochip1"},
    )
    active_low: bool = Field(
        False, description="The relay is energised by a low level (many opto-isolated relay boards)."
    )
    drive: DriveName = Field("push-pull", description="Output drive: push-pull, open-drain or open-source.")
    pulse_s: float = Field(
        3.0, gt=0, le=120, description="How long the relay is energised per grant; a new grant extends it."
    )


class DoorInputConfig(StrictModel):
    """An input line with its level, pull resistor and debounce (the contact and the exit button)."""

    line: LineId = Field(
        None,
        description="The input's line: an offset on its chip or a line name (jetson-gpio: a pin in "
        "door.jetson_pin_mode). Not set: not wired.",
        json_schema_extra={"example": 13},
    )
    chip: ChipPath = Field(
        None,
        description="The chip of this line; default door.chip.",
        json_schema_extra={"example": "/dev/gpiochip1"},
    )
    active_low: bool = Field(False, description="The input is active at a low level.")
    bias: BiasName = Field(
        "as-is",
        description="Pull resistor: as-is, disabled, pull-up, pull-down (not with jetson-gpio; libgpiod "
        "v1 from 1.5 on).",
    )
    debounce_s: float = Field(
        0.05,
        ge=0,
        le=2,
        description="A level must hold this long to count (in software, and in the kernel where the "
        "gpiod back-end can ask for it).",
    )


class DoorContactConfig(DoorInputConfig):
    """[door.contact] — The door contact: active means the door is open (set active_low to match the wiring)."""

    held_open_s: float = Field(
        30.0, gt=0, le=3600, description="A door open longer than this raises door_held (once per opening)."
    )
    forced_grace_s: float = Field(
        1.0,
        ge=0,
        le=60,
        description="An opening this long after a relay pulse ends still counts as authorised; later ones "
        "raise door_forced.",
    )


class DoorExitConfig(DoorInputConfig):
    """[door.exit] — The request-to-exit (REX) button: active means pressed."""

    unlocks: bool = Field(
        True,
        description="A press pulses the relay; false: it only authorises the opening (free egress by a "
        "lever handle), so the door is not reported forced.",
    )


class DoorTamperConfig(DoorInputConfig):
    """[door.tamper] — The tamper switch of the terminal's or the reader's housing: active means opened or torn off the wall."""


class DoorUnlockConfig(StrictModel):
    """[door.unlock] — Remain open: weekly windows during which the relay is held and the door is free to open, optionally only once the first person of a group has come."""

    schedule: List[str] = Field(
        default_factory=list,
        max_length=64,
        description="Windows 'DAYS HH:MM-HH:MM' in access.time_zone, as an access group's (e.g. "
        "'mon-fri 08:00-18:00'); empty: the door is never unlocked by schedule.",
        json_schema_extra={"example": ["mon-fri 08:00-18:00"]},
    )
    first_person_groups: GroupNames = Field(
        default_factory=list,
        max_length=64,
        description="First person in: within a window the door stays locked (a grant still opens it for "
        "one passage) until a member of one of these access groups is granted here; then it stays "
        "unlocked until the window ends. Empty: unlocked from the window's start.",
        json_schema_extra={"example": ["managers"]},
    )
    holidays: CalendarNames = Field(
        default_factory=list,
        max_length=64,
        description="Holiday calendars (defined with `face-appliance access calendar set`) on whose days "
        "no window unlocks the door, in access.time_zone.",
        json_schema_extra={"example": ["public"]},
    )

    @field_validator("schedule")
    @classmethod
    def _windows(cls, value: List[str]) -> List[str]:
        from ..access.schedule import WeeklySchedule

        WeeklySchedule.parse(value)  # a PolicyError is a ValueError: reported with the key path
        return value

    @model_validator(mode="after")
    def _check(self) -> DoorUnlockConfig:
        if (self.first_person_groups or self.holidays) and not self.schedule:
            raise ValueError(
                "door.unlock.first_person_groups and door.unlock.holidays need door.unlock.schedule: the "
                "windows they apply to"
            )
        return self


#: The door's id when there is one: its peripheral's name and its key in ``…/state`` → ``door``.
DEFAULT_DOOR_ID = "door"


class DoorConfig(StrictModel):
    """[door] — The door's own I/O through GPIO: strike relay, door contact, request-to-exit. Off by default (several doors: one [[doors]] table each, with these keys)."""

    enabled: bool = Field(False, description="Drive the door's relay and read its inputs through GPIO.")
    id: Annotated[str, AfterValidator(check_peripheral_id)] = Field(
        DEFAULT_DOOR_ID,
        pattern=ID_PATTERN,
        description="The door's id: door_id in its door events, its key in …/state → door, and the door "
        "the door_open and door_mode commands name. Required and unique in [[doors]]; not 'osdp'.",
    )
    cameras: CameraIds = Field(
        default_factory=list,
        max_length=64,
        description="The cameras (their ids) whose grants open this door; empty: every camera's. With "
        "several [[doors]], each names its own (a turnstile's entry camera opens the entry way).",
        json_schema_extra={"example": ["entry"]},
    )
    backend: DoorBackendName = Field(
        "auto",
        description="gpiod: libgpiod v2 (pip gpiod>=2.2, Python ≥ 3.9); gpiod1: libgpiod v1 (apt "
        "python3-libgpiod, JetPack 5); jetson-gpio: NVIDIA's Jetson.GPIO; auto: whichever libgpiod "
        "binding `import gpiod` finds.",
    )
    chip: Annotated[str, BeforeValidator(_chip_path)] = Field(
        DEFAULT_CHIP,
        description="The GPIO chip of every line that names no chip of its own (gpiod, gpiod1).",
    )
    jetson_pin_mode: JetsonPinMode = Field(
        "BOARD",
        description="jetson-gpio only: how lines are numbered: BOARD (header pins), BCM, TEGRA_SOC or "
        "CVM (names).",
    )
    poll_interval_s: float = Field(
        0.02,
        ge=0.005,
        le=0.5,
        description="jetson-gpio only: how often the inputs are read (it has no edge events here).",
    )
    relay: DoorRelayConfig = Field(default_factory=DoorRelayConfig)
    contact: DoorContactConfig = Field(default_factory=DoorContactConfig)
    exit: DoorExitConfig = Field(default_factory=DoorExitConfig)
    tamper: DoorTamperConfig = Field(default_factory=DoorTamperConfig)
    unlock: DoorUnlockConfig = Field(default_factory=DoorUnlockConfig)

    def line_places(self) -> List[Tuple[Tuple[Optional[str], Union[int, str]], str]]:
        """``((chip, line), section name)`` of each wired line (chip ``None``: a Jetson.GPIO pin), so that
        two doors on one box are checked for a line they would share."""
        jetson = self.backend == "jetson-gpio"
        return [
            ((None if jetson else section.chip or self.chip, section.line), name)  # type: ignore[misc]
            for name, section in self.wired()
        ]

    def opens_for(self, camera_id: Optional[str]) -> bool:
        """Whether a grant at ``camera_id`` opens this door (``None``: a camera-less caller, e.g. a test)."""
        return not self.cameras or camera_id is None or camera_id in self.cameras

    def wired(self) -> List[Tuple[str, Union[DoorRelayConfig, DoorInputConfig]]]:
        """The sections whose line is set, as ``(name, section)``: relay first, then contact, exit."""
        sections: List[Tuple[str, Union[DoorRelayConfig, DoorInputConfig]]] = [
            ("relay", self.relay),
            ("contact", self.contact),
            ("exit", self.exit),
            ("tamper", self.tamper),
        ]
        return [(name, section) for name, section in sections if section.line is not None]

    @model_validator(mode="after")
    def _check(self) -> DoorConfig:
        if self.enabled and self.relay.line is None:
            raise ValueError(
                "door.relay.line must be set when door.enabled is true (the relay's line offset on "
                "door.chip, or its line name; `gpioinfo` lists them)"
            )
        seen: Dict[Tuple[Optional[str], Union[int, str]], str] = {}
        for where, name in self.line_places():
            if where in seen:
                raise ValueError(
                    f"door.{name}.line and door.{seen[where]}.line are the same line "
                    f"({where[1]!r} on {where[0] or 'the header'}); each needs its own"
                )
            seen[where] = name
        if self.backend == "jetson-gpio":
            self._check_jetson()
        elif "jetson_pin_mode" in self.model_fields_set and self.jetson_pin_mode != "BOARD":
            # (the default, as the documented default file writes it, is harmless with any back-end)
            raise ValueError(
                f"door.jetson_pin_mode applies to door.backend = 'jetson-gpio' only (door.backend is "
                f"{self.backend!r}); remove it"
            )
        return self

    def _check_jetson(self) -> None:
        """Jetson.GPIO numbers pins itself and has no pull resistors or drive modes."""
        if "chip" in self.model_fields_set:
            raise ValueError(
                "door.chip has no meaning with door.backend = 'jetson-gpio' (lines are pins in "
                "door.jetson_pin_mode); remove it"
            )
        numbered = self.jetson_pin_mode in ("BOARD", "BCM")
        for name, section in self.wired():
            if section.chip is not None:
                raise ValueError(
                    f"door.{name}.chip has no meaning with door.backend = 'jetson-gpio'; remove it"
                )
            if numbered != isinstance(section.line, int):
                wanted = "a pin number" if numbered else "a pin name"
                raise ValueError(
                    f"door.{name}.line = {section.line!r}: door.jetson_pin_mode = "
                    f"{self.jetson_pin_mode!r} takes {wanted}"
                )
            if isinstance(section, DoorInputConfig) and section.bias != "as-is":
                raise ValueError(
                    f"door.{name}.bias = {section.bias!r}: Jetson.GPIO cannot set pull resistors (it "
                    f"ignores pull_up_down); set 'as-is' and fit an external resistor, or use "
                    f"door.backend = 'gpiod'"
                )
        if self.relay.drive != "push-pull":
            raise ValueError(
                f"door.relay.drive = {self.relay.drive!r}: Jetson.GPIO drives push-pull only; set "
                f"'push-pull' or use door.backend = 'gpiod'"
            )


class DoorEntryConfig(DoorConfig):
    """[[doors]] — One of several doors on one appliance: the keys of [door], on by default."""

    enabled: bool = Field(True, description="Drive this door (false: keep its table, leave it alone).")


__all__ = [
    "DEFAULT_CHIP",
    "DEFAULT_DOOR_ID",
    "DoorConfig",
    "DoorContactConfig",
    "DoorEntryConfig",
    "DoorExitConfig",
    "DoorInputConfig",
    "DoorRelayConfig",
    "DoorTamperConfig",
    "DoorUnlockConfig",
]
