"""This is not X: an access event's kept face becomes an impostor example of the identity it was
wrongly granted to.

The face (crop and embedding) comes from the sightings store (``events.keep_crops_h``); the impostor
example goes into the gallery (sealed, deleted with the identity). From then on a face closer to one
of X's impostor examples than to X's best template is not granted to X (:meth:`Gallery.search` marks
the candidate, :mod:`appliance.decisions` leaves it out of the frame's vote). Once marked, the face is
deleted from the sightings store: the gallery's copy is the only one.

Used by the MQTT command ``not_this`` (:mod:`appliance.command_service`, on the pipeline thread) and by
``face-appliance gallery not-this``.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Optional

import numpy as np

from ..decisions import GRANTED
from ..gallery.gallery import Gallery
from .errors import MarkError, NotKeptError
from .store import SightingStore

logger = logging.getLogger(__name__)

#: Impostor examples one identity may hold: a mark is for a rare wrong grant, not a black list.
MAX_PER_IDENTITY = 50

#: ``(N, 112, 112, 3)`` uint8 crops → ``(N, D)`` float32 embeddings of the active embedder.
Embed = Callable[[np.ndarray], np.ndarray]


def mark_not(
    gallery: Gallery,
    sightings: Optional[SightingStore],
    event_id: str,
    identity_id: Optional[str] = None,
    embed: Optional[Embed] = None,
    keep_h: float = 0.0,
) -> Dict[str, Any]:
    """Make the face of access event ``event_id`` an impostor example of the identity it was granted to.

    Args:
        sightings: the sightings store, ``None`` when faces are not kept (``events.keep_crops_h`` 0).
        identity_id: the identity the operator says it is not (optional; must be the event's).
        embed: the active embedder, used only when the face was embedded by another model version.
        keep_h: ``events.keep_crops_h``, for the messages.

    Returns:
        ``{"event_id", "identity_id", "impostor_id", "impostors", "already"}``, and
        ``"templates_removed"``: the adaptive templates the wrong grant had taught the identity
        (``[adaptive]``, their ``source_event`` is the event), deleted with the mark.

    Raises:
        NotKeptError: no face is kept for that event (keeping is off, it expired, not this
            appliance's event).
        MarkError: ``not_a_grant`` (denied or unknown), ``wrong_identity`` (granted to another
            identity), ``no_identity`` (removed since), ``other_model`` (embedded by another model and
            no embedder here), ``too_many`` (the identity's examples are full).
    """
    for known in gallery.store.impostors(identity_id):
        if known.source_event == event_id:
            return _result(gallery, event_id, known.identity_id, known.id, already=True)
    if sightings is None:
        raise NotKeptError(
            "faces of access events are not kept on this appliance (events.keep_crops_h = 0); set it "
            "(hours) so that the next wrong grant can be marked"
        )
    face = sightings.face(event_id)
    if face is None:
        raise NotKeptError(
            f"no face is kept for event {event_id!r}: it is older than events.keep_crops_h "
            f"({keep_h:g} h), was not recorded on this appliance, or is not an access event id"
        )
    if face.decision != GRANTED or face.identity_id is None:
        raise MarkError(
            f"event {event_id!r} was {face.decision}, not a grant: only a face granted to an identity can "
            "be marked as not that identity",
            "not_a_grant",
        )
    if identity_id is not None and identity_id != face.identity_id:
        raise MarkError(
            f"event {event_id!r} was granted to another identity than {identity_id!r}; check the event id",
            "wrong_identity",
        )
    owner = face.identity_id
    if gallery.store.identity(owner) is None:
        raise MarkError(
            f"the identity event {event_id!r} was granted to has been removed since", "no_identity"
        )
    if len(gallery.store.impostors(owner)) >= MAX_PER_IDENTITY:
        raise MarkError(
            f"identity {owner!r} has {MAX_PER_IDENTITY} impostor examples already: its templates may be "
            "poor; enrol it again from better photos (`gallery impostors --remove N` frees a place)",
            "too_many",
        )
    embedding = face.embedding
    if face.model_version != gallery.model_version:
        if embed is None or face.crop is None:
            raise MarkError(
                f"the face of event {event_id!r} was embedded by {face.model_version}, the gallery now uses "
                f"{gallery.model_version}, and no embedder is loaded to embed it again",
                "other_model",
            )
        embedding = np.asarray(embed(face.crop[None]), np.float32)[0]
    impostor_id = gallery.add_impostor(owner, embedding, face.crop, event_id, face.score)
    # A wrong grant may have taught the identity an adaptive template ([adaptive]): it goes too.
    learned = [
        info.id for info in gallery.store.template_infos(owner) if info.origin.source_event == event_id
    ]
    for template_id in learned:
        gallery.remove_template(owner, template_id)
    sightings.forget_event(event_id)
    logger.info("an access event's face became an impostor example of its identity")
    result = _result(gallery, event_id, owner, impostor_id, already=False)
    result["templates_removed"] = learned
    return result


def _result(gallery: Gallery, event_id: str, owner: str, impostor_id: int, already: bool) -> Dict[str, Any]:
    return {
        "event_id": event_id,
        "identity_id": owner,
        "impostor_id": impostor_id,
        "impostors": len(gallery.store.impostors(owner)),
        "already": already,
        "templates_removed": [],
    }


__all__ = ["MAX_PER_IDENTITY", "mark_not"]
