"""The door's lines through libgpiod v2's Python bindings (PyPI ``gpiod`` >= 2.2).

API used (gpiod 2.x, ``bindings/python`` of libgpiod): ``gpiod.Chip(path)`` with ``get_info()``,
``line_offset_from_id()`` and ``get_line_info()`` to check each line before asking for it;
``gpiod.request_lines(path, config={offset: LineSettings(...)}, consumer=...)`` returning a
``LineRequest`` with ``set_value``/``get_value`` (logical :class:`gpiod.line.Value`), ``fd``,
``read_edge_events()`` and ``release()``. Inputs are asked for ``Edge.BOTH`` with the kernel's
``debounce_period`` (the kernel debounces in software where the chip cannot).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from types import ModuleType
from typing import Any, Dict, List, Sequence, Tuple

from .errors import chip_error, line_busy_error, line_missing_error, request_error
from .lines import CONSUMER, DoorLines, LineSpec

logger = logging.getLogger(__name__)


def _member(enum: Any, setting: str) -> Any:
    """The member of a ``gpiod.line`` enum a setting names: ``pull-up`` → ``Bias.PULL_UP``."""
    return enum[setting.upper().replace("-", "_")]


class Gpiod2Lines(DoorLines):
    """The door's lines as one ``LineRequest`` per chip.

    Args:
        specs: the wired lines (:func:`appliance.door.lines.line_specs`).
        gpiod: the imported ``gpiod`` 2.x module.

    Raises:
        DoorError: a chip or line cannot be had (the message names the key).
    """

    backend = "gpiod"

    def __init__(self, specs: Sequence[LineSpec], gpiod: ModuleType) -> None:
        self._gpiod = gpiod
        self._requests: Dict[str, Any] = {}
        #: role → (chip, offset)
        self._where: Dict[str, Tuple[str, int]] = {}
        by_chip: Dict[str, List[LineSpec]] = {}
        for spec in specs:
            by_chip.setdefault(spec.chip, []).append(spec)
        try:
            for chip, chip_specs in by_chip.items():
                offsets = self._resolve(chip_specs)
                config = {offset: self._settings(spec) for spec, offset in zip(chip_specs, offsets)}
                try:
                    self._requests[chip] = gpiod.request_lines(chip, config=config, consumer=CONSUMER)
                except OSError as err:
                    raise request_error(chip_specs, err, v2=True) from err
                for spec, offset in zip(chip_specs, offsets):
                    self._where[spec.role] = (chip, offset)
        except BaseException:
            self.close()
            raise

    def _resolve(self, specs: Sequence[LineSpec]) -> List[int]:
        """The offsets of ``specs`` (one chip), each checked to exist and to be free."""
        try:
            chip = self._gpiod.Chip(specs[0].chip)
        except OSError as err:
            raise chip_error(specs[0], err) from err
        offsets: List[int] = []
        with chip:
            num_lines = chip.get_info().num_lines
            for spec in specs:
                try:
                    offset = chip.line_offset_from_id(spec.line)
                except (OSError, ValueError) as err:
                    raise line_missing_error(spec, num_lines) from err
                info = chip.get_line_info(offset)
                if info.used:
                    raise line_busy_error(spec, info.consumer)
                offsets.append(offset)
        return offsets

    def _settings(self, spec: LineSpec) -> Any:
        line = self._gpiod.line
        if spec.output:
            return self._gpiod.LineSettings(
                direction=line.Direction.OUTPUT,
                active_low=spec.active_low,
                drive=_member(line.Drive, spec.drive),
                output_value=line.Value.INACTIVE,
            )
        return self._gpiod.LineSettings(
            direction=line.Direction.INPUT,
            edge_detection=line.Edge.BOTH,
            bias=_member(line.Bias, spec.bias),
            active_low=spec.active_low,
            debounce_period=timedelta(seconds=spec.debounce_s),
        )

    def set_relay(self, on: bool) -> None:
        """Set the relay's logical level."""
        chip, offset = self._where["relay"]
        value = self._gpiod.line.Value.ACTIVE if on else self._gpiod.line.Value.INACTIVE
        self._requests[chip].set_value(offset, value)

    def read_inputs(self) -> Dict[str, bool]:
        """The inputs' logical levels."""
        active = self._gpiod.line.Value.ACTIVE
        return {
            role: self._requests[chip].get_value(offset) == active
            for role, (chip, offset) in self._where.items()
            if role != "relay"
        }

    def event_fds(self) -> List[int]:
        """The fds of the requests that hold an input."""
        chips = {chip for role, (chip, _) in self._where.items() if role != "relay"}
        return [self._requests[chip].fd for chip in sorted(chips)]

    def read_events(self, fds: Sequence[int]) -> int:
        """Read the pending edge events of the ready requests."""
        count = 0
        for request in self._requests.values():
            if request.fd in fds:
                count += len(request.read_edge_events())
        return count

    def close(self) -> None:
        """Release every request; idempotent."""
        requests, self._requests = self._requests, {}
        for chip, request in requests.items():
            try:
                request.release()
            except Exception as err:  # a release failing must not keep the other lines held
                logger.warning("door: releasing the lines on %s failed: %s", chip, err)


__all__ = ["Gpiod2Lines"]
