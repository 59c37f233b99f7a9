"""The daemon end to end on faked Jetsons: Nano (TensorRT 8.2), Xavier (8.5), Orin on JetPack 6 (10.3),
Thor on JetPack 7.2 (11.4).

TensorRT and CUDA are hardware that does not exist here: :mod:`tests.fake_tensorrt` stands in for
them, with each version's API (removed names absent, checked against the real bindings by
``scripts/trt-conformance.sh``) and the device's rules (a CUDA context used only on the thread that
holds it, an engine loads only on the TensorRT version and GPU it was built on, INT8 needs a
calibrator, a cache or Q/DQ). Everything else is real: the daemon (in this process, on a thread), the
ONNX models (the fake "engines" execute them with ONNX Runtime), Mosquitto, the encrypted gallery,
python-can's ``virtual`` bus under the real ISO-TP and UDS stacks, ``push_package`` as the tester.

Each device: start-up with no engine cached (the models serve on the CPU, the engines are built in
the background and switched in between frames), then a CAN push of a new embedder with its INT8
calibration cache (Thor: its Q/DQ model, as TensorRT 11 has no implicit calibration) → its engine
built (INT8, FP16 on the Nano) → validated → the gallery re-embedded → switched → health-checked —
every model call on the pipeline thread, which the fake enforces. The Nano's push goes over classic
CAN and resumes a transfer cut near its end (the whole package would take a minute at classic CAN's
frame rate here; the FD cases send all of it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from appliance.config_load import load_config
from appliance.runtime import ModelOwnershipError
from appliance.runtime.runtime import _neutral_feeds
from appliance.updates.keys import generate_keypair
from appliance.updates.package import aligned_faces, build_package
from appliance.updates.push import PushOptions, push_package
from engines.registry import get_model
from tests import fake_tensorrt
from tests.conftest import REPO_ROOT as REPO
from tests.mqtt_broker import MosquittoBroker
from tests.support import Daemon, Running, daemon_config, passage_video, received_package

MFN = "mobilefacenet_foamliu/MobileFaceNet.onnx"
SECRET = "a-test-secret-for-faked-devices"
WAIT_S = 240.0  # a bound for waits, never an expectation about speed
MODELS = ("mtcnn-pnet", "mtcnn-rnet", "mtcnn-onet", "mobilefacenet")

#: ((device preset, TensorRT version), CAN FD, the package's INT8 data, the embedder's expected precision)
DEVICES = [
    pytest.param(("nano", "8.2"), False, "cache", "fp16", id="nano-trt8.2"),
    pytest.param(("xavier", "8.5"), True, "cache", "int8", id="xavier-trt8.5"),
    pytest.param(("orin", "10.3"), True, "cache", "int8", id="orin-jp6-trt10.3"),
    pytest.param(("thor", "11.4"), True, "qdq", "int8", id="thor-jp7.2-trt11.4"),
]

#: What a classic CAN push sends (the rest is received before, as a cut transfer).
CLASSIC_TAIL_BYTES = 512 * 1024

#: A calibration cache as TensorRT writes it: a header naming the calibrator, then one scale per tensor.
CALIBRATION_CACHE = b"TRT-8502-EntropyCalibration2\ninput: 3c010a14\n" + b"".join(
    f"onnx::Conv_{i}: {0x3C000000 + 977 * i:08x}\n".encode() for i in range(64)
)


@pytest.fixture(scope="module")
def release(
    tmp_path_factory: pytest.TempPathFactory, shared_models: Path, shared_data: Path
) -> Dict[str, Any]:
    """The release side: a signing key, the SecurityAccess secret, reference faces, a Q/DQ embedder."""
    from calibration.quantize import fp32_model_bytes, quantize_model

    folder = tmp_path_factory.mktemp("release")
    generate_keypair(folder / "trusted", "release")
    secret = folder / "uds_secret"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o600)
    photos = sorted((shared_data / "faces").glob("*/*.jpg"))[:12]
    faces = aligned_faces(photos, shared_models)
    spec = get_model("mobilefacenet")
    qdq = quantize_model(
        spec,
        fp32_model_bytes(spec, shared_models),
        spec.preprocessing.to_blob(faces),
        folder / "mfn-qdq.onnx",
    ).path
    calibration = folder / "calibration.cache"
    calibration.write_bytes(CALIBRATION_CACHE)
    return {"folder": folder, "secret": secret, "faces": faces[:2], "qdq": qdq, "calibration": calibration}


def _package(release: Dict[str, Any], shared_models: Path, int8: str) -> Path:
    out = release["folder"] / f"mobilefacenet-2.0.0-{int8}.pkg"
    if not out.exists():
        build_package(
            release["qdq"] if int8 == "qdq" else shared_models / MFN,
            "mobilefacenet",
            "mobilefacenet",
            "2.0.0",
            2,
            release["folder"] / "trusted" / "release.key",
            out,
            calibration=release["calibration"] if int8 == "cache" else None,
            reference_faces=release["faces"],
            # Q/DQ INT8 drifts from FP32 more than the default reference tolerance allows.
            min_cosine=0.98 if int8 == "qdq" else None,
        )
    return out


@pytest.fixture
def faked(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[fake_tensorrt.Record]:
    device, version = request.param
    record = fake_tensorrt.install(monkeypatch, version, device=device)
    yield record
    fake_tensorrt.uninstall()


def _config(
    tmp_path: Path,
    storage: Path,
    shared_models: Path,
    shared_data: Path,
    mosquitto: MosquittoBroker,
    fallback: str = "cpu",
    **sections: str,
) -> Path:
    """A daemon on the TensorRT back-end (small frames keep the fake engines quick), a looping video."""
    return daemon_config(
        tmp_path,
        storage,
        shared_models,
        mosquitto,
        passage_video(tmp_path, shared_data),
        at_end="loop",
        backend=(
            f'type = "tensorrt"\nfallback = "{fallback}"\n[backend.tensorrt]\nprecision = "auto"\n'
            "max_batch = 4\nworkspace_mb = 64"
        ),
        detector="max_side = 320",
        **sections,
    )


def _updates(tmp_path: Path, release: Dict[str, Any], fd: bool) -> Dict[str, str]:
    """The ``[updates]`` sections: trusted keys, the secret, a ``virtual`` CAN channel (FD or classic)."""
    can = f'interface = "virtual"\nchannel = "faked-{tmp_path.name}"\n'
    can += "fd = true\ndata_bitrate = 2000000" if fd else "fd = false"
    updates = (
        f'enabled = true\ntrusted_keys_dir = "{release["folder"] / "trusted"}"\n'
        f'security_secret_file = "{release["secret"]}"\nhealth_frames = 10'
    )
    return {"updates": updates, "updates.can": can}


def _wait(condition: Any, what: str, app: Any, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if app.worker is not None and app.worker.done.is_set():
            raise AssertionError(f"the pipeline ended while waiting for {what}: {app.worker.error}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}: {app.state()['backend']}")


def _all_on_tensorrt(app: Any) -> bool:
    """Every model served from its engine and marked ready, read as the state document reads them: at
    one moment, where a model running from an engine (it has the engine's precision) is never shown
    as still building."""
    states, precisions = app.runtime.engine_report(app.engines.status)
    for name in precisions:
        assert states[name] == {"backend": "tensorrt", "state": "ready", "reason": None}, (name, states)
    keys = app.runtime.backend_keys()
    return all(keys.get(name) == "tensorrt" and name in precisions for name in MODELS)


@pytest.mark.slow
@pytest.mark.parametrize(("faked", "fd", "int8", "expected"), DEVICES, indirect=["faked"])
def test_cpu_first_then_engines_then_a_can_pushed_embedder(
    faked: fake_tensorrt.Record,
    fd: bool,
    int8: str,
    expected: str,
    tmp_path: Path,
    storage: Path,
    shared_models: Path,
    shared_data: Path,
    mosquitto: MosquittoBroker,
    release: Dict[str, Any],
) -> None:
    config_path = _config(
        tmp_path, storage, shared_models, shared_data, mosquitto, **_updates(tmp_path, release, fd)
    )
    package = _package(release, shared_models, int8)
    resume_at = 0
    if not fd:
        # Classic CAN in one process carries about 50 kB/s here: the push resumes a transfer cut near
        # its end (received by the UDS server's own writer) and sends the last 512 KiB over the bus.
        resume_at = package.stat().st_size - CLASSIC_TAIL_BYTES
        received_package(load_config(config_path).updates_staging_dir, package, upto=resume_at)
    running = Running(config_path)
    app = running.app
    try:
        # Start-up with an empty engine cache: served on the CPU, engines built, switched between frames.
        assert app.engines is not None
        _wait(lambda: _all_on_tensorrt(app), "every model on its TensorRT engine", app)
        frames_at_switch = app.frames_processed
        _wait(lambda: app.frames_processed > frames_at_switch + 5, "frames on the engines", app)
        assert app.state()["degraded"] == []

        # A new embedder over the CAN bus, with its INT8 data.
        options = PushOptions(activate=True, swap_timeout_s=WAIT_S)
        result = push_package(app.config.updates.can, SECRET.encode(), package, options)
        assert result.staged_version == "2.0.0" and result.resumed_from == resume_at
        assert result.sent_bytes == result.size - resume_at
        assert result.swap_state == "done", app.swap.status()
        assert app.runtime.model_versions["embedder"] == "mobilefacenet@2.0.0"
        assert app.runtime.backend_keys()["mobilefacenet"] == "tensorrt"
        precision = app.runtime.engine_precisions()["mobilefacenet"]
        assert precision["precision"] == expected, precision
        # The state document speaks for the new version, which serves from its engine.
        backend = app.state()["backend"]
        assert backend["engines"]["mobilefacenet"] == {
            "backend": "tensorrt",
            "state": "ready",
            "reason": None,
        }
        assert backend["precisions"]["mobilefacenet"] == precision and app.state()["degraded"] == []
        assert app.gallery is not None and app.gallery.model_version == "mobilefacenet@2.0.0"
        assert len(app.gallery) == 1  # Obama's template, re-embedded by the new engine
        # Built on the device: four engines at start-up, then the new embedder's, at its precision. The
        # package carries the registry's ONNX bytes; on the Nano (FP16, the cache unused) its engine key
        # is the start-up engine's, so the cache serves it — which is the cache doing its job.
        reused = int8 == "cache" and expected == "fp16"
        assert len(faked.builds) == len(MODELS) + (0 if reused else 1), [b["precision"] for b in faked.builds]
        assert faked.builds[-1]["precision"] == expected
        caches = [value for name, value in faked.calls if name == "read_calibration_cache" and value]
        if int8 == "cache" and expected == "int8":  # the package's own calibration cache made it INT8
            assert bytes(caches[-1]) == CALIBRATION_CACHE
        else:
            assert not caches
        frames = app.frames_processed
        _wait(lambda: app.frames_processed > frames + 5, "frames after the swap", app)
    finally:
        code = running.stop()
    assert code == 0
    assert app.worker is not None and app.worker.error is None


@pytest.mark.parametrize("faked", [("orin", "10.3")], indirect=True)
def test_a_model_call_off_the_pipeline_thread_fails(
    faked: fake_tensorrt.Record,
    tmp_path: Path,
    storage: Path,
    shared_models: Path,
    shared_data: Path,
    mosquitto: MosquittoBroker,
    release: Dict[str, Any],
) -> None:
    """The rule is enforced twice: the runtime refuses a thread that is not its owner, and the fake
    CUDA refuses an engine run from a thread that does not hold its context — so moving a model call
    off the pipeline thread makes the device suite fail."""
    running = Running(
        _config(tmp_path, storage, shared_models, shared_data, mosquitto, **_updates(tmp_path, release, True))
    )
    app = running.app
    errors: List[BaseException] = []
    try:
        _wait(lambda: _all_on_tensorrt(app), "every model on its TensorRT engine", app)
        with pytest.raises(ModelOwnershipError, match="must run on the thread that owns the models"):
            app.runtime.analyzer  # noqa: B018 - the access is the test
        engine = app.runtime.call(lambda rt: rt._loaded["mobilefacenet"], "fetch the back-end", 30.0)

        def intruder() -> None:
            try:
                engine.run(_neutral_feeds(engine))
            except BaseException as err:
                errors.append(err)

        thread = threading.Thread(target=intruder, name="intruder")
        thread.start()
        thread.join(WAIT_S)
    finally:
        running.stop()
    assert len(errors) == 1, "the fake CUDA let another thread run the pipeline's engine"
    assert "thread" in str(errors[0]).lower(), errors[0]


#: The unit's TimeoutStopSec (systemd/face-appliance.service): systemd kills what still runs then.
TIMEOUT_STOP_S = 30.0


@pytest.mark.parametrize(
    ("version", "device", "fallback", "building"),
    [
        pytest.param("8.5", "xavier", "cpu", "in the background", id="xavier-trt8.5-background"),
        pytest.param("10.3", "orin", "cpu", "in the background", id="orin-trt10.3-background"),
        pytest.param("8.5", "xavier", "none", "before start-up completes", id="xavier-trt8.5-at-start"),
        pytest.param("11.4", "thor", "none", "before start-up completes", id="thor-trt11.4-at-start"),
    ],
)
def test_sigterm_during_an_engine_build_stops_within_the_stop_timeout(
    version: str,
    device: str,
    fallback: str,
    building: str,
    tmp_path: Path,
    storage: Path,
    shared_models: Path,
    shared_data: Path,
    mosquitto: MosquittoBroker,
) -> None:
    """``python -m appliance run`` (a subprocess on the fake TensorRT, whose builds here take ten
    minutes, as a Nano's can) gets SIGTERM while an engine builds and exits 0 within TimeoutStopSec:
    one deadline shared by every join; a TensorRT 10+ build is cancelled through its progress monitor,
    an 8.x build (which cannot be interrupted) is left behind."""
    config = _config(tmp_path, storage, shared_models, shared_data, mosquitto, fallback)
    env = {
        fake_tensorrt.ENVIRONMENT: f"{version},{device},600",
        "PYTHONPATH": f"{REPO / 'tests' / 'fake_site'}{os.pathsep}{REPO}",
    }
    daemon = Daemon(config, env=env)
    try:
        daemon.wait_log(f"building its TensorRT engine {building}", timeout=120)
        daemon.signal(signal.SIGTERM)
        try:
            code = daemon.wait(timeout=TIMEOUT_STOP_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"still running {TIMEOUT_STOP_S:.0f} s after SIGTERM; log:\n" + "\n".join(daemon.log[-30:])
            ) from None
    finally:
        daemon.close()
    assert code == 0, daemon.text
    assert "Traceback" not in daemon.text
