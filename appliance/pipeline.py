"""The per-frame pipeline: detect → track → align and assess → (liveness, embed, match) → decide.

Runs on the daemon's pipeline thread only (it owns the back-ends; with TensorRT, the CUDA context).
Expensive work is done only where a decision still needs it: a track that is decided (until its
re-announce is due) is tracked but not embedded, which is what lets a 2-core box keep up with a
door camera. Each decision comes out with the best-quality crop of its track and the capture time
of the frame that completed it, for the event's latency.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Protocol, Tuple

import numpy as np

from .access.judge import GONE, AccessJudge
from .decisions import (
    DENIED,
    GRANTED,
    UNKNOWN,
    Candidate,
    Decision,
    DecisionEngine,
    DecisionSettings,
    Observation,
)
from .gallery.gallery import Gallery
from .metrics import Latencies, StageTimer
from .tracking import IouTracker
from .vision.align import align_faces
from .vision.analyzer import FaceAnalyzer
from .vision.quality import assess

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """A decision with what the event needs: the frame's capture time and the track's best crop."""

    decision: Decision
    captured_at: float
    crop: Optional[np.ndarray]  # (112, 112, 3) uint8


class ModelSource(Protocol):
    """Where the live models are read from once per frame: the daemon's
    :class:`appliance.runtime.ModelRuntime` (a switch between two frames changes what it returns)."""

    @property
    def analyzer(self) -> FaceAnalyzer: ...


class Pipeline:
    """One camera's per-frame processing.

    Args:
        models: the live models (read once per frame).
        gallery: identities to match against.
        settings: decision rules (``DecisionSettings.from_config``).
        latencies: where stage timings go (``detect``, ``align``, ``liveness``, ``embed``, ``match``,
            ``frame``).
        judge: the access policy a ``granted`` vote must pass (``None``: every recognised person passes).
    """

    def __init__(
        self,
        models: ModelSource,
        gallery: Gallery,
        settings: DecisionSettings,
        latencies: Latencies,
        judge: Optional[AccessJudge] = None,
    ) -> None:
        self.models = models
        self.gallery = gallery
        self.judge = judge
        self.settings = settings
        self.tracker = IouTracker(settings.track_iou, settings.track_max_missed)
        self.engine = DecisionEngine(settings)
        self._timer = StageTimer(latencies)
        self._best_crop: Dict[int, Tuple[float, np.ndarray]] = {}
        #: The best match score of each face embedded in the last frame (a model swap's health check
        #: watches their distribution: a collapsed embedder scores every face alike).
        self.last_scores: List[float] = []

    def set_threshold(self, threshold: float) -> None:
        """Change the match threshold for decisions from now on."""
        self.settings = replace(self.settings, threshold=threshold)
        self.engine.settings = self.settings

    def process(self, image: np.ndarray, captured_at: float) -> List[Outcome]:
        """Process one ``(H, W, 3)`` uint8 BGR frame captured at ``captured_at`` (monotonic seconds)."""
        outcomes: List[Outcome] = []
        self.last_scores = []
        analyzer = self.models.analyzer
        with self._timer.stage("frame"):
            with self._timer.stage("detect"):
                faces = analyzer.detect(image)
            track_ids = self.tracker.update(faces.boxes)
            for ended in self.tracker.ended():
                outcomes.extend(self._end(ended, captured_at))
            if not len(faces):
                return outcomes
            with self._timer.stage("align"):
                crops = align_faces(image, faces.landmarks)
                qualities = assess(faces.boxes, faces.landmarks, crops)
            wanted = [
                i for i, track in enumerate(track_ids) if self.engine.wants_embedding(track, captured_at)
            ]
            candidates: Dict[int, List[Candidate]] = {}
            liveness: Dict[int, Tuple[float, bool]] = {}
            if wanted:
                chosen = np.asarray(wanted)
                if analyzer.liveness is not None:
                    with self._timer.stage("liveness"):
                        result = analyzer.liveness.check(image, faces.boxes[chosen])
                    liveness = {
                        i: (float(s), bool(p)) for i, s, p in zip(wanted, result.scores, result.passed)
                    }
                with self._timer.stage("embed"):
                    embeddings = analyzer.embedder.embed(crops[chosen])
                with self._timer.stage("match"):
                    for i, found in zip(wanted, self.gallery.search(embeddings)):
                        candidates[i] = found
                        if found:
                            self.last_scores.append(found[0].score)
            for i, track in enumerate(track_ids):
                quality = qualities[i].score
                best = self._best_crop.get(track)
                if best is None or quality > best[0]:
                    self._best_crop[track] = (quality, crops[i])
                observation = Observation(
                    timestamp=captured_at,
                    box=faces.boxes[i],
                    quality=quality,
                    candidates=candidates.get(i, ()),
                    embedded=i in candidates,
                    liveness=liveness.get(i),
                )
                decision = self.engine.observe(track, observation)
                if decision is not None:
                    outcomes.append(self._outcome(decision, captured_at, keep=True))
        return outcomes

    def finish(self, now: float) -> List[Outcome]:
        """End every track (the video ended, or the daemon stops): their last decisions, if any."""
        outcomes: List[Outcome] = []
        for track in self.tracker.close_all():
            outcomes.extend(self._end(track, now))
        return outcomes

    def _end(self, track: int, now: float) -> List[Outcome]:
        decision = self.engine.end_track(track, now)
        outcomes = [self._outcome(decision, now, keep=False)] if decision is not None else []
        self._best_crop.pop(track, None)
        return outcomes

    def _admit(self, decision: Decision) -> Decision:
        """A vote's ``granted`` checked against the access policy: ``denied`` with the reason when it fails."""
        if self.judge is None or decision.decision != GRANTED or decision.identity_id is None:
            return decision
        reason = self.judge.judge(decision.identity_id)
        if reason is None:
            return decision
        if reason == GONE:  # removed from the gallery while in view: no longer anyone we know
            return replace(decision, decision=UNKNOWN, identity_id=None, name=None)
        logger.debug("track %d: recognised but denied by the access policy: %s", decision.track_id, reason)
        return replace(decision, decision=DENIED, access_reason=reason)

    def _outcome(self, decision: Decision, captured_at: float, keep: bool) -> Outcome:
        decision = self._admit(decision)
        best = self._best_crop.get(decision.track_id)
        if keep and best is not None:
            # The next announcement of this track starts a fresh choice of its best crop.
            self._best_crop.pop(decision.track_id, None)
        return Outcome(decision, captured_at, None if best is None else best[1])
