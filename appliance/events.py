"""Access events: the versioned JSON documents published on ``{prefix}/{device_id}/events``.

Schema 1 (DESIGN §5.3)::

    {"schema": 1, "event_id": UUID, "ts": RFC 3339 UTC with ms, "device_id", "camera_id",
     "decision": "granted" | "denied" | "unknown", "reason": null | "expired" | …,
     "identity": {"id", "name"} | null,
     "score", "threshold", "track_id", "frames", "liveness": {"score", "passed"} | null,
     "models": {"detector", "embedder", …}, "face": {"box": [x, y, w, h], "quality"},
     "latency_ms"}

plus ``"crop"`` (base64 JPEG of the face) only when ``events.face_crop`` is on. Never an embedding.
A camera with a direction adds ``"direction": "in" | "out"``; a passback that ``soft`` anti-passback
granted adds ``"anti_passback": "violation"`` (:mod:`appliance.access.passback`; a ``hard`` one is
``denied`` with the reason ``anti_passback``); a grant that completed the held grants of the
two-person rule adds ``"companions": [identity ids]`` (:mod:`appliance.access.two_person`; a held
grant is ``denied`` with the reason ``two_person``); a grant a card or PIN completed adds
``"factors": ["face", "card" | "pin"]``, and ``"duress": true`` when the PIN was the duress PIN
(:mod:`appliance.access.second_factor`; a held face is ``denied`` with the reason ``second_factor``,
a card or PIN that was not the waiting person's with ``wrong_credential``). All were added within
schema 1, as optional keys.

**Schema 2** is a passage without a face (:mod:`appliance.access.without_face`): a card, or a card
and PIN, of someone enrolled without a face, or a card nobody holds (``unknown``). It is a schema-1
document whose ``face``, ``score``, ``track_id`` and ``liveness`` are null and ``frames`` 0, with
``"factors": ["card"]`` or ``["card", "pin"]``. Only these events carry 2: a consumer that checks the
schema, as a versioned document asks, skips what it cannot read rather than misread it; every other
event stays schema 1.
``event_id`` is unique per event: consumers de-duplicate redelivered events by it.

``reason`` says why a ``denied`` passage was denied: ``liveness`` (the vote's liveness check failed;
``identity`` stays null, as the face may be a photo of someone) or the access policy's reason
(``expired``, ``not_yet_valid``, ``suspended``, ``not_in_group``, ``outside_schedule``, ``holiday``,
``anti_passback``, ``two_person``, ``second_factor``, ``wrong_credential``, ``credential_lockout``,
``lockout``;
``identity`` names the recognised person). It is null for ``granted`` and ``unknown``. It was added
within schema 1: a schema-1 consumer that ignores unknown keys reads the same documents as before,
only ``denied`` is now also sent for recognised people outside their policy. The vote's own reasoning
stays out of the event (it names the runner-up identity, someone who is not at the door); it is
logged at DEBUG.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime, timezone
from typing import Any, Dict, Mapping, Optional

import cv2
import numpy as np

from .decisions import Decision

SCHEMA_VERSION = 1
#: The schema of an access event without a face (see the module).
FACELESS_SCHEMA_VERSION = 2


def rfc3339_now() -> str:
    """The current UTC time, RFC 3339 with milliseconds: ``2026-11-23T17:40:12.345Z``."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def access_event(
    decision: Decision,
    device_id: str,
    camera_id: str,
    models: Mapping[str, str],
    latency_ms: float,
    crop: Optional[np.ndarray] = None,
    crop_quality: int = 85,
    direction: Optional[str] = None,
) -> Dict[str, Any]:
    """The event document for one decision.

    Args:
        crop: ``(112, 112, 3)`` uint8 aligned face to embed as JPEG, or ``None``.
        direction: the camera's (``in`` / ``out``), or ``None``.
    """
    faceless = decision.faceless
    x1, y1, x2, y2 = (float(v) for v in decision.box)
    event: Dict[str, Any] = {
        "schema": FACELESS_SCHEMA_VERSION if faceless else SCHEMA_VERSION,
        "event_id": str(uuid.uuid4()),
        "ts": rfc3339_now(),
        "device_id": device_id,
        "camera_id": camera_id,
        "decision": decision.decision,
        "reason": decision.access_reason,
        "identity": (
            {"id": decision.identity_id, "name": decision.name}
            if decision.identity_id is not None
            and (decision.decision == "granted" or decision.access_reason not in (None, "liveness"))
            else None
        ),
        "score": None if decision.score is None else round(float(decision.score), 4),
        "threshold": round(float(decision.threshold), 4),
        "track_id": None if faceless else int(decision.track_id),
        "frames": int(decision.frames),
        "liveness": (
            None
            if decision.liveness is None
            else {"score": round(float(decision.liveness[0]), 4), "passed": bool(decision.liveness[1])}
        ),
        "models": dict(models),
        "face": None
        if faceless
        else {
            "box": [round(x1, 1), round(y1, 1), round(x2 - x1, 1), round(y2 - y1, 1)],
            "quality": round(float(decision.quality), 3),
        },
        "latency_ms": round(float(latency_ms), 1),
    }
    if direction is not None:
        event["direction"] = direction
    if decision.anti_passback is not None:
        event["anti_passback"] = decision.anti_passback
    if decision.companions:
        event["companions"] = list(decision.companions)
    if decision.factors:
        event["factors"] = list(decision.factors)
    if decision.duress:
        event["duress"] = True
    if crop is not None and not faceless:
        ok, jpeg = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, crop_quality])
        if ok:
            event["crop"] = base64.b64encode(jpeg.tobytes()).decode("ascii")
    return event


#: Keys a door event's details may not override.
DOOR_EVENT_KEYS = ("schema", "event_id", "ts", "device_id", "source", "kind")


def door_event(device_id: str, source: str, kind: str, details: Mapping[str, Any]) -> Dict[str, Any]:
    """A door event (``{prefix}/{device_id}/door``, see :mod:`appliance.peripherals`) from a peripheral.

    Args:
        source: the peripheral's name (``door``, ``osdp``).
        kind: what happened (``door_forced``, ``exit_request``, ``panel_granted``, …).
        details: JSON-ready fields of that kind; they cannot replace the envelope's keys.
    """
    event: Dict[str, Any] = {key: value for key, value in details.items() if key not in DOOR_EVENT_KEYS}
    event.update(
        {
            "schema": SCHEMA_VERSION,
            "event_id": str(uuid.uuid4()),
            "ts": rfc3339_now(),
            "device_id": device_id,
            "source": source,
            "kind": kind,
        }
    )
    return event


def encode(event: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
