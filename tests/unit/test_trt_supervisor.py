"""The daemon's TensorRT engine decisions (:class:`appliance.runtime.engines.EngineSupervisor`).

TensorRT and CUDA are FAKED here: there is no GPU on the development machines and in CI. The
supervisor takes its TensorRT edge as injected callables — the cache check (manifest), the engine
build, opening the cached engine — and these tests pass recording fakes for them, with stand-in
back-ends that only have the ``key`` and ``close()`` the supervisor uses. The manifest check itself
is real in :func:`test_the_service_checks_the_manifest_before_anything_is_deserialized`, which runs
:class:`engines.tensorrt.service.EngineService` on the real models with a stated platform (nothing
there needs TensorRT). The real TensorRT path is exercised by the ``gpu`` suite on a Jetson.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pytest

from appliance.runtime.engines import CPU, TENSORRT, EngineSupervisor, Switch, model_of
from engines.backends import BackendOptions
from engines.errors import EngineBuildError, EngineLoadError, EngineMissingError, ModelMissingError
from engines.registry import get_model
from engines.tensorrt.cache import EngineTensor, make_manifest, store
from engines.tensorrt.platform import PlatformInfo
from engines.tensorrt.service import EngineService, EngineTarget

WAIT_S = 30.0  # a bound for joins, never an expectation about speed


class StandIn:
    """A back-end stand-in: what the supervisor touches of a loaded model (its key, close)."""

    def __init__(self, key: str, name: str) -> None:
        self.key = key
        self.name = name
        self.closed = False

    def close(self) -> None:
        self.closed = True


class FakeTensorRT:
    """Records the calls the supervisor makes at its TensorRT edge (TensorRT itself is faked).

    ``cached`` holds the models whose cached engine's manifest fits; a build adds the model to it.
    """

    def __init__(self, cached: Optional[set] = None) -> None:
        self.cached = set(cached or ())
        self.calls: List[str] = []
        self.build_error: Dict[str, BaseException] = {}
        self.open_error: Dict[str, BaseException] = {}
        self.check_error: Dict[str, BaseException] = {}
        self.build_gate: Optional[threading.Event] = None
        self.extensions: List[float] = []
        self.lock = threading.Lock()

    def _record(self, text: str) -> None:
        with self.lock:
            self.calls.append(text)

    def check(self, target: EngineTarget) -> Optional[str]:
        self._record(f"check {target.name}")
        if target.name in self.check_error:
            raise self.check_error[target.name]
        if target.name in self.cached:
            return None
        return f"{target.name}: the cached engine was built with TensorRT 8.5.2, this device runs 8.6.1"

    def build(self, target: EngineTarget, cancel: threading.Event) -> None:
        self._record(f"build {target.name}")
        if self.build_gate is not None:
            self.build_gate.wait(WAIT_S)
            if cancel.is_set():
                raise EngineBuildError(f"{target.name}: the engine build was cancelled")
        if target.name in self.build_error:
            raise self.build_error[target.name]
        self.cached.add(target.name)

    def open_trt(self, target: EngineTarget) -> StandIn:
        self._record(f"open_trt {target.name}")
        if target.name in self.open_error:
            raise self.open_error[target.name]
        if target.name not in self.cached:
            raise EngineMissingError(f"{target.name}: no engine cached")
        return StandIn(TENSORRT, target.name)

    def open_cpu(self, target: EngineTarget) -> StandIn:
        self._record(f"open_cpu {target.name}")
        return StandIn(CPU, target.name)

    def extend(self, seconds: float) -> None:
        with self.lock:
            self.extensions.append(seconds)

    def supervisor(self, fallback: str = "cpu") -> EngineSupervisor:
        return EngineSupervisor(
            fallback,
            self.check,
            self.build,
            self.open_trt,
            self.open_cpu,  # type: ignore[arg-type]
            extend_timeout=self.extend,
            extend_every_s=0.01,
        )


def target(name: str) -> EngineTarget:
    return EngineTarget(name, get_model(name), Path("/models"))


class Switcher:
    """The daemon's part: put the built engine in place (here: open it and remember it), marking it
    ready as it takes its place; ``seen`` records what ``watch()`` showed just before and after."""

    def __init__(
        self,
        fake: FakeTensorRT,
        answer: Optional[bool] = True,
        error: Optional[Exception] = None,
        watch: Optional[Callable[[], Any]] = None,
    ):
        self.fake = fake
        self.answer = answer
        self.error = error
        self.watch = watch
        self.switched: List[Any] = []
        self.seen: List[Any] = []

    def __call__(self, built: EngineTarget, in_place: Callable[[], None]) -> bool:
        if self.error is not None:
            raise self.error
        if not self.answer:
            return False
        self.switched.append(self.fake.open_trt(built))
        if self.watch is not None:
            self.seen.append(self.watch())
        in_place()
        if self.watch is not None:
            self.seen.append(self.watch())
        return True


@pytest.fixture
def fake() -> FakeTensorRT:
    return FakeTensorRT()


def run_to_end(supervisor: EngineSupervisor, switch: Switch) -> None:
    try:
        assert supervisor.start(switch)
        assert supervisor.wait(WAIT_S), "the background builds did not finish"
    finally:
        supervisor.close()


def test_a_matching_manifest_loads_the_cached_engine(fake: FakeTensorRT) -> None:
    fake.cached = {"mobilefacenet"}
    supervisor = fake.supervisor()
    backend = supervisor.open(target("mobilefacenet"))
    assert backend.key == TENSORRT
    assert fake.calls == ["check mobilefacenet", "open_trt mobilefacenet"]
    assert supervisor.status() == {"mobilefacenet": {"backend": TENSORRT, "state": "ready", "reason": None}}
    assert supervisor.degraded() == []
    assert not supervisor.start(Switcher(fake))  # nothing to build
    supervisor.close()


def test_a_mismatch_serves_on_the_cpu_and_builds_in_the_background(fake: FakeTensorRT) -> None:
    fake.cached = {"mtcnn-pnet"}
    supervisor = fake.supervisor()
    backends = {name: supervisor.open(target(name)) for name in ("mtcnn-pnet", "mtcnn-rnet")}
    assert backends["mtcnn-pnet"].key == TENSORRT
    assert backends["mtcnn-rnet"].key == CPU
    # The manifest is checked before anything is deserialized: no engine is opened for the stale one.
    assert "open_trt mtcnn-rnet" not in fake.calls
    assert fake.calls.index("check mtcnn-rnet") < fake.calls.index("open_cpu mtcnn-rnet")
    state = supervisor.status()["mtcnn-rnet"]
    assert state["backend"] == CPU and state["state"] == "queued"
    assert "TensorRT 8.5.2, this device runs 8.6.1" in state["reason"]
    assert supervisor.pending == ["mtcnn-rnet"]
    assert supervisor.degraded() and "mtcnn-rnet runs on the CPU" in supervisor.degraded()[0]

    switch = Switcher(fake, watch=lambda: supervisor.status()["mtcnn-rnet"]["state"])
    run_to_end(supervisor, switch)
    assert [b.name for b in switch.switched] == ["mtcnn-rnet"]
    assert all(b.key == TENSORRT for b in switch.switched)
    # Ready the moment the engine takes its place (under the runtime's snapshot lock in the daemon),
    # not after the switch has returned.
    assert switch.seen == ["building", "ready"]
    assert supervisor.status()["mtcnn-rnet"] == {"backend": TENSORRT, "state": "ready", "reason": None}
    assert supervisor.degraded() == []
    assert fake.calls.count("build mtcnn-rnet") == 1 and "build mtcnn-pnet" not in fake.calls


def test_a_failed_build_stays_on_the_cpu_with_the_reason(fake: FakeTensorRT) -> None:
    fake.build_error["mobilefacenet"] = EngineBuildError("mobilefacenet: TensorRT could not build the engine")
    supervisor = fake.supervisor()
    assert supervisor.open(target("mobilefacenet")).key == CPU
    assert supervisor.open(target("mtcnn-onet")).key == CPU
    switch = Switcher(fake)
    run_to_end(supervisor, switch)
    state = supervisor.status()["mobilefacenet"]
    assert state["backend"] == CPU and state["state"] == "failed"
    assert "engine build failed" in state["reason"] and "could not build the engine" in state["reason"]
    assert any("mobilefacenet runs on the CPU (failed)" in text for text in supervisor.degraded())
    # One failure does not stop the other builds.
    assert [b.name for b in switch.switched] == ["mtcnn-onet"]


def test_an_engine_that_does_not_load_after_its_build_stays_on_the_cpu(fake: FakeTensorRT) -> None:
    supervisor = fake.supervisor()
    supervisor.open(target("mtcnn-onet"))
    run_to_end(supervisor, Switcher(fake, error=EngineLoadError("mtcnn-onet: CUDA allocation failed")))
    state = supervisor.status()["mtcnn-onet"]
    assert state["backend"] == CPU and state["state"] == "failed"
    assert "did not load" in state["reason"] and "CUDA allocation failed" in state["reason"]


def test_a_model_replaced_meanwhile_is_not_switched(fake: FakeTensorRT) -> None:
    supervisor = fake.supervisor()
    supervisor.open(target("mtcnn-onet"))
    run_to_end(supervisor, Switcher(fake, answer=False))
    assert supervisor.status()["mtcnn-onet"]["state"] == "superseded"


def test_a_cached_engine_that_does_not_deserialize_is_rebuilt_in_the_background(fake: FakeTensorRT) -> None:
    fake.cached = {"mobilefacenet"}
    fake.open_error["mobilefacenet"] = EngineMissingError(
        "mobilefacenet: the cached engine does not deserialize; it has to be built again"
    )
    supervisor = fake.supervisor()
    assert supervisor.open(target("mobilefacenet")).key == CPU
    assert supervisor.status()["mobilefacenet"]["state"] == "queued"
    del fake.open_error["mobilefacenet"]
    switch = Switcher(fake)
    run_to_end(supervisor, switch)
    assert [b.name for b in switch.switched] == ["mobilefacenet"]


def test_other_load_failures_serve_on_the_cpu_without_a_build(fake: FakeTensorRT) -> None:
    fake.cached = {"mobilefacenet"}
    fake.open_error["mobilefacenet"] = EngineLoadError("mobilefacenet: cannot use CUDA device 0")
    supervisor = fake.supervisor()
    assert supervisor.open(target("mobilefacenet")).key == CPU
    assert supervisor.status()["mobilefacenet"]["state"] == "failed"
    assert supervisor.pending == []
    supervisor.close()


def test_an_unreadable_cache_serves_on_the_cpu(fake: FakeTensorRT) -> None:
    fake.check_error["mobilefacenet"] = EngineBuildError("CUDA device 0 cannot be queried")
    supervisor = fake.supervisor()
    assert supervisor.open(target("mobilefacenet")).key == CPU
    assert "cannot be checked" in supervisor.status()["mobilefacenet"]["reason"]
    supervisor.close()


def test_without_fallback_the_engine_is_built_first_and_the_start_timeout_extended(
    fake: FakeTensorRT,
) -> None:
    supervisor = fake.supervisor("none")
    backend = supervisor.open(target("mobilefacenet"))
    assert backend.key == TENSORRT
    assert fake.calls == ["check mobilefacenet", "build mobilefacenet", "open_trt mobilefacenet"]
    assert fake.extensions and all(seconds > 0 for seconds in fake.extensions)
    assert supervisor.status()["mobilefacenet"]["state"] == "ready"
    assert supervisor.pending == []
    supervisor.close()


def test_without_fallback_a_failed_build_fails_the_start(fake: FakeTensorRT) -> None:
    fake.build_error["mobilefacenet"] = EngineBuildError("mobilefacenet: out of workspace")
    supervisor = fake.supervisor("none")
    with pytest.raises(EngineBuildError, match="out of workspace"):
        supervisor.open(target("mobilefacenet"))
    assert "open_cpu mobilefacenet" not in fake.calls
    assert supervisor.status()["mobilefacenet"]["state"] == "failed"
    fake.check_error["mtcnn-onet"] = ModelMissingError("mtcnn-onet is missing")
    with pytest.raises(ModelMissingError):
        supervisor.open(target("mtcnn-onet"))
    supervisor.close()


def test_close_cancels_a_running_build(fake: FakeTensorRT) -> None:
    fake.build_gate = threading.Event()
    supervisor = fake.supervisor()
    supervisor.open(target("mobilefacenet"))
    switch = Switcher(fake)
    assert supervisor.start(switch)
    supervisor.close(timeout=0.0)  # cancels; the build is blocked on its gate
    fake.build_gate.set()
    assert supervisor.wait(WAIT_S)
    assert switch.switched == []
    assert supervisor.status()["mobilefacenet"]["reason"] == "the engine build was cancelled"
    supervisor.close()  # idempotent
    assert not supervisor.start(switch)  # closed


def test_an_unknown_fallback_is_refused(fake: FakeTensorRT) -> None:
    with pytest.raises(ValueError, match="fallback"):
        fake.supervisor("gpu")


def test_an_update_is_prepared_by_building_its_engine_on_the_callers_thread(fake: FakeTensorRT) -> None:
    """A model update's engine is built before the runtime opens it; a fitting cached engine is kept."""
    supervisor = fake.supervisor()
    cancel = threading.Event()
    assert supervisor.prepare(target("mobilefacenet"), cancel) is None
    assert fake.calls.count("build mobilefacenet") == 1
    assert supervisor.prepare(target("mobilefacenet"), cancel) is None  # cached now: no second build
    assert fake.calls.count("build mobilefacenet") == 1
    assert supervisor.open(target("mobilefacenet")).key == TENSORRT
    supervisor.close()


def test_a_failed_update_build_serves_on_the_cpu_or_fails_without_fallback(fake: FakeTensorRT) -> None:
    fake.build_error["mobilefacenet"] = EngineBuildError("out of workspace")
    supervisor = fake.supervisor()
    reason = supervisor.prepare(target("mobilefacenet"), threading.Event())
    assert reason is not None and "out of workspace" in reason
    assert supervisor.status()["mobilefacenet"]["state"] == "failed"
    strict = fake.supervisor("none")
    with pytest.raises(EngineBuildError, match="out of workspace"):
        strict.prepare(target("mobilefacenet"), threading.Event())
    supervisor.close()
    strict.close()


def test_the_service_checks_the_manifest_before_anything_is_deserialized(
    tmp_path: Path, shared_models: Path
) -> None:
    """The real :class:`EngineService` check (no TensorRT needed): a cached manifest for this exact
    request fits; the same engine on another TensorRT version does not, and the reason says so."""
    orin = PlatformInfo("8.5.2.2", "Orin", (8, 7), "35.4.1")
    options = BackendOptions(engine_dir=str(tmp_path / "engines"), max_frame=(480, 640))
    service = EngineService(options, platform=orin)
    model = EngineTarget("mobilefacenet", get_model("mobilefacenet"), shared_models)
    reason = service.check(model)
    assert reason is not None and "no engine cached" in reason

    request = service.request(model)
    engine = b"serialized engine bytes stand in here"
    tensors = [EngineTensor("input", "input", (-1, 3, 112, 112), "float32")]
    store(service.engine_dir, make_manifest(request, engine, tensors, "int8", "INT8 (auto)"), engine)
    assert service.check(model) is None

    upgraded = EngineService(options, platform=replace(orin, tensorrt_version="8.6.1"))
    reason = upgraded.check(model)
    assert reason is not None and "TensorRT 8.5.2.2, this device runs 8.6.1" in reason


def test_an_update_candidate_beside_the_live_model_does_not_speak_for_it(fake: FakeTensorRT) -> None:
    """An update's candidate has a state of its own: the state document and the degraded flags read
    the state of the model that serves, so a candidate on the CPU that is refused (or not switched
    yet) never makes the live engine look like a CPU fallback — nor the reverse."""
    fake.cached = {"mobilefacenet"}
    supervisor = fake.supervisor()
    live = target("mobilefacenet")
    assert supervisor.open(live).key == TENSORRT
    # Release 2 of the same version: another file (its sha256) under the same version name.
    candidate = replace(live, spec=replace(live.spec, sha256="0" * 64))
    fake.cached.clear()  # the candidate's engine is not built yet
    fake.build_error["mobilefacenet"] = EngineBuildError("mobilefacenet: out of memory while building")
    assert supervisor.prepare(candidate, threading.Event()) is not None
    assert supervisor.open(candidate).key == CPU  # queued again for the background
    serving = {"mobilefacenet": model_of(live.spec)}
    assert supervisor.status(serving) == {
        "mobilefacenet": {"backend": TENSORRT, "state": "ready", "reason": None}
    }
    assert supervisor.degraded(serving) == []
    # Once the candidate serves (or with no live models given: the latest state), its own state shows.
    for view in ({"mobilefacenet": model_of(candidate.spec)}, None):
        state = supervisor.status(view)["mobilefacenet"]
        assert state["backend"] == CPU and state["state"] == "queued", view
        assert (
            supervisor.degraded(view)
            and "mobilefacenet runs on the CPU (queued)" in supervisor.degraded(view)[0]
        )
    supervisor.close()
