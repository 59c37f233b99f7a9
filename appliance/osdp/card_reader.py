"""The appliance as the OSDP control panel of a card-and-keypad reader beside its camera.

One thread owns libosdp's control panel (``osdp_sys.ControlPanel``, for one reader) and the serial
port. Every :data:`TICK_S` it:

1. shows the latest decision :meth:`CardReader.on_passage` queued on the reader's LED and buzzer
   (``credential_reader.feedback``; dropped, never kept for later, while the link is down);
2. calls libosdp's ``refresh()``, which polls the reader: its card reads and key presses arrive in
   :meth:`CardReader._on_event`. A card read becomes a :class:`~appliance.access.credentials.PresentedCredential`
   of kind ``card`` (:func:`~appliance.access.credentials.card_from_bits`; a misread is counted, never
   offered); key presses go through a :class:`KeypadEntry`, and a PIN ended with ``#`` is offered as
   kind ``pin``. What the ``offer`` callback refuses (the pipeline's inbox is full) is counted;
3. follows the link: ``offline``, ``online`` (the reader answers), ``secure`` (Secure Channel up).
   The link is *usable* when ``secure`` (libosdp keeps a reader offline until its Secure Channel is
   up), or ``online`` with ``credential_reader.secure_channel = false``. ``reader_online`` is sent
   when it becomes usable, ``reader_offline`` when it has not been for :data:`LINK_GRACE_S`;
4. brings a lost reader back: libosdp, once a reader stops answering, waits five minutes before
   polling it again; the owner thread restarts libosdp's link to it after :data:`RESTART_FIRST_S`,
   then ever more rarely (up to :data:`RESTART_MAX_S`), so a reader power-cycled or plugged in late
   is back within seconds;
5. discards a partial PIN after ``credential_reader.pin_timeout_s`` without a key press, and reopens
   the serial port after an I/O error (an unplugged USB adapter).

The reader's keys (the ``osdp_KEYPAD`` reply of SIA OSDP 2.2; libosdp hands its bytes over as they
are): the digits as ASCII ``0x30``-``0x39``, ``*`` (clear) as ``0x7F`` (DEL) and ``#`` (enter) as
``0x0D`` (CR); the function keys (``0x41``-``0x48``) are no part of a PIN.

Door events (``emit(kind, details)``, from a small thread of their own)::

    reader_online   {"reader_id", "secure_channel": bool, "address": int}
    reader_offline  {"reader_id", "reason": "no_reply" | "port_error" | "closed" | "reader_failed"}

No card number and no PIN is ever in a door event, ``…/state`` or an error message; a card number is
logged at DEBUG only, a PIN never.

libosdp is driven through its C extension ``osdp_sys``, as :mod:`appliance.osdp.binding` explains
(the ``osdp`` wrapper does not import on Python 3.8 and runs a thread of its own).
"""

from __future__ import annotations

import collections
import importlib
import logging
import queue
import time
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Dict, List, Mapping, Optional

from ..access.credentials import (
    PIN_DIGITS,
    CredentialKind,
    PresentedCredential,
    card_from_bits,
    check_pin,
)
from ..access.errors import PolicyError
from ..access.second_factor import SECOND_FACTOR
from ..peripherals import EmitDoorEvent, Passage
from . import binding
from .card_reader_settings import CredentialReaderConfig
from .errors import OsdpError
from .keys import load_scbk
from .owner import LINK_GRACE_S, TICK_S, OsdpOwner, utc_now

logger = logging.getLogger(__name__)

#: Decisions waiting for the owner thread to show them; more are dropped (only the latest is shown).
FEEDBACK_QUEUE = 16
#: First and longest wait between restarts of libosdp's link to a reader that does not answer.
RESTART_FIRST_S, RESTART_MAX_S = 2.0, 16.0
#: How long the reader may stay silent (from start, or after a loss) before a WARNING with what to check.
NO_ANSWER_WARNING_S = 15.0
#: The reader's index in libosdp's control panel (it polls this one reader).
PD = 0

#: OSDP key codes (``osdp_KEYPAD``): ``#`` ends a PIN, ``*`` clears it.
KEY_ENTER, KEY_CLEAR = 0x0D, 0x7F
_DIGITS = range(0x30, 0x3A)

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
#: Methods of ``osdp_sys.ControlPanel`` the credential reader calls.
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


class CardReader(OsdpOwner):
    """A card-and-keypad reader polled over OSDP; see the module docstring.

    Args:
        config: the ``[credential_reader]`` section.
        offer: takes each card or PIN presented (any thread, never blocks); ``False`` when it has no
            room (:meth:`appliance.access.credentials.CredentialInbox.offer`).

    Raises:
        OsdpError: ``credential_reader.port`` is not set.
    """

    def __init__(self, config: CredentialReaderConfig, offer: Callable[[PresentedCredential], bool]) -> None:
        if config.port is None:
            raise OsdpError(
                "credential_reader.port is not set; name the serial device of the reader's RS-485 line"
            )
        super().__init__(config, "credential_reader.port", f"credential reader {config.id}")
        self.name = config.id
        self._config = config
        self._offer = offer
        self._feedback: queue.Queue = queue.Queue(FEEDBACK_QUEUE)  # of SIGNALS keys
        self._lib: Any = None
        self._cp: Any = None
        # Owner-thread state.
        self._keypad = KeypadEntry(config.pin_timeout_s)
        self._down_since: Optional[float] = time.monotonic()
        self._restart_wait = RESTART_FIRST_S
        self._next_restart: Optional[float] = None
        self._reenable = False  # the reader was disabled in libosdp, to be enabled after a refresh()
        self._warned = False
        # Shared with state() (under _lock).
        self._counts: Dict[str, int] = collections.Counter()
        self._feedback_counts: Dict[str, int] = collections.Counter()
        self._last_read_at: Optional[str] = None

    @property
    def source(self) -> str:
        """The ``source`` of its door events."""
        return "credential_reader"

    # -- Peripheral -----------------------------------------------------------------------------------

    def start(self, emit: EmitDoorEvent) -> None:
        """Load libosdp and the key, open the port, start the owner thread.

        Raises:
            OsdpError: libosdp missing, the key file or the port unusable (the message names the key).
        """
        if self._thread is not None or self._closed:
            raise OsdpError(f"the credential reader {self.name!r} was already started")
        config = self._config
        lib = load_library()
        scbk = self._load_key()
        self._channel.open()
        try:
            lib.set_loglevel(lib.LOG_CRIT)  # libosdp prints to stdout; the reader logs what matters
            cp = lib.ControlPanel([self._pd_info(lib, scbk)])
            cp.set_event_callback(self._on_event)
        except Exception as err:
            self._channel.close()
            raise OsdpError(
                f"libosdp refused the credential reader's settings (credential_reader.address): {err}"
            ) from None
        self._lib, self._cp = lib, cp
        self._start_owner(emit, "osdp-card-reader")
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
                "credential_reader.secure_channel is false: card numbers and PINs cross the line in the clear"
            )

    def on_passage(self, passage: Passage) -> None:
        """Queue the reader's answer to one decision at its cameras for the owner thread (never blocks)."""
        if not self._config.feedback or self._thread is None or self._stop.is_set():
            return
        if not self._config.stands_at(passage.camera_id):
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
        self._wake.set()

    def state(self) -> Dict[str, Any]:
        """The link, what the reader presented, and its feedback (JSON-ready; no card number, no PIN)."""
        config = self._config
        with self._lock:
            return {
                "id": self.name,
                **self._link_state(),
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

    def _release(self) -> None:
        self._cp = None  # libosdp's teardown

    # -- start-up --------------------------------------------------------------------------------------

    def _load_key(self) -> Optional[bytes]:
        """The reader's SCBK, or ``None`` without Secure Channel."""
        config = self._config
        if not config.secure_channel:
            return None
        if config.scbk_file is None:
            raise OsdpError(
                "credential_reader.scbk_file is not set; name the file with the reader's 32-hex-digit key"
            )
        return load_scbk(config.scbk_file, "credential_reader.scbk_file")

    def _pd_info(self, lib: Any, scbk: Optional[bytes]) -> Dict[str, Any]:
        """The reader as libosdp's control panel takes it (``osdp_pd_info_t``, ``python/osdp_sys/cp.c``).

        With a key, Secure Channel is enforced: libosdp keeps the reader offline until the Secure
        Channel is up, so no card read or key press is ever taken in the clear.
        """
        config = self._config
        info: Dict[str, Any] = {
            "name": config.id,
            "address": config.address,
            "flags": lib.FLAG_ENFORCE_SECURE if scbk is not None else 0,
            "channel": self._channel,
            "baud_rate": config.baud_rate,
        }
        if scbk is not None:
            info["scbk"] = scbk
        return info

    # -- the owner thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._serve_feedback()
                self._refresh()
                self._follow_link()
                self._expire_keys()
                self._wake.wait(TICK_S)
                self._wake.clear()
        except Exception:
            logger.exception("the credential reader thread failed; cards and PINs are not read")
        finally:
            self._end_link()

    def _refresh(self) -> None:
        self._keep_port()
        self._cp.refresh()

    def _follow_link(self) -> None:
        cp = self._cp
        if self._reenable and not cp.is_pd_enabled(PD):
            cp.enable_pd(PD)  # libosdp starts over: poll, capabilities, Secure Channel
            self._reenable = False
        online, secure = bool(cp.status() & 1 << PD), bool(cp.sc_status() & 1 << PD)
        usable = self._note_link(online, secure)
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
            self._announce(False, "port_error" if self._channel.error is not None else "no_reply")
        self._restart_when_due(now)
        if not self._warned and down_for > NO_ANSWER_WARNING_S:
            self._warned = True
            logger.warning(
                "credential reader %s: no %sanswer from the reader at address %d on %s; check its power and "
                "wiring, credential_reader.address and baud_rate%s",
                self.name,
                "secure " if self._config.secure_channel else "",
                self._config.address,
                self._config.port,
                ", and that it holds the key of credential_reader.scbk_file"
                if self._config.secure_channel
                else "",
            )

    def _restart_when_due(self, now: float) -> None:
        """Restart libosdp's link to a silent reader (libosdp alone would wait five minutes).

        libosdp's ``disable_pd`` takes effect at the next ``refresh()``; :meth:`_follow_link` then
        enables the reader again, which starts its state machine over.
        """
        if self._next_restart is None:
            self._next_restart = now + self._restart_wait
            return
        if now < self._next_restart or self._reenable:
            return
        if self._cp.is_pd_enabled(PD) and self._cp.disable_pd(PD):
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
            self._send(
                "reader_online",
                {"reader_id": self.name, "secure_channel": secure, "address": self._config.address},
            )
            return
        logger.log(
            logging.INFO if reason == "closed" else logging.WARNING,
            "credential reader %s: link down (%s)",
            self.name,
            reason,
        )
        self._send("reader_offline", {"reader_id": self.name, "reason": reason})

    # -- feedback -------------------------------------------------------------------------------------

    def _serve_feedback(self) -> None:
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
        shown = all(
            self._cp.submit_command(PD, command) for command in signal_commands(self._lib, SIGNALS[latest])
        )
        with self._lock:
            self._feedback_counts["replaced"] += replaced
            self._feedback_counts["shown" if shown else "dropped"] += 1
        if not shown:
            logger.warning(
                "credential reader %s: libosdp refused the %s LED/buzzer commands", self.name, latest
            )

    # -- what the reader presents (inside refresh(), on the owner thread) ---------------------------------

    def _on_event(self, pd: int, event: Mapping[str, Any]) -> int:
        """One event of the reader. Never raises: libosdp's C callback would leave the exception set."""
        try:
            kind = event.get("event")
            if kind == self._lib.EVENT_CARDREAD:
                self._card_read(event)
            elif kind == self._lib.EVENT_KEYPRESS:
                self._key_press(event)
            else:
                logger.debug("credential reader %s: event %s ignored", self.name, kind)
        except Exception:
            logger.exception("handling an event of the credential reader %s failed", self.name)
        return 0

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


__all__ = [
    "CP_CONSTANTS",
    "CP_METHODS",
    "KEY_CLEAR",
    "KEY_ENTER",
    "SIGNALS",
    "TICK_S",
    "CardReader",
    "KeypadEntry",
    "KeypadOutcome",
    "Signal",
    "load_library",
    "signal_commands",
    "signal_for",
]
