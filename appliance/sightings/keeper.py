"""The daemon's keeper of faces: access events' faces written to the sightings store off the pipeline
thread.

The pipeline thread only hands over what it has in memory (:meth:`SightingKeeper.offer`: the event id,
the decision and the track's best embedded frame — crop and embedding — with an unknown face's other
views) into a bounded queue, and goes on; a thread of the keeper's own owns the writes (sealing, PNG
encoding, an SQLite transaction with ``synchronous=FULL``, clustering an unknown face) and the
periodic expiry. A full queue (the disk
stalls) drops the face, counted and logged once per episode — never the pipeline's time.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

from ..decisions import UNKNOWN
from ..pipeline import Outcome
from .errors import SightingError
from .store import ClusterSettings, SeenFace, SightingStore

logger = logging.getLogger(__name__)

#: Faces waiting for the keeper's thread at most.
QUEUE_SIZE = 64
#: How often the keeper deletes what expired (the store also expires before each write).
EXPIRY_INTERVAL_S = 60.0


@dataclass(frozen=True)
class _Forget:
    """A queued :meth:`SightingKeeper.forget_identity`: after the faces offered before it."""

    identity_id: str


@dataclass(frozen=True)
class KeepSettings:
    """What is kept: every event's face for ``keep_s`` seconds (0: none), and with ``clusters`` the
    faces decided ``unknown`` as members of clusters of unknown visitors."""

    keep_s: float
    clusters: Optional[ClusterSettings] = None

    @property
    def active(self) -> bool:
        return self.keep_s > 0 or self.clusters is not None


class SightingKeeper:
    """Writes kept faces to ``store`` on a thread of its own. :meth:`close` is idempotent.

    Args:
        store: the opened sightings store (this keeper's thread writes; others may read).
        settings: what to keep.
        wall_clock: Unix seconds of a face's ``seen_at`` (the store's clock decides expiry).
    """

    def __init__(
        self, store: SightingStore, settings: KeepSettings, wall_clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.settings = settings
        self._clock = wall_clock
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_SIZE)  # of SeenFace, _Forget, None (stop)
        self._thread: Optional[threading.Thread] = None
        self._closed = False
        #: Faces written, and faces lost (a full queue, a failed write), ever.
        self.kept = 0
        self.lost = 0
        self.error: Optional[str] = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sightings", daemon=True)
        self._thread.start()

    # -- the pipeline thread -------------------------------------------------------------------------

    def offer(self, outcome: Outcome, event_id: str) -> None:
        """Hand over one stored event's face (pipeline thread; never blocks). Kept when its decision is
        to be kept and the track was embedded (``outcome.sample``)."""
        sample = outcome.sample
        decision = outcome.decision
        if sample is None or self._closed:
            return
        if self.settings.keep_s <= 0 and not (
            self.settings.clusters is not None and decision.decision == UNKNOWN
        ):
            return
        face = SeenFace(
            event_id=event_id,
            seen_at=self._clock(),
            camera_id=outcome.camera_id,
            decision=decision.decision,
            identity_id=decision.identity_id,
            score=decision.score,
            quality=float(sample.quality),
            model_version=sample.model_version,
            embedding=sample.embedding,
            crop=sample.crop,
            # Only an unknown face is enrolled from its event (walk-up enrolment): only its views are kept.
            views=tuple(view.crop for view in outcome.views) if decision.decision == UNKNOWN else (),
        )
        try:
            self._queue.put_nowait(face)
        except queue.Full:
            self.lost += 1
            if self.error is None:
                logger.warning(
                    "sightings: the writer is behind (%d faces waiting); a face was not kept", QUEUE_SIZE
                )
            self.error = "the writer is behind"

    def forget_identity(self, identity_id: str) -> None:
        """The faces kept of ``identity_id``'s passages go (any thread: the gallery's change; the
        person was removed or their face forgotten): now, and again on the keeper's thread after the
        faces offered before this call, which it would otherwise write afterwards."""
        self.store.forget_identity(identity_id)
        if self._thread is None or self._closed:
            return
        try:
            self._queue.put_nowait(_Forget(identity_id))
        except queue.Full:  # the writer is behind: what waits is written and stays until its expiry
            logger.warning(
                "sightings: the writer is behind; faces of a forgotten face may be kept until they expire"
            )

    # -- the keeper's thread -------------------------------------------------------------------------

    def _run(self) -> None:
        next_expiry = time.monotonic() + EXPIRY_INTERVAL_S
        while True:
            try:
                face = self._queue.get(timeout=max(0.0, next_expiry - time.monotonic()))
            except queue.Empty:
                face = None
                if self._closed:
                    return
            else:
                try:
                    if face is None:  # close()
                        return
                    if isinstance(face, _Forget):
                        self._forget(face.identity_id)
                    else:
                        self._write(face)
                finally:
                    self._queue.task_done()
            if time.monotonic() >= next_expiry:
                next_expiry = time.monotonic() + EXPIRY_INTERVAL_S
                try:
                    self.store.expire()
                except SightingError as err:
                    logger.warning("sightings: the expiry failed (%s); it is tried again", err)

    def _write(self, face: SeenFace) -> None:
        clusters = self.settings.clusters if face.decision == UNKNOWN else None
        try:
            self.store.put(face, self.settings.keep_s, clusters)
        except SightingError as err:
            self.lost += 1
            if self.error is None:
                logger.error("sightings: a face could not be kept (%s); recognition goes on", err)
            self.error = str(err)
            return
        self.kept += 1
        if self.error is not None:
            logger.info("sightings: faces are kept again (%d lost in all)", self.lost)
            self.error = None

    def _forget(self, identity_id: str) -> None:
        try:
            self.store.forget_identity(identity_id)
        except SightingError as err:
            logger.error("sightings: the faces of a forgotten face could not be deleted (%s)", err)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (within ``timeout``), stop the thread. The store stays open (its owner closes it)."""
        if self._closed:
            return
        self._closed = True
        if self._thread is None:
            return
        try:
            self._queue.put(None, timeout=max(0.01, timeout))
        except queue.Full:
            logger.warning("sightings: %d face(s) were not written at the stop", self._queue.qsize())
        self._thread.join(timeout=max(0.0, timeout))


__all__ = ["EXPIRY_INTERVAL_S", "QUEUE_SIZE", "KeepSettings", "SightingKeeper"]
