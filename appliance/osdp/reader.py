"""The OSDP reader: one thread owns libosdp's peripheral device and the serial port.

What the owner thread does, every :data:`TICK_S`:

1. turns the passages :meth:`OsdpReader.on_passage` queued into card reads (``granted``, and what
   ``osdp.report_denied`` / ``osdp.unknown_card`` add) — or refuses them, with a WARNING, a counter
   and an ``osdp_report_refused`` door event: no credential, a credential that does not fit the
   format (never sent truncated), no usable link (offline, or no Secure Channel when one is required);
2. calls libosdp's ``refresh()``, which answers the panel's poll: a queued card read leaves with the
   reply, and the panel's commands arrive in :meth:`OsdpReader._on_command` (LED, buzzer, text, …:
   logged without secrets, the last of each kind kept for ``…/state``);
3. follows the link: ``offline`` (no poll for 8 s), ``online`` (polled), ``secure`` (Secure Channel
   active); the link is *usable* when ``secure`` (or ``online`` with ``osdp.secure_channel = false``);
   ``osdp_online`` is sent when it becomes usable, ``osdp_offline`` when it has not been for
   :data:`LINK_GRACE_S` (a Secure Channel restart by the panel is not an outage);
4. withdraws a card read the panel has not collected within ``osdp.card_read_ttl_s`` (or when the
   link drops): a stale card read must never open the door later;
5. reopens the serial port after an I/O error (an unplugged USB adapter);
6. reports the tamper state of the doors' housings (``door.tamper``, told through
   :meth:`OsdpReader.on_door_event`) to the panel as a local status report (``osdp_LSTATR``: tamper
   bit set while any door's switch is active), when it changes and again when the link comes back
   up tampered; one the link lost before the panel collected it is sent again.

After a card read is collected, the panel's first green / red LED command within
``osdp.panel_decision_s`` is its decision: ``panel_granted`` / ``panel_denied`` (see
:mod:`appliance.osdp.commands`).

Door events (``emit(kind, details)``, sent from a small thread of their own so that a slow store never
delays a reply to the panel)::

    osdp_online          {"secure_channel": bool, "address": int}
    osdp_offline         {"reason": "no_polls" | "secure_channel_down" | "closed" | "reader_failed"}
    osdp_report_refused  {"access_event_id", "reason": "no_credential" | "credential_unfit" | "offline"
                          | "not_secure" | "queue_full" | "not_collected" | "link_down"}
    panel_granted        {"access_event_id", "led": {…}, "after_ms": int}
    panel_denied         {"access_event_id", "led": {…}, "after_ms": int}
"""

from __future__ import annotations

import collections
import logging
import queue
import time
from typing import Any, Deque, Dict, Mapping, Optional, Set, Tuple

from ..peripherals import EmitDoorEvent, Passage
from . import binding
from .commands import summarize, verdict
from .credential import UnfitCredentialError, encode
from .errors import OsdpError
from .keys import load_scbk, store_scbk
from .owner import LINK_GRACE_S, TICK_S, OsdpOwner, utc_now
from .settings import OsdpConfig

logger = logging.getLogger(__name__)

#: Passages waiting for the owner thread; more are refused (``queue_full``).
PASSAGE_QUEUE = 64
#: How long the panel may talk without a Secure Channel before a WARNING about the key.
NO_SECURE_WARNING_S = 10.0


#: Denials never reported to the panel, even with ``report_denied``: the face may be a photo (a
#: liveness failure, or any grant at a camera locked after a spoof alarm); or the grant is held for a
#: card or PIN that only this door's own reader takes (``second_factor``, a ``wrong_credential`` tried
#: on it, a ``credential_lockout`` for guessing): the panel, deciding on the face's card alone, would
#: skip it. (A ``two_person`` hold is reported: a panel may keep a two-person rule of its own.)
NEVER_REPORTED = ("liveness", "lockout", "second_factor", "wrong_credential", "credential_lockout")


class OsdpReader(OsdpOwner):
    """The appliance as an OSDP reader (peripheral device); see the module docstring.

    Args:
        config: the ``[osdp]`` section.
    """

    name = "osdp"

    def __init__(self, config: OsdpConfig) -> None:
        if config.port is None:
            raise OsdpError("osdp.port is not set; name the serial device of the RS-485 bus")
        super().__init__(config, "osdp.port", "OSDP reader")
        self._config = config
        self._passages: queue.Queue = queue.Queue(PASSAGE_QUEUE)  # of Passage
        self._lib: Any = None
        self._pd: Any = None
        self._names: Dict[int, str] = {}
        # Owner-thread state.
        self._pending: Deque[Tuple[str, float]] = collections.deque()  # (event_id, submitted at)
        self._withdraw_reason = "not_collected"
        self._awaiting: Optional[Tuple[str, float]] = None  # (event_id, collected at)
        self._down: Optional[Tuple[float, str]] = None  # (since, reason) of the link's last drop
        self._insecure_since: Optional[float] = None
        # Shared with state() (under _lock).
        self._counts: Dict[str, int] = collections.Counter()
        self._refused: Dict[str, int] = collections.Counter()
        self._commands: Dict[str, int] = collections.Counter()
        self._last_commands: Dict[str, Dict[str, Any]] = {}
        self._last_decision: Optional[Dict[str, Any]] = None
        self._keyset: Optional[Dict[str, Any]] = None
        #: ``(door id, active)`` of the doors' tamper events, for the owner thread.
        self._tamper_news: queue.SimpleQueue = queue.SimpleQueue()
        self._tampered: Set[str] = set()  # the doors whose tamper switch is active (owner thread)
        self._tamper_reported = False  # what the panel last collected (owner thread)
        self._status_in_flight = False
        self._tamper_state: Dict[str, Any] = {"active": False, "reported": False, "reports": 0}

    # -- Peripheral -----------------------------------------------------------------------------------

    def start(self, emit: EmitDoorEvent) -> None:
        """Load libosdp and the key, open the port, start the owner thread.

        Raises:
            OsdpError: libosdp missing, the key file or the port unusable (the message names the key).
        """
        if self._thread is not None or self._closed:
            raise OsdpError("the OSDP reader was already started")
        config = self._config
        lib = binding.load()
        scbk = self._load_key()
        self._channel.open()
        try:
            lib.set_loglevel(lib.LOG_CRIT)  # libosdp prints to stdout; the reader logs what matters
            pd = lib.PeripheralDevice(
                binding.pd_info(lib, config, self._channel, scbk), capabilities=binding.capabilities(lib)
            )
            pd.set_command_callback(self._on_command)
            pd.set_event_completion_callback(self._on_event_done)
        except Exception as err:
            self._channel.close()
            raise OsdpError(
                f"libosdp refused the reader's settings (osdp.address, osdp.identity): {err}"
            ) from None
        self._lib, self._pd = lib, pd
        self._names = binding.command_names(lib)
        self._start_owner(emit, "osdp-reader")
        logger.info(
            "OSDP reader at address %d on %s, %d baud, Secure Channel %s%s, card data %s",
            config.address,
            config.port,
            config.baud_rate,
            "required" if config.secure_channel else "off: card data is sent in the clear",
            ", install mode (SCBK-D accepted)" if config.install_mode else "",
            config.credential.format,
        )
        if not config.secure_channel:
            logger.warning("osdp.secure_channel is false: card numbers cross the bus in the clear")
        if config.install_mode:
            logger.warning(
                "osdp.install_mode is on: the reader accepts the well-known install key until the panel "
                "sets its own; turn it off once commissioned"
            )

    def on_passage(self, passage: Passage) -> None:
        """Queue one decision for the owner thread (never blocks)."""
        if self._thread is None or self._stop.is_set():
            return
        try:
            self._passages.put_nowait(passage)
        except queue.Full:
            self._refuse(passage.event_id, "queue_full", f"{PASSAGE_QUEUE} passages are already waiting")
            return
        self._wake.set()

    def on_door_event(self, kind: str, details: Mapping[str, Any]) -> None:
        """A door's ``tamper`` / ``tamper_cleared``: queued for the owner thread to report (never blocks)."""
        if kind in ("tamper", "tamper_cleared"):
            self._tamper_news.put((str(details.get("door_id", "door")), kind == "tamper"))
            self._wake.set()

    def state(self) -> Dict[str, Any]:
        """The link, the card reads, the panel's answers and its last commands (JSON-ready)."""
        config = self._config
        with self._lock:
            return {
                **self._link_state(),
                "install_mode": config.install_mode,
                "format": config.credential.format,
                "card_reads": {
                    "sent": self._counts["sent"],
                    "delivered": self._counts["delivered"],
                    "withdrawn": self._counts["withdrawn"],
                    "refused": dict(self._refused),
                },
                "panel": {
                    "granted": self._counts["panel_granted"],
                    "denied": self._counts["panel_denied"],
                    "no_answer": self._counts["panel_no_answer"],
                    "last": dict(self._last_decision) if self._last_decision else None,
                },
                "commands": dict(self._commands),
                "last_commands": {kind: dict(summary) for kind, summary in self._last_commands.items()},
                "keyset": dict(self._keyset) if self._keyset else None,
                "tamper": dict(self._tamper_state),
            }

    def _release(self) -> None:
        self._pd = None  # libosdp's teardown

    # -- start-up --------------------------------------------------------------------------------------

    def _load_key(self) -> Optional[bytes]:
        """The SCBK to start with: the file's, or ``None`` (install mode without a key yet, or no SC)."""
        config = self._config
        if not config.secure_channel or config.scbk_file is None:
            return None
        if config.install_mode and not config.scbk_file.exists():
            logger.warning(
                "osdp.scbk_file %s does not exist yet: install mode, waiting for the panel's key",
                config.scbk_file,
            )
            return None
        return load_scbk(config.scbk_file)

    # -- the owner thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._serve_passages()
                self._refresh()
                self._follow_link()
                self._serve_tamper()
                self._expire()
                self._wake.wait(TICK_S)
                self._wake.clear()
        except Exception:
            logger.exception("the OSDP reader thread failed; the panel will see this reader offline")
        finally:
            if self._pending:
                self._withdraw("link_down")
            self._end_link()

    def _refresh(self) -> None:
        self._keep_port()
        self._pd.refresh()

    def _follow_link(self) -> None:
        online, secure = bool(self._pd.is_online()), bool(self._pd.is_sc_active())
        usable = self._note_link(online, secure)
        now = time.monotonic()
        if usable != self._usable:
            self._usable = usable
            if not usable:
                self._down = (now, "no_polls" if not online else "secure_channel_down")
                if self._pending:
                    self._withdraw("link_down")
                self._awaiting = None
        if usable and not self._announced:
            self._announce(True, "")
        elif not usable and self._announced and self._down is not None and now - self._down[0] > LINK_GRACE_S:
            self._announce(False, self._down[1])
        self._watch_key(online, secure, now)
        if self._awaiting is not None and now - self._awaiting[1] > self._config.panel_decision_s:
            with self._lock:
                self._counts["panel_no_answer"] += 1
            self._awaiting = None

    def _watch_key(self, online: bool, secure: bool, now: float) -> None:
        """WARN (at most hourly) when the panel talks but no Secure Channel comes up: a key mismatch."""
        if not (self._config.secure_channel and online and not secure):
            self._insecure_since = None
        elif self._insecure_since is None:
            self._insecure_since = now
        elif now - self._insecure_since > NO_SECURE_WARNING_S:
            logger.warning(
                "the panel polls this reader but no Secure Channel comes up: the panel and "
                "osdp.scbk_file must hold the same key (or commission the reader with osdp.install_mode)"
            )
            self._insecure_since = now + 3600.0

    def _announce(self, up: bool, reason: str) -> None:
        """``osdp_online`` / ``osdp_offline``: the link became usable, or has not been for LINK_GRACE_S."""
        self._announced = up
        if up:
            self._tamper_reported = False  # a panel that restarted assumes a closed housing
            secure = self._link == "secure"
            logger.info("OSDP panel link up (Secure Channel %s)", "active" if secure else "off")
            self._send("osdp_online", {"secure_channel": secure, "address": self._config.address})
            return
        logger.log(
            logging.INFO if reason == "closed" else logging.WARNING, "OSDP panel link down (%s)", reason
        )
        self._send("osdp_offline", {"reason": reason})

    def _expire(self) -> None:
        if self._pending and time.monotonic() - self._pending[0][1] > self._config.card_read_ttl_s:
            self._withdraw("not_collected")

    def _withdraw(self, reason: str) -> None:
        """Take every queued card read back from libosdp (each one refused with ``reason``)."""
        self._withdraw_reason = reason
        try:
            self._pd.flush_events()  # each flushed event comes back through _on_event_done
        except Exception:
            logger.exception("withdrawing queued OSDP card reads failed")
        while self._pending:  # any libosdp did not report back
            event_id, _ = self._pending.popleft()
            self._withdrawn(event_id)

    def _withdrawn(self, event_id: str) -> None:
        with self._lock:
            self._counts["withdrawn"] += 1
        why = (
            f"the panel did not collect it within osdp.card_read_ttl_s ({self._config.card_read_ttl_s:g} s)"
            if self._withdraw_reason == "not_collected"
            else "the panel link went down before the panel collected it"
        )
        self._refuse(event_id, self._withdraw_reason, f"withdrawn: {why}", count=False)

    # -- the doors' tamper → local status ------------------------------------------------------------

    def _serve_tamper(self) -> None:
        while True:
            try:
                door_id, active = self._tamper_news.get_nowait()
            except queue.Empty:
                break
            if active:
                self._tampered.add(door_id)
            else:
                self._tampered.discard(door_id)
        wanted = bool(self._tampered)
        with self._lock:
            self._tamper_state["active"] = wanted
        if not self._usable or self._status_in_flight or wanted == self._tamper_reported:
            return
        lib = self._lib
        report = {
            "event": lib.EVENT_STATUS,
            "type": lib.STATUS_REPORT_LOCAL,
            "report": bytes([int(wanted), 0]),
        }
        if self._pd.submit_event(report):  # bit 0 of each byte: tamper, then power (0: normal)
            self._status_in_flight = True
            logger.info(
                "OSDP: local status queued for the panel (tamper %s)", "active" if wanted else "normal"
            )

    def _status_done(self, event: Mapping[str, Any], status: int) -> None:
        """libosdp is done with a local status report: collected (the panel knows), or flushed (sent again)."""
        self._status_in_flight = False
        if status != self._lib.COMPLETION_OK:
            return
        report = bytes(event.get("report") or b"\0")
        self._tamper_reported = bool(report[0] & 1)
        with self._lock:
            self._tamper_state["reported"] = self._tamper_reported
            self._tamper_state["reports"] += 1

    # -- passages → card reads --------------------------------------------------------------------------

    def _credential(self, passage: Passage) -> Optional[str]:
        """What to report for ``passage`` (a credential string), or ``None`` for nothing to report."""
        config = self._config
        if passage.decision == "granted":
            return passage.credential or ""
        if passage.decision == "denied" and config.report_denied and passage.reason not in NEVER_REPORTED:
            return passage.credential or ""
        if passage.decision == "unknown" and config.unknown_card is not None:
            return config.unknown_card
        return None

    def _serve_passages(self) -> None:
        while True:
            try:
                passage = self._passages.get_nowait()
            except queue.Empty:
                return
            self._report(passage)

    def _report(self, passage: Passage) -> None:
        credential = self._credential(passage)
        if credential is None:
            logger.debug(
                "passage %s (%s): nothing to report to the panel", passage.event_id, passage.decision
            )
            return
        if not credential:
            self._refuse(
                passage.event_id,
                "no_credential",
                "the identity has no external id (enrol it with --external-id, its badge number)",
            )
            return
        try:
            card = encode(credential, self._config.credential)
        except UnfitCredentialError as err:
            self._refuse(passage.event_id, "credential_unfit", f"{err} (osdp.credential)")
            return
        if not self._usable:
            reason = "not_secure" if self._config.secure_channel and self._link == "online" else "offline"
            self._refuse(passage.event_id, reason, f"the panel link is {self._link}")
            return
        lib = self._lib
        event = {
            "event": lib.EVENT_CARDREAD,
            "reader_no": 0,
            "direction": 0,
            "format": lib.CARD_FMT_RAW_WIEGAND if card.wiegand else lib.CARD_FMT_RAW_UNSPECIFIED,
            "length": card.bits,
            "data": card.data,
        }
        if not self._pd.submit_event(event):
            self._refuse(passage.event_id, "queue_full", "libosdp's event queue is full")
            return
        self._pending.append((passage.event_id, time.monotonic()))
        with self._lock:
            self._counts["sent"] += 1
        logger.info("passage %s: card read queued for the panel (%d bits)", passage.event_id, card.bits)
        logger.debug("passage %s: card data %s", passage.event_id, card.bit_string())

    def _refuse(self, event_id: str, reason: str, why: str, count: bool = True) -> None:
        """Log, count (in ``refused`` unless ``count`` is false: a withdrawn read) and report a refusal."""
        logger.warning("passage %s: no card read sent to the panel (%s): %s", event_id, reason, why)
        if count:
            with self._lock:
                self._refused[reason] += 1
        self._send("osdp_report_refused", {"access_event_id": event_id, "reason": reason})

    # -- libosdp callbacks (inside refresh(), on the owner thread) -------------------------------------

    def _on_event_done(self, event: Mapping[str, Any], status: int) -> None:
        """libosdp is done with a queued card read (collected by the panel, or withdrawn) or a status report."""
        if event.get("event") == self._lib.EVENT_STATUS:
            self._status_done(event, status)
            return
        if not self._pending:
            return
        event_id, _ = self._pending.popleft()
        if status == self._lib.COMPLETION_OK:
            with self._lock:
                self._counts["delivered"] += 1
            logger.info("passage %s: the panel collected the card read", event_id)
            if self._config.panel_decision_s > 0:
                self._awaiting = (event_id, time.monotonic())
        else:
            self._withdrawn(event_id)

    def _on_command(self, command: Mapping[str, Any]) -> Tuple[int, None]:
        """One command from the panel; ``(0, None)`` accepts it, ``(-1, None)`` answers NAK.

        The tuple is built afresh on every call (``status`` is a variable): libosdp's C callback
        releases a reference to the tuple's second item that it never took, so a constant tuple
        such as ``return 0, None`` would take one reference from ``None`` per command, until Python
        < 3.12 aborts ("deallocating None").
        """
        status = -1
        try:
            kind = self._names.get(command.get("command", -1), "unknown")
            status = self._handle(kind, command)
        except Exception:
            logger.exception("handling an OSDP command from the panel failed")
            status = -1
        return (status, None)

    def _handle(self, kind: str, command: Mapping[str, Any]) -> int:
        summary = summarize(kind, command)
        status = 0
        if kind == "keyset":
            stored = self._store_key(command)
            summary["stored"] = stored
            status = 0 if stored else -1
            with self._lock:
                self._keyset = {"ts": utc_now(), "stored": stored}
        elif kind in ("comset", "manufacturer", "file_transfer"):
            status = -1
            if kind == "comset":
                logger.warning(
                    "the panel asked this reader to move to address %s at %s baud: refused; change "
                    "osdp.address / osdp.baud_rate in the configuration and on the panel together",
                    summary.get("address"),
                    summary.get("baud_rate"),
                )
        summary["accepted"] = status == 0
        summary["ts"] = utc_now()
        with self._lock:
            previous = self._last_commands.get(kind)
            self._commands[kind] += 1
            self._last_commands[kind] = summary
        if previous is None or _without_ts(previous) != _without_ts(summary):
            logger.info("panel command %s", _describe(summary))
        else:
            logger.debug("panel command %s (again)", _describe(summary))
        decision = verdict(kind, command)
        if decision is not None and self._awaiting is not None:
            self._decided(decision, summary)
        return status

    def _decided(self, decision: str, summary: Dict[str, Any]) -> None:
        assert self._awaiting is not None
        event_id, collected = self._awaiting
        self._awaiting = None
        after_ms = int((time.monotonic() - collected) * 1000)
        led = {key: value for key, value in summary.items() if key not in ("command", "ts", "accepted")}
        with self._lock:
            self._counts[f"panel_{decision}"] += 1
            self._last_decision = {"decision": decision, "access_event_id": event_id, "ts": summary["ts"]}
        logger.info(
            "passage %s: the panel answered %s (%d ms after the card read)", event_id, decision, after_ms
        )
        self._send(f"panel_{decision}", {"access_event_id": event_id, "led": led, "after_ms": after_ms})

    def _store_key(self, command: Mapping[str, Any]) -> bool:
        """Take the panel's new SCBK (install mode only); ``True`` when it is stored in ``osdp.scbk_file``."""
        config = self._config
        if not config.install_mode or config.scbk_file is None:
            logger.warning(
                "the panel sent a new Secure Channel key: refused (set osdp.install_mode = true to let "
                "the panel set the reader's key)"
            )
            return False
        key = command.get("data")
        if not isinstance(key, (bytes, bytearray)) or command.get("type") != 1:
            logger.warning("the panel sent a KEYSET this reader cannot take (not a 16-byte SCBK)")
            return False
        try:
            store_scbk(config.scbk_file, bytes(key))
        except (OSError, ValueError) as err:
            logger.error(
                "the panel's new Secure Channel key cannot be stored in osdp.scbk_file (%s): refused, the old "
                "key stays; make the file writable by the appliance",
                err,
            )
            return False
        logger.warning(
            "the panel set a new Secure Channel key; set osdp.install_mode = false now that the reader is commissioned"
        )
        return True


def _without_ts(summary: Mapping[str, Any]) -> Dict[str, Any]:
    return {key: value for key, value in summary.items() if key != "ts"}


def _describe(summary: Mapping[str, Any]) -> str:
    """``led on_color=green temporary=True …`` for a log line (no secrets are ever in a summary)."""
    fields = " ".join(f"{key}={value}" for key, value in summary.items() if key not in ("command", "ts"))
    return f"{summary['command']} {fields}"


__all__ = ["TICK_S", "OsdpReader"]
