"""Doubles of the GPIO libraries at their own API, over a simulated set of chips (no GPIO here).

There is no GPIO hardware on the development machines and CI, and no ``gpio-sim`` kernel module
(no configfs, no modprobe in the containers), so the chips are simulated in :class:`GpioSim` and the
three libraries are doubled *at their Python API*, with the names and call shapes of the real ones:

* :func:`gpiod_v2` — libgpiod v2's ``gpiod`` (2.x): ``Chip``, ``request_lines``, ``LineSettings``,
  ``LineRequest``, ``EdgeEvent``, ``gpiod.line.{Direction, Value, Edge, Bias, Drive, Clock}``. Its
  names are checked against the installed ``gpiod`` wheel in ``tests/unit/test_door_backends.py``.
* :func:`gpiod_v1` — libgpiod v1's ``gpiod`` (Debian/Ubuntu ``python3-libgpiod``, gpiodmodule.c):
  ``Chip``, ``Line``, ``LineEvent``, ``LINE_REQ_*``. Checked against a real v1 binding when a Python
  on the machine has one (apt ``python3-libgpiod``).
* :func:`jetson_gpio` — NVIDIA's ``Jetson.GPIO`` (RPi.GPIO style). Checked against the installed
  package's source when present (it cannot be imported off a Jetson).

The simulation keeps what the kernel does: requested lines are exclusive (``EBUSY``), values are
logical (active-low inverts them), an input edge becomes an edge event readable on the request's fd.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from enum import Enum
from types import ModuleType
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

# -- the simulated chips ---------------------------------------------------------------------------------------


@dataclass
class SimLine:
    """One line: its physical level, who holds it, and every level written to it."""

    offset: int
    name: str
    level: bool = False
    consumer: Optional[str] = None
    output: bool = False
    active_low: bool = False
    settings: Any = None
    #: (time.monotonic(), physical level) per write
    writes: List[Tuple[float, bool]] = field(default_factory=list)
    watchers: List[Callable[[SimLine, bool], None]] = field(default_factory=list)

    @property
    def logical(self) -> bool:
        return self.level != self.active_low


class SimChip:
    """A chip: ``num_lines`` lines, some named."""

    def __init__(self, path: str, num_lines: int, names: Optional[Dict[int, str]] = None) -> None:
        self.path = path
        self.label = f"sim-{os.path.basename(path)}"
        self.lines = [SimLine(offset, (names or {}).get(offset, "")) for offset in range(num_lines)]

    def offset_of(self, name: str) -> Optional[int]:
        for line in self.lines:
            if line.name == name:
                return line.offset
        return None


class GpioSim:
    """The machine's simulated chips. Thread-safe: the test drives inputs while the door thread reads."""

    def __init__(self) -> None:
        self.chips: Dict[str, SimChip] = {}
        self.lock = threading.RLock()
        self.denied: List[str] = []

    def add_chip(self, path: str, num_lines: int = 32, names: Optional[Dict[int, str]] = None) -> SimChip:
        chip = SimChip(path, num_lines, names)
        self.chips[path] = chip
        return chip

    def chip(self, path: str) -> SimChip:
        if path in self.denied:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        try:
            return self.chips[path]
        except KeyError:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path) from None

    def line(self, path: str, offset: int) -> SimLine:
        return self.chips[path].lines[offset]

    def set_input(self, path: str, offset: int, level: bool) -> None:
        """Drive an input's *physical* level (an edge reaches the watchers when it changes)."""
        with self.lock:
            line = self.line(path, offset)
            if line.level == level:
                return
            line.level = level
            watchers = list(line.watchers)
        for watcher in watchers:
            watcher(line, level)

    def bounce(self, path: str, offset: int, levels: Iterable[bool]) -> None:
        """A burst of physical levels, as a contact bounces (no pause between them)."""
        for level in levels:
            self.set_input(path, offset, level)

    def hold(self, path: str, offset: int, consumer: str) -> None:
        """Another program holds the line."""
        self.line(path, offset).consumer = consumer

    def held(self) -> List[Tuple[str, int]]:
        """Every line some request still holds."""
        return [(p, line.offset) for p, chip in self.chips.items() for line in chip.lines if line.consumer]


class _ChipHandle:
    """An open chip of either binding: a context manager that refuses to be used once closed."""

    def __init__(self, sim: GpioSim, path: str) -> None:
        self._sim: Optional[SimChip] = sim.chip(path)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._sim = None

    def _closed_error(self) -> Exception:
        return ValueError("I/O operation on closed file")  # libgpiod v1's words

    def _chip(self) -> SimChip:
        if self._sim is None:
            raise self._closed_error()
        return self._sim


class _EdgeFd:
    """A readable-on-edge fd (a pipe), as a line request's fd is."""

    def __init__(self) -> None:
        self.read_fd, self._write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        self.events: List[Any] = []
        self._lock = threading.Lock()

    def push(self, event: Any) -> None:
        with self._lock:
            self.events.append(event)
        os.write(self._write_fd, b"e")

    def pop_all(self, limit: Optional[int] = None) -> List[Any]:
        with self._lock:
            taken = self.events[:limit] if limit else list(self.events)
            del self.events[: len(taken)]
            try:
                os.read(self.read_fd, len(taken) or 1)
            except BlockingIOError:
                pass
            return taken

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self._write_fd)


# -- libgpiod v2: gpiod 2.x ------------------------------------------------------------------------------------


def gpiod_v2(sim: GpioSim) -> ModuleType:
    """A ``gpiod`` 2.x module over ``sim`` (names as in gpiod 2.5's ``__init__``/``line``/``line_settings``)."""
    gpiod = ModuleType("gpiod")
    line_mod = ModuleType("gpiod.line")

    # The members of gpiod.line's enums, in the wheel's order (values are the fake's own).
    members = {
        "Direction": ["AS_IS", "INPUT", "OUTPUT"],
        "Value": {"INACTIVE": 0, "ACTIVE": 1},
        "Edge": ["NONE", "RISING", "FALLING", "BOTH"],
        "Bias": ["AS_IS", "UNKNOWN", "DISABLED", "PULL_UP", "PULL_DOWN"],
        "Drive": ["PUSH_PULL", "OPEN_DRAIN", "OPEN_SOURCE"],
        "Clock": ["MONOTONIC", "REALTIME", "HTE"],
    }
    Direction, Value, Edge, Bias, Drive, Clock = (Enum(n, m) for n, m in members.items())  # type: ignore[misc]  # noqa: N806
    for enum in (Direction, Value, Edge, Bias, Drive, Clock):
        setattr(line_mod, enum.__name__, enum)

    @dataclass(repr=False)
    class LineSettings:
        direction: Direction = Direction.AS_IS
        edge_detection: Edge = Edge.NONE
        bias: Bias = Bias.AS_IS
        drive: Drive = Drive.PUSH_PULL
        active_low: bool = False
        debounce_period: timedelta = timedelta()
        event_clock: Clock = Clock.MONOTONIC
        output_value: Value = Value.INACTIVE

    @dataclass(frozen=True)
    class ChipInfo:
        name: str
        label: str
        num_lines: int

    @dataclass(frozen=True)
    class LineInfo:
        offset: int
        name: str
        used: bool
        consumer: str
        direction: Direction
        active_low: bool
        bias: Bias
        drive: Drive
        edge_detection: Edge
        event_clock: Clock
        debounced: bool
        debounce_period: timedelta

    class EdgeEvent:
        class Type(Enum):
            RISING_EDGE = 1
            FALLING_EDGE = 2

        def __init__(
            self, event_type: int, timestamp_ns: int, line_offset: int, global_seqno: int, line_seqno: int
        ) -> None:
            self.event_type = EdgeEvent.Type(event_type)
            self.timestamp_ns = timestamp_ns
            self.line_offset = line_offset
            self.global_seqno = global_seqno
            self.line_seqno = line_seqno

    class ChipClosedError(Exception):
        pass

    class RequestReleasedError(Exception):
        pass

    class LineRequest:
        def __init__(self, chip: SimChip, offsets: List[int], lines: List[Union[int, str]]) -> None:
            self._chip = chip
            self._offsets = offsets
            self._lines = lines
            self._edges: Optional[_EdgeFd] = _EdgeFd()
            self._seqno = 0
            for offset in offsets:
                chip.lines[offset].watchers.append(self._on_edge)

        def _on_edge(self, line: SimLine, level: bool) -> None:
            settings = line.settings
            if self._edges is None or settings is None or settings.edge_detection == Edge.NONE:
                return
            self._seqno += 1
            rising = line.logical
            kind = EdgeEvent.Type.RISING_EDGE if rising else EdgeEvent.Type.FALLING_EDGE
            self._edges.push(
                EdgeEvent(kind.value, time.monotonic_ns(), line.offset, self._seqno, self._seqno)
            )

        def _check_released(self) -> None:
            if self._edges is None:
                raise RequestReleasedError()

        def __enter__(self) -> LineRequest:
            return self

        def __exit__(self, *exc: Any) -> None:
            self.release()

        def release(self) -> None:
            if self._edges is None:
                return
            with sim.lock:
                for offset in self._offsets:
                    line = self._chip.lines[offset]
                    line.consumer = None
                    line.settings = None
                    line.watchers.remove(self._on_edge)
            self._edges.close()
            self._edges = None

        def get_value(self, line: Union[int, str]) -> Value:
            return self.get_values([line])[0]

        def get_values(self, lines: Optional[Iterable[Union[int, str]]] = None) -> List[Value]:
            self._check_released()
            with sim.lock:
                return [
                    Value.ACTIVE if self._chip.lines[self._offset(line)].logical else Value.INACTIVE
                    for line in (lines or self._lines)
                ]

        def set_value(self, line: Union[int, str], value: Value) -> None:
            self.set_values({line: value})

        def set_values(self, values: Dict[Union[int, str], Value]) -> None:
            self._check_released()
            with sim.lock:
                for line, value in values.items():
                    sim_line = self._chip.lines[self._offset(line)]
                    if not sim_line.output:
                        raise OSError(errno.EPERM, "line is not an output")
                    sim_line.level = (value == Value.ACTIVE) != sim_line.active_low
                    sim_line.writes.append((time.monotonic(), sim_line.level))

        def _offset(self, line: Union[int, str]) -> int:
            if isinstance(line, int):
                return line
            offset = self._chip.offset_of(line)
            if offset is None:
                raise ValueError(f"unknown line name: {line}")
            return offset

        def wait_edge_events(self, timeout: Optional[float] = None) -> bool:
            import select

            self._check_released()
            return bool(select.select([self.fd], [], [], timeout)[0])

        def read_edge_events(self, max_events: Optional[int] = None) -> List[Any]:
            self._check_released()
            assert self._edges is not None
            return self._edges.pop_all(max_events)

        def reconfigure_lines(self, config: Dict[Any, Any]) -> None:
            raise NotImplementedError("not used by the door")

        def fileno(self) -> int:
            return self.fd

        @property
        def fd(self) -> int:
            self._check_released()
            assert self._edges is not None
            return self._edges.read_fd

        @property
        def offsets(self) -> List[int]:
            return list(self._offsets)

        @property
        def lines(self) -> List[Union[int, str]]:
            return list(self._lines)

        @property
        def num_lines(self) -> int:
            return len(self._offsets)

        @property
        def chip_name(self) -> str:
            return os.path.basename(self._chip.path)

    class Chip(_ChipHandle):
        def __init__(self, path: str) -> None:
            super().__init__(sim, path)

        def _closed_error(self) -> Exception:
            return ChipClosedError()

        @property
        def path(self) -> str:
            return self._chip().path

        def get_info(self) -> ChipInfo:
            chip = self._chip()
            return ChipInfo(os.path.basename(chip.path), chip.label, len(chip.lines))

        def line_offset_from_id(self, id: Union[int, str]) -> int:
            chip = self._chip()
            if not isinstance(id, int):
                offset = chip.offset_of(id)
                if offset is not None:
                    return offset
                if not id.isdigit():
                    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
                id = int(id)
            if id >= len(chip.lines):
                raise ValueError("line offset of out range")
            return id

        def get_line_info(self, line: Union[int, str]) -> LineInfo:
            sim_line = self._chip().lines[self.line_offset_from_id(line)]
            return LineInfo(
                sim_line.offset,
                sim_line.name,
                sim_line.consumer is not None,
                sim_line.consumer or "",
                Direction.OUTPUT if sim_line.output else Direction.INPUT,
                sim_line.active_low,
                Bias.AS_IS,
                Drive.PUSH_PULL,
                Edge.NONE,
                Clock.MONOTONIC,
                False,
                timedelta(),
            )

        def request_lines(
            self,
            config: Dict[Any, Optional[LineSettings]],
            consumer: Optional[str] = None,
            event_buffer_size: Optional[int] = None,
            output_values: Optional[Dict[Union[int, str], Value]] = None,
        ) -> LineRequest:
            chip = self._chip()
            offsets: List[int] = []
            requested: List[Union[int, str]] = []
            with sim.lock:
                for key in config:
                    keys = [key] if isinstance(key, (int, str)) else list(key)
                    for one in keys:
                        offset = self.line_offset_from_id(one)
                        if chip.lines[offset].consumer is not None:
                            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
                        offsets.append(offset)
                        requested.append(one)
                for key, settings in config.items():
                    for one in [key] if isinstance(key, (int, str)) else list(key):
                        line = chip.lines[self.line_offset_from_id(one)]
                        given = settings or LineSettings()
                        line.consumer = consumer or "?"
                        line.settings = given
                        line.active_low = given.active_low
                        line.output = given.direction == Direction.OUTPUT
                        if line.output:
                            line.level = (given.output_value == Value.ACTIVE) != given.active_low
                            line.writes.append((time.monotonic(), line.level))
                return LineRequest(chip, offsets, requested)

    def request_lines(
        path: str,
        config: Dict[Any, Optional[LineSettings]],
        consumer: Optional[str] = None,
        event_buffer_size: Optional[int] = None,
        output_values: Optional[Dict[Union[int, str], Value]] = None,
    ) -> LineRequest:
        with Chip(path) as chip:
            return chip.request_lines(
                config=config,
                consumer=consumer,
                event_buffer_size=event_buffer_size,
                output_values=output_values,
            )

    def is_gpiochip_device(path: str) -> bool:
        return path in sim.chips

    gpiod.line = line_mod  # type: ignore[attr-defined]
    for name, value in {
        "Chip": Chip,
        "ChipInfo": ChipInfo,
        "LineInfo": LineInfo,
        "LineSettings": LineSettings,
        "LineRequest": LineRequest,
        "EdgeEvent": EdgeEvent,
        "ChipClosedError": ChipClosedError,
        "RequestReleasedError": RequestReleasedError,
        "request_lines": request_lines,
        "is_gpiochip_device": is_gpiochip_device,
        "api_version": "2.3",
        "__version__": "2.5.0-fake",
    }.items():
        setattr(gpiod, name, value)
    return gpiod


# -- libgpiod v1: python3-libgpiod ----------------------------------------------------------------------------


def gpiod_v1(sim: GpioSim, bias_flags: bool = True) -> ModuleType:
    """A libgpiod v1 ``gpiod`` module over ``sim``; ``bias_flags=False`` is libgpiod 1.4 (before bias)."""
    gpiod = ModuleType("gpiod")
    constants = {
        "LINE_REQ_DIR_AS_IS": 1,
        "LINE_REQ_DIR_IN": 2,
        "LINE_REQ_DIR_OUT": 3,
        "LINE_REQ_EV_FALLING_EDGE": 4,
        "LINE_REQ_EV_RISING_EDGE": 5,
        "LINE_REQ_EV_BOTH_EDGES": 6,
        "LINE_REQ_FLAG_OPEN_DRAIN": 1,
        "LINE_REQ_FLAG_OPEN_SOURCE": 2,
        "LINE_REQ_FLAG_ACTIVE_LOW": 4,
    }
    if bias_flags:
        constants.update(
            {
                "LINE_REQ_FLAG_BIAS_DISABLE": 8,
                "LINE_REQ_FLAG_BIAS_PULL_DOWN": 16,
                "LINE_REQ_FLAG_BIAS_PULL_UP": 32,
            }
        )
    for name, value in constants.items():
        setattr(gpiod, name, value)

    class LineEvent:
        RISING_EDGE = 1
        FALLING_EDGE = 2

        def __init__(self, type: int, source: Line) -> None:
            now = time.monotonic_ns()
            self.type = type
            self.sec = now // 1_000_000_000
            self.nsec = now % 1_000_000_000
            self.source = source

    class Line:
        DIRECTION_INPUT = 1
        DIRECTION_OUTPUT = 2
        ACTIVE_HIGH = 1
        ACTIVE_LOW = 2

        def __init__(self, chip: Chip, sim_line: SimLine) -> None:
            self._owner = chip
            self._line = sim_line
            self._edges: Optional[_EdgeFd] = None
            self._requested = False

        def owner(self) -> Chip:
            return self._owner

        def offset(self) -> int:
            return self._line.offset

        def name(self) -> Optional[str]:
            return self._line.name or None

        def consumer(self) -> Optional[str]:
            return self._line.consumer

        def direction(self) -> int:
            return self.DIRECTION_OUTPUT if self._line.output else self.DIRECTION_INPUT

        def active_state(self) -> int:
            return self.ACTIVE_LOW if self._line.active_low else self.ACTIVE_HIGH

        def is_used(self) -> bool:
            return self._line.consumer is not None

        def is_requested(self) -> bool:
            return self._requested

        def request(self, consumer: str, type: int = 1, flags: int = 0, default_val: int = 0) -> None:
            with sim.lock:
                if self._line.consumer is not None:
                    raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
                line = self._line
                line.consumer = consumer
                line.active_low = bool(flags & gpiod.LINE_REQ_FLAG_ACTIVE_LOW)
                line.output = type == gpiod.LINE_REQ_DIR_OUT
                line.settings = {"type": type, "flags": flags}
                if line.output:
                    line.level = bool(default_val) != line.active_low
                    line.writes.append((time.monotonic(), line.level))
                if type in (4, 5, 6):
                    self._edges = _EdgeFd()
                    line.watchers.append(self._on_edge)
                self._requested = True

        def _on_edge(self, line: SimLine, level: bool) -> None:
            if self._edges is not None:
                kind = LineEvent.RISING_EDGE if line.logical else LineEvent.FALLING_EDGE
                self._edges.push(LineEvent(kind, self))

        def _check(self) -> None:
            if not self._requested:
                raise OSError(errno.EPERM, "line not requested")

        def get_value(self) -> int:
            self._check()
            with sim.lock:
                return int(self._line.logical)

        def set_value(self, value: int) -> None:
            self._check()
            with sim.lock:
                if not self._line.output:
                    raise OSError(errno.EPERM, "line is not an output")
                self._line.level = bool(value) != self._line.active_low
                self._line.writes.append((time.monotonic(), self._line.level))

        def event_get_fd(self) -> int:
            if self._edges is None:
                raise OSError(errno.EPERM, "line not requested for events")
            return self._edges.read_fd

        def event_wait(self, sec: int = 0, nsec: int = 0) -> bool:
            import select

            return bool(select.select([self.event_get_fd()], [], [], sec + nsec / 1e9)[0])

        def event_read(self) -> LineEvent:
            if self._edges is None:
                raise OSError(errno.EPERM, "line not requested for events")
            events = self._edges.pop_all(1)
            if not events:
                raise OSError(errno.EAGAIN, "a v1 event_read blocks here on a real line")
            return events[0]

        def release(self) -> None:
            with sim.lock:
                if not self._requested:
                    return
                self._line.consumer = None
                self._line.settings = None
                if self._edges is not None:
                    self._line.watchers.remove(self._on_edge)
                    self._edges.close()
                    self._edges = None
                self._requested = False

    class Chip(_ChipHandle):
        OPEN_LOOKUP = 1
        OPEN_BY_NAME = 2
        OPEN_BY_PATH = 3
        OPEN_BY_LABEL = 4
        OPEN_BY_NUMBER = 5

        def __init__(self, descr: str, how: int = 1) -> None:
            super().__init__(sim, descr)
            self._lines: Dict[int, Line] = {}

        def name(self) -> str:
            return os.path.basename(self._chip().path)

        def label(self) -> str:
            return self._chip().label

        def num_lines(self) -> int:
            return len(self._chip().lines)

        def get_line(self, offset: int) -> Line:
            chip = self._chip()
            if offset >= len(chip.lines):
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
            return self._lines.setdefault(offset, Line(self, chip.lines[offset]))

        def find_line(self, name: str) -> Optional[Line]:
            offset = self._chip().offset_of(name)
            return None if offset is None else self.get_line(offset)

    def version_string() -> str:
        return "1.6.3-fake" if bias_flags else "1.4.1-fake"

    for name, value in {
        "Chip": Chip,
        "Line": Line,
        "LineEvent": LineEvent,
        "version_string": version_string,
    }.items():
        setattr(gpiod, name, value)
    return gpiod


# -- Jetson.GPIO ------------------------------------------------------------------------------------------------


def jetson_gpio(sim: GpioSim, chip_path: str = "/dev/gpiochip0") -> ModuleType:
    """A ``Jetson.GPIO`` module over one chip of ``sim``: BOARD/BCM pin N is offset N, names are line names."""
    gpio = ModuleType("Jetson.GPIO")
    constants = {
        "BOARD": 10,
        "BCM": 11,
        "TEGRA_SOC": 1000,
        "CVM": 1001,
        "PUD_OFF": 20,
        "PUD_DOWN": 21,
        "PUD_UP": 22,
        "HIGH": 1,
        "LOW": 0,
        "RISING": 31,
        "FALLING": 32,
        "BOTH": 33,
        "UNKNOWN": -1,
        "OUT": 0,
        "IN": 1,
    }
    for name, value in constants.items():
        setattr(gpio, name, value)
    state: Dict[str, Any] = {"mode": None, "setup": {}, "warnings": True}

    def _line(channel: Union[int, str]) -> SimLine:
        if state["mode"] is None:
            raise RuntimeError("Please set pin numbering mode using GPIO.setmode(GPIO.BOARD), ...")
        chip = sim.chip(chip_path)
        if isinstance(channel, str):
            offset = chip.offset_of(channel)
            if offset is None:
                raise ValueError(f"Channel {channel} is invalid")
            return chip.lines[offset]
        if channel >= len(chip.lines):
            raise ValueError(f"Channel {channel} is invalid")
        return chip.lines[channel]

    def setwarnings(value: bool) -> None:
        state["warnings"] = bool(value)

    def setmode(mode: int) -> None:
        if state["mode"] and mode != state["mode"]:
            raise ValueError("A different mode has already been set!")
        state["mode"] = mode

    def getmode() -> Optional[int]:
        return state["mode"]

    def setup(
        channels: Any,
        direction: int,
        pull_up_down: int = 20,
        initial: Optional[int] = None,
        consumer: str = "Jetson-gpio",
    ) -> None:
        with sim.lock:
            for channel in channels if isinstance(channels, (list, tuple)) else [channels]:
                line = _line(channel)
                if line.consumer is not None and channel not in state["setup"]:
                    raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
                line.consumer = consumer
                line.output = direction == gpio.OUT
                line.active_low = False
                if line.output:
                    line.level = bool(
                        gpio.HIGH if initial is None else initial
                    )  # Jetson.GPIO: HIGH by default
                    line.writes.append((time.monotonic(), line.level))
                state["setup"][channel] = direction

    def output(channels: Any, values: Any) -> None:
        with sim.lock:
            for channel in channels if isinstance(channels, (list, tuple)) else [channels]:
                if state["setup"].get(channel) != gpio.OUT:
                    raise RuntimeError("The GPIO channel has not been set up as an OUTPUT")
                line = _line(channel)
                line.level = bool(values)
                line.writes.append((time.monotonic(), line.level))

    def input(channel: Union[int, str]) -> int:
        if channel not in state["setup"]:
            raise RuntimeError("You must setup() the GPIO channel first")
        with sim.lock:
            return int(_line(channel).level)

    def cleanup(channel: Any = None) -> None:
        with sim.lock:
            channels = (
                list(state["setup"])
                if channel is None
                else channel
                if isinstance(channel, (list, tuple))
                else [channel]
            )
            for one in channels:
                if one in state["setup"]:
                    _line(one).consumer = None
                    del state["setup"][one]
            if channel is None:
                state["mode"] = None

    def add_event_detect(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the door polls; it must not use add_event_detect")

    for name, value in {
        "setwarnings": setwarnings,
        "setmode": setmode,
        "getmode": getmode,
        "setup": setup,
        "output": output,
        "input": input,
        "cleanup": cleanup,
        "add_event_detect": add_event_detect,
        "VERSION": "2.1.13-fake",
    }.items():
        setattr(gpio, name, value)
    return gpio


def door_sim() -> GpioSim:
    """Two chips: ``/dev/gpiochip0`` (64 lines; 12 RELAY, 13 DOOR, 14 REX) and ``/dev/gpiochip1`` (16)."""
    sim = GpioSim()
    sim.add_chip("/dev/gpiochip0", 64, {12: "RELAY", 13: "DOOR", 14: "REX"})
    sim.add_chip("/dev/gpiochip1", 16)
    return sim


def door_config(base: Mapping[str, Any], *layers: Mapping[str, Any], **door: Any) -> Any:
    """A validated ``[door]``: ``base``, then ``layers`` and ``door`` merged over it (tables key by key)."""
    from appliance.config_load import validate_config

    data: Dict[str, Any] = {
        key: dict(value) if isinstance(value, dict) else value for key, value in base.items()
    }
    for layer in (*layers, door):
        for key, value in layer.items():
            merge = isinstance(value, dict) and isinstance(data.get(key), dict)
            data[key] = {**data[key], **value} if merge else value
    return validate_config({"door": data}).door


#: Set (to anything) in a daemon subprocess's environment, with ``tests/fake_site`` on its
#: ``PYTHONPATH``: its ``import gpiod`` finds the 2.x double over :func:`door_sim`.
ENVIRONMENT = "FACE_APPLIANCE_FAKE_GPIO"
#: Optionally, the path of a FIFO through which the test drives the subprocess's inputs
#: (:func:`drive_inputs`): lines ``CHIP OFFSET LEVEL``, e.g. ``/dev/gpiochip0 15 1``.
CONTROL_ENVIRONMENT = "FACE_APPLIANCE_FAKE_GPIO_CONTROL"


def install_from_environment() -> None:
    """At interpreter start (``tests/fake_site/sitecustomize.py``): the ``gpiod`` 2.x double over
    :func:`door_sim` for a daemon subprocess, whose door is then seen through its MQTT door events and
    ``…/state`` (no GPIO hardware here); with :data:`CONTROL_ENVIRONMENT`, its inputs follow what the
    test writes to that FIFO."""
    import sys

    sim = door_sim()
    sys.modules["gpiod"] = gpiod_v2(sim)
    control = os.environ.get(CONTROL_ENVIRONMENT)
    if control:
        threading.Thread(
            target=drive_inputs, args=(sim, control), name="fake-gpio-control", daemon=True
        ).start()


def drive_inputs(sim: GpioSim, fifo: str) -> None:
    """Set ``sim``'s input levels from the lines ``CHIP OFFSET LEVEL`` written to ``fifo`` (the
    subprocess's side of a test's hand on a switch); reopens it after each writer closes."""
    while True:
        with open(fifo, encoding="ascii") as commands:  # blocks until the test opens it for writing
            for line in commands:
                chip, offset, level = line.split()
                sim.set_input(chip, int(offset), level == "1")


def set_input_through(fifo: str, chip: str, offset: int, level: bool) -> None:
    """The test's side of :func:`drive_inputs`: one input of the subprocess's simulated chips."""
    with open(fifo, "w", encoding="ascii") as control:
        control.write(f"{chip} {offset} {int(level)}\n")


def install(monkeypatch: Any, backend: str, sim: GpioSim, **options: Any) -> ModuleType:
    """Put the double of ``backend``'s library where ``import`` finds it (undone by ``monkeypatch``)."""
    import sys

    if backend == "jetson-gpio":
        module = jetson_gpio(sim, **options)
        monkeypatch.setitem(sys.modules, "Jetson", ModuleType("Jetson"))
        monkeypatch.setitem(sys.modules, "Jetson.GPIO", module)
        return module
    module = gpiod_v2(sim) if backend == "gpiod" else gpiod_v1(sim, **options)
    monkeypatch.setitem(sys.modules, "gpiod", module)
    return module
