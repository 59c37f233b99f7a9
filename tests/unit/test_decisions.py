"""The voting decision engine on synthetic tracks: one decision per passage, never a wrong grant.

Scene tests run the tracker and the engine together the way the daemon's pipeline does (embedding a
face only when the engine asks for it); rule tests feed one track's observations directly.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pytest

from appliance.config import ApplianceConfig
from appliance.decisions import Candidate, Decision, DecisionEngine, DecisionSettings, Observation
from appliance.tracking import IouTracker

NAMES = {"id-a": "Alice Example", "id-b": "Bob Example", "id-c": "Carol Example"}
#: Frames per second of the scenes: a power of two keeps their timestamps exact.
FPS = 8.0
#: Defaults of the [decision] section, with re-announcing out of the way unless a test wants it.
SETTINGS = DecisionSettings(reannounce_s=1000.0, threshold=0.40)
LIVE = (0.9, True)
SPOOF = (0.1, False)


def candidates(*scores: Tuple[str, float]) -> List[Candidate]:
    """Gallery candidates, best first, from ``(identity id, score)`` pairs."""
    ordered = sorted(scores, key=lambda pair: -pair[1])
    return [Candidate(identity, NAMES[identity], score) for identity, score in ordered]


def box(x: float, y: float = 100.0, side: float = 100.0) -> np.ndarray:
    """``(4,)`` float32 square face box with its top-left corner at (x, y)."""
    return np.array([x, y, x + side, y + side], np.float32)


def observation(
    t: float,
    *scores: Tuple[str, float],
    quality: float = 0.8,
    liveness: Optional[Tuple[float, bool]] = None,
    embedded: bool = True,
    at: Optional[np.ndarray] = None,
) -> Observation:
    return Observation(
        timestamp=t,
        box=box(100.0) if at is None else at,
        quality=quality,
        candidates=candidates(*scores),
        embedded=embedded,
        liveness=liveness,
    )


def feed(engine: DecisionEngine, track_id: int, observations: Sequence[Observation]) -> List[Decision]:
    """Observe a track's frames in order; the decisions that came out."""
    out = []
    for item in observations:
        decision = engine.observe(track_id, item)
        if decision is not None:
            out.append(decision)
    return out


def assert_one_event_per_passage(decisions: Sequence[Decision], reannounce_s: float) -> None:
    """No track decides twice within the re-announce interval."""
    by_track: Dict[int, List[float]] = defaultdict(list)
    for decision in decisions:
        by_track[decision.track_id].append(decision.decided_at)
    for times in by_track.values():
        for earlier, later in zip(times, times[1:]):
            assert later - earlier >= reannounce_s


# -- a small pipeline: tracker + engine, embedding only when asked ------------------------------------


@dataclass
class Face:
    """One face in one frame of a scene: where it is and what the gallery would say if embedded."""

    box: np.ndarray
    scores: Tuple[Tuple[str, float], ...] = ()
    liveness: Optional[Tuple[float, bool]] = None
    quality: float = 0.8


@dataclass
class SceneResult:
    decisions: List[Decision]
    embeddings: int
    track_of_first_face: Dict[int, int]  # frame index → track id of the frame's first face


def run_scene(frames: Sequence[Sequence[Face]], settings: DecisionSettings = SETTINGS) -> SceneResult:
    tracker = IouTracker(settings.track_iou, settings.track_max_missed)
    engine = DecisionEngine(settings)
    decisions: List[Decision] = []
    embeddings = 0
    first: Dict[int, int] = {}
    now = 0.0
    for index, faces in enumerate(frames):
        now = index / FPS
        boxes = np.array([face.box for face in faces], np.float32).reshape(-1, 4)
        ids = tracker.update(boxes)
        if ids:
            first[index] = ids[0]
        for track_id, face in zip(ids, faces):
            embed = engine.wants_embedding(track_id, now)
            embeddings += int(embed)
            item = Observation(
                timestamp=now,
                box=face.box,
                quality=face.quality,
                candidates=candidates(*face.scores) if embed else (),
                embedded=embed,
                liveness=face.liveness if embed else None,
            )
            decision = engine.observe(track_id, item)
            if decision is not None:
                decisions.append(decision)
        for track_id in tracker.ended():
            decision = engine.end_track(track_id, now)
            if decision is not None:
                decisions.append(decision)
    for track_id in tracker.close_all():
        decision = engine.end_track(track_id, now)
        if decision is not None:
            decisions.append(decision)
    assert engine.track_ids == []
    assert_one_event_per_passage(decisions, settings.reannounce_s)
    return SceneResult(decisions, embeddings, first)


def walk_in(
    identity: Optional[str], frames: int, start: float = 0.25, step: float = 0.03, x0: float = 400.0
) -> List[Face]:
    """A face approaching the camera: the box drifts and grows, the match improves frame by frame.

    ``identity=None`` is a stranger: the nearest identity stays below the threshold.
    """
    faces = []
    for index in range(frames):
        side = 60.0 + 5.0 * index
        at = np.array(
            [x0 - 3.0 * index, 150.0 - index, x0 - 3.0 * index + side, 150.0 - index + side], np.float32
        )
        if identity is None:
            scores: Tuple[Tuple[str, float], ...] = (("id-a", 0.2 + 0.01 * (index % 7)), ("id-b", 0.12))
        else:
            other = "id-b" if identity != "id-b" else "id-a"
            scores = ((identity, min(0.8, round(start + step * index, 4))), (other, 0.15))
        faces.append(Face(at, scores, LIVE, quality=min(1.0, 0.3 + 0.02 * index)))
    return faces


def empty(count: int) -> List[List[Face]]:
    return [[] for _ in range(count)]


# -- scenes ---------------------------------------------------------------------------------------------


def test_a_person_walking_in_is_granted_exactly_once() -> None:
    result = run_scene([[face] for face in walk_in("id-a", 40)] + empty(12))
    assert len(result.decisions) == 1
    (decision,) = result.decisions
    assert decision.decision == "granted"
    assert (decision.identity_id, decision.name) == ("id-a", "Alice Example")
    assert decision.threshold == pytest.approx(0.40)
    # scores reach 0.40 at frame 5: frames 5, 6, 7 are the first three votes
    assert decision.decided_at == 7 / FPS
    assert decision.frames == 8
    assert decision.score == pytest.approx(np.mean([0.40, 0.43, 0.46]))
    assert decision.first_seen == 0.0
    # the event's face is the best-quality frame so far: the latest, as quality grows
    assert decision.quality == pytest.approx(0.3 + 0.02 * 7)
    np.testing.assert_array_equal(decision.box, walk_in("id-a", 8)[7].box)
    assert "3 of 5 votes for id-a" in decision.reason
    # after the decision the pipeline stops embedding the face
    assert result.embeddings == 8


def test_a_stranger_is_unknown_exactly_once_after_unknown_after_frames() -> None:
    result = run_scene([[face] for face in walk_in(None, 60)] + empty(12))
    assert len(result.decisions) == 1
    (decision,) = result.decisions
    assert decision.decision == "unknown"
    assert decision.identity_id is None and decision.name is None
    assert decision.frames == SETTINGS.unknown_after_frames
    assert decision.decided_at == (SETTINGS.unknown_after_frames - 1) / FPS
    assert decision.score == pytest.approx(0.26)  # the best score seen: how close it came
    assert decision.reason.startswith("no match after 12 frames")
    assert result.embeddings == SETTINGS.unknown_after_frames


def _crossing(first: str, second: str) -> List[List[Face]]:
    """Two people cross the doorway in opposite directions; both are recognisable only from the
    frame their paths start to overlap, and the one behind is not detected while hidden."""
    frames = []
    for step in range(24):
        near = step >= 8
        left = Face(
            box(30.0 * step, 60.0, 120.0),
            ((first, 0.7), (second, 0.2)) if near else ((first, 0.3), (second, 0.2)),
            LIVE,
        )
        right = Face(
            box(600.0 - 30.0 * step, 50.0, 100.0),
            ((second, 0.65), (first, 0.25)) if near else ((second, 0.3), (first, 0.25)),
            LIVE,
            quality=0.6,
        )
        frames.append([left] if 8 < step < 12 else [left, right])
    return frames + empty(12)


def test_two_people_crossing_get_two_correct_decisions() -> None:
    result = run_scene(_crossing("id-a", "id-b"))
    assert len(result.decisions) == 2
    by_track = {decision.track_id: decision for decision in result.decisions}
    assert sorted(by_track) == [1, 2]
    assert (by_track[1].decision, by_track[1].identity_id) == ("granted", "id-a")
    assert (by_track[2].decision, by_track[2].identity_id) == ("granted", "id-b")
    # the person behind was decided after reappearing, on its own track
    assert by_track[1].decided_at == 10 / FPS
    assert by_track[2].decided_at == 13 / FPS


def test_crossing_with_a_stranger_grants_only_the_enrolled_person() -> None:
    frames = _crossing("id-a", "id-c")
    for faces in frames:
        for face in faces[1:]:  # the second person is a stranger who looks a bit like Carol
            face.scores = (("id-c", 0.3), ("id-a", 0.25))
    result = run_scene(frames)
    kinds = sorted(
        (decision.track_id, decision.decision, decision.identity_id) for decision in result.decisions
    )
    assert kinds == [(1, "granted", "id-a"), (2, "unknown", None)]


def test_a_person_standing_in_view_is_reannounced_only_after_the_interval() -> None:
    settings = replace(SETTINGS, reannounce_s=30.0)
    frames = [[Face(box(200.0 + (index % 3)), (("id-a", 0.7), ("id-b", 0.2)), LIVE)] for index in range(800)]
    result = run_scene(frames + empty(12), settings)  # 100 s in view
    times = [decision.decided_at for decision in result.decisions]
    assert [decision.decision for decision in result.decisions] == ["granted"] * 4
    assert {decision.track_id for decision in result.decisions} == {1}
    # the first after 3 votes; each re-announce 3 embedded frames after the interval is due
    assert times == [0.25, 30.5, 60.75, 91.0]
    for decision in result.decisions:
        assert decision.frames == decision.decided_at * FPS + 1
    # embedding ran only for the votes: 3 per announcement
    assert result.embeddings == 12


def test_a_one_frame_false_detection_makes_no_event() -> None:
    frames = [[Face(box(300.0), (("id-a", 0.9),))], *empty(12)]
    assert run_scene(frames).decisions == []
    frames = [[Face(box(300.0), (("id-c", 0.2),))]] * 2 + empty(12)
    assert run_scene(frames).decisions == []


def test_a_track_that_leaves_before_deciding_is_one_unknown() -> None:
    frames = [[face] for face in walk_in(None, 6)] + empty(12)
    result = run_scene(frames)
    assert [decision.decision for decision in result.decisions] == ["unknown"]
    (decision,) = result.decisions
    assert decision.frames == 6
    assert decision.reason == "left after 6 frames without a decision"
    assert decision.decided_at == pytest.approx((6 + SETTINGS.track_max_missed) / FPS)


def test_a_person_who_leaves_and_comes_back_gets_a_new_decision() -> None:
    passage = [[face] for face in walk_in("id-a", 15)]
    result = run_scene(passage + empty(12) + passage + empty(12))
    assert [
        (decision.track_id, decision.decision, decision.identity_id) for decision in result.decisions
    ] == [
        (1, "granted", "id-a"),
        (2, "granted", "id-a"),
    ]


def test_a_spoof_is_denied_once_and_never_granted() -> None:
    settings = replace(SETTINGS, liveness_required=True)
    frames = [[Face(box(200.0), (("id-a", 0.75), ("id-b", 0.2)), SPOOF)] for _ in range(60)]
    result = run_scene(frames + empty(12), settings)
    assert len(result.decisions) == 1
    (decision,) = result.decisions
    assert decision.decision == "denied"
    assert decision.identity_id == "id-a"
    assert decision.liveness == (pytest.approx(0.1), False)
    assert decision.reason.startswith("liveness failed: 0 of 5 checked voting frames passed")
    assert decision.frames == settings.unknown_after_frames


def test_a_spoof_that_sometimes_passes_liveness_is_not_granted() -> None:
    settings = replace(SETTINGS, liveness_required=True)
    frames = [
        [Face(box(200.0), (("id-a", 0.75),), (0.6, True) if index % 3 == 0 else (0.3, False))]
        for index in range(60)
    ]
    result = run_scene(frames + empty(12), settings)
    assert [decision.decision for decision in result.decisions] == ["denied"]


def test_a_spoof_that_leaves_early_is_denied_at_the_end_of_its_track() -> None:
    settings = replace(SETTINGS, liveness_required=True)
    frames = [[Face(box(200.0), (("id-a", 0.75),), SPOOF)] for _ in range(5)]
    result = run_scene(frames + empty(12), settings)
    assert [(decision.decision, decision.identity_id) for decision in result.decisions] == [
        ("denied", "id-a")
    ]


def test_liveness_failing_on_early_blurred_frames_still_grants_a_live_person() -> None:
    settings = replace(SETTINGS, liveness_required=True)
    lives = [SPOOF, SPOOF, LIVE, LIVE, LIVE, LIVE, LIVE, LIVE]
    frames = [[Face(box(200.0), (("id-a", 0.7),), live)] for live in lives]
    result = run_scene(frames + empty(12), settings)
    assert [decision.decision for decision in result.decisions] == ["granted"]
    # 3 votes with 1 of 3 passing: held back; 4 votes, 2 of 4: still held; 5 votes, 3 of 5: granted
    assert result.decisions[0].decided_at == 4 / FPS
    assert result.decisions[0].liveness == (pytest.approx((0.1 * 2 + 0.9 * 3) / 5), True)


# -- rules on one track ---------------------------------------------------------------------------------


def test_votes_are_needed_from_the_last_window_of_embedded_frames() -> None:
    engine = DecisionEngine(SETTINGS)
    assert feed(engine, 7, [observation(0.0, ("id-a", 0.6)), observation(0.1, ("id-a", 0.3))]) == []
    assert feed(engine, 7, [observation(0.2, ("id-a", 0.6))]) == []
    # frames that were not embedded neither vote nor push the votes out of the window
    skipped = [observation(0.3 + 0.01 * k, embedded=False) for k in range(20)]
    assert feed(engine, 7, skipped) == []
    (decision,) = feed(engine, 7, [observation(0.6, ("id-a", 0.7))])
    assert decision.decision == "granted"
    assert decision.frames == 24
    assert decision.score == pytest.approx(np.mean([0.6, 0.6, 0.7]))
    assert decision.reason == "3 of 4 votes for id-a, mean 0.63, no runner-up"


def test_frames_that_were_not_embedded_do_not_count_towards_unknown() -> None:
    engine = DecisionEngine(SETTINGS)
    assert feed(engine, 1, [observation(0.1 * k, embedded=False) for k in range(50)]) == []
    (decision,) = feed(engine, 1, [observation(5.0 + 0.1 * k, ("id-a", 0.2)) for k in range(12)])
    assert decision.decision == "unknown"
    assert decision.frames == 62


def test_old_votes_slide_out_of_the_window() -> None:
    engine = DecisionEngine(SETTINGS)
    scores = [0.6, 0.6, 0.2, 0.2, 0.2, 0.6, 0.6]  # never 3 of the last 5
    assert feed(engine, 1, [observation(0.1 * k, ("id-a", s)) for k, s in enumerate(scores)]) == []
    (decision,) = feed(engine, 1, [observation(1.0, ("id-a", 0.6))])
    assert decision.decision == "granted"


def test_a_flicker_above_and_below_the_threshold_gives_one_grant() -> None:
    engine = DecisionEngine(SETTINGS)
    items = [observation(0.1 * k, ("id-a", 0.45 if k % 2 == 0 else 0.35)) for k in range(60)]
    decisions = feed(engine, 1, items)
    assert [(decision.decision, decision.identity_id) for decision in decisions] == [("granted", "id-a")]
    assert decisions[0].decided_at == pytest.approx(0.4)  # frames 0, 2, 4


@pytest.mark.parametrize("listed", ["both", "top1"])
def test_an_a_b_flicker_grants_nobody_and_decides_once(listed: str) -> None:
    """Alternating best identities with close scores: whichever leads the window, its margin over
    the other is small — also when the gallery lists only the best identity per frame."""
    engine = DecisionEngine(SETTINGS)
    items = []
    for k in range(60):
        first, second = ("id-a", "id-b") if k % 2 == 0 else ("id-b", "id-a")
        pairs = [(first, 0.55), (second, 0.52)] if listed == "both" else [(first, 0.55)]
        items.append(observation(0.1 * k, *pairs))
    decisions = feed(engine, 1, items)
    assert [(decision.decision, decision.identity_id) for decision in decisions] == [("unknown", None)]
    assert "no decision after 12 frames" in decisions[0].reason
    assert "needs margin" in decisions[0].reason


def test_an_occasional_wrong_best_match_never_grants_the_wrong_person() -> None:
    engine = DecisionEngine(SETTINGS)
    items = []
    for k in range(60):
        if k % 4 == 1:  # every fourth frame, B edges out A
            items.append(observation(0.1 * k, ("id-b", 0.5), ("id-a", 0.48)))
        else:
            items.append(observation(0.1 * k, ("id-a", 0.7), ("id-b", 0.3)))
    decisions = feed(engine, 1, items)
    assert [(decision.decision, decision.identity_id) for decision in decisions] == [("granted", "id-a")]


def test_an_impostor_between_two_enrolled_people_is_not_granted() -> None:
    """Someone who looks like both A and B: above the threshold for either, never clearly one."""
    engine = DecisionEngine(SETTINGS)
    rng = np.random.default_rng(3)
    items = []
    for k in range(30):
        a, b = 0.5 + rng.uniform(-0.02, 0.02), 0.5 + rng.uniform(-0.02, 0.02)
        items.append(observation(0.1 * k, ("id-a", a), ("id-b", b)))
    decisions = feed(engine, 1, items)
    assert [decision.decision for decision in decisions] == ["unknown"]


def test_the_margin_rule_at_its_boundary() -> None:
    settings = replace(SETTINGS, margin=0.1)
    clear = DecisionEngine(settings)
    items = [observation(0.1 * k, ("id-a", 0.6), ("id-b", 0.5)) for k in range(3)]
    (decision,) = feed(clear, 1, items)
    assert decision.reason == "3 of 3 votes for id-a, mean 0.60, margin 0.10 over id-b"
    close = DecisionEngine(settings)
    items = [observation(0.1 * k, ("id-a", 0.6), ("id-b", 0.51)) for k in range(3)]
    assert feed(close, 1, items) == []


def test_the_runner_up_is_the_best_other_identity_by_mean_over_the_frames_listing_it() -> None:
    settings = replace(SETTINGS, margin=0.1)
    engine = DecisionEngine(settings)
    items = [
        observation(0.0, ("id-a", 0.7), ("id-b", 0.3)),
        observation(0.1, ("id-a", 0.7), ("id-c", 0.55)),
        observation(0.2, ("id-a", 0.7), ("id-b", 0.3)),
    ]
    (decision,) = feed(engine, 1, items)  # C's mean is 0.55, B's 0.30: C is the runner-up
    assert decision.reason.endswith("margin 0.15 over id-c")


def test_a_tie_between_two_identities_decides_nothing() -> None:
    settings = replace(SETTINGS, votes=1, window=2, margin=0.1, unknown_after_frames=2)
    engine = DecisionEngine(settings)
    # A leads B by 0.05 in the first frame (too little); the second frame votes for B alone. By
    # margin A would now win (0.60 against B's mean 0.50), but one vote each is a tie.
    items = [observation(0.0, ("id-a", 0.6), ("id-b", 0.55)), observation(0.1, ("id-b", 0.45))]
    (decision,) = feed(engine, 1, items)
    assert decision.decision == "unknown"
    assert decision.reason == "no decision after 2 frames: tie: 1 of 2 votes each for id-a and id-b"


def test_an_identity_listed_twice_counts_with_its_best_score() -> None:
    engine = DecisionEngine(SETTINGS)
    item = Observation(
        0.0,
        box(0.0),
        0.5,
        [Candidate("id-a", "Alice Example", 0.6), Candidate("id-a", "Alice Example", 0.35)],
    )
    (decision,) = feed(engine, 1, [item, replace(item, timestamp=0.1), replace(item, timestamp=0.2)])
    assert decision.score == pytest.approx(0.6)
    assert decision.reason.endswith("no runner-up")


def test_liveness_is_judged_by_majority_of_the_checked_voting_frames() -> None:
    settings = replace(SETTINGS, liveness_required=True)
    engine = DecisionEngine(settings)
    items = [
        observation(0.0, ("id-a", 0.7), liveness=(0.8, True)),
        observation(0.1, ("id-a", 0.7)),  # not checked: does not count
        observation(0.2, ("id-a", 0.7), liveness=(0.7, True)),
    ]
    (decision,) = feed(engine, 1, items)
    assert decision.decision == "granted"
    assert decision.liveness == (pytest.approx(0.75), True)
    assert decision.reason.endswith("liveness 2 of 2 checked voting frames passed")

    tie = DecisionEngine(settings)
    items = [
        observation(0.0, ("id-a", 0.7), liveness=(0.8, True)),
        observation(0.1, ("id-a", 0.7), liveness=(0.2, False)),
        observation(0.2, ("id-a", 0.7)),
    ]
    assert feed(tie, 1, items) == []  # 1 of 2 is not a majority: held back


def test_liveness_never_checked_is_denied_not_granted() -> None:
    engine = DecisionEngine(replace(SETTINGS, liveness_required=True))
    decisions = feed(engine, 1, [observation(0.1 * k, ("id-a", 0.7)) for k in range(30)])
    assert [(decision.decision, decision.identity_id) for decision in decisions] == [("denied", "id-a")]
    assert decisions[0].liveness is None
    assert decisions[0].reason.startswith("liveness not checked on the voting frames")


def test_liveness_is_reported_but_not_required_when_disabled() -> None:
    engine = DecisionEngine(SETTINGS)
    items = [observation(0.1 * k, ("id-a", 0.7), liveness=SPOOF) for k in range(3)]
    (decision,) = feed(engine, 1, items)
    assert decision.decision == "granted"
    assert decision.liveness == (pytest.approx(0.1), False)


def test_re_announce_is_a_fresh_evaluation() -> None:
    settings = replace(SETTINGS, reannounce_s=10.0, liveness_required=True)
    engine = DecisionEngine(settings)
    decisions = feed(engine, 1, [observation(0.25 * k, ("id-a", 0.7), liveness=LIVE) for k in range(3)])
    assert [decision.decision for decision in decisions] == ["granted"]
    assert not engine.wants_embedding(1)
    assert not engine.wants_embedding(1, now=10.25)
    assert engine.wants_embedding(1, now=10.5)
    # within the interval even embedded observations are ignored
    quiet = [observation(5.0 + 0.25 * k, ("id-b", 0.9), liveness=LIVE) for k in range(20)]
    assert feed(engine, 1, quiet) == []
    assert not engine.wants_embedding(1)  # now: the last observation's time, 9.75
    # afterwards the window starts empty: the old votes do not count, and liveness now fails
    later = [observation(10.5 + 0.25 * k, ("id-a", 0.7), liveness=SPOOF) for k in range(12)]
    decisions = feed(engine, 1, later)
    assert [decision.decision for decision in decisions] == ["denied"]
    assert decisions[0].decided_at == 10.5 + 0.25 * 11
    assert decisions[0].frames == 3 + 20 + 12
    assert engine.best_frames(1)[0].timestamp == 10.5  # the fresh evaluation's frames only


def test_reannounce_zero_re_evaluates_at_once() -> None:
    engine = DecisionEngine(replace(SETTINGS, reannounce_s=0.0))
    decisions = feed(engine, 1, [observation(0.1 * k, ("id-a", 0.7)) for k in range(9)])
    assert [decision.decided_at for decision in decisions] == pytest.approx([0.2, 0.5, 0.8])


def test_end_track_rules() -> None:
    engine = DecisionEngine(SETTINGS)
    assert engine.end_track(99, 1.0) is None  # never seen
    feed(engine, 1, [observation(0.0, ("id-a", 0.9)), observation(0.1, ("id-a", 0.9))])
    assert engine.end_track(1, 0.5) is None  # 2 frames: below end_min_frames
    feed(engine, 2, [observation(0.1 * k, ("id-a", 0.9)) for k in range(3)])  # granted
    assert engine.end_track(2, 0.5) is None  # already decided: ends silently
    feed(engine, 3, [observation(0.1 * k, ("id-a", 0.9 if k == 0 else 0.1)) for k in range(4)])
    decision = engine.end_track(3, 0.9)
    assert decision is not None
    assert (decision.decision, decision.decided_at, decision.frames) == ("unknown", 0.9, 4)
    assert decision.score == pytest.approx(0.9)
    assert engine.end_track(3, 1.0) is None  # forgotten
    assert engine.track_ids == []


def test_end_min_frames_is_a_setting() -> None:
    engine = DecisionEngine(replace(SETTINGS, end_min_frames=1))
    feed(engine, 1, [observation(0.0, ("id-c", 0.1))])
    decision = engine.end_track(1, 0.1)
    assert decision is not None and decision.decision == "unknown"


def test_best_frames_keep_the_highest_quality_observations() -> None:
    engine = DecisionEngine(replace(SETTINGS, best_frames=3))
    qualities = [0.2, 0.9, 0.5, 0.9, 0.1, 0.7]
    items = [observation(0.1 * k, ("id-a", 0.2), quality=q) for k, q in enumerate(qualities)]
    assert feed(engine, 1, items) == []
    best = engine.best_frames(1)
    assert [item.quality for item in best] == [0.9, 0.9, 0.7]
    assert [item.timestamp for item in best] == pytest.approx([0.1, 0.3, 0.5])  # ties: earlier first
    assert engine.best_frames(2) == []


def test_the_decision_carries_the_best_frame_and_keeps_its_evidence() -> None:
    engine = DecisionEngine(replace(SETTINGS, best_frames=2, votes=5))
    qualities = [0.2, 0.9, 0.5, 0.6, 0.1, 0.95]
    items = [
        observation(0.1 * k, ("id-a", 0.6), quality=q, at=box(10.0 * k)) for k, q in enumerate(qualities)
    ]
    (decision,) = feed(engine, 1, items)  # at the fifth vote, frame 4: the best frame was frame 1
    assert decision.quality == pytest.approx(0.9)
    np.testing.assert_array_equal(decision.box, box(10.0))
    # frame 5 came while quiet: the best frames stay those the decision rests on
    assert [item.quality for item in engine.best_frames(1)] == [0.9, 0.6]


def test_wants_embedding_for_new_and_undecided_tracks() -> None:
    engine = DecisionEngine(SETTINGS)
    assert engine.wants_embedding(5)
    feed(engine, 5, [observation(0.0, ("id-a", 0.2))])
    assert engine.wants_embedding(5)


def test_names_are_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="appliance")
    run_scene([[face] for face in walk_in("id-a", 20)] + empty(12))
    assert "track 1: granted" in caplog.text
    assert "Alice" not in caplog.text


# -- inputs and settings --------------------------------------------------------------------------------


def test_observation_checks_its_inputs() -> None:
    item = Observation(0.0, [1, 2, 3, 4], 0.5, [])  # type: ignore[arg-type]
    assert item.box.dtype == np.float32 and item.box.shape == (4,)
    with pytest.raises(ValueError, match="box"):
        Observation(0.0, np.zeros(5), 0.5, [])
    with pytest.raises(ValueError, match="not embedded"):
        Observation(0.0, box(0.0), 0.5, candidates(("id-a", 0.5)), embedded=False)


def test_settings_from_config() -> None:
    config = ApplianceConfig.model_validate(
        {
            "decision": {"votes": 4, "window": 6, "margin": 0.1, "reannounce_s": 5.0, "best_frames": 2},
            "match": {"threshold": 0.5},
            "liveness": {"enabled": True},
        }
    )
    settings = DecisionSettings.from_config(config)
    assert (settings.votes, settings.window, settings.margin, settings.reannounce_s) == (4, 6, 0.1, 5.0)
    assert (settings.unknown_after_frames, settings.track_iou, settings.track_max_missed) == (12, 0.3, 8)
    assert (settings.best_frames, settings.threshold, settings.liveness_required) == (2, 0.5, True)
    assert settings.end_min_frames == 3
    assert DecisionSettings.from_config(ApplianceConfig()) == DecisionSettings()


@pytest.mark.parametrize(
    "changes",
    [
        {"votes": 6},
        {"votes": 0},
        {"margin": -0.1},
        {"reannounce_s": -1.0},
        {"threshold": 1.5},
        {"end_min_frames": 0},
        {"track_iou": 1.0},
    ],
)
def test_bad_settings_are_refused(changes: Dict[str, object]) -> None:
    with pytest.raises(ValueError, match="invalid decision settings"):
        replace(DecisionSettings(), **changes)
