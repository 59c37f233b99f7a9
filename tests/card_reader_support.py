"""A real card-and-keypad reader for tests: libosdp's own peripheral device on a ``socat`` pty pair.

The appliance's credential reader (:mod:`appliance.osdp.card_reader`) is the control panel on one end
of :func:`tests.osdp_support.pty_pair`; :class:`KeypadReader` runs libosdp's ``osdp.PeripheralDevice``
— the real protocol, the real Secure Channel — on the other end, through the same
:class:`appliance.osdp.channel.SerialChannel`: it reports card reads and key presses as a reader does
and records the LED and buzzer commands it is sent.

``osdp`` (libosdp's Python wrapper) imports on Python 3.9+ only; these helpers serve the integration
tests, which run on the project's main Python.

:class:`ReaderBus` puts several of them on one line (OSDP multi-drop): it owns the readers' end of the
pair and gives each reader a channel of its own that hears every byte the control panel sends.
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
        channel: its channel, instead of opening ``port`` (a :class:`ReaderBus` tap); closed with it.
    """

    def __init__(
        self,
        port: str,
        address: int,
        scbk: Optional[bytes] = KEY,
        baud_rate: int = 9600,
        channel: Optional[Any] = None,
    ) -> None:
        osdp = osdp_module()
        self.osdp = osdp
        self.address = address
        if channel is None:
            channel = SerialChannel(port, baud_rate)
            channel.open()
        self.channel = channel
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


class BusTap:
    """One reader's channel on a :class:`ReaderBus`, as libosdp's peripheral device calls it.

    ``read`` gives the bytes the control panel sent since (every reader hears every frame, as on a
    real RS-485 line, and libosdp's reader answers only its own address); ``write`` sends to the line;
    ``flush`` drops this reader's unread bytes only.
    """

    id = 0

    def __init__(self, bus: ReaderBus) -> None:
        self._bus = bus
        self.pending = bytearray()  # under the bus's lock

    def read(self, max_bytes: int) -> bytes:
        return self._bus._take(self, max_bytes)

    def write(self, data: bytes) -> int:
        return self._bus._write(data)

    def flush(self) -> None:
        self._bus._take(self, len(self.pending) + (1 << 16))

    def close(self) -> None:
        self._bus._detach(self)


class ReaderBus:
    """Several :class:`KeypadReader` on one line: the readers' end of the pty pair, owned here.

    Args:
        port: the readers' end of the pty pair.
    """

    def __init__(self, port: str, baud_rate: int = 9600) -> None:
        self.port = port
        self._line = SerialChannel(port, baud_rate)
        self._line.open()
        self._lock = threading.Lock()
        self._taps: List[BusTap] = []
        self.readers: List[KeypadReader] = []

    def reader(self, address: int, scbk: Optional[bytes] = KEY) -> KeypadReader:
        """A reader at ``address`` on the line (closed with the bus, or before by its ``close()``)."""
        tap = BusTap(self)
        with self._lock:
            self._taps.append(tap)
        reader = KeypadReader(self.port, address, scbk, channel=tap)
        self.readers.append(reader)
        return reader

    def _pump(self) -> None:
        """Hand what the panel sent to every tap (under the lock)."""
        while True:
            data = self._line.read(4096)
            if not data:
                return
            for tap in self._taps:
                tap.pending.extend(data)

    def _take(self, tap: BusTap, max_bytes: int) -> bytes:
        with self._lock:
            self._pump()
            data = bytes(tap.pending[:max_bytes])
            del tap.pending[:max_bytes]
            return data

    def _write(self, data: bytes) -> int:
        with self._lock:
            return self._line.write(data)

    def _detach(self, tap: BusTap) -> None:
        with self._lock:
            if tap in self._taps:
                self._taps.remove(tap)

    def close(self) -> None:
        """Stop every reader still running and close the line."""
        for reader in self.readers:
            if reader.pd.ctx is not None:
                reader.close()
        self._line.close()

    def __enter__(self) -> ReaderBus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
