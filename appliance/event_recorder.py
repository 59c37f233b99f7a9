"""Decisions become access events: written to the durable outbox before anyone is told.

:class:`EventRecorder` runs on the pipeline thread. An event that cannot be stored (a full disk) is
counted and reported in ``…/state``; recognition keeps running and the next event tries again.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

from .attack_guard import SPOOF_ALARM
from .config import ApplianceConfig
from .event_mac import EventKey
from .events import access_event, encode
from .logs import journal_fields, model_fields
from .metrics import Latencies
from .outbox import Outbox, OutboxError
from .peripherals import EmitDoorEvent, Passage
from .pipeline import Outcome

if TYPE_CHECKING:
    from .gallery.store import Identity

logger = logging.getLogger(__name__)

#: ``MESSAGE_ID`` of the journal record of every stored access event (``journalctl MESSAGE_ID=…``).
ACCESS_EVENT_MESSAGE_ID = "8037ef14ad984b498dce0ba7b315f228"


def access_event_fields(event: Dict[str, Any]) -> Dict[str, str]:
    """The journal fields of a stored access event: ids, the decision and the model versions.

    ``DECISION``, ``REASON`` (``denied`` only), ``EVENT_ID``, ``IDENTITY_ID`` (when the event names
    an identity), ``CAMERA_ID``, ``TRACK_ID`` (not for a passage without a face), ``MODEL_DETECTOR``/``MODEL_EMBEDDER``/… and
    ``MESSAGE_ID``; never the name, the face crop, the score or the box.
    """
    identity = event.get("identity")
    fields = journal_fields(
        {
            "MESSAGE_ID": ACCESS_EVENT_MESSAGE_ID,
            "DECISION": event["decision"],
            "REASON": event.get("reason"),
            "EVENT_ID": event["event_id"],
            "IDENTITY_ID": identity["id"] if identity else None,
            "CAMERA_ID": event.get("camera_id"),
            "TRACK_ID": event["track_id"],
        }
    )
    fields.update(model_fields(event.get("models") or {}))
    return fields


class EventRecorder:
    """Turns pipeline outcomes into stored access events (each with the ``camera_id`` of its outcome).

    Args:
        config: device and event settings.
        outbox: the durable outbox.
        latencies: where ``capture_to_outbox`` goes (the frame's capture to the event in the outbox:
            the event's own ``latency_ms``).
        notify: tells the MQTT link that events are waiting.
        print_events: also write each event as a JSON line to stdout (the demo's view).
        on_passage: told of each stored event (the door's relay, an OSDP panel), after it is stored.
        identity_of: an identity of the gallery, or ``None``: its ``external_id`` (the badge number a
            panel knows) and its groups (the door's first person in) go to the door.
        on_stored: told of each outcome whose event was stored, with its ``event_id`` (the template
            update, :mod:`appliance.template_update`); pipeline thread, after the door is told.
        on_alarm: ``emit(kind, details)`` of a door event (:meth:`appliance.peripherals.PeripheralHub.emitter`):
            the spoof alarm an outcome raised goes out through it, with its ``access_event_id``.
        event_key: signs each event (its ``mac``, :mod:`appliance.event_mac`) when the site's fleet
            key is set, so that the area's other doors can trust it.
    """

    def __init__(
        self,
        config: ApplianceConfig,
        outbox: Outbox,
        latencies: Latencies,
        notify: Callable[[], None],
        print_events: bool = False,
        on_passage: Optional[Callable[[Passage], None]] = None,
        identity_of: Optional[Callable[[str], Optional[Identity]]] = None,
        on_stored: Optional[Callable[[Outcome, str], None]] = None,
        on_alarm: Optional[EmitDoorEvent] = None,
        event_key: Optional[EventKey] = None,
    ) -> None:
        self.config = config
        self._event_key = event_key
        self._on_alarm = on_alarm
        self._on_stored = on_stored
        self._on_passage = on_passage
        self._identity_of = identity_of
        self.outbox = outbox
        self.latencies = latencies
        self._notify = notify
        self.print_events = print_events
        self.events_total = 0
        #: Events stored per camera id.
        self.camera_events: Dict[str, int] = {}
        # With several cameras the log line names the camera (with one, it reads as it always did).
        cameras = config.configured_cameras
        self._directions = config.camera_directions
        self._camera_words = {c.id: f"camera {c.id}, " for c in cameras} if len(cameras) > 1 else {}
        #: Events that could not be written to the outbox (a full disk), ever; and the current error.
        self.events_lost = 0
        self.outbox_error: Optional[str] = None

    def record(self, outcomes: List[Outcome], models: Dict[str, str]) -> None:
        """Store one event per outcome, then notify the link once."""
        if not outcomes:
            return
        for outcome in outcomes:
            latency_ms = (time.monotonic() - outcome.captured_at) * 1000.0
            crop = outcome.crop if self.config.events.face_crop else None
            event = access_event(
                outcome.decision,
                self.config.device.id,
                outcome.camera_id,
                models,
                latency_ms,
                crop,
                self.config.events.crop_quality,
                self._directions.get(outcome.camera_id),
            )
            if self._event_key is not None:
                self._event_key.sign(event)
            payload = encode(event)
            try:
                self.outbox.put(event["event_id"], payload)
            except OutboxError as err:  # disk full, I/O error: keep recognising, report, retry next event
                self._failed(err, event["decision"])
                continue
            self._works()
            self.events_total += 1
            self.camera_events[outcome.camera_id] = self.camera_events.get(outcome.camera_id, 0) + 1
            self.latencies.record("capture_to_outbox", latency_ms)
            if outcome.decision.faceless:
                logger.info(
                    "access event: %s, %s%s without a face",
                    event["decision"],
                    self._camera_words.get(outcome.camera_id, ""),
                    " and ".join(outcome.decision.factors),
                    extra=access_event_fields(event),
                )
            else:
                logger.info(
                    "access event: %s, %strack %d, %d frames",
                    event["decision"],
                    self._camera_words.get(outcome.camera_id, ""),
                    outcome.decision.track_id,
                    outcome.decision.frames,
                    extra=access_event_fields(event),
                )
            logger.debug(
                "camera %s, track %d: %s",
                outcome.camera_id,
                outcome.decision.track_id,
                outcome.decision.reason,
            )
            if self.print_events:
                sys.stdout.write(payload.decode("utf-8") + "\n")
                sys.stdout.flush()
            self._tell_door(event)
            if outcome.alarm is not None and self._on_alarm is not None:
                self._on_alarm(SPOOF_ALARM, {**outcome.alarm, "access_event_id": event["event_id"]})
            if self._on_stored is not None:
                self._on_stored(outcome, event["event_id"])
        self._notify()

    def _tell_door(self, event: Dict[str, Any]) -> None:
        """The stored event, as the door's devices need it (pipeline thread; they must not block)."""
        if self._on_passage is None:
            return
        identity = event["identity"]["id"] if event["identity"] else None
        found = (
            self._identity_of(identity) if identity is not None and self._identity_of is not None else None
        )
        credential, groups = (found.external_id, found.policy.groups) if found is not None else (None, ())
        self._on_passage(
            Passage(
                event["event_id"],
                event["decision"],
                event["reason"],
                identity,
                credential,
                groups,
                event["camera_id"],
            )
        )

    def _failed(self, err: OutboxError, decision: str) -> None:
        """An event could not be stored: counted, logged once per episode, shown in the state."""
        self.events_lost += 1
        if self.outbox_error is None:
            logger.error(
                "the outbox cannot store events (%s); access events are lost until it can again (is the "
                "disk full?); the daemon keeps running",
                err,
            )
        else:
            logger.warning("access event lost (%s): the outbox still cannot store events", decision)
        self.outbox_error = str(err)

    def _works(self) -> None:
        if self.outbox_error is not None:
            logger.info("the outbox stores events again; %d event(s) were lost in all", self.events_lost)
            self.outbox_error = None


__all__ = ["ACCESS_EVENT_MESSAGE_ID", "EventRecorder", "access_event_fields"]
