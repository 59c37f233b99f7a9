"""The appliance as the OSDP control panel of card-and-keypad readers beside its cameras.

Each reader (``[credential_reader]``, or one ``[[credential_readers]]`` table) is a
:class:`CardReader`: a :class:`~appliance.peripherals.Peripheral` of its own (its id keys ``…/state`` →
door, and is the ``reader`` of what it presents), polled by the control panel of its serial line
(:class:`~appliance.osdp.card_reader_line.CardReaderLine`: libosdp's ``osdp_sys.ControlPanel`` for
every reader on the port, and the one thread that owns both). Readers sharing a port share the line,
each at its own address (OSDP multi-drop); a reader alone on its port has a line of its own.

On the line's owner thread, every :data:`TICK_S`, each reader:

1. shows the latest decision :meth:`CardReader.on_passage` queued on its LED and buzzer
   (``credential_reader.feedback``; dropped, never kept for later, while its link is down);
2. takes what libosdp's ``refresh()`` polled from it: card reads and key presses arrive in
   :meth:`CardReader._on_event`. A card read becomes a :class:`~appliance.access.credentials.PresentedCredential`
   of kind ``card`` (:func:`~appliance.access.credentials.card_from_bits`; a misread is counted, never
   offered); key presses go through a :class:`KeypadEntry`, and a PIN ended with ``#`` is offered as
   kind ``pin``. What the ``offer`` callback refuses (the pipeline's inbox is full) is counted;
3. follows its link: ``offline``, ``online`` (the reader answers), ``secure`` (Secure Channel up).
   The link is *usable* when ``secure`` (libosdp keeps a reader offline until its Secure Channel is
   up), or ``online`` with ``credential_reader.secure_channel = false``. ``reader_online`` is sent
   when it becomes usable, ``reader_offline`` when it has not been for :data:`LINK_GRACE_S`;
4. is brought back when lost: libosdp, once a reader stops answering, waits five minutes before
   polling it again; the owner thread restarts libosdp's link to that reader (its PD alone) after
   :data:`RESTART_FIRST_S`, then ever more rarely (up to :data:`RESTART_MAX_S`), so a reader
   power-cycled or plugged in late is back within seconds;
5. discards a partial PIN after ``credential_reader.pin_timeout_s`` without a key press. The line
   reopens its serial port after an I/O error (an unplugged USB adapter): every reader on it is down
   meanwhile (``reader_offline`` with the reason ``port_error``).

The reader's keys (the ``osdp_KEYPAD`` reply of SIA OSDP 2.2; libosdp hands its bytes over as they
are): the digits as ASCII ``0x30``-``0x39``, ``*`` (clear) as ``0x7F`` (DEL) and ``#`` (enter) as
``0x0D`` (CR); the function keys (``0x41``-``0x48``) are no part of a PIN.

Door events (``emit(kind, details)``, from the line's small thread of its own)::

    reader_online   {"reader_id", "secure_channel": bool, "address": int}
    reader_offline  {"reader_id", "reason": "no_reply" | "port_error" | "closed" | "reader_failed"}

No card number and no PIN is ever in a door event, ``…/state`` or an error message; a card number is
logged at DEBUG only, a PIN never.

libosdp is driven through its C extension ``osdp_sys``, as :mod:`appliance.osdp.binding` explains
(the ``osdp`` wrapper does not import on Python 3.8 and runs a thread of its own).
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from ..access.credentials import (
    PIN_DIGITS,
    CredentialKind,
    PresentedCredential,
    card_from_bits,
    check_pin,
)
from ..access.errors import PolicyError
from ..access.second_factor import SECOND_FACTOR
from ..peripherals import EmitDoorEvent, Passage, Peripheral
from .card_reader_line import CP_CONSTANTS, CP_METHODS, CardReaderLine, load_library
from .card_reader_settings import CredentialReaderConfig
from .channel import SerialChannel
from .errors import OsdpError
from .keys import load_scbk
from .owner import LINK_GRACE_S, TICK_S, link_of, utc_now

logger = logging.getLogger(__name__)

#: Decisions waiting for the owner thread to show them; more are dropped (only the latest is shown).
FEEDBACK_QUEUE = 16
#: First and longest wait between restarts of libosdp's link to a reader that does not answer.
RESTART_FIRST_S, RESTART_MAX_S = 2.0, 16.0
#: How long the reader may stay silent (from start, or after a loss) before a WARNING with what to check.
NO_ANSWER_WARNING_S = 15.0

#: OSDP key codes (``osdp_KEYPAD``): ``#`` ends a PIN, ``*`` clears it.
KEY_ENTER, KEY_CLEAR = 0x0D, 0x7F
_DIGITS = range(0x30, 0x3A)


# -- the keypad ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeypadOutcome:
    """What one key press completed.

    Attributes:
        kind: ``pin`` (a PIN ended with ``#``), ``bad_pin`` (an entry of the wrong length: ``reason``
            ``too_short`` at ``#``, ``too_long`` at the digit past :data:`PIN_DIGITS`), ``abandoned``
            (``timeout``: a pause longer than the timeout; ``unexpected_key``: a function key) or
            ``cleared`` (``*``).
        reason: as above; ``""`` for ``pin`` and ``cleared``.
        pin: the digits of a ``pin``, else ``""`` — never in a ``repr`` or a log.
    """

    kind: str
    reason: str = ""
    pin: str = field(default="", repr=False)


class KeypadEntry:
    """Key presses → PINs: digits accumulate, ``#`` ends the entry, ``*`` clears it.

    An entry of 4-8 digits ended with ``#`` is a PIN. Fewer digits at ``#`` is a ``bad_pin``
    (``too_short``; a ``#`` with no digit before it is ignored). The digit past the eighth discards the
    entry at once (``bad_pin``, ``too_long``) and the keys after it are ignored up to the next ``#`` or
    ``*``, so that the tail of a long entry never becomes a PIN of its own. A pause longer than
    ``timeout_s`` between two keys (or since the last key, at :meth:`expire`) discards the partial
    entry. Not thread-safe: one owner.

    Args:
        timeout_s: the longest pause between two keys of one entry.
        clock: monotonic seconds (injected for tests).
    """

    def __init__(self, timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._timeout_s = timeout_s
        self._clock = clock
        self._digits: List[str] = []
        self._rejecting = False  # after a too-long entry, until '#', '*' or a pause
        self._last_key: Optional[float] = None

    @property
    def pending(self) -> int:
        """Digits held of the entry in progress (0 while none, or while a too-long entry is ignored)."""
        return len(self._digits)

    @property
    def active(self) -> bool:
        """An entry is in progress (digits held, or a too-long entry's keys being ignored)."""
        return bool(self._digits) or self._rejecting

    def press(self, keys: bytes) -> List[KeypadOutcome]:
        """Take the keys of one ``osdp_KEYPAD`` report, in order; what they completed."""
        outcomes: List[KeypadOutcome] = []
        expired = self.expire()
        if expired is not None:
            outcomes.append(expired)
        for key in keys:
            outcome = self._key(key)
            if outcome is not None:
                outcomes.append(outcome)
        self._last_key = self._clock()
        return outcomes

    def expire(self) -> Optional[KeypadOutcome]:
        """Discard an entry whose last key is older than the timeout: ``abandoned`` (``timeout``) when
        it held digits, else ``None``."""
        if not self.active or self._last_key is None:
            return None
        if self._clock() - self._last_key <= self._timeout_s:
            return None
        had_digits = bool(self._digits)
        self.clear()
        return KeypadOutcome("abandoned", "timeout") if had_digits else None

    def clear(self) -> None:
        """Forget the entry in progress."""
        self._digits.clear()
        self._rejecting = False

    def _key(self, key: int) -> Optional[KeypadOutcome]:
        if key == KEY_CLEAR:
            was_active = self.active
            self.clear()
            return KeypadOutcome("cleared") if was_active else None
        if key == KEY_ENTER:
            return self._enter()
        if self._rejecting:
            return None
        if key not in _DIGITS:
            if not self._digits:
                return None
            self.clear()
            return KeypadOutcome("abandoned", "unexpected_key")
        if len(self._digits) == PIN_DIGITS[1]:
            self.clear()
            self._rejecting = True
            return KeypadOutcome("bad_pin", "too_long")
        self._digits.append(chr(key))
        return None

    def _enter(self) -> Optional[KeypadOutcome]:
        if self._rejecting:
            self.clear()
            return None
        if not self._digits:
            return None
        digits = "".join(self._digits)
        self.clear()
        try:
            return KeypadOutcome("pin", pin=check_pin(digits))
        except PolicyError:
            return KeypadOutcome("bad_pin", "too_short")


# -- feedback ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Signal:
    """One answer on the reader: a temporary LED state and beeps (counts in OSDP's 100 ms units).

    Attributes:
        color: the ``LED_COLOR_*`` name of libosdp (``GREEN``, ``AMBER``, ``RED``).
        on, off: the flash's on and off times (``off`` 0: steady).
        timer: how long the temporary state lasts before the LED returns to its permanent state.
        beeps: short beeps (0: none).
    """

    color: str
    on: int
    off: int
    timer: int
    beeps: int


#: ``granted``: green 2 s, one beep; ``awaiting`` (a face waits for its card or PIN): amber blinking
#: 10 s; ``denied`` (or an unknown face): red 1 s, two beeps.
SIGNALS = {
    "granted": Signal("GREEN", on=20, off=0, timer=20, beeps=1),
    "awaiting": Signal("AMBER", on=5, off=5, timer=100, beeps=0),
    "denied": Signal("RED", on=10, off=0, timer=10, beeps=2),
}


def signal_for(passage: Passage) -> Optional[str]:
    """The :data:`SIGNALS` key that answers ``passage``, or ``None`` for none."""
    if passage.decision == "granted":
        return "granted"
    if passage.decision == "denied" and passage.reason == SECOND_FACTOR:
        return "awaiting"
    if passage.decision in ("denied", "unknown"):
        return "denied"
    return None


def signal_commands(lib: Any, signal: Signal) -> List[Dict[str, Any]]:
    """libosdp's command dicts (``osdp_LED``, then ``osdp_BUZ`` when it beeps) for ``signal``.

    The keys are those of ``python/osdp_sys/data.c`` (``pyosdp_make_struct_cmd_led`` / ``…_buzzer``);
    the LED command sets the *temporary* state (control code 2: set and start the timer), so the reader
    falls back to its own permanent state afterwards.
    """
    commands: List[Dict[str, Any]] = [
        {
            "command": lib.CMD_LED,
            "reader": 0,
            "led_number": 0,
            "temporary": True,
            "control_code": 2,
            "on_count": signal.on,
            "off_count": signal.off,
            "on_color": getattr(lib, f"LED_COLOR_{signal.color}"),
            "off_color": lib.LED_COLOR_NONE,
            "timer_count": signal.timer,
        }
    ]
    if signal.beeps:
        commands.append(
            {
                "command": lib.CMD_BUZZER,
                "reader": 0,
                "control_code": 2,  # the default tone
                "on_count": 2,
                "off_count": 2,
                "rep_count": signal.beeps,
            }
        )
    return commands


# -- the peripheral ------------------------------------------------------------------------------------


class CardReader(Peripheral):
    """A card-and-keypad reader polled over OSDP by the control panel of its line; see the module
    docstring.

    The methods named ``_serve_feedback``, ``_follow_link``, ``_expire_keys``, ``_on_event``,
    ``_retire`` and ``_end_link`` run on the line's owner thread only.

    Args:
        config: the reader's ``[credential_reader]`` section (or ``[[credential_readers]]`` table).
        offer: takes each card or PIN presented (any thread, never blocks); ``False`` when it has no
            room (:meth:`appliance.access.credentials.CredentialInbox.offer`).
        line: the line of the readers sharing its port (:func:`create_card_readers`); ``None``: a line
            of its own.

    Raises:
        OsdpError: ``credential_reader.port`` is not set, or the reader does not fit ``line``.
    """

    def __init__(
        self,
        config: CredentialReaderConfig,
        offer: Callable[[PresentedCredential], bool],
        line: Optional[CardReaderLine] = None,
    ) -> None:
        if config.port is None:
            raise OsdpError(
                "credential_reader.port is not set; name the serial device of the reader's RS-485 line"
            )
        self.name = config.id
        self.config = config
        self._offer = offer
        self._line = line if line is not None else CardReaderLine(config.port, config.baud_rate)
        self._line.add(self)
        self._feedback: queue.Queue = queue.Queue(FEEDBACK_QUEUE)  # of SIGNALS keys
        self._lock = threading.Lock()
        self._emit: Optional[EmitDoorEvent] = None
        self._started = False
        self._closed = False
        #: Set once the line no longer serves the reader (closed; or the line's thread ended).
        self._retired = threading.Event()
        #: The reader's index in the line's control panel (set when the line opens).
        self._pd = 0
        # Owner-thread state.
        self._keypad = KeypadEntry(config.pin_timeout_s)
        self._usable = False
        self._announced = False  # the last door event said the link is up
        self._down_since: Optional[float] = None
        self._restart_wait = RESTART_FIRST_S
        self._next_restart: Optional[float] = None
        self._reenable = False  # the reader was disabled in libosdp, to be enabled after a refresh()
        self._warned = False
        # Shared with state() (under _lock).
        self._link = "offline"
        self._link_since: Optional[str] = None
        self._counts: Dict[str, int] = collections.Counter()
        self._feedback_counts: Dict[str, int] = collections.Counter()
        self._last_read_at: Optional[str] = None

    @property
    def source(self) -> str:
        """The ``source`` of its door events."""
        return "credential_reader"

    @property
    def line(self) -> CardReaderLine:
        """The line whose control panel polls this reader."""
        return self._line

    # -- Peripheral -----------------------------------------------------------------------------------

    def start(self, emit: EmitDoorEvent) -> None:
        """Have the line poll the reader: the first reader's start loads libosdp and the keys, opens the
        port and starts the line's owner thread.

        Raises:
            OsdpError: libosdp missing, the port or this reader's key file unusable (the message names
                the key).
        """
        if self._started or self._closed:
            raise OsdpError(f"the credential reader {self.name!r} was already started")
        self._line.start_reader(self, emit)
        config = self.config
        logger.info(
            "credential reader %s: polling address %d on %s, %d baud, Secure Channel %s",
            self.name,
            config.address,
            config.port,
            config.baud_rate,
            "required" if config.secure_channel else "off: card numbers and PINs cross the line in the clear",
        )
        if not config.secure_channel:
            logger.warning(
                "credential_reader.secure_channel is false (reader %s): card numbers and PINs cross the "
                "line in the clear",
                self.name,
            )

    def on_passage(self, passage: Passage) -> None:
        """Queue the reader's answer to one decision at its cameras for the owner thread (never blocks)."""
        if not self.config.feedback or not self._started or self._closed:
            return
        if not self.config.stands_at(passage.camera_id):
            return
        signal = signal_for(passage)
        if signal is None:
            return
        try:
            self._feedback.put_nowait(signal)
        except queue.Full:
            with self._lock:
                self._feedback_counts["dropped"] += 1
            return
        self._line.wake()

    def state(self) -> Dict[str, Any]:
        """The link, what the reader presented, and its feedback (JSON-ready; no card number, no PIN).

        ``serial`` and ``events_dropped`` are the line's, the same for every reader on its port.
        """
        config = self.config
        port = self._line.port_state()
        with self._lock:
            return {
                "id": self.name,
                "port": config.port,
                "address": config.address,
                "baud_rate": config.baud_rate,
                "running": self._started and not self._retired.is_set() and self._line.running,
                "link": self._link,
                "link_since": self._link_since,
                "usable": self._usable,
                "secure_channel": config.secure_channel,
                **port,
                "online": self._link != "offline",
                "secure": self._link == "secure",
                "cards": self._counts["cards"],
                "pins": self._counts["pins"],
                "misreads": self._counts["misreads"],
                "bad_pins": self._counts["bad_pins"],
                "abandoned_pins": self._counts["abandoned_pins"],
                "dropped": self._counts["dropped"],
                "last_read_at": self._last_read_at,
                "feedback": {
                    "enabled": config.feedback,
                    "shown": self._feedback_counts["shown"],
                    "replaced": self._feedback_counts["replaced"],
                    "dropped": self._feedback_counts["dropped"],
                },
            }

    def close(self, timeout: float) -> None:
        """Stop serving the reader within ``timeout`` s (``reader_offline``, ``closed``, if it was up);
        the last reader of a line closes the line: its thread, its port. Idempotent."""
        if self._closed:
            return
        self._line.close_reader(self, timeout)

    # -- start-up (the daemon's thread, from the line) ---------------------------------------------------

    def _load_key(self) -> Optional[bytes]:
        """The reader's SCBK, or ``None`` without Secure Channel."""
        config = self.config
        if not config.secure_channel:
            return None
        if config.scbk_file is None:
            raise OsdpError(
                "credential_reader.scbk_file is not set; name the file with the reader's 32-hex-digit key"
            )
        return load_scbk(config.scbk_file, "credential_reader.scbk_file")

    def _pd_info(self, lib: Any, scbk: Optional[bytes], channel: SerialChannel) -> Dict[str, Any]:
        """The reader as libosdp's control panel takes it (``osdp_pd_info_t``, ``python/osdp_sys/cp.c``):
        its address, flags and key, on the line's one ``channel``.

        With a key, Secure Channel is enforced: libosdp keeps the reader offline until the Secure
        Channel is up, so no card read or key press is ever taken in the clear.
        """
        config = self.config
        info: Dict[str, Any] = {
            "name": config.id,
            "address": config.address,
            "flags": lib.FLAG_ENFORCE_SECURE if scbk is not None else 0,
            "channel": channel,
            "baud_rate": config.baud_rate,
        }
        if scbk is not None:
            info["scbk"] = scbk
        return info

    def _attach(self, emit: EmitDoorEvent) -> None:
        """Served from now on, its door events going to ``emit`` (the line's ``start_reader``)."""
        self._emit = emit
        self._down_since = time.monotonic()
        self._started = True

    # -- the link (owner thread) -----------------------------------------------------------------------

    def _follow_link(self, cp: Any, online_mask: int, secure_mask: int, port_error: bool) -> None:
        """Follow the reader's link from libosdp's status bitmasks (bit ``_pd``: this reader)."""
        pd = self._pd
        if self._reenable and not cp.is_pd_enabled(pd):
            cp.enable_pd(pd)  # libosdp starts over: poll, capabilities, Secure Channel
            self._reenable = False
        usable = self._note_link(bool(online_mask & 1 << pd), bool(secure_mask & 1 << pd))
        now = time.monotonic()
        if usable != self._usable:
            self._usable = usable
            if usable:
                self._down_since, self._next_restart = None, None
                self._restart_wait, self._warned = RESTART_FIRST_S, False
            else:
                self._down_since = now
                self._keypad.clear()  # keys from before the loss never join later ones
        if usable:
            if not self._announced:
                self._announce(True, "")
            return
        down_for = now - (self._down_since if self._down_since is not None else now)
        if self._announced and down_for > LINK_GRACE_S:
            self._announce(False, "port_error" if port_error else "no_reply")
        self._restart_when_due(cp, now)
        if not self._warned and down_for > NO_ANSWER_WARNING_S:
            self._warned = True
            config = self.config
            logger.warning(
                "credential reader %s: no %sanswer from the reader at address %d on %s; check its power and "
                "wiring, credential_reader.address and baud_rate%s",
                self.name,
                "secure " if config.secure_channel else "",
                config.address,
                config.port,
                ", and that it holds the key of credential_reader.scbk_file" if config.secure_channel else "",
            )

    def _note_link(self, online: bool, secure: bool) -> bool:
        """Record the link as libosdp sees it (logged when it changes); whether it is usable: secure, or
        online where no Secure Channel is required."""
        link = link_of(online, secure)
        if link != self._link:
            logger.info("credential reader %s: link %s → %s", self.name, self._link, link)
            with self._lock:
                self._link, self._link_since = link, utc_now()
        return secure if self.config.secure_channel else online

    def _restart_when_due(self, cp: Any, now: float) -> None:
        """Restart libosdp's link to this silent reader (libosdp alone would wait five minutes).

        libosdp's ``disable_pd`` takes effect at the next ``refresh()``; :meth:`_follow_link` then
        enables the reader again, which starts its state machine over. The other readers on the line
        are left alone.
        """
        if self._next_restart is None:
            self._next_restart = now + self._restart_wait
            return
        if now < self._next_restart or self._reenable:
            return
        if cp.is_pd_enabled(self._pd) and cp.disable_pd(self._pd):
            self._reenable = True
            logger.debug("credential reader %s: restarting the link", self.name)
        self._restart_wait = min(self._restart_wait * 2, RESTART_MAX_S)
        self._next_restart = now + self._restart_wait

    def _announce(self, up: bool, reason: str) -> None:
        """``reader_online`` / ``reader_offline``: the link became usable, or has not been for LINK_GRACE_S."""
        self._announced = up
        if up:
            secure = self._link == "secure"
            logger.info(
                "credential reader %s: link up (Secure Channel %s)", self.name, "active" if secure else "off"
            )
            self._line.send_event(
                "reader_online",
                {"reader_id": self.name, "secure_channel": secure, "address": self.config.address},
                self._emit,
            )
            return
        logger.log(
            logging.INFO if reason == "closed" else logging.WARNING,
            "credential reader %s: link down (%s)",
            self.name,
            reason,
        )
        self._line.send_event("reader_offline", {"reader_id": self.name, "reason": reason}, self._emit)

    def _end_link(self, reason: str) -> None:
        """No longer served (``closed``, or ``reader_failed`` when the line's thread failed): the link
        is unusable, and reported down if it was reported up."""
        self._usable = False
        self._keypad.clear()
        if self._announced:
            self._announce(False, reason)

    def _retire(self, cp: Any) -> None:
        """Closed while the line goes on: libosdp stops polling it, and its link is reported closed."""
        try:
            if cp.is_pd_enabled(self._pd):
                cp.disable_pd(self._pd)
        except Exception:  # the other readers on the line go on regardless
            logger.exception("credential reader %s: libosdp did not stop polling it", self.name)
        self._end_link("closed")
        self._retired.set()

    # -- feedback -------------------------------------------------------------------------------------

    def _serve_feedback(self, lib: Any, cp: Any) -> None:
        """Show the latest queued answer (an older one still queued is replaced: it is stale)."""
        latest: Optional[str] = None
        replaced = 0
        while True:
            try:
                signal = self._feedback.get_nowait()
            except queue.Empty:
                break
            if latest is not None:
                replaced += 1
            latest = signal
        if latest is None:
            return
        if not self._usable:
            logger.debug("credential reader %s: link down, %s not shown", self.name, latest)
            with self._lock:
                self._feedback_counts["replaced"] += replaced
                self._feedback_counts["dropped"] += 1
            return
        shown = all(cp.submit_command(self._pd, command) for command in signal_commands(lib, SIGNALS[latest]))
        with self._lock:
            self._feedback_counts["replaced"] += replaced
            self._feedback_counts["shown" if shown else "dropped"] += 1
        if not shown:
            logger.warning(
                "credential reader %s: libosdp refused the %s LED/buzzer commands", self.name, latest
            )

    # -- what the reader presents (inside refresh(), on the owner thread) ---------------------------------

    def _on_event(self, lib: Any, event: Mapping[str, Any]) -> None:
        """One event of the reader, from the line's libosdp callback. Never raises."""
        try:
            kind = event.get("event")
            if kind == lib.EVENT_CARDREAD:
                self._card_read(event)
            elif kind == lib.EVENT_KEYPRESS:
                self._key_press(event)
            else:
                logger.debug("credential reader %s: event %s ignored", self.name, kind)
        except Exception:
            logger.exception("handling an event of the credential reader %s failed", self.name)

    def _card_read(self, event: Mapping[str, Any]) -> None:
        bits, data = event.get("length"), event.get("data")
        if not isinstance(bits, int) or not isinstance(data, (bytes, bytearray)):
            self._misread("not raw card bits (set the reader to report raw / Wiegand card data)")
            return
        try:
            card = card_from_bits(bits, bytes(data))
        except PolicyError as err:
            self._misread(str(err))
            return
        logger.info("credential reader %s: card read (%d bits)", self.name, bits)
        logger.debug("credential reader %s: card %s", self.name, card)
        self._present("card", card)

    def _misread(self, why: str) -> None:
        with self._lock:
            self._counts["misreads"] += 1
        logger.warning("credential reader %s: card read refused: %s", self.name, why)

    def _key_press(self, event: Mapping[str, Any]) -> None:
        keys = event.get("data")
        if not isinstance(keys, (bytes, bytearray)):
            return
        for outcome in self._keypad.press(bytes(keys)):
            self._keypad_outcome(outcome)

    def _expire_keys(self) -> None:
        outcome = self._keypad.expire()
        if outcome is not None:
            self._keypad_outcome(outcome)

    def _keypad_outcome(self, outcome: KeypadOutcome) -> None:
        if outcome.kind == "pin":
            logger.info("credential reader %s: PIN entered", self.name)
            self._present("pin", outcome.pin)
            return
        if outcome.kind == "cleared":
            logger.debug("credential reader %s: PIN entry cleared (*)", self.name)
            return
        counter = "bad_pins" if outcome.kind == "bad_pin" else "abandoned_pins"
        with self._lock:
            self._counts[counter] += 1
        if outcome.kind == "bad_pin":
            low, high = PIN_DIGITS
            logger.info(
                "credential reader %s: PIN entry refused (%s: a PIN is %d-%d digits, then #)",
                self.name,
                outcome.reason,
                low,
                high,
            )
        else:
            logger.info("credential reader %s: partial PIN entry discarded (%s)", self.name, outcome.reason)

    def _present(self, kind: CredentialKind, value: str) -> None:
        """Offer one card or PIN; count it, and count it dropped when the inbox has no room."""
        credential = PresentedCredential(kind=kind, value=value, reader=self.name, at=time.time())
        try:
            taken = bool(self._offer(credential))
        except Exception:  # offer never raises by contract; a bug must not end the thread
            logger.exception("offering a %s of the credential reader %s failed", kind, self.name)
            taken = False
        with self._lock:
            self._counts[f"{kind}s"] += 1
            self._last_read_at = utc_now()
            if not taken:
                self._counts["dropped"] += 1
        if not taken:
            logger.warning(
                "credential reader %s: %s dropped: the pipeline's inbox is full (present it again)",
                self.name,
                kind,
            )


def create_card_readers(
    configs: Sequence[CredentialReaderConfig], offer: Callable[[PresentedCredential], bool]
) -> List[CardReader]:
    """One :class:`CardReader` per configuration, in order; those naming one ``port`` share one
    :class:`~appliance.osdp.card_reader_line.CardReaderLine` (one control panel per line).

    Raises:
        OsdpError: a reader's ``port`` is not set, or readers on one port do not fit together (another
            baud rate, an address taken twice; the configuration's validator refuses these first).
    """
    lines: Dict[str, CardReaderLine] = {}
    readers: List[CardReader] = []
    for config in configs:
        if config.port is None:
            raise OsdpError(
                f"credential reader {config.id!r}: credential_reader.port is not set; name the serial "
                "device of the reader's RS-485 line"
            )
        line = lines.get(config.port)
        if line is None:
            line = lines[config.port] = CardReaderLine(config.port, config.baud_rate)
        readers.append(CardReader(config, offer, line))
    return readers


__all__ = [
    "CP_CONSTANTS",
    "CP_METHODS",
    "KEY_CLEAR",
    "KEY_ENTER",
    "SIGNALS",
    "TICK_S",
    "CardReader",
    "CardReaderLine",
    "KeypadEntry",
    "KeypadOutcome",
    "Signal",
    "create_card_readers",
    "load_library",
    "signal_commands",
    "signal_for",
]
