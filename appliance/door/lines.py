"""The door's lines behind one small interface, and choosing and opening the back-end that drives them.

A :class:`DoorLines` sets the relay, reads the inputs (logical levels: ``True`` is *active*, i.e. relay
energised, door open, exit button pressed) and waits for edge events. Edges only wake the owner thread;
it then reads the levels and debounces them itself (:mod:`appliance.door.logic`), so a lost or
bouncing edge never leaves a wrong state behind.

Back-ends, each imported only when chosen:

* ``gpiod``: libgpiod v2's bindings (PyPI ``gpiod`` >= 2.2), :mod:`appliance.door.gpiod2`;
* ``gpiod1``: libgpiod v1's bindings (apt ``python3-libgpiod``), :mod:`appliance.door.gpiod1`;
* ``jetson-gpio``: NVIDIA's Jetson.GPIO (pins, polled), :mod:`appliance.door.jetson_gpio`.
"""

from __future__ import annotations

import abc
import importlib
import logging
import select
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple, Union, cast

from .errors import DoorError
from .settings import DoorInputConfig

if TYPE_CHECKING:
    from .settings import DoorConfig

logger = logging.getLogger(__name__)

#: The consumer name the lines are requested under (``gpioinfo`` shows it).
CONSUMER = "face-appliance"

RELAY = "relay"
CONTACT = "contact"
EXIT = "exit"
TAMPER = "tamper"

_GPIOD2_HINT = (
    "pip install 'gpiod>=2.2' (the face-appliance[door] extra; aarch64 wheels exist for Python 3.9 and "
    "later); on Python 3.8 (JetPack 5) use door.backend = 'gpiod1' (apt python3-libgpiod) or "
    "'jetson-gpio'"
)
_GPIOD1_HINT = (
    "apt install python3-libgpiod and create the virtualenv with --system-site-packages (libgpiod v1's "
    "binding is not on PyPI: PyPI's `gpiod` 1.x is an unrelated pure-Python package, uninstall it)"
)


@dataclass(frozen=True)
class LineSpec:
    """One wired line, resolved from ``[door]``.

    Attributes:
        role: ``relay``, ``contact``, ``exit`` or ``tamper``.
        chip: the chip's device path (``gpiod``, ``gpiod1``); unused by ``jetson-gpio``.
        chip_key: the configuration key the chip came from (``door.relay.chip`` or ``door.chip``).
        line: the offset or line name (a pin number or name for ``jetson-gpio``).
        active_low: the line is active at a low level.
        output: the relay; inputs are edge-watched.
        bias: ``as-is``, ``disabled``, ``pull-up`` or ``pull-down`` (inputs).
        drive: ``push-pull``, ``open-drain`` or ``open-source`` (the relay).
        debounce_s: the input's debounce period (asked of the kernel where the back-end can).
    """

    role: str
    chip: str
    chip_key: str
    line: Union[int, str]
    active_low: bool
    output: bool = False
    bias: str = "as-is"
    drive: str = "push-pull"
    debounce_s: float = 0.0

    @property
    def key(self) -> str:
        """The configuration key of the line (``door.relay.line``)."""
        return f"door.{self.role}.line"

    def describe(self) -> str:
        """``line 12 on /dev/gpiochip0`` / ``line 'RELAY' on …``."""
        return f"line {self.line!r} on {self.chip}" if self.chip else f"pin {self.line!r}"


def line_specs(config: DoorConfig) -> List[LineSpec]:
    """The wired lines of ``config``, the relay first."""
    specs: List[LineSpec] = []
    jetson = config.backend == "jetson-gpio"
    for role, section in config.wired():
        line = cast(Union[int, str], section.line)  # wired() keeps the set lines only
        chip = "" if jetson else (section.chip or config.chip)
        chip_key = f"door.{role}.chip" if section.chip else "door.chip"
        if isinstance(section, DoorInputConfig):
            specs.append(
                LineSpec(
                    role,
                    chip,
                    chip_key,
                    line,
                    section.active_low,
                    bias=section.bias,
                    debounce_s=section.debounce_s,
                )
            )
        else:
            specs.append(LineSpec(role, chip, chip_key, line, section.active_low, True, drive=section.drive))
    return specs


# -- the interface --------------------------------------------------------------------------------------------


class DoorLines(abc.ABC):
    """The door's requested lines. Used by one thread only (the door controller's owner thread).

    Subclasses request every line in ``__init__`` (raising :class:`DoorError` with the key) and
    release them in :meth:`close`.
    """

    #: The back-end's name, as in ``door.backend``.
    backend: str = ""
    #: Seconds between two reads for a back-end without edge events; ``None``: it has them.
    poll_interval: Optional[float] = None

    @abc.abstractmethod
    def set_relay(self, on: bool) -> None:
        """Energise (``True``) or release the relay (its logical level; active-low handled below)."""

    @abc.abstractmethod
    def read_inputs(self) -> Dict[str, bool]:
        """The wired inputs' logical levels: ``{"contact": door open, "exit": pressed}``."""

    def event_fds(self) -> List[int]:
        """File descriptors that become readable on an input edge (none for a polled back-end)."""
        return []

    def read_events(self, fds: Sequence[int]) -> int:
        """Read (and drop) the pending edge events of the readable ``fds``; returns how many."""
        return 0

    @abc.abstractmethod
    def close(self) -> None:
        """Release every line; idempotent."""

    def wait(self, timeout: float, wake_fd: int) -> bool:
        """Block until an input edge, ``wake_fd`` readable, or ``timeout`` seconds (shorter when polled).

        Returns:
            Whether edge events were read (the caller reads the levels either way).
        """
        fds = self.event_fds()
        if self.poll_interval is not None:
            timeout = min(timeout, self.poll_interval)
        ready, _, _ = select.select([wake_fd, *fds], [], [], max(0.0, timeout))
        edges = [fd for fd in ready if fd != wake_fd]
        return bool(edges) and self.read_events(edges) > 0


# -- choosing and opening a back-end ---------------------------------------------------------------------------


def gpiod_api(module: ModuleType) -> Optional[str]:
    """Which libgpiod binding ``module`` is: ``gpiod`` (v2), ``gpiod1`` (v1) or ``None`` (neither)."""
    if hasattr(module, "request_lines") and hasattr(module, "LineSettings"):
        return "gpiod"
    if hasattr(module, "Chip") and hasattr(module, "LINE_REQ_EV_BOTH_EDGES"):
        return "gpiod1"
    return None


def _describe_module(module: ModuleType) -> str:
    version = getattr(module, "__version__", None) or getattr(module, "version_string", lambda: "?")()
    return f"{getattr(module, '__file__', '?')} (version {version})"


def import_gpiod(wanted: Optional[str]) -> Tuple[ModuleType, str]:
    """Import ``gpiod`` and check it is the binding ``wanted`` (``gpiod``/``gpiod1``; ``None``: either).

    Returns:
        The module and which binding it is (``gpiod`` or ``gpiod1``).

    Raises:
        DoorError: it is not installed, or it is another binding than ``wanted``.
    """
    try:
        module = importlib.import_module("gpiod")
    except ImportError as err:
        if wanted == "gpiod1":
            hint = _GPIOD1_HINT
        elif wanted == "gpiod":
            hint = _GPIOD2_HINT
        else:
            hint = f"{_GPIOD2_HINT}; or {_GPIOD1_HINT}"
        python = f"{sys.version_info[0]}.{sys.version_info[1]}"
        raise DoorError(
            f"door.backend = {wanted or 'auto'!r}: `import gpiod` failed on Python {python} ({err}); {hint}"
        ) from err
    found = gpiod_api(module)
    if found is None:
        raise DoorError(
            f"door.backend = {wanted or 'auto'!r}: the `gpiod` module at {_describe_module(module)} is "
            f"neither libgpiod v2 nor libgpiod v1 (on Python 3.8 `pip install gpiod` installs the "
            f"unrelated pure-Python gpiod 1.5): pip uninstall gpiod, then {_GPIOD2_HINT}"
        )
    if wanted is not None and found != wanted:
        other = "libgpiod v2 (gpiod 2.x)" if found == "gpiod" else "libgpiod v1"
        raise DoorError(
            f"door.backend = {wanted!r}: `import gpiod` finds {other} at {_describe_module(module)}; set "
            f"door.backend = {found!r} (or 'auto')"
        )
    return module, found


def resolve_backend(config: DoorConfig) -> str:
    """The back-end ``config`` names, ``auto`` resolved by importing ``gpiod``.

    Raises:
        DoorError: ``auto`` and no libgpiod binding is importable.
    """
    if config.backend != "auto":
        return config.backend
    return import_gpiod(None)[1]


def open_lines(config: DoorConfig) -> DoorLines:
    """Request ``config``'s lines through its back-end (relay released, inputs edge-watched).

    Raises:
        DoorError: the back-end is missing, or a chip or line cannot be had (the key is named).
    """
    backend = resolve_backend(config)
    specs = line_specs(config)
    logger.debug("door: opening %s through %s", ", ".join(spec.describe() for spec in specs), backend)
    if backend == "gpiod":
        from .gpiod2 import Gpiod2Lines

        return Gpiod2Lines(specs, import_gpiod("gpiod")[0])
    if backend == "gpiod1":
        from .gpiod1 import Gpiod1Lines

        return Gpiod1Lines(specs, import_gpiod("gpiod1")[0])
    from .jetson_gpio import JetsonGpioLines, import_jetson_gpio

    return JetsonGpioLines(specs, import_jetson_gpio(), config.jetson_pin_mode, config.poll_interval_s)


__all__ = [
    "CONSUMER",
    "CONTACT",
    "EXIT",
    "RELAY",
    "TAMPER",
    "DoorLines",
    "LineSpec",
    "gpiod_api",
    "import_gpiod",
    "line_specs",
    "open_lines",
    "resolve_backend",
]
