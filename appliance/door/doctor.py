"""``doctor`` checks of the door's I/O: the back-end imports, the chips exist, the lines can be had.

The lines are requested as the daemon would (the relay as an output at its released level, the
inputs as inputs) and released right after; their levels at that moment are reported, which shows an
installer whether the contact reads "closed" with the door shut. A line held by a running appliance
(consumer ``face-appliance``) is fine, not a failure.
"""

from __future__ import annotations

from types import ModuleType
from typing import List, Tuple

from .errors import DoorError, DoorLineBusyError, chip_error
from .lines import CONSUMER, LineSpec, import_gpiod, line_specs, open_lines, resolve_backend
from .settings import DoorConfig

#: ``(status, subject, detail, hint)``; status is ``ok``, ``warn`` or ``fail``.
Check = Tuple[str, str, str, str]


def doctor_checks(config: DoorConfig) -> List[Check]:
    """Check ``[door]`` against this machine; never raises.

    Returns:
        One row per check, in order: the back-end, each chip, the lines, then warnings about the setup.
    """
    if not config.enabled:
        return [("ok", "door", "door I/O is off (door.enabled = false)", "")]
    gpiod = None
    try:
        backend = resolve_backend(config)
        if backend == "jetson-gpio":
            from .jetson_gpio import import_jetson_gpio

            import_jetson_gpio()
        else:
            gpiod = import_gpiod(backend)[0]
    except DoorError as err:
        return [("fail", "door back-end", str(err), _backend_hint(config.backend))]
    checks: List[Check] = [("ok", "door back-end", f"{backend} imports", "")]
    chips_ok = True
    if gpiod is not None:
        first = {spec.chip: spec for spec in reversed(line_specs(config))}
        for chip in sorted(first):
            row = _chip_check(gpiod, backend, first[chip])
            chips_ok = chips_ok and row[0] == "ok"
            checks.append(row)
    if chips_ok:
        checks.append(_lines_check(config))
    checks.extend(_setup_warnings(config, backend))
    return checks


def _backend_hint(backend: str) -> str:
    if backend == "jetson-gpio":
        return "pip install Jetson.GPIO on the Jetson, as a user in the gpio group"
    return (
        "Python ≥ 3.9: pip install 'face-appliance[door]' (gpiod 2.x); JetPack 5 / Python 3.8: apt install "
        "python3-libgpiod with a --system-site-packages venv and door.backend = 'gpiod1', or "
        "door.backend = 'jetson-gpio'"
    )


def _chip_check(gpiod: ModuleType, backend: str, spec: LineSpec) -> Check:
    """Open ``spec``'s chip through the binding itself (what the daemon will do) and close it."""
    subject = f"door chip {spec.chip}"
    try:
        if backend == "gpiod":
            with gpiod.Chip(spec.chip) as chip:
                info = chip.get_info()
                label, num_lines = info.label, info.num_lines
        else:
            chip = gpiod.Chip(spec.chip, gpiod.Chip.OPEN_BY_PATH)
            try:
                label, num_lines = chip.label(), chip.num_lines()
            finally:
                chip.close()
    except OSError as err:
        return ("fail", subject, str(chip_error(spec, err)), "`gpiodetect` lists the chips and their labels")
    return ("ok", subject, f"opens: {label!r}, {num_lines} lines", "")


def _lines_check(config: DoorConfig) -> Check:
    try:
        lines = open_lines(config)
    except DoorLineBusyError as err:
        if err.consumer == CONSUMER:
            return ("ok", "door lines", "held by a running appliance (consumer 'face-appliance')", "")
        if err.consumer is None:  # Jetson.GPIO does not say who holds a pin
            return (
                "warn",
                "door lines",
                str(err),
                "if the appliance is running, it holds them: that is fine",
            )
        return ("fail", "door lines", str(err), "free the line, or pick another one")
    except DoorError as err:
        return ("fail", "door lines", str(err), "fix the key the message names, or free the line")
    try:
        levels = lines.read_inputs()
    except OSError as err:
        return ("fail", "door lines", f"requested, but reading them failed: {err}", "check the wiring")
    finally:
        lines.close()
    names = ", ".join(spec.describe() for spec in line_specs(config))
    words = {
        "contact": lambda active: "door open" if active else "door closed",
        "exit": lambda active: "exit pressed" if active else "exit released",
        "tamper": lambda active: "housing open (tamper active)" if active else "housing closed",
    }
    now = "; ".join(words[role](active) for role, active in levels.items()) or "no inputs wired"
    return ("ok", "door lines", f"{names} requested and released ({now})", "")


def _setup_warnings(config: DoorConfig, backend: str) -> List[Check]:
    warnings: List[Check] = []
    if config.contact.line is None:
        warnings.append(
            (
                "warn",
                "door contact",
                "no door contact wired (door.contact.line): forced and held-open doors go unnoticed",
                "wire the door's contact and set door.contact.line",
            )
        )
    elif config.relay.pulse_s >= config.contact.held_open_s:
        warnings.append(
            (
                "warn",
                "door timers",
                f"door.relay.pulse_s ({config.relay.pulse_s}) is not below door.contact.held_open_s "
                f"({config.contact.held_open_s}): door_held can fire while the strike is still released",
                "shorten the pulse or lengthen the held-open limit",
            )
        )
    if backend == "gpiod1" and any(
        section.debounce_s for section in (config.contact, config.exit, config.tamper)
    ):
        warnings.append(
            (
                "ok",
                "door debounce",
                "libgpiod v1 has no kernel debounce: inputs are debounced in software only",
                "",
            )
        )
    return warnings


__all__ = ["Check", "doctor_checks"]
