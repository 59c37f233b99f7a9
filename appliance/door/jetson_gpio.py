"""The door's lines through NVIDIA's Jetson.GPIO (``pip install Jetson.GPIO``: pure Python, any Python 3).

API used (Jetson.GPIO 2.1, RPi.GPIO style): ``setwarnings``, ``setmode(BOARD | BCM | TEGRA_SOC | CVM)``,
``setup(pin, OUT, initial=LOW | HIGH)`` (without ``initial`` an output starts HIGH), ``setup(pin, IN)``,
``output``, ``input``, ``cleanup(pins)``.

The inputs are *polled* every ``door.poll_interval_s`` instead of using ``add_event_detect``: in
Jetson.GPIO 2.1.13 ``add_event_detect`` closes the line handle that ``input()`` reads, sleeps a second
per call and runs its own thread per pin; the door needs levels, not callbacks, and a 20 ms poll is far
below a door's or a button's time scale. Jetson.GPIO cannot set pull resistors (it ignores
``pull_up_down``), so the configuration refuses a bias with this back-end.
"""

from __future__ import annotations

import errno
import importlib
import inspect
import logging
from types import ModuleType
from typing import Dict, List, Sequence, Union

from .errors import DoorError, line_busy_error
from .lines import CONSUMER, DoorLines, LineSpec

logger = logging.getLogger(__name__)


def import_jetson_gpio() -> ModuleType:
    """Import ``Jetson.GPIO`` (it checks the board and ``/dev/gpiochip0`` when imported).

    Raises:
        DoorError: not installed, or it refuses to load (not a Jetson, no access to the chip).
    """
    try:
        return importlib.import_module("Jetson.GPIO")
    except ImportError as err:
        raise DoorError(
            f"door.backend = 'jetson-gpio': Jetson.GPIO is not installed ({err}); pip install "
            f"Jetson.GPIO (the face-appliance[door] extra on Python 3.8), or choose door.backend = "
            f"'gpiod' / 'gpiod1'"
        ) from err
    except Exception as err:  # it raises RuntimeError / Exception from its import-time board checks
        raise DoorError(
            f"door.backend = 'jetson-gpio': Jetson.GPIO refused to load: {err}; it runs on a Jetson only, "
            f"as a user that may write /dev/gpiochip0 (its udev rule 99-gpio.rules and the `gpio` group)"
        ) from err


class JetsonGpioLines(DoorLines):
    """The door's pins through Jetson.GPIO, inputs polled.

    Args:
        specs: the wired lines; ``line`` is a pin in ``pin_mode`` numbering.
        gpio: the imported ``Jetson.GPIO`` module.
        pin_mode: ``BOARD``, ``BCM``, ``TEGRA_SOC`` or ``CVM``.
        poll_interval: seconds between two reads of the inputs.

    Raises:
        DoorError: the numbering mode or a pin is refused (the key is named).
    """

    backend = "jetson-gpio"

    def __init__(
        self, specs: Sequence[LineSpec], gpio: ModuleType, pin_mode: str, poll_interval: float
    ) -> None:
        self._gpio = gpio
        self.poll_interval = poll_interval
        self._specs: Dict[str, LineSpec] = {}
        self._pins: List[Union[int, str]] = []
        gpio.setwarnings(False)
        try:
            gpio.setmode(getattr(gpio, pin_mode))
        except ValueError as err:
            raise DoorError(
                f"door.jetson_pin_mode = {pin_mode!r}: Jetson.GPIO refused it ({err}); another part of this "
                f"process set a different numbering mode"
            ) from err
        try:
            for spec in specs:
                self._setup(spec, pin_mode)
        except BaseException:
            self.close()
            raise

    def _setup(self, spec: LineSpec, pin_mode: str) -> None:
        gpio = self._gpio
        # Jetson.GPIO 2.1 names the consumer (`gpioinfo` shows it); older releases have no such argument.
        named = {"consumer": CONSUMER} if "consumer" in inspect.signature(gpio.setup).parameters else {}
        try:
            if spec.output:
                gpio.setup(spec.line, gpio.OUT, initial=self._level(spec, False), **named)
            else:
                gpio.setup(spec.line, gpio.IN, **named)
        except OSError as err:
            if err.errno == errno.EBUSY:
                raise line_busy_error(spec, None) from err
            raise self._refused(spec, pin_mode, err) from err
        except (ValueError, RuntimeError) as err:
            raise self._refused(spec, pin_mode, err) from err
        self._specs[spec.role] = spec
        self._pins.append(spec.line)

    @staticmethod
    def _refused(spec: LineSpec, pin_mode: str, err: Exception) -> DoorError:
        return DoorError(
            f"{spec.key} = {spec.line!r}: Jetson.GPIO cannot set up this pin in {pin_mode} numbering ({err}); "
            f"check the board's header pin table, or whether the pin is a GPIO in its pinmux"
        )

    def _level(self, spec: LineSpec, active: bool) -> int:
        high = active != spec.active_low
        return int(self._gpio.HIGH if high else self._gpio.LOW)

    def set_relay(self, on: bool) -> None:
        """Set the relay's logical level."""
        spec = self._specs["relay"]
        self._gpio.output(spec.line, self._level(spec, on))

    def read_inputs(self) -> Dict[str, bool]:
        """The inputs' logical levels."""
        return {
            role: self._gpio.input(spec.line) == self._level(spec, True)
            for role, spec in self._specs.items()
            if role != "relay"
        }

    def close(self) -> None:
        """Give the pins back to Jetson.GPIO (``cleanup``); idempotent."""
        pins, self._pins = self._pins, []
        self._specs = {}
        if pins:
            try:
                self._gpio.cleanup(pins)
            except Exception as err:
                logger.warning("door: Jetson.GPIO cleanup of pins %s failed: %s", pins, err)


__all__ = ["JetsonGpioLines", "import_jetson_gpio"]
