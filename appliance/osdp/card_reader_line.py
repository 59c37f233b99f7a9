"""One RS-485 line of card readers: its serial port, libosdp's control panel that polls every reader on
it, and the one thread that owns both.

OSDP is a multi-drop bus (SIA OSDP 2.2): one control panel polls several readers on one line, each at
an address of its own, and talks to one at a time. :class:`CardReaderLine` is that panel for the
readers of ``[[credential_readers]]`` that name one ``port``: one ``osdp_sys.ControlPanel`` whose PD
infos each hold their reader's address, flags and key and the *same* channel object (libosdp then
takes turns on it, by the channel's id — :class:`~appliance.osdp.channel.SerialChannel`), and one
owner thread. Every :data:`~appliance.osdp.owner.TICK_S` that thread:

1. retires the readers closed while others on the line still run (their PD disabled, ``reader_offline``
   with the reason ``closed``);
2. has each reader show its latest queued decision (:meth:`CardReader._serve_feedback`);
3. calls libosdp's ``refresh()``, which polls the readers in turn: their card reads and key presses
   arrive in :meth:`CardReaderLine._on_event` with the reader's PD index, and go to that reader;
4. has each reader follow its own link (:meth:`CardReader._follow_link`: ``offline`` / ``online`` /
   ``secure``, the door events, the restart of a reader that stopped answering) and expire its
   partial PIN;
5. reopens the serial port after an I/O error: a port error is every reader's on the line, and each
   reports ``reader_offline`` with the reason ``port_error``.

A reader that stops answering holds the line for libosdp's reply timeout at each of its restarts
(2 s, then up to every 16 s), and otherwise disturbs nobody: the others' links, credentials and
feedback go on.

Everything per reader — the keypad entry, the feedback queue, the link and its door events, the
restart backoff, the counts of ``…/state`` — is the reader's (:class:`~appliance.osdp.card_reader.CardReader`,
one :class:`~appliance.peripherals.Peripheral` per reader id, as the daemon's hub expects); the line
holds what the readers share. The line opens when its first reader starts (with every reader of the
line whose key loads) and closes when its last running reader closes.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional

from ..peripherals import EmitDoorEvent
from . import binding
from .errors import OsdpError
from .owner import TICK_S, SerialOwner

if TYPE_CHECKING:
    from .card_reader import CardReader

logger = logging.getLogger(__name__)

#: The configuration key of a credential reader's port, in the messages.
PORT_KEY = "credential_reader.port"
#: libosdp's id of a card-reader line's channel: not 0, which libosdp's channel lock reads as "free".
LINE_CHANNEL_ID = 1

#: What the credential reader uses of ``osdp_sys`` (checked when it starts).
CP_CONSTANTS = (
    "FLAG_ENFORCE_SECURE",
    "EVENT_CARDREAD",
    "EVENT_KEYPRESS",
    "CMD_LED",
    "CMD_BUZZER",
    "LED_COLOR_NONE",
    "LED_COLOR_RED",
    "LED_COLOR_GREEN",
    "LED_COLOR_AMBER",
    "LOG_CRIT",
)
#: Methods of ``osdp_sys.ControlPanel`` the credential reader calls (those with a PD index take the
#: reader's place in the control panel's list).
CP_METHODS = (
    "refresh",
    "set_event_callback",
    "submit_command",
    "status",
    "sc_status",
    "disable_pd",
    "enable_pd",
    "is_pd_enabled",
)


def load_library() -> ModuleType:
    """``osdp_sys`` with every name the credential reader uses.

    Raises:
        OsdpError: libosdp is not installed, or lacks a name (an incompatible release).
    """
    try:
        module = importlib.import_module(binding.MODULE)
    except ImportError as err:
        raise OsdpError(
            f"credential_reader.enabled needs libosdp, which cannot be imported ({err}); {binding.INSTALL_HINT}"
        ) from None
    missing = [name for name in CP_CONSTANTS if not hasattr(module, name)]
    missing += [f"ControlPanel.{name}" for name in CP_METHODS if not hasattr(module.ControlPanel, name)]
    if missing:
        raise OsdpError(
            f"the installed libosdp lacks {', '.join(missing)}; install a 3.x release ({binding.INSTALL_HINT})"
        )
    return module


class CardReaderLine(SerialOwner):
    """The control panel of every card reader on one serial port; see the module docstring.

    Readers join it as they are made (:meth:`add`, in the configuration's order); :meth:`start_reader`
    opens it at the first reader's start and attaches each reader; :meth:`close_reader` retires one, and
    closes the line with the last.

    Args:
        port: the serial device of the line.
        baud_rate: the line's speed (every reader on it runs at it).
    """

    def __init__(self, port: str, baud_rate: int) -> None:
        super().__init__(port, baud_rate, PORT_KEY, f"credential reader line {port}", LINE_CHANNEL_ID)
        self.port = port
        self.baud_rate = baud_rate
        self._readers: List[CardReader] = []
        self._lib: Any = None
        self._cp: Any = None
        #: PD index → reader, for the readers libosdp polls (set when the line opens).
        self._polled: Dict[int, CardReader] = {}
        #: Reader id → why its key could not be loaded (it is not polled).
        self._key_errors: Dict[str, OsdpError] = {}

    @property
    def reader_ids(self) -> List[str]:
        """The ids of the readers on the line, in the configuration's order."""
        return [reader.name for reader in self._readers]

    def add(self, reader: CardReader) -> None:
        """Put ``reader`` on the line (before it opens).

        Raises:
            OsdpError: the line is already open, or the reader does not fit it (another port or baud
                rate, an address already taken): the configuration's validator refuses these first.
        """
        config = reader.config
        if self._cp is not None or self._closed:
            raise OsdpError(
                f"reader {reader.name!r} cannot join the line on {self.port}: it is already "
                f"{'closed' if self._closed else 'open'}"
            )
        if config.port != self.port or config.baud_rate != self.baud_rate:
            raise OsdpError(
                f"reader {reader.name!r} ({config.port}, {config.baud_rate} baud) is not on the line "
                f"{self.port} at {self.baud_rate} baud"
            )
        for other in self._readers:
            if other.config.address == config.address:
                raise OsdpError(
                    f"readers {other.name!r} and {reader.name!r} both name address {config.address} on "
                    f"{self.port}; give each reader on one line an address of its own"
                )
        self._readers.append(reader)

    # -- the readers' start and close (the daemon's thread) -------------------------------------------

    def start_reader(self, reader: CardReader, emit: EmitDoorEvent) -> None:
        """Open the line if it is not yet open, then attach ``reader``: it is served from now on.

        Raises:
            OsdpError: libosdp missing, the port unusable (the line stays closed, the next reader's
                start tries again), or ``reader``'s key unusable (it is not polled; the others are).
        """
        if self._closed:
            raise OsdpError(
                f"the credential reader line on {self.port} was closed; reader {reader.name!r} cannot start"
            )
        if self._cp is None:
            self._open(reader)
        error = self._key_errors.get(reader.name)
        if error is not None:
            raise error
        reader._attach(emit)
        self._wake.set()

    def close_reader(self, reader: CardReader, timeout: float) -> None:
        """Retire ``reader`` within ``timeout`` s; close the line when no other reader on it runs."""
        with self._lock:
            reader._closed = True
            others = [r for r in self._readers if r is not reader and r._started and not r._closed]
        if others and self.running:
            if reader._started:
                self._wake.set()
                if not reader._retired.wait(max(0.0, timeout)):
                    logger.error(
                        "credential reader %s was not retired within %.1f s (the line's thread is busy)",
                        reader.name,
                        timeout,
                    )
            return
        self.close(timeout)

    def wake(self) -> None:
        """Wake the owner thread (a decision queued for a reader's LED)."""
        self._wake.set()

    def _open(self, starting: CardReader) -> None:
        """Load libosdp and the keys, open the port, make the control panel, start the owner thread."""
        lib = load_library()
        keys: Dict[str, Optional[bytes]] = {}
        errors: Dict[str, OsdpError] = {}
        for reader in self._readers:
            try:
                keys[reader.name] = reader._load_key()
            except OsdpError as err:
                errors[reader.name] = err
        polled = [reader for reader in self._readers if reader.name not in errors]
        if not polled:
            raise errors[starting.name]
        self._channel.open()
        try:
            lib.set_loglevel(lib.LOG_CRIT)  # libosdp prints to stdout; the readers log what matters
            cp = lib.ControlPanel(
                [reader._pd_info(lib, keys[reader.name], self._channel) for reader in polled]
            )
            cp.set_event_callback(self._on_event)
        except Exception as err:
            self._channel.close()
            raise OsdpError(
                f"libosdp refused the settings of the credential readers on {self.port} "
                f"({', '.join(r.name for r in polled)}: credential_reader.address): {err}"
            ) from None
        self._lib, self._cp = lib, cp
        self._key_errors = errors
        self._polled = dict(enumerate(polled))
        for index, reader in self._polled.items():
            reader._pd = index
        self._start_owner(None, "osdp-card-reader")
        if len(self._readers) > 1:
            logger.info(
                "credential reader line %s, %d baud: polling %s",
                self.port,
                self.baud_rate,
                ", ".join(f"{r.name} at address {r.config.address}" for r in polled),
            )

    def _release(self) -> None:
        self._cp = None  # libosdp's teardown

    # -- the owner thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        polled = list(self._polled.values())
        try:
            while not self._stop.is_set():
                serving = self._serving(polled)
                for reader in serving:
                    reader._serve_feedback(self._lib, self._cp)
                self._keep_port()
                self._cp.refresh()
                online, secure = self._cp.status(), self._cp.sc_status()
                port_error = self._channel.error is not None
                for reader in serving:
                    reader._follow_link(self._cp, online, secure, port_error)
                    reader._expire_keys()
                self._wake.wait(TICK_S)
                self._wake.clear()
        except Exception:
            logger.exception(
                "the thread of the credential reader line %s failed; cards and PINs of %s are not read",
                self.port,
                ", ".join(reader.name for reader in polled),
            )
        finally:
            reason = "closed" if self._stop.is_set() else "reader_failed"
            for reader in polled:
                reader._end_link(reason)
                reader._retired.set()

    def _serving(self, polled: List[CardReader]) -> List[CardReader]:
        """The started readers still open; a reader closed since the last tick is retired here."""
        serving: List[CardReader] = []
        for reader in polled:
            if not reader._started or reader._retired.is_set():
                continue
            if reader._closed:
                reader._retire(self._cp)
                continue
            serving.append(reader)
        return serving

    def _on_event(self, pd: int, event: Mapping[str, Any]) -> int:
        """One reader's event (inside ``refresh()``), handed to it. Never raises: libosdp's C callback
        would leave the exception set."""
        try:
            reader = self._polled.get(pd)
            if reader is None or not reader._started or reader._closed:
                logger.debug("credential reader line %s: event of PD %d ignored (not served)", self.port, pd)
                return 0
            reader._on_event(self._lib, event)
        except Exception:
            logger.exception(
                "handling an event of PD %d on the credential reader line %s failed", pd, self.port
            )
        return 0

    def send_event(self, kind: str, details: Dict[str, Any], emit: Optional[EmitDoorEvent]) -> None:
        """Queue a reader's door event for its own ``emit`` (the line's event thread; never blocks)."""
        self._send(kind, details, emit)

    def port_state(self) -> Dict[str, Any]:
        """The line's part of each reader's ``…/state``: the serial port's errors, events dropped."""
        return self._port_state()


__all__ = ["CP_CONSTANTS", "CP_METHODS", "LINE_CHANNEL_ID", "PORT_KEY", "CardReaderLine", "load_library"]
