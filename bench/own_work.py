"""Where the pipeline's own work goes: the time of each step of ``analyzer.analyze`` outside the model
calls, for an MTCNN analyzer without liveness (the case issue 16's part 1 measures).

:func:`own_work_by_step` runs the frames once more with a timer around each step, so the figures of
the main loop are not touched by the timers (about 20 timed calls a frame, well under 1 % of the
pipeline's own work). Steps are the detector's and the analyzer's own functions, timed where the
pipeline calls them; a step's model calls and the steps nested in it are taken out, so the steps add
up to the pipeline's own work, and ``other`` is what no step holds (box arithmetic between the
stages, result assembly, the calls themselves).

It then runs the same frames with the networks *replayed*: every back-end call hands back the
outputs recorded for that call of that frame, without running. The pipeline does exactly the same
work, but no network run comes between its steps to take the caches and the cores; the difference
between the two passes is what the network runs cost the pipeline's own work. (Answering a call from
the recording costs about 0.3 µs, 11 or 12 calls a one-face frame, which the replayed pass counts as
own work.)
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from appliance.vision import analyzer as analyzer_module
from appliance.vision import mtcnn as mtcnn_module
from appliance.vision.analyzer import FaceAnalyzer
from appliance.vision.mtcnn import MtcnnDetector

#: The steps, in the order the pipeline runs them, as the JSON and the table name them.
STEPS = (
    "pyramid",
    "pnet_inputs",
    "pnet_candidates",
    "suppression",
    "patches",
    "alignment",
    "embedding",
    "other",
)

#: The module-level functions timed where the pipeline looks them up; the detector's methods and the
#: embedder's ``embed`` are timed on the analyzer's own objects.
_MODULE_STEPS = (
    (mtcnn_module, "pyramid"),
    (mtcnn_module, "nms"),
    (mtcnn_module, "nms_per_group"),
    (analyzer_module, "align_faces"),
)
_DETECTOR_STEPS = ("_pnet_inputs", "_pnet_candidates", "_crops")


class _Timers:
    """Inclusive seconds per wrapped function name."""

    def __init__(self) -> None:
        self.seconds: Dict[str, float] = {}

    def wrap(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        self.seconds[name] = 0.0

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - started

        return timed


@contextmanager
def _timed_steps(analyzer: FaceAnalyzer) -> Iterator[_Timers]:
    """Every step of ``analyzer`` wrapped in a timer while inside; all put back on the way out."""
    timers = _Timers()
    detector, embedder = analyzer.detector, analyzer.embedder
    patched: List[Any] = []  # (owner, attribute, original or None for an instance attribute)
    try:
        for module, name in _MODULE_STEPS:
            original = getattr(module, name)
            patched.append((module, name, original))
            setattr(module, name, timers.wrap(name, original))
        for owner, name in [(detector, step) for step in _DETECTOR_STEPS] + [(embedder, "embed")]:
            patched.append((owner, name, None))
            setattr(owner, name, timers.wrap(name, getattr(owner, name)))
        yield timers
    finally:
        for owner, name, original in reversed(patched):
            if original is None:
                delattr(owner, name)  # the class's method shows through again
            else:
                setattr(owner, name, original)


#: One back-end call as recorded: the model's name, the input's shape, the outputs.
Call = Tuple[str, Tuple[int, ...], Dict[str, np.ndarray]]


class ReplayError(RuntimeError):
    """A replayed pipeline asked for a call other than the one recorded at that point."""


def input_shape(feeds: Any) -> Tuple[int, ...]:
    """The shape of a ``run``'s first input (``feeds`` a dict of arrays, or one array)."""
    first = next(iter(feeds.values())) if isinstance(feeds, dict) else feeds
    return tuple(np.shape(first))


@contextmanager
def _backend_runs(backends: Sequence[Any], make: Callable[[Any, Callable[..., Any]], Any]) -> Iterator[None]:
    """Each back-end's ``run`` replaced by ``make(backend, current run)`` while inside, then put back."""
    saved = [vars(backend).get("run") for backend in backends]
    try:
        for backend in backends:
            backend.run = make(backend, backend.run)
        yield
    finally:
        for backend, run in zip(backends, saved):
            if run is None:
                del backend.run
            else:
                backend.run = run


class Replay:
    """The back-end calls of each distinct frame, recorded once and then handed back in order."""

    def __init__(self, backends: Sequence[Any]) -> None:
        self.backends = list(backends)
        self.tapes: List[List[Call]] = []
        self._next: Iterator[Call] = iter(())

    def record(self, analyzer: FaceAnalyzer, frames: Sequence[np.ndarray]) -> None:
        """One ``analyze`` of each frame with the networks running, their calls kept."""

        def recording(backend: Any, run: Callable[..., Any]) -> Callable[..., Any]:
            def record_call(feeds: Any) -> Any:
                outputs = run(feeds)
                self.tapes[-1].append((backend.spec.name, input_shape(feeds), outputs))
                return outputs

            return record_call

        with _backend_runs(self.backends, recording):
            for frame in frames:
                self.tapes.append([])
                analyzer.analyze(frame)

    @contextmanager
    def replaying(self) -> Iterator[Callable[[int], None]]:
        """While inside, back-end calls are answered from the tapes; call the yielded function with a
        frame's index before analysing it."""

        def replayed(backend: Any, _run: Callable[..., Any]) -> Callable[..., Any]:
            name = backend.spec.name

            def answer(feeds: Any) -> Any:
                recorded = next(self._next, None)
                if recorded is None or recorded[:2] != (name, input_shape(feeds)):
                    raise ReplayError(
                        f"{name} was called with {input_shape(feeds)} where the recording has "
                        f"{'no further call' if recorded is None else recorded[:2]}"
                    )
                return recorded[2]

            return answer

        def load(index: int) -> None:
            self._next = iter(self.tapes[index])

        with _backend_runs(self.backends, replayed):
            yield load


def own_work_by_step(
    analyzer: FaceAnalyzer, clock: Any, frames: Sequence[np.ndarray], count: int
) -> Optional[Dict[str, Dict[str, float]]]:
    """The pipeline's own work per step, ms per frame (mean over ``count`` frames, without liveness),
    with the networks running and with them replayed.

    Args:
        analyzer: an analyzer whose back-ends ``clock`` times (:class:`bench.vision.ModelClock`).
        frames: ``(H, W, 3)`` uint8 BGR frames, cycled.
        count: frames to time.

    Returns:
        ``{"with_networks": {step: ms}, "networks_replayed": {step: ms}}`` for every name in
        :data:`STEPS` plus ``total`` (end to end minus model time in that pass), or ``None`` when
        the detector is not MTCNN (the steps are MTCNN's).
    """
    detector = analyzer.detector
    if not isinstance(detector, MtcnnDetector):
        return None
    checker, analyzer.liveness = analyzer.liveness, None
    try:
        with_networks = _timed_pass(analyzer, detector, clock, frames, count, None)
        replay = Replay(clock.backends)
        replay.record(analyzer, frames)
        with replay.replaying() as load:
            replayed = _timed_pass(analyzer, detector, clock, frames, count, load)
    finally:
        analyzer.liveness = checker
    return {"with_networks": with_networks, "networks_replayed": replayed}


def _timed_pass(
    analyzer: FaceAnalyzer,
    detector: MtcnnDetector,
    clock: Any,
    frames: Sequence[np.ndarray],
    count: int,
    load: Optional[Callable[[int], None]],
) -> Dict[str, float]:
    """One pass over the frames with every step timed; ``load`` selects a replayed frame's calls."""
    with _timed_steps(analyzer) as timers:
        clock.reset()
        started = time.perf_counter()
        for index in range(count):
            if load is not None:
                load(index % len(frames))
            analyzer.analyze(frames[index % len(frames)])
        wall = time.perf_counter() - started
    inclusive = timers.seconds
    pnet_model = clock.seconds[detector.pnet.spec.name]
    embedder_model = clock.seconds[analyzer.embedder.backend.spec.name]
    steps = {
        "pyramid": inclusive["pyramid"],
        "pnet_inputs": inclusive["_pnet_inputs"],
        "pnet_candidates": inclusive["_pnet_candidates"]
        - inclusive["_pnet_inputs"]
        - inclusive["nms_per_group"]
        - pnet_model,
        "suppression": inclusive["nms"] + inclusive["nms_per_group"],
        "patches": inclusive["_crops"],
        "alignment": inclusive["align_faces"],
        "embedding": inclusive["embed"] - embedder_model,
    }
    total = wall - clock.total
    steps["other"] = total - sum(steps.values())
    by_step = {name: round(seconds * 1000 / count, 3) for name, seconds in steps.items()}
    return {**by_step, "total": round(total * 1000 / count, 3)}
