"""The door's lines through libgpiod v1's Python bindings (Debian/Ubuntu ``python3-libgpiod``, JetPack 5).

API used (``bindings/python/gpiodmodule.c`` of libgpiod 1.4 to 1.6): ``gpiod.Chip(path,
gpiod.Chip.OPEN_BY_PATH)`` with ``num_lines()``, ``get_line(offset)`` and ``find_line(name)``
(``None`` when absent); ``Line.is_used()``/``consumer()``; ``Line.request(consumer=, type=, flags=,
default_val=)`` with ``LINE_REQ_DIR_OUT`` / ``LINE_REQ_EV_BOTH_EDGES`` and the ``LINE_REQ_FLAG_*``
flags (the ``BIAS`` ones from libgpiod 1.5 on); ``get_value``/``set_value`` (logical, 0/1),
``event_get_fd()``, ``event_read()`` and ``release()``. The v1 kernel interface has no debounce:
the controller debounces in software.
"""

from __future__ import annotations

import logging
import select
from types import ModuleType
from typing import Any, Dict, List, Sequence

from .errors import DoorError, chip_error, line_busy_error, line_missing_error, request_error
from .lines import CONSUMER, DoorLines, LineSpec

logger = logging.getLogger(__name__)

#: Events read per readable line at most, so a chattering input cannot hold the owner thread.
_MAX_EVENTS_PER_READ = 64

_BIAS_FLAGS = {
    "disabled": "LINE_REQ_FLAG_BIAS_DISABLE",
    "pull-up": "LINE_REQ_FLAG_BIAS_PULL_UP",
    "pull-down": "LINE_REQ_FLAG_BIAS_PULL_DOWN",
}
_DRIVE_FLAGS = {"open-drain": "LINE_REQ_FLAG_OPEN_DRAIN", "open-source": "LINE_REQ_FLAG_OPEN_SOURCE"}


class Gpiod1Lines(DoorLines):
    """The door's lines as one v1 ``Line`` request each.

    Args:
        specs: the wired lines (:func:`appliance.door.lines.line_specs`).
        gpiod: the imported libgpiod v1 ``gpiod`` module.

    Raises:
        DoorError: a chip or line cannot be had, or a pull resistor is asked of libgpiod < 1.5.
    """

    backend = "gpiod1"

    def __init__(self, specs: Sequence[LineSpec], gpiod: ModuleType) -> None:
        self._gpiod = gpiod
        self._chips: Dict[str, Any] = {}
        self._lines: Dict[str, Any] = {}
        try:
            for spec in specs:
                self._lines[spec.role] = self._request(spec)
        except BaseException:
            self.close()
            raise

    def _chip(self, spec: LineSpec) -> Any:
        chip = self._chips.get(spec.chip)
        if chip is None:
            try:
                chip = self._gpiod.Chip(spec.chip, self._gpiod.Chip.OPEN_BY_PATH)
            except OSError as err:
                raise chip_error(spec, err) from err
            self._chips[spec.chip] = chip
        return chip

    def _line(self, spec: LineSpec) -> Any:
        chip = self._chip(spec)
        num_lines = chip.num_lines()
        try:
            if isinstance(spec.line, int) or spec.line.isdigit():
                offset = int(spec.line)
                line = chip.get_line(offset) if offset < num_lines else None
            else:
                line = chip.find_line(spec.line)
        except OSError as err:
            raise line_missing_error(spec, num_lines) from err
        if line is None:
            raise line_missing_error(spec, num_lines)
        if line.is_used():
            raise line_busy_error(spec, line.consumer())
        return line

    def _flags(self, spec: LineSpec) -> int:
        gpiod = self._gpiod
        flags = gpiod.LINE_REQ_FLAG_ACTIVE_LOW if spec.active_low else 0
        names = [_DRIVE_FLAGS[spec.drive]] if spec.output and spec.drive in _DRIVE_FLAGS else []
        if not spec.output and spec.bias in _BIAS_FLAGS:
            names.append(_BIAS_FLAGS[spec.bias])
        for name in names:
            flag = getattr(gpiod, name, None)
            if flag is None:
                key = f"door.{spec.role}.bias" if "BIAS" in name else f"door.{spec.role}.drive"
                raise DoorError(
                    f"{key}: this libgpiod v1 binding ({gpiod.version_string()}) has no {name} (bias flags "
                    f"came with libgpiod 1.5); set {key} to its default and fit an external resistor, or "
                    f"use door.backend = 'gpiod' (libgpiod v2) or a newer python3-libgpiod"
                )
            flags |= flag
        return flags

    def _request(self, spec: LineSpec) -> Any:
        line = self._line(spec)
        flags = self._flags(spec)
        try:
            if spec.output:
                line.request(consumer=CONSUMER, type=self._gpiod.LINE_REQ_DIR_OUT, flags=flags, default_val=0)
            else:
                line.request(consumer=CONSUMER, type=self._gpiod.LINE_REQ_EV_BOTH_EDGES, flags=flags)
        except OSError as err:
            raise request_error([spec], err, v2=False) from err
        return line

    def set_relay(self, on: bool) -> None:
        """Set the relay's logical level."""
        self._lines["relay"].set_value(1 if on else 0)

    def read_inputs(self) -> Dict[str, bool]:
        """The inputs' logical levels."""
        return {role: bool(line.get_value()) for role, line in self._lines.items() if role != "relay"}

    def event_fds(self) -> List[int]:
        """One event fd per input line."""
        return [line.event_get_fd() for role, line in self._lines.items() if role != "relay"]

    def read_events(self, fds: Sequence[int]) -> int:
        """Read the pending edge events of the ready lines (``event_read`` blocks, so check first)."""
        count = 0
        for role, line in self._lines.items():
            if role == "relay" or line.event_get_fd() not in fds:
                continue
            fd = line.event_get_fd()
            for _ in range(_MAX_EVENTS_PER_READ):
                line.event_read()
                count += 1
                if not select.select([fd], [], [], 0)[0]:
                    break
        return count

    def close(self) -> None:
        """Release every line and close the chips; idempotent."""
        lines, self._lines = self._lines, {}
        chips, self._chips = self._chips, {}
        for role, line in lines.items():
            try:
                line.release()
            except Exception as err:  # one failing release must not keep the others held
                logger.warning("door: releasing the %s line failed: %s", role, err)
        for path, chip in chips.items():
            try:
                chip.close()
            except Exception as err:
                logger.warning("door: closing %s failed: %s", path, err)


__all__ = ["Gpiod1Lines"]
