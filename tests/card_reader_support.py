"""A real card-and-keypad reader for tests: libosdp's own peripheral device on a ``socat`` pty pair.

The appliance's credential reader (:mod:`appliance.osdp.card_reader`) is the control panel on one end
of :func:`tests.osdp_support.pty_pair`; :class:`KeypadReader` runs libosdp's ``osdp.PeripheralDevice``
— the real protocol, the real Secure Channel — on the other end, through the same
:class:`appliance.osdp.channel.SerialChannel`: it reports card reads and key presses as a reader does
and records the LED and buzzer commands it is sent.

``osdp`` (libosdp's Python wrapper) imports on Python 3.9+ only; these helpers serve the integration
tests, which run on the project's main Python.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from appliance.osdp.channel import SerialChannel
from tests.osdp_support import KEY, osdp_module

#: The OSDP key codes of ``osdp_KEYPAD`` (SIA OSDP 2.2): digits as ASCII, ``*`` as DEL, ``#`` as CR.
KEY_CODES = {"*": 0x7F, "#": 0x0D, **{digit: ord(digit) for digit in "0123456789"}}


def key_bytes(keys: str) -> bytes:
    """``"12*5#"`` as the reader reports it."""
    return bytes(KEY_CODES[key] for key in keys)


class KeypadReader:
    """libosdp's peripheral device on ``port``: one card reader with a keypad, an LED and a buzzer.

    Args:
        port: the reader's end of the pty pair.
        address: its OSDP address.
        scbk: its Secure Channel key (``None``: install mode, the well-known SCBK-D).
    """

    def __init__(self, port: str, address: int, scbk: Optional[bytes] = KEY, baud_rate: int = 9600) -> None:
        osdp = osdp_module()
        self.osdp = osdp
        self.channel = SerialChannel(port, baud_rate)
        self.channel.open()
        self._lock = threading.Lock()
        #: The commands the control panel sent, in order (libosdp's command dicts).
        self.commands: List[Dict[str, Any]] = []
        capabilities = osdp.PDCapabilities(
            [
                (osdp.Capability.CardDataFormat, 1, 0),
                (osdp.Capability.LEDControl, 1, 1),
                (osdp.Capability.AudibleControl, 1, 1),
            ]
        )
        self.pd = osdp.PeripheralDevice(
            osdp.PDInfo(address, self.channel, scbk=scbk),
            capabilities,
            log_level=osdp.LogLevel.Emergency,
            command_handler=self._on_command,
        )
        self.pd.start()

    def _on_command(self, command: Mapping[str, Any]) -> Tuple[int, None]:
        # A fresh tuple per call: libosdp's C callback drops a reference to its second item that it
        # never took (see appliance.osdp.reader.OsdpReader._on_command).
        status = 0
        with self._lock:
            self.commands.append(dict(command))
        return (status, None)

    def secure(self) -> bool:
        """The Secure Channel with the control panel is up."""
        return bool(self.pd.is_sc_active())

    def card(self, data: bytes, bits: int) -> None:
        """Report a card read: ``bits`` bits of ``data`` in OSDP's raw Wiegand format."""
        self._submit(
            {
                "event": self.osdp.Event.CardRead,
                "reader_no": 0,
                "format": self.osdp.CardFormat.Wiegand,
                "direction": 0,
                "length": bits,
                "data": data,
            }
        )

    def keys(self, keys: str) -> None:
        """Report key presses (``"1234#"``) in one ``osdp_KEYPAD`` reply."""
        self._submit({"event": self.osdp.Event.KeyPress, "reader_no": 0, "data": key_bytes(keys)})

    def _submit(self, event: Dict[str, Any]) -> None:
        assert self.pd.submit_event(event), f"libosdp refused to queue {event}"

    def of(self, command: int) -> List[Dict[str, Any]]:
        """The commands received of one kind (``osdp.Command.LED``, …)."""
        with self._lock:
            return [c for c in self.commands if c.get("command") == command]

    def wait_for(self, condition: Callable[[], bool], what: str = "condition", timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout} s; commands received: {self.commands}")
            time.sleep(0.02)

    def next_led(self, seen: int, timeout: float = 15.0) -> Dict[str, Any]:
        """The LED command after the first ``seen`` ones (waiting for it)."""
        led = self.osdp.Command.LED
        self.wait_for(lambda: len(self.of(led)) > seen, f"LED command #{seen + 1}", timeout)
        return self.of(led)[seen]

    def close(self) -> None:
        self.pd.teardown()
        self.channel.close()

    def __enter__(self) -> KeypadReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
