"""Walk-up enrolment: the face kept for an access event the door decided ``unknown`` becomes a new
person's enrolled template — the visitor stands at the door, the operator gives their name and the
event's id.

The face comes from the sightings store (``events.keep_crops_h``, or ``[unknowns]`` for unknown
visitors) with the other views of it kept with the event (``events.walk_up_views``,
:mod:`appliance.face_views`); each goes through the enrolment checks as a photo would
(:func:`appliance.enrollment.crop_as_photo`), the best are enrolled (up to
``gallery.max_enrolled_templates``), and once enrolled the event's faces are deleted from the store:
the gallery's copies are the only ones.

Used by the MQTT command ``enroll`` with ``event_id`` (:mod:`appliance.command_service`, on the pipeline
thread) and by ``face-appliance gallery enroll-event``.
"""

from __future__ import annotations

import logging
from typing import Optional

from ..access.policy import IdentityPolicy
from ..decisions import UNKNOWN
from ..enrollment import Enroller, EnrollmentResult, crop_as_photo
from .errors import MarkError, NotKeptError
from .store import SightingStore

logger = logging.getLogger(__name__)


def enroll_from_event(
    enroller: Enroller,
    sightings: Optional[SightingStore],
    event_id: str,
    identity_id: str,
    name: str,
    external_id: Optional[str],
    consent_at: str,
    policy: Optional[IdentityPolicy] = None,
) -> EnrollmentResult:
    """Enrol the face kept for access event ``event_id`` as ``identity_id``.

    Args:
        sightings: the sightings store, ``None`` when no face is kept on this appliance.

    Returns:
        The enrolment's result, a verdict per view; no template stored when every view failed the
        enrolment checks (the faces then stay kept).

    Raises:
        NotKeptError: no face is kept for that event (keeping is off, it expired, it was enrolled
            already, not this appliance's event).
        MarkError: ``not_unknown``: the door knew the face (granted, or denied by the policy or for
            liveness).
        IdentityError: the id is taken by another name, or is not allowed.
    """
    face = sightings.face(event_id) if sightings is not None else None
    if face is None or face.crop is None:
        reason = (
            "faces of access events are not kept on this appliance (events.keep_crops_h = 0, [unknowns] off)"
            if sightings is None
            else "it expired (events.keep_crops_h, unknowns.retention_h), was enrolled already, was not "
            "recorded on this appliance, or is not an access event id"
        )
        raise NotKeptError(f"no face is kept for event {event_id!r}: {reason}")
    if face.decision != UNKNOWN:
        raise MarkError(
            f"event {event_id!r} was {face.decision}: the door knew that face (or refused it for liveness); "
            "only an unknown visitor's face is enrolled from an event",
            "not_unknown",
        )
    photos = [(f"event {event_id}", crop_as_photo(face.crop))]
    if sightings is not None:
        photos.extend(
            (f"event {event_id}, view {rank}", crop_as_photo(view))
            for rank, view in enumerate(sightings.views(event_id), 2)
        )
    result = enroller.enroll(
        identity_id,
        name,
        photos,
        external_id,
        consent_at,
        largest=True,  # the kept crop, framed: its one face
        policy=policy,
    )
    if result.template_ids and sightings is not None:
        sightings.forget_event(event_id)
        logger.info("an unknown visitor's kept face was enrolled")
    return result


__all__ = ["enroll_from_event"]
