"""A real OSDP bus for tests: a ``socat`` pseudo-terminal pair and libosdp's control panel on one end.

Nothing is doubled: the appliance's reader (``appliance.osdp``) opens one end of the pair as its serial
port; :class:`Panel` runs libosdp's own ``osdp.ControlPanel`` — the real protocol, the real Secure
Channel — over the other end, through the same :class:`appliance.osdp.channel.SerialChannel`.

``osdp`` (libosdp's Python wrapper) imports on Python 3.9+ only; these helpers serve the integration
tests, which run on the project's main Python.
"""

from __future__ import annotations

import contextlib
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

import pytest

from appliance.osdp.channel import SerialChannel

#: libosdp's own default key for install mode is SCBK-D; these are test keys.
KEY = bytes.fromhex("00112233445566778899aabbccddeeff")
OTHER_KEY = bytes.fromhex("ffeeddccbbaa99887766554433221100")


def osdp_module() -> Any:
    """libosdp's ``osdp`` wrapper; the test fails (is not skipped) when libosdp is missing: CI installs it."""
    try:
        import osdp
    except ImportError as err:
        pytest.fail(f"libosdp is not installed ({err}): pip install -e '.[osdp]'", pytrace=False)
    return osdp


@contextlib.contextmanager
def pty_pair(folder: Path) -> Iterator[Tuple[str, str]]:
    """Two linked pseudo-terminals (``socat``): ``(reader end, panel end)`` paths; stopped on exit.

    Fails (does not skip) when ``socat`` is missing: CI installs it.
    """
    if shutil.which("socat") is None:
        pytest.fail("socat is not installed (apt-get install socat)", pytrace=False)
    reader_end, panel_end = folder / "osdp-reader-tty", folder / "osdp-panel-tty"
    process = subprocess.Popen(
        ["socat", f"pty,raw,echo=0,link={reader_end}", f"pty,raw,echo=0,link={panel_end}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not (reader_end.exists() and panel_end.exists()):
            if time.monotonic() > deadline or process.poll() is not None:
                pytest.fail(f"socat did not create {reader_end} and {panel_end}")
            time.sleep(0.02)
        yield str(reader_end), str(panel_end)
    finally:
        process.terminate()
        process.wait(timeout=10)


def osdp_threads() -> List[str]:
    """The names of the OSDP threads still alive (``osdp-…``: a closed reader leaves none)."""
    return [t.name for t in threading.enumerate() if t.name.startswith("osdp-") and t.is_alive()]


def write_key(path: Path, key: bytes) -> Path:
    """An SCBK file as the appliance reads it (32 hex digits, mode 0600)."""
    path.write_text(key.hex() + "\n")
    path.chmod(0o600)
    return path


class Panel:
    """libosdp's control panel for one reader, on ``port``.

    Args:
        port: the panel's end of the pty pair.
        address: the reader's address.
        scbk: the Secure Channel key. When the reader does not take it, libosdp's panel retries with
            the install key SCBK-D and, when that works (a reader in install mode), sends ``scbk`` to
            the reader with ``osdp_KEYSET`` and restarts the Secure Channel with it: commissioning.
    """

    def __init__(self, port: str, address: int, scbk: Optional[bytes] = KEY, baud_rate: int = 9600) -> None:
        osdp = osdp_module()
        self.osdp = osdp
        self.address = address
        self.channel = SerialChannel(port, baud_rate)
        self.channel.open()
        self._events: queue.Queue = queue.Queue()  # of the event dicts libosdp gives
        #: The reader's status reports (``osdp_LSTATR`` …), in order.
        self.statuses: List[Dict[str, Any]] = []
        self.cp = osdp.ControlPanel(
            [osdp.PDInfo(address, self.channel, scbk=scbk)],
            log_level=osdp.LogLevel.Emergency,
            event_handler=self._on_event,
        )
        self.cp.start()

    def _on_event(self, pd: int, event: Dict[str, Any]) -> int:
        if event.get("event") == self.osdp.Event.Status:  # kept apart: card_reads() drains the rest
            self.statuses.append(event)
        else:
            self._events.put(event)
        return 0

    def secure(self) -> bool:
        """The Secure Channel with the reader is up."""
        return bool(self.cp.is_sc_active(self.address))

    def online(self) -> bool:
        return bool(self.cp.is_online(self.address))

    def wait(self, condition: Callable[[], bool], timeout: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.05)
        return condition()

    def card_reads(self, wait_s: float) -> List[Dict[str, Any]]:
        """Every card read the panel receives within ``wait_s`` seconds (it waits the whole time)."""
        reads: List[Dict[str, Any]] = []
        deadline = time.monotonic() + wait_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return reads
            try:
                event = self._events.get(timeout=left)
            except queue.Empty:
                return reads
            if event.get("event") == self.osdp.Event.CardRead:
                reads.append(event)

    def led(self, color: int, temporary: bool = True) -> None:
        """An ``osdp_LED`` command: ``color`` on (the panel's answer to a card read)."""
        command: Dict[str, Any] = {
            "command": self.osdp.Command.LED,
            "reader": 0,
            "led_number": 0,
            "control_code": 2 if temporary else 1,
            "on_count": 10,
            "off_count": 0,
            "on_color": color,
            "off_color": self.osdp.CommandLEDColor.Black,
            "temporary": temporary,
        }
        if temporary:
            command["timer_count"] = 30
        self.submit(command)

    def buzzer(self) -> None:
        self.submit(
            {
                "command": self.osdp.Command.Buzzer,
                "reader": 0,
                "control_code": 2,
                "on_count": 2,
                "off_count": 2,
                "rep_count": 1,
            }
        )

    def text(self, text: str) -> None:
        self.submit(
            {
                "command": self.osdp.Command.Text,
                "reader": 0,
                "control_code": 1,
                "temp_time": 5,
                "offset_row": 1,
                "offset_col": 1,
                "data": text,
            }
        )

    def set_key(self, key: bytes) -> None:
        """``osdp_KEYSET`` sent by hand (a key rotation), over the current Secure Channel."""
        self.submit({"command": self.osdp.Command.Keyset, "type": 1, "data": key})

    def submit(self, command: Mapping[str, Any]) -> None:
        assert self.cp.submit_command(self.address, dict(command)), f"the panel refused to queue {command}"

    def close(self) -> None:
        self.cp.teardown()
        self.channel.close()

    def __enter__(self) -> Panel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DoorEvents:
    """The ``emit`` callback of a peripheral, recording ``(kind, details)`` (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: List[Tuple[str, Dict[str, Any]]] = []

    def __call__(self, kind: str, details: Mapping[str, Any]) -> None:
        with self._lock:
            self.events.append((kind, dict(details)))

    def kinds(self) -> List[str]:
        with self._lock:
            return [kind for kind, _ in self.events]

    def of(self, kind: str) -> List[Dict[str, Any]]:
        with self._lock:
            return [details for k, details in self.events if k == kind]

    def wait_for(self, kind: str, count: int = 1, timeout: float = 15.0) -> List[Dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.of(kind)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{count}× {kind} not emitted within {timeout} s; emitted: {self.kinds()}"
                )
            time.sleep(0.02)
        return self.of(kind)
