"""The per-frame pipeline: detect → track → align and assess → (liveness, embed, match) → decide.

Runs on the daemon's pipeline thread only (it owns the back-ends; with TensorRT, the CUDA context).
Expensive work is done only where a decision still needs it: a track that is decided (until its
re-announce is due) is tracked but not embedded, which is what lets a 2-core box keep up with a
door camera. Each decision comes out with the best-quality crop of its track and the capture time
of the frame that completed it, for the event's latency.

Several cameras share the models, the gallery and the decision rules; each has a
:class:`CameraLane` of its own (tracker, decisions, best crops). One turn
(:meth:`Pipeline.process_frames`) takes a frame from each camera that has one: detection, tracking
and alignment run per frame, then liveness, embedding and matching run once over the wanted faces of
every frame together (one batched model call each), and each face's result goes back to its
camera's decisions.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Protocol, Sequence, Tuple

import numpy as np

from .access.credentials import CredentialInbox, PresentedCredential
from .access.judge import GONE, AccessJudge, CredentialPassage, Verdict
from .access.second_factor import SECOND_FACTOR, WRONG_CREDENTIAL
from .attack_guard import AttackGuard
from .config import DEFAULT_CAMERA_ID
from .decisions import (
    DENIED,
    GRANTED,
    NO_TRACK,
    UNKNOWN,
    Candidate,
    Decision,
    DecisionEngine,
    DecisionSettings,
    Observation,
)
from .face_views import FaceSample, keep_view
from .gallery.gallery import Gallery
from .metrics import Latencies, StageTimer
from .tracking import IouTracker
from .vision.align import align_faces
from .vision.analyzer import FaceAnalyzer
from .vision.faces import Faces
from .vision.liveness import colourless
from .vision.quality import FaceQuality, assess

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """A decision with what the event needs: the frame's capture time, the track's best crop and the
    camera that saw it; with the pipeline's ``views``, the :class:`FaceSample` of its best embedded
    frame and its other views (:func:`appliance.face_views.keep_view`, best first)."""

    decision: Decision
    captured_at: float
    crop: Optional[np.ndarray]  # (112, 112, 3) uint8
    camera_id: str = DEFAULT_CAMERA_ID
    sample: Optional[FaceSample] = None
    views: Tuple[FaceSample, ...] = ()
    #: The spoof alarm this decision raised (:class:`appliance.attack_guard.AttackGuard`), or ``None``.
    alarm: Optional[Dict[str, Any]] = None


@dataclass(frozen=True)
class CameraFrame:
    """One camera's frame for a turn of the pipeline.

    Attributes:
        camera_id: the camera's ``id`` (one of the pipeline's lanes).
        image: ``(H, W, 3)`` uint8 BGR.
        captured_at: capture time, monotonic seconds.
    """

    camera_id: str
    image: np.ndarray
    captured_at: float


class CameraLane:
    """What the pipeline keeps per camera: its tracker, its decisions and its tracks' best crops.

    Args:
        camera_id: the camera's ``id``.
        settings: the decision rules (shared by every camera).
    """

    def __init__(self, camera_id: str, settings: DecisionSettings) -> None:
        self.camera_id = camera_id
        self.tracker = IouTracker(settings.track_iou, settings.track_max_missed)
        self.engine = DecisionEngine(settings)
        #: track id → (quality, its best ``(112, 112, 3)`` uint8 crop so far)
        self.best_crop: Dict[int, Tuple[float, np.ndarray]] = {}
        #: track id → its views so far, the best-quality embedded frame first (only with the
        #: pipeline's ``views``)
        self.views: Dict[int, List[FaceSample]] = {}
        #: Whether the faces last checked for liveness had no colour (an infrared / night-mode camera):
        #: liveness then refuses nearly every live face. ``None`` until liveness has checked a face.
        self.colourless: Optional[bool] = None

    def note_colour(self, colourless: bool) -> None:
        """Record whether the faces just checked for liveness had colour; say so when it changes."""
        if colourless and not self.colourless:
            logger.warning(
                "camera %s: the faces have no colour (an infrared / night mode?); the liveness model "
                "refuses nearly every live face without colour, so passages will be denied for liveness",
                self.camera_id,
            )
        elif not colourless and self.colourless:
            logger.info("camera %s: the faces have colour again; liveness can judge them", self.camera_id)
        self.colourless = colourless


@dataclass
class _Seen:
    """The faces one frame of a turn holds, between detection and the decisions."""

    lane: CameraLane
    frame: CameraFrame
    faces: Faces
    track_ids: List[int]
    crops: np.ndarray  # (N, 112, 112, 3) uint8
    qualities: List[FaceQuality]
    wanted: List[int]  # the faces to check for liveness, embed and match


def _judged(decision: Decision, verdict: Verdict, camera_id: str) -> Decision:
    """A recognised face's decision as the judge's ``verdict`` has it: granted with what anti-passback,
    the two-person rule and the second factor said (its factors, a duress PIN's alarm); ``unknown`` for
    an identity removed meanwhile; else denied with the reason."""
    if verdict.reason is None:
        if verdict.duress:
            logger.warning("camera %s: a duress PIN opened the door; the event carries the alarm", camera_id)
        return replace(
            decision,
            decision=GRANTED,
            access_reason=None,
            anti_passback=verdict.anti_passback,
            companions=verdict.companions,
            factors=verdict.factors,
            duress=verdict.duress,
        )
    if verdict.reason == GONE:  # removed from the gallery while in view: no longer anyone we know
        return replace(decision, decision=UNKNOWN, identity_id=None, name=None, access_reason=None)
    return replace(decision, decision=DENIED, access_reason=verdict.reason)


class ModelSource(Protocol):
    """Where the live models are read from once per turn: the daemon's
    :class:`appliance.runtime.ModelRuntime` (a switch between two turns changes what it returns)."""

    @property
    def analyzer(self) -> FaceAnalyzer: ...


class Pipeline:
    """The processing of one or more cameras' frames on shared models.

    Args:
        models: the live models (read once per turn).
        gallery: identities to match against.
        settings: decision rules (``DecisionSettings.from_config``), the same for every camera.
        latencies: where stage timings go: ``detect`` and ``align`` per frame; ``liveness``, ``embed``
            and ``match`` per turn (every camera's faces in one call); ``frame`` per turn (with one
            camera, a turn is one frame).
        judge: the access policy a ``granted`` vote must pass (``None``: every recognised person passes).
        camera_ids: the cameras, one lane each (default: the single ``[camera]``'s default id).
        views: embedded frames of each track kept for its outcome (:class:`FaceSample`): 0 none, 1 the
            best (for ``adaptive`` and kept faces), more for walk-up enrolment
            (``events.walk_up_views``: the best and differing others, :func:`keep_view`).
        guard: counts liveness denials per camera: an alarm, a lockout (``liveness.alarm_after``).

    Raises:
        ValueError: no camera, or a camera id given twice.
    """

    def __init__(
        self,
        models: ModelSource,
        gallery: Gallery,
        settings: DecisionSettings,
        latencies: Latencies,
        judge: Optional[AccessJudge] = None,
        camera_ids: Sequence[str] = (DEFAULT_CAMERA_ID,),
        views: int = 0,
        guard: Optional[AttackGuard] = None,
    ) -> None:
        if not camera_ids or len(set(camera_ids)) != len(camera_ids):
            raise ValueError(f"a pipeline needs one or more distinct camera ids, got {list(camera_ids)}")
        if views < 0:
            raise ValueError(f"views must be 0 or more, not {views}")
        self.models = models
        self.gallery = gallery
        self.judge = judge
        self.guard = guard
        self.settings = settings
        self.lanes: Dict[str, CameraLane] = {
            camera_id: CameraLane(camera_id, settings) for camera_id in camera_ids
        }
        self._timer = StageTimer(latencies)
        #: Embedded frames kept per track for its outcome (``views``).
        self.views_per_track = views
        #: The best match score of each face embedded in the last turn (a model swap's health check
        #: watches their distribution: a collapsed embedder scores every face alike).
        self.last_scores: List[float] = []
        #: Whether any camera tracks a face after the last turn (someone at the door): read by the
        #: fleet thread, which then gives the pipeline thread smaller jobs (a bool: one atomic read).
        self.faces_in_view = False
        #: identity id → the outcome of its face grant held for a card or PIN (the judge's second
        #: factor): what the grant that completes it, or a wrong attempt, reports.
        self._held: Dict[str, Outcome] = {}
        #: Where the card readers' cards and PINs wait for this thread (``None``: no reader).
        self.credentials: Optional[CredentialInbox] = None

    def set_threshold(self, threshold: float) -> None:
        """Change the match threshold for decisions from now on (every camera)."""
        self.settings = replace(self.settings, threshold=threshold)
        for lane in self.lanes.values():
            lane.engine.settings = self.settings

    def process_frames(self, frames: Sequence[CameraFrame]) -> List[Outcome]:
        """Process one turn: at most one frame per camera.

        Detection, tracking and alignment run per frame; liveness, embedding and matching run once
        for the wanted faces of all the frames together.

        Raises:
            ValueError: a frame of a camera the pipeline was not made for.
        """
        outcomes: List[Outcome] = []
        self.last_scores = []
        analyzer = self.models.analyzer
        with self._timer.stage("frame"):
            seen: List[_Seen] = []
            for frame in frames:
                lane = self._lane(frame.camera_id)
                with self._timer.stage("detect"):
                    faces = analyzer.detect(frame.image)
                track_ids = lane.tracker.update(faces.boxes)
                for ended in lane.tracker.ended():
                    outcomes.extend(self._end(lane, ended, frame.captured_at))
                if not len(faces):
                    continue
                with self._timer.stage("align"):
                    crops = align_faces(frame.image, faces.landmarks)
                    qualities = assess(faces.boxes, faces.landmarks, crops)
                wanted = [
                    i
                    for i, track in enumerate(track_ids)
                    if lane.engine.wants_embedding(track, frame.captured_at)
                ]
                seen.append(_Seen(lane, frame, faces, track_ids, crops, qualities, wanted))
            candidates, liveness, vectors = self._identify(analyzer, seen)
            for k, item in enumerate(seen):
                outcomes.extend(
                    self._observe(item, candidates.get(k, {}), liveness.get(k, {}), vectors.get(k, {}))
                )
        self._note_faces_in_view()
        return outcomes

    def _note_faces_in_view(self) -> None:
        """Set :attr:`faces_in_view` from the trackers (a track lives until it misses
        ``decision.track_max_missed`` frames, so one missed detection does not clear it)."""
        self.faces_in_view = any(lane.tracker.active_ids for lane in self.lanes.values())

    def finish(self, now: float) -> List[Outcome]:
        """End every camera's tracks (the daemon stops): their last decisions, if any."""
        outcomes: List[Outcome] = []
        for camera_id in self.lanes:
            outcomes.extend(self.finish_camera(camera_id, now))
        return outcomes

    def finish_camera(self, camera_id: str, now: float) -> List[Outcome]:
        """End one camera's tracks (its video ended): their last decisions, if any."""
        lane = self._lane(camera_id)
        outcomes: List[Outcome] = []
        for track in lane.tracker.close_all():
            outcomes.extend(self._end(lane, track, now))
        self._note_faces_in_view()
        return outcomes

    def _lane(self, camera_id: str) -> CameraLane:
        lane = self.lanes.get(camera_id)
        if lane is None:
            raise ValueError(f"no camera {camera_id!r} in this pipeline (cameras: {', '.join(self.lanes)})")
        return lane

    def _identify(
        self, analyzer: FaceAnalyzer, seen: Sequence[_Seen]
    ) -> Tuple[
        Dict[int, Dict[int, List[Candidate]]],
        Dict[int, Dict[int, Tuple[float, bool]]],
        Dict[int, Dict[int, np.ndarray]],
    ]:
        """Liveness, embedding and matching of the wanted faces of every frame: one call each.

        Returns:
            per frame (index in ``seen``), per face: the gallery's candidates, ``(score, passed)``
            when liveness is on, and (with ``views``) the ``(D,)`` float32 embedding.
        """
        candidates: Dict[int, Dict[int, List[Candidate]]] = {}
        liveness: Dict[int, Dict[int, Tuple[float, bool]]] = {}
        vectors: Dict[int, Dict[int, np.ndarray]] = {}
        wanted = [(k, i) for k, item in enumerate(seen) for i in item.wanted]
        if not wanted:
            return candidates, liveness, vectors
        chosen = [(item, np.asarray(item.wanted)) for item in seen if item.wanted]
        if analyzer.liveness is not None:
            with self._timer.stage("liveness"):
                result = analyzer.liveness.check_many(
                    [(item.frame.image, item.faces.boxes[faces]) for item, faces in chosen]
                )
            for (k, i), score, passed in zip(wanted, result.scores, result.passed):
                liveness.setdefault(k, {})[i] = (float(score), bool(passed))
            for item, faces in chosen:
                item.lane.note_colour(colourless(item.frame.image, item.faces.boxes[faces]))
        with self._timer.stage("embed"):
            crops = [item.crops[faces] for item, faces in chosen]
            embeddings = analyzer.embedder.embed(crops[0] if len(crops) == 1 else np.concatenate(crops))
        with self._timer.stage("match"):
            for (k, i), found in zip(wanted, self.gallery.search(embeddings)):
                candidates.setdefault(k, {})[i] = found
                if found:
                    self.last_scores.append(found[0].score)
        if self.views_per_track:
            for (k, i), vector in zip(wanted, embeddings):
                vectors.setdefault(k, {})[i] = vector
        return candidates, liveness, vectors

    def _observe(
        self,
        item: _Seen,
        candidates: Dict[int, List[Candidate]],
        liveness: Dict[int, Tuple[float, bool]],
        vectors: Dict[int, np.ndarray],
    ) -> List[Outcome]:
        """Each face of one frame to its camera's decisions."""
        outcomes: List[Outcome] = []
        lane, captured_at = item.lane, item.frame.captured_at
        for i, track in enumerate(item.track_ids):
            quality = item.qualities[i].score
            best = lane.best_crop.get(track)
            if best is None or quality > best[0]:
                lane.best_crop[track] = (quality, item.crops[i])
            if i in vectors:
                frame = FaceSample(
                    quality,
                    np.array(vectors[i], np.float32),
                    item.crops[i],
                    liveness.get(i),
                    self.gallery.model_version,
                )
                lane.views[track] = keep_view(
                    lane.views.get(track, ()), frame, self.views_per_track, self.settings.threshold
                )
            observation = Observation(
                timestamp=captured_at,
                box=item.faces.boxes[i],
                quality=quality,
                candidates=candidates.get(i, ()),
                embedded=i in candidates,
                liveness=liveness.get(i),
            )
            decision = lane.engine.observe(track, observation)
            if decision is not None:
                outcomes.append(self._outcome(lane, decision, captured_at, keep=True))
        return outcomes

    def _end(self, lane: CameraLane, track: int, now: float) -> List[Outcome]:
        decision = lane.engine.end_track(track, now)
        outcomes = [self._outcome(lane, decision, now, keep=False)] if decision is not None else []
        lane.best_crop.pop(track, None)
        lane.views.pop(track, None)
        return outcomes

    def _admit(self, lane: CameraLane, decision: Decision) -> Decision:
        """A vote's ``granted`` checked by the judge — the access policy, anti-passback at a camera with a
        direction (which records the passage), the two-person rule: ``denied`` with the reason when
        one of them refuses it, else granted with what anti-passback and the two-person rule said."""
        if self.judge is None or decision.decision != GRANTED or decision.identity_id is None:
            return decision
        verdict = self.judge.judge_passage(decision.identity_id, lane.camera_id)
        if verdict.reason is not None:
            logger.debug("track %d: recognised but denied: %s", decision.track_id, verdict.reason)
        return _judged(decision, verdict, lane.camera_id)

    def present_credentials(self, credentials: Sequence[PresentedCredential], now: float) -> List[Outcome]:
        """Cards and PINs from the readers at the door (:class:`appliance.access.credentials.CredentialInbox`),
        oldest first: the outcomes of the held face grants they decided (see
        :mod:`appliance.access.second_factor`) and of the passages without a face
        (:mod:`appliance.access.without_face`); ``now`` is the monotonic time, the events' capture time."""
        if self.judge is None or not self.judge.takes_credentials:
            return []
        outcomes: List[Outcome] = []
        for credential in credentials:
            for passage in self.judge.present(credential):
                if passage.faceless:
                    outcomes.append(self._faceless(passage, now))
                    continue
                identity_id = passage.identity_id
                held = self._held.get(identity_id) if identity_id is not None else None
                # None: held before a reload of the judge, nothing left to report it with
                if identity_id is None or held is None:
                    continue
                if passage.verdict.reason != WRONG_CREDENTIAL:  # decided; a wrong one leaves it waiting
                    del self._held[identity_id]
                outcomes.append(self._decided_by_credential(held, passage.verdict, now))
        self._forget_unheld()
        return outcomes

    def _faceless(self, passage: CredentialPassage, now: float) -> Outcome:
        """The outcome of a passage by card (and PIN) without a face: granted or denied as the judge says,
        ``unknown`` for a card nobody here holds."""
        identity_id = passage.identity_id
        decision = Decision(
            track_id=NO_TRACK,
            decision=GRANTED if identity_id is not None else UNKNOWN,
            identity_id=identity_id,
            name=passage.name,
            score=None,
            threshold=self.settings.threshold,
            frames=0,
            liveness=None,
            box=np.zeros(4, np.float32),
            quality=0.0,
            first_seen=now,
            decided_at=now,
            reason=" and ".join(passage.factors) + " without a face",
            factors=passage.factors,
        )
        if identity_id is not None:
            decision = _judged(decision, passage.verdict, passage.camera_id)
        return Outcome(decision, now, None, passage.camera_id)

    def _forget_unheld(self) -> None:
        """Keep the outcomes of the grants still waiting only (a wait expired, or ended meanwhile):
        at most the rule's few waits' worth of crops."""
        factor = self.judge.second_factor if self.judge is not None else None
        waiting = {w.identity_id for w in factor.waiting(time.time())} if factor is not None else set()
        for identity_id in [i for i in self._held if i not in waiting]:
            del self._held[identity_id]

    @staticmethod
    def _decided_by_credential(held: Outcome, verdict: Verdict, now: float) -> Outcome:
        """The held face grant's outcome, as the card or PIN decided it."""
        decision = _judged(held.decision, verdict, held.camera_id)
        return replace(held, decision=replace(decision, decided_at=now), captured_at=now, alarm=None)

    def _outcome(self, lane: CameraLane, decision: Decision, captured_at: float, keep: bool) -> Outcome:
        alarm = None
        if self.guard is not None:  # before the judge: a locked-out grant records no passage
            decision, alarm = self.guard.check(lane.camera_id, decision, captured_at)
        decision = self._admit(lane, decision)
        best = lane.best_crop.get(decision.track_id)
        views = lane.views.get(decision.track_id, [])
        if keep:
            # The next announcement of this track starts a fresh choice of its best crop and views.
            lane.best_crop.pop(decision.track_id, None)
            lane.views.pop(decision.track_id, None)
        crop = None if best is None else best[1]
        sample = views[0] if views else None
        outcome = Outcome(decision, captured_at, crop, lane.camera_id, sample, tuple(views[1:]), alarm)
        if decision.access_reason == SECOND_FACTOR and decision.identity_id is not None:
            self._held[decision.identity_id] = outcome
            self._forget_unheld()  # without credentials coming, the waits expire here
        return outcome
