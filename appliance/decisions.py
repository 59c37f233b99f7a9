"""From per-frame gallery matches to one access decision per passage: voting over a face's track.

The pipeline tracks faces (:mod:`appliance.tracking`), embeds and matches them, and hands each face's
result to :meth:`DecisionEngine.observe` as an :class:`Observation`. The engine answers with a
:class:`Decision` once per track — ``granted``, ``denied`` or ``unknown`` — and then stays silent
until the re-announce interval has passed while the track is still in view.

Rules (``DecisionSettings`` names in brackets):

- **Frames that count.** Only *embedded* observations enter the vote; a frame that was not embedded
  (quality gate, a track already decided) counts towards ``Decision.frames`` and may become one of the
  best frames, but neither votes nor pushes votes out of the window.
- **A frame's vote.** Per frame, an identity's score is its best candidate score (the gallery may list
  an identity more than once). A candidate the gallery marks with an ``impostor`` (the face is closer
  to one of the identity's impostor examples, "this is not X", than to its templates) is left out of
  the frame: that identity neither gets its vote nor stands as a rival in it. The frame votes for its highest-scoring identity when that score is
  ≥ ``threshold`` (cosine); otherwise it votes for nobody.
- **The vote** runs over the last ``window`` embedded frames. The *leader* is the identity with the
  most votes there; if two identities tie for most votes, nobody leads. The leader wins when
  (a) it has at least ``votes`` votes, and (b) its **margin** is at least ``margin`` (to within 1e-9).
- **Margin.** ``mean`` is the leader's mean score over its voting frames (this is ``Decision.score``).
  For every other identity listed anywhere in the window, its mean score over the window frames that
  list it; the highest of those is the runner-up, and margin = ``mean`` − runner-up mean. When no
  other identity is listed in the window, there is no runner-up and (b) holds. A runner-up listed
  only in frames where it ranked low is a weak rival; one that took frames of its own, or that trails
  closely in every frame, is a strong one — so an A/B flicker gives no grant.
- **Liveness** (when ``liveness_required``) is judged on the leader's voting frames in the window:
  it passes when at least one of them was checked and strictly more than half of the checked ones
  passed (a tie fails). A won vote with passing liveness is ``granted``. A won vote whose liveness
  failed, or was not checked on any voting frame, is *not* decided at once — a live person whose
  first frames were blurred gets the remaining frames to pass — but is remembered: if no grant has
  come when the track reaches ``unknown_after_frames`` embedded frames, or when it ends, the decision
  is ``denied`` for that identity with the liveness reason. So a spoof is never granted, and is
  reported as ``denied``, not ``unknown``.
- **Unknown.** A track with ``unknown_after_frames`` embedded frames and no decision is ``unknown``
  (identity ``None``; ``score`` is the best single-frame score seen, to show how close it came).
- **Leaving.** :meth:`DecisionEngine.end_track` for a track that never had a decision emits
  ``denied`` (the remembered liveness failure above) or ``unknown`` — but only if the track was
  observed in at least ``end_min_frames`` frames (default 3), so a one- or two-frame false detection
  makes no event. A track that already had a decision ends silently.
- **One decision per passage.** After a decision the track is *quiet*: observations are counted, not
  evaluated, and :meth:`DecisionEngine.wants_embedding` is false, so the pipeline can skip embedding.
  Once ``reannounce_s`` seconds have passed since the decision, the next observation starts a fresh
  evaluation (empty window, counters and best frames) under the same rules, which produces one new
  :class:`Decision` (possibly of a different kind). ``reannounce_s = 0`` re-evaluates at once.

Pure logic: no threads, no I/O; one engine per camera, used from one thread. Call
:meth:`DecisionEngine.end_track` for every track the tracker ends, or its state is kept.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Deque, Dict, List, Optional, Sequence, Tuple

import numpy as np
from typing_extensions import Literal

if TYPE_CHECKING:
    from .config import ApplianceConfig

logger = logging.getLogger(__name__)

DecisionKind = Literal["granted", "denied", "unknown"]
GRANTED: DecisionKind = "granted"
DENIED: DecisionKind = "denied"
UNKNOWN: DecisionKind = "unknown"

#: Tolerance of the margin comparison (scores are float32 cosines).
MARGIN_EPSILON = 1e-9


@dataclass(frozen=True)
class Candidate:
    """One gallery identity proposed for a face.

    Attributes:
        identity_id: the identity's stable id.
        name: its display name (never logged above DEBUG).
        score: cosine similarity of the face's embedding to the identity, in ``[-1, 1]``.
        impostor: ``(impostor example id, cosine)`` when the face is closer to one of the identity's
            impostor examples ("this is not X") than ``score``: the face is not granted to it, and
            the identity's score does not vote in this frame. ``None`` otherwise.
    """

    identity_id: str
    name: str
    score: float
    impostor: Optional[Tuple[int, float]] = None


@dataclass(eq=False)
class Observation:
    """What the pipeline knows about one tracked face in one frame.

    Attributes:
        timestamp: frame time in seconds, monotonic clock.
        box: ``(4,)`` float32 ``[x1, y1, x2, y2]`` in pixels (converted on construction).
        quality: face quality in ``[0, 1]``; the best frames are the highest ones.
        candidates: the gallery's best identities for this face's embedding, best first; empty when
            the gallery matched nothing or the face was not embedded.
        embedded: whether the face was embedded and matched this frame. ``False`` frames never vote.
        liveness: ``(score, passed)`` of a liveness check on this frame, or ``None`` when not checked.

    Raises:
        ValueError: ``box`` does not hold 4 numbers, or ``candidates`` is given with ``embedded=False``.
    """

    timestamp: float
    box: np.ndarray
    quality: float
    candidates: Sequence[Candidate] = ()
    embedded: bool = True
    liveness: Optional[Tuple[float, bool]] = None

    def __post_init__(self) -> None:
        box = np.asarray(self.box, dtype=np.float32).reshape(-1)
        if box.shape != (4,):
            raise ValueError(f"box must hold 4 numbers [x1, y1, x2, y2], got shape {np.shape(self.box)}")
        self.box = box
        self.candidates = tuple(self.candidates)
        if self.candidates and not self.embedded:
            raise ValueError("an observation that was not embedded cannot have candidates")


@dataclass(eq=False)
class Decision:
    """One access decision about one track (an access event's content, see DESIGN.md §5.3).

    Attributes:
        track_id: the tracker's id of the face.
        decision: ``"granted"``, ``"denied"`` or ``"unknown"``.
        identity_id: the identity voted for (``granted``, ``denied``); ``None`` for ``unknown``.
        name: that identity's display name, or ``None``.
        score: ``granted``/``denied``: the identity's **mean** score over its voting frames;
            ``unknown``: the best single-frame score seen in the evaluation (``None`` if nothing was
            matched at all).
        threshold: the cosine threshold in force.
        frames: observations of the track so far (embedded or not, since the track started).
        liveness: ``(mean score, passed)`` over the frames the decision rests on that were checked,
            or ``None`` when none was.
        box: ``(4,)`` float32 ``[x1, y1, x2, y2]`` of the evaluation's best-quality frame.
        quality: that frame's quality.
        first_seen: timestamp of the track's first observation.
        decided_at: timestamp of the observation that decided (or the ``now`` of ``end_track``).
        reason: why, for DEBUG logs and tests (identity ids, never names), e.g.
            ``"3 of 5 votes for id-a, mean 0.62, margin 0.21 over id-b"``.
        access_reason: why a recognised person is ``denied``: ``liveness`` from the vote, or the access
            policy's reason (``expired``, ``outside_schedule``, … — :mod:`appliance.access.policy`);
            ``None`` for ``granted`` and ``unknown``.
        margin: ``granted``/``denied``: the vote's margin (``score`` minus the runner-up identity's
            mean), ``None`` when no runner-up was listed or for ``unknown``.
        anti_passback: ``violation`` when a ``soft`` anti-passback granted a passback
            (:mod:`appliance.access.passback`), else ``None``.
        companions: the identities whose held grants this grant completed (the two-person rule,
            :mod:`appliance.access.two_person`).
        factors: ``("face", "card" | "pin")`` when a card or PIN completed the grant
            (:mod:`appliance.access.second_factor`); ``("card",)`` or ``("card", "pin")`` for a passage
            without a face (:mod:`appliance.access.without_face`: no track, box, score or liveness —
            ``track_id`` -1, ``frames`` 0); else ``()``.
        duress: the PIN was the identity's duress PIN (the grant is a silent alarm).
    """

    track_id: int
    decision: DecisionKind
    identity_id: Optional[str]
    name: Optional[str]
    score: Optional[float]
    threshold: float
    frames: int
    liveness: Optional[Tuple[float, bool]]
    box: np.ndarray
    quality: float
    first_seen: float
    decided_at: float
    reason: str
    access_reason: Optional[str] = None
    margin: Optional[float] = None
    anti_passback: Optional[str] = None
    companions: Tuple[str, ...] = ()
    factors: Tuple[str, ...] = ()
    duress: bool = False

    @property
    def faceless(self) -> bool:
        """A passage by card (and PIN) without a face: nothing of this decision was seen by a camera."""
        return bool(self.factors) and self.factors[0] != "face"


#: ``Decision.track_id`` of a passage without a face.
NO_TRACK = -1


@dataclass(frozen=True)
class DecisionSettings:
    """Voting rules: the ``[decision]`` section plus ``match.threshold`` and ``liveness.enabled``.

    Attributes mirror :class:`appliance.config.DecisionConfig` (``track_iou`` and
    ``track_max_missed`` are for :class:`appliance.tracking.IouTracker`), plus:
        threshold: cosine score a frame's best identity needs to vote (``match.threshold``).
        liveness_required: grant only with passing liveness (``liveness.enabled``).
        end_min_frames: observations a track needs for an event when it ends undecided (not in the
            configuration file).

    Raises:
        ValueError: a value out of range, or ``votes > window``.
    """

    votes: int = 3
    window: int = 5
    margin: float = 0.05
    unknown_after_frames: int = 12
    reannounce_s: float = 30.0
    track_iou: float = 0.3
    track_max_missed: int = 8
    best_frames: int = 5
    threshold: float = 0.50
    liveness_required: bool = False
    end_min_frames: int = 3

    def __post_init__(self) -> None:
        problems: List[str] = []
        for name in ("votes", "window", "unknown_after_frames", "best_frames", "end_min_frames"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.votes > self.window:
            problems.append(f"votes ({self.votes}) is more than window ({self.window})")
        if self.margin < 0:
            problems.append(f"margin must be >= 0, got {self.margin}")
        if self.reannounce_s < 0:
            problems.append(f"reannounce_s must be >= 0, got {self.reannounce_s}")
        if not -1.0 <= self.threshold <= 1.0:
            problems.append(f"threshold must be a cosine in [-1, 1], got {self.threshold}")
        if self.track_max_missed < 0:
            problems.append(f"track_max_missed must be >= 0, got {self.track_max_missed}")
        if not 0.0 < self.track_iou < 1.0:
            problems.append(f"track_iou must be in (0, 1), got {self.track_iou}")
        if problems:
            raise ValueError("invalid decision settings: " + "; ".join(problems))

    @classmethod
    def from_config(cls, config: ApplianceConfig) -> DecisionSettings:
        """The settings of a validated configuration."""
        section = config.decision
        return cls(
            votes=section.votes,
            window=section.window,
            margin=section.margin,
            unknown_after_frames=section.unknown_after_frames,
            reannounce_s=section.reannounce_s,
            track_iou=section.track_iou,
            track_max_missed=section.track_max_missed,
            best_frames=section.best_frames,
            threshold=config.match.threshold,
            liveness_required=config.liveness.enabled,
        )


@dataclass(eq=False)
class _Frame:
    """An embedded observation with its per-identity scores.

    Attributes:
        observation: the observation.
        scores: identity id → best candidate score in this frame.
        names: identity id → display name.
        vote: the identity this frame votes for, or ``None``.
    """

    observation: Observation
    scores: Dict[str, float]
    names: Dict[str, str]
    vote: Optional[str]


def _frame(observation: Observation, threshold: float) -> _Frame:
    scores: Dict[str, float] = {}
    names: Dict[str, str] = {}
    for candidate in observation.candidates:
        if candidate.impostor is not None:
            continue  # closer to one of its impostor examples than to its templates: no vote, no rival
        score = float(candidate.score)
        if candidate.identity_id not in scores or score > scores[candidate.identity_id]:
            scores[candidate.identity_id] = score
            names[candidate.identity_id] = candidate.name
    vote = None
    if scores:
        best = max(scores, key=lambda identity: scores[identity])  # first listed wins a tie
        if scores[best] >= threshold:
            vote = best
    return _Frame(observation, scores, names, vote)


@dataclass(frozen=True)
class _Vote:
    """The outcome of a vote over a window.

    Attributes:
        leader: identity with the most votes (``None`` when nobody voted or two tie).
        name: its display name from its latest voting frame.
        count: the leader's votes; ``size``: embedded frames in the window.
        mean: the leader's mean score over its voting frames.
        rival: the runner-up identity, ``None`` when none is listed.
        lead: ``mean`` minus the runner-up's mean, ``None`` without a runner-up.
        frames: the leader's voting frames.
        won: whether the leader wins (enough votes and margin).
        summary: human-readable description (identity ids only).
    """

    leader: Optional[str]
    name: Optional[str]
    count: int
    size: int
    mean: float
    rival: Optional[str]
    lead: Optional[float]
    frames: Tuple[_Frame, ...]
    won: bool
    summary: str


def _liveness_summary(observations: Sequence[Observation]) -> Optional[Tuple[float, bool]]:
    """``(mean score, passed)`` over the checked observations, passed meaning a strict majority passed."""
    checked = [observation.liveness for observation in observations if observation.liveness is not None]
    if not checked:
        return None
    passed = sum(1 for _, ok in checked if ok)
    mean = float(np.mean([score for score, _ in checked]))
    return mean, 2 * passed > len(checked)


def _liveness_text(observations: Sequence[Observation]) -> str:
    checked = [observation.liveness for observation in observations if observation.liveness is not None]
    passed = sum(1 for _, ok in checked if ok)
    return f"{passed} of {len(checked)} checked voting frames passed"


@dataclass
class _Pending:
    """A won vote held back by liveness: ``denied`` if nothing better comes."""

    vote: _Vote
    liveness: Optional[Tuple[float, bool]]
    reason: str


@dataclass(eq=False)
class _TrackState:
    """Everything the engine keeps about one track.

    ``window``, ``embedded``, ``best``, ``pending`` and ``best_score`` belong to the current evaluation
    and are reset when a re-announce evaluation starts.
    """

    first_seen: float
    last_seen: float
    window: Deque[_Frame]
    frames: int = 0
    embedded: int = 0
    best: List[Observation] = field(default_factory=list)
    pending: Optional[_Pending] = None
    best_score: Optional[float] = None
    decided_at: Optional[float] = None
    decisions: int = 0

    def quiet_until(self, reannounce_s: float) -> Optional[float]:
        """When the current quiet period ends, or ``None`` when the track is being evaluated."""
        if self.decided_at is None:
            return None
        return self.decided_at + reannounce_s


class DecisionEngine:
    """Per-track voting; see the module documentation for the rules.

    Args:
        settings: the voting rules.
    """

    def __init__(self, settings: DecisionSettings) -> None:
        self.settings = settings
        self._tracks: Dict[int, _TrackState] = {}

    @property
    def track_ids(self) -> List[int]:
        """Ids of the tracks the engine holds state for, ascending."""
        return sorted(self._tracks)

    # -- the pipeline's calls -------------------------------------------------------------------------

    def wants_embedding(self, track_id: int, now: Optional[float] = None) -> bool:
        """Whether the pipeline should embed this track's face in the coming frame.

        False while the track is quiet after a decision and its re-announce is not yet due; true for
        a new or undecided track.

        Args:
            track_id: the tracker's id.
            now: the coming frame's timestamp; default: the track's last observation's.
        """
        state = self._tracks.get(track_id)
        if state is None:
            return True
        until = state.quiet_until(self.settings.reannounce_s)
        if until is None:
            return True
        return (state.last_seen if now is None else now) >= until

    def observe(self, track_id: int, observation: Observation) -> Optional[Decision]:
        """Take one frame's observation of a track.

        Returns:
            The track's decision when this observation completes one, else ``None``. At most one
            decision per track and evaluation (the first, then one per re-announce).
        """
        state = self._tracks.get(track_id)
        if state is None:
            state = _TrackState(
                observation.timestamp, observation.timestamp, deque(maxlen=self.settings.window)
            )
            self._tracks[track_id] = state
        state.frames += 1
        state.last_seen = observation.timestamp

        until = state.quiet_until(self.settings.reannounce_s)
        if until is not None:
            if observation.timestamp < until:
                return None
            self._restart(state)
            logger.debug("track %d: re-announce due, evaluating afresh", track_id)

        self._keep_best(state, observation)
        if not observation.embedded:
            return None
        frame = _frame(observation, self.settings.threshold)
        state.window.append(frame)
        state.embedded += 1
        if frame.scores:
            top = max(frame.scores.values())
            state.best_score = top if state.best_score is None else max(state.best_score, top)
        decision = self._evaluate(track_id, state, observation.timestamp)
        if decision is not None:
            self._decided(state, decision)
        return decision

    def end_track(self, track_id: int, now: float) -> Optional[Decision]:
        """Forget a track that left (the tracker ended it).

        Returns:
            For a track that never had a decision and was observed in at least ``end_min_frames``
            frames: ``denied`` when a vote was won but held back by liveness, else ``unknown``.
            Otherwise ``None``.
        """
        state = self._tracks.pop(track_id, None)
        if state is None or state.decisions:
            return None
        if state.frames < self.settings.end_min_frames:
            logger.debug("track %d: left after %d frame(s), no event", track_id, state.frames)
            return None
        if state.pending is not None:
            decision = self._denied(track_id, state, state.pending, now)
        else:
            decision = self._unknown(
                track_id, state, now, f"left after {state.frames} frames without a decision"
            )
        logger.debug("track %d: %s at end of track (%s)", track_id, decision.decision, decision.reason)
        return decision

    def best_frames(self, track_id: int) -> List[Observation]:
        """The current evaluation's best-quality observations, best first (at most ``best_frames``).

        After a decision these are the frames of the evaluation that decided, until a re-announce
        evaluation starts. Empty for a track the engine does not know.
        """
        state = self._tracks.get(track_id)
        return list(state.best) if state is not None else []

    # -- internals ------------------------------------------------------------------------------------

    def _restart(self, state: _TrackState) -> None:
        state.decided_at = None
        state.window.clear()
        state.embedded = 0
        state.best = []
        state.pending = None
        state.best_score = None

    def _keep_best(self, state: _TrackState, observation: Observation) -> None:
        best = state.best
        position = len(best)
        while position > 0 and best[position - 1].quality < observation.quality:
            position -= 1
        if position < self.settings.best_frames:
            best.insert(position, observation)
            del best[self.settings.best_frames :]

    def _decided(self, state: _TrackState, decision: Decision) -> None:
        state.decided_at = decision.decided_at
        state.decisions += 1
        logger.debug(
            "track %d: %s after %d frames (%s)",
            decision.track_id,
            decision.decision,
            decision.frames,
            decision.reason,
        )

    def _vote(self, window: Sequence[_Frame]) -> _Vote:
        settings = self.settings
        size = len(window)
        tally = Counter(frame.vote for frame in window if frame.vote is not None)
        if not tally:
            return _Vote(None, None, 0, size, 0.0, None, None, (), False, f"no votes in {size} frames")
        ranked = tally.most_common()
        leader, count = ranked[0]
        if len(ranked) > 1 and ranked[1][1] == count:
            return _Vote(
                None,
                None,
                count,
                size,
                0.0,
                None,
                None,
                (),
                False,
                f"tie: {count} of {size} votes each for {leader} and {ranked[1][0]}",
            )
        frames = tuple(frame for frame in window if frame.vote == leader)
        mean = float(np.mean([frame.scores[leader] for frame in frames]))
        rival_scores: Dict[str, List[float]] = {}
        for frame in window:
            for identity, score in frame.scores.items():
                if identity != leader:
                    rival_scores.setdefault(identity, []).append(score)
        rival: Optional[str] = None
        lead: Optional[float] = None
        if rival_scores:
            rival_means = {identity: float(np.mean(scores)) for identity, scores in rival_scores.items()}
            rival = max(rival_means, key=lambda identity: rival_means[identity])
            lead = mean - rival_means[rival]
        summary = f"{count} of {size} votes for {leader}, mean {mean:.2f}, " + (
            f"margin {lead:.2f} over {rival}" if rival is not None else "no runner-up"
        )
        won = count >= settings.votes and (lead is None or lead >= settings.margin - MARGIN_EPSILON)
        if count < settings.votes:
            summary += f" (needs {settings.votes} votes)"
        elif not won:
            summary += f" (needs margin {settings.margin:.2f})"
        name = frames[-1].names[leader]
        return _Vote(leader, name, count, size, mean, rival, lead, frames, won, summary)

    def _evaluate(self, track_id: int, state: _TrackState, now: float) -> Optional[Decision]:
        settings = self.settings
        vote = self._vote(state.window)
        if vote.won:
            observations = [frame.observation for frame in vote.frames]
            liveness = _liveness_summary(observations)
            if not settings.liveness_required:
                return self._decision(track_id, state, GRANTED, vote, liveness, now, vote.summary)
            if liveness is not None and liveness[1]:
                reason = f"{vote.summary}, liveness {_liveness_text(observations)}"
                return self._decision(track_id, state, GRANTED, vote, liveness, now, reason)
            if liveness is None:
                reason = f"liveness not checked on the voting frames; {vote.summary}"
            else:
                reason = f"liveness failed: {_liveness_text(observations)}; {vote.summary}"
            state.pending = _Pending(vote, liveness, reason)
        if state.embedded < settings.unknown_after_frames:
            return None
        if state.pending is not None:
            return self._denied(track_id, state, state.pending, now)
        if vote.leader is None and vote.count == 0:
            reason = f"no match after {state.embedded} frames"
            if state.best_score is not None:
                reason += f" (best score {state.best_score:.2f} < {settings.threshold:.2f})"
        else:
            reason = f"no decision after {state.embedded} frames: {vote.summary}"
        return self._unknown(track_id, state, now, reason)

    def _denied(self, track_id: int, state: _TrackState, pending: _Pending, now: float) -> Decision:
        return self._decision(track_id, state, DENIED, pending.vote, pending.liveness, now, pending.reason)

    def _decision(
        self,
        track_id: int,
        state: _TrackState,
        kind: DecisionKind,
        vote: _Vote,
        liveness: Optional[Tuple[float, bool]],
        now: float,
        reason: str,
    ) -> Decision:
        best = state.best[0]
        return Decision(
            track_id=track_id,
            decision=kind,
            identity_id=vote.leader,
            name=vote.name,
            score=vote.mean,
            threshold=self.settings.threshold,
            frames=state.frames,
            liveness=liveness,
            box=best.box.copy(),
            quality=float(best.quality),
            first_seen=state.first_seen,
            decided_at=now,
            reason=reason,
            access_reason="liveness" if kind == DENIED else None,
            margin=vote.lead,
        )

    def _unknown(self, track_id: int, state: _TrackState, now: float, reason: str) -> Decision:
        observations = [frame.observation for frame in state.window] or state.best
        best = state.best[0]
        return Decision(
            track_id=track_id,
            decision=UNKNOWN,
            identity_id=None,
            name=None,
            score=state.best_score,
            threshold=self.settings.threshold,
            frames=state.frames,
            liveness=_liveness_summary(observations),
            box=best.box.copy(),
            quality=float(best.quality),
            first_seen=state.first_seen,
            decided_at=now,
            reason=reason,
        )
