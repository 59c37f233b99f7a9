"""The model swap inside a running daemon: a real package of the real MobileFaceNet, a video, a broker.

The daemon runs in this process (``Appliance.run`` on a thread) so the test can hand the swap manager
a package directly; the CAN transport in front of it is tested in test_uds.py. Everything else is
real: the ONNX models, the encrypted gallery, Mosquitto, the video.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from appliance.gallery.store import TemplateStore
from appliance.updates.active import ActiveModels
from appliance.updates.errors import PackageError, UpdateError
from appliance.updates.keys import generate_keypair
from appliance.updates.package import aligned_faces, build_package
from tests.mqtt_broker import MosquittoBroker, Recorder
from tests.support import (
    ROOT,
    Running,
    daemon_config,
    event_documents,
    grants_by_embedder,
    passage_video,
    swap_states,
)

MFN = "mobilefacenet_foamliu/MobileFaceNet.onnx"
REGISTRY_VERSION = "mobilefacenet@foamliu-v1.0"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("trusted")
    generate_keypair(folder, "release")
    return folder


@pytest.fixture(scope="module")
def reference_faces(shared_data: Path, shared_models: Path) -> np.ndarray:
    images = [shared_data / "faces/fr_obama/obama.jpg", shared_data / "faces/fr_biden/biden.jpg"]
    return aligned_faces(images, shared_models)


def _package(
    folder: Path, keys: Path, shared_models: Path, faces: np.ndarray, version: str, release: int
) -> Path:
    out = folder / f"mobilefacenet-{version}.pkg"
    build_package(
        shared_models / MFN,
        "mobilefacenet",
        "mobilefacenet",
        version,
        release,
        keys / "release.key",
        out,
        reference_faces=faces,
    )
    return out


@pytest.fixture
def config_path(
    tmp_path: Path,
    storage: Path,
    shared_models: Path,
    shared_data: Path,
    mosquitto: MosquittoBroker,
    keys: Path,
) -> Path:
    video = passage_video(tmp_path, shared_data)
    return daemon_config(
        tmp_path,
        storage,
        shared_models,
        mosquitto,
        video,
        at_end="loop",
        updates=f'trusted_keys_dir = "{keys}"\nhealth_frames = 20',
    )


@pytest.fixture
def running(config_path: Path) -> Iterator[Running]:
    daemon = Running(config_path)
    try:
        yield daemon
    finally:
        if daemon.thread.is_alive():
            daemon.stop()


def test_embedder_swap_while_serving_then_rollback(
    tmp_path: Path,
    storage: Path,
    shared_models: Path,
    keys: Path,
    reference_faces: np.ndarray,
    running: Running,
    recorder: Recorder,
) -> None:
    app = running.app
    package = _package(tmp_path, keys, shared_models, reference_faces, "2.0.0", 2)
    recorder.wait_for(
        lambda ms: any(e["decision"] == "granted" for e in event_documents(ms)), 90, "a first grant"
    )
    frames_before = app.frames_processed

    assert app.swap is not None
    assert app.swap.verify(package) == "2.0.0"
    app.swap.activate()
    assert running.wait_swap(("done", "failed", "rolled_back")) == "done", app.swap.status()

    # The switch happened between frames: frames kept coming and none failed.
    assert app.frames_processed > frames_before + 20
    assert app.runtime is not None and app.runtime.model_versions["embedder"] == "mobilefacenet@2.0.0"
    assert app.gallery is not None and app.gallery.model_version == "mobilefacenet@2.0.0"
    assert len(app.gallery) == 1  # Obama's template, re-embedded from his encrypted crop
    # Enrolled people are still recognised, by the new embedder.
    recorder.wait_for(
        lambda ms: "mobilefacenet@2.0.0" in grants_by_embedder(ms), 90, "a grant by the new embedder"
    )
    granted = grants_by_embedder(recorder.messages)
    assert granted.get("mobilefacenet@foamliu-v1.0", 0) >= 1 and granted["mobilefacenet@2.0.0"] >= 1
    states = swap_states(recorder.messages)
    for step in ("staging", "preparing", "validating", "reembedding", "switching", "health_check", "done"):
        assert step in states, states
    assert states.index("staging") < states.index("switching") < states.index("done")
    model = json.loads(recorder.on(f"{ROOT}/model")[-1].payload)
    assert model["active"]["embedder"] == "mobilefacenet@2.0.0" and model["releases"] == {"mobilefacenet": 2}

    # The same package again is a replay: refused, nothing changes.
    with pytest.raises(PackageError) as refused:
        app.swap.verify(package)
    assert refused.value.reason == "not_newer"

    # Rollback returns to the registry's model, re-embedding the gallery back.
    app.swap.rollback()
    assert running.wait_swap(("rolled_back", "failed")) == "rolled_back", app.swap.status()
    assert app.runtime.model_versions["embedder"] == REGISTRY_VERSION
    assert app.gallery.model_version == REGISTRY_VERSION and len(app.gallery) == 1
    assert running.stop() == 0

    # On disk: the pointer names the registry model again and keeps the highest release seen.
    active = ActiveModels(storage)
    assert active.entry("mobilefacenet") is None and active.release("mobilefacenet") == 2
    with TemplateStore.open(storage / "gallery.db", storage / "gallery.key") as store:
        assert REGISTRY_VERSION in store.model_versions() and store.check() == []


def test_a_package_that_fails_validation_changes_nothing(
    tmp_path: Path, shared_models: Path, keys: Path, reference_faces: np.ndarray, running: Running
) -> None:
    """Reference outputs that the model does not reproduce (a wrong reference, correctly signed)."""
    app = running.app
    assert app.swap is not None and app.runtime is not None
    faces = reference_faces.copy()
    package = tmp_path / "liar.pkg"
    build_package(
        shared_models / MFN,
        "mobilefacenet",
        "mobilefacenet",
        "3.0.0",
        3,
        keys / "release.key",
        package,
        reference_faces=faces,
    )
    tampered = tmp_path / "liar-signed.pkg"
    _resign_with_other_reference(package, tampered, keys / "release.key")
    app.swap.verify(tampered)
    app.swap.activate()
    assert running.wait_swap(("done", "failed", "rolled_back")) == "failed"
    assert "reference outputs" in app.swap.status().last_error
    assert app.runtime.model_versions["embedder"] == REGISTRY_VERSION
    assert ActiveModels(app.config.storage.dir).entry("mobilefacenet") is None
    with pytest.raises(UpdateError, match="no verified package"):
        app.swap.activate()


def _collapsing_embedder(path: Path) -> Path:
    """An ONNX with MobileFaceNet's inputs and outputs that maps every face to one 128-d vector."""
    import onnx
    from onnx import TensorProto, helper

    vector = np.random.default_rng(7).normal(size=(1, 128)).astype(np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["input0", "axes"], ["mean"], keepdims=0),  # (N,)
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
        helper.make_node("Unsqueeze", ["nothing", "one_axis"], ["column"]),  # (N, 1)
        helper.make_node("Add", ["column", "vector"], ["output0"]),  # (N, 128), the same row for all
    ]
    graph = helper.make_graph(
        nodes,
        "collapse",
        [helper.make_tensor_value_info("input0", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["N", 128])],
        [
            helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3]),
            helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
            helper.make_tensor("one_axis", TensorProto.INT64, [1], [1]),
            helper.make_tensor("vector", TensorProto.FLOAT, [1, 128], vector.ravel().tolist()),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8  # opset 18's; the newest onnx writes a newer IR than ONNX Runtime < 1.27 reads
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def test_a_signed_embedder_that_collapses_every_face_is_refused(
    tmp_path: Path, keys: Path, reference_faces: np.ndarray, running: Running
) -> None:
    """Signed, the right I/O, its own reference outputs reproduced — and useless: every face becomes
    one vector, so everyone enrolled would be granted. The check that it tells faces apart refuses
    it before the switch, and nothing changes."""
    app = running.app
    assert app.swap is not None and app.runtime is not None
    package = tmp_path / "collapse.pkg"
    build_package(
        _collapsing_embedder(tmp_path / "collapse.onnx"),
        "mobilefacenet",
        "mobilefacenet",
        "6.6.6",
        6,
        keys / "release.key",
        package,
        reference_faces=reference_faces,
    )
    app.swap.verify(package)
    app.swap.activate()
    assert running.wait_swap(("done", "failed", "rolled_back")) == "failed", app.swap.status()
    assert "does not tell faces apart" in app.swap.status().last_error
    assert "collapsed" in app.swap.status().last_error
    assert app.runtime.model_versions["embedder"] == REGISTRY_VERSION
    assert ActiveModels(app.config.storage.dir).entry("mobilefacenet") is None
    assert app.gallery is not None and app.gallery.model_version == REGISTRY_VERSION and len(app.gallery) == 1


def _resign_with_other_reference(source: Path, target: Path, key_path: Path) -> None:
    """Rewrite a package's reference outputs (shuffled rows) and sign the manifest again."""
    import hashlib
    import io

    from appliance.updates.keys import load_private_key
    from tests.package_tools import read_members, resign, write_members

    members = read_members(source)
    manifest = json.loads(members[0].data)
    outputs_name = manifest["reference"]["outputs"]
    member = next(m for m in members if m.name == f"payload/{outputs_name}")
    arrays = dict(np.load(io.BytesIO(member.data)))
    arrays = {name: value[::-1].copy() for name, value in arrays.items()}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    member.data = buffer.getvalue()
    manifest["files"][outputs_name] = {
        "size": len(member.data),
        "sha256": hashlib.sha256(member.data).hexdigest(),
    }
    write_members(target, resign(members, load_private_key(key_path), manifest))


def test_frames_failing_after_the_switch_roll_it_back(
    tmp_path: Path,
    config_path: Path,
    shared_models: Path,
    keys: Path,
    reference_faces: np.ndarray,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FACE_APPLIANCE_FAULTS", "fail_after_switch:1")
    daemon = Running(config_path)
    try:
        app = daemon.app
        assert app.swap is not None and app.runtime is not None
        app.swap.verify(_package(tmp_path, keys, shared_models, reference_faces, "2.0.0", 2))
        app.swap.activate()
        assert daemon.wait_swap(("done", "failed", "rolled_back")) == "rolled_back"
        assert "health check failed" in app.swap.status().last_error
        assert app.runtime.model_versions["embedder"] == REGISTRY_VERSION
        assert app.gallery is not None and app.gallery.model_version == REGISTRY_VERSION
        assert len(app.gallery) == 1
        frames = app.frames_processed
        deadline = time.monotonic() + 30
        while app.frames_processed < frames + 10 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert app.frames_processed >= frames + 10, "the pipeline does not serve after the rollback"
    finally:
        assert daemon.stop() == 0
    assert ActiveModels(config_path.parent / "state").entry("mobilefacenet") is None


def test_what_was_verified_is_activated_when_the_next_transfer_completes(
    tmp_path: Path, shared_models: Path, keys: Path, reference_faces: np.ndarray, running: Running
) -> None:
    """A second push replaces ``received.pkg`` after the first was verified and before it was activated
    (its link dropped after RequestTransferExit, before its own verify): the staged package, what FD01
    reports and what the swap installs, is still the verified one (issue 12, finding 9)."""
    import os
    import shutil

    app = running.app
    assert app.swap is not None and app.runtime is not None
    received = tmp_path / "updates" / "received.pkg"
    received.parent.mkdir()
    shutil.copyfile(_package(tmp_path, keys, shared_models, reference_faces, "2.0.0", 2), received)
    assert app.swap.verify(received) == "2.0.0"

    # The next transfer completes: the UDS server replaces the file atomically, as transfer.finish does.
    second = tmp_path / "updates" / "incoming.part"
    second.write_bytes(b"the first bytes of another package " * 100)
    os.replace(second, received)
    assert app.swap.status().staged_version == "mobilefacenet@2.0.0"

    app.swap.activate()
    assert running.wait_swap(("done", "failed", "rolled_back")) == "done", app.swap.status()
    assert app.runtime.model_versions["embedder"] == "mobilefacenet@2.0.0"
    assert not app.swap.kept_path.exists()  # the kept package went with its swap


def test_a_transfer_completing_during_a_swap_does_not_change_what_it_installs(
    tmp_path: Path, shared_models: Path, keys: Path, reference_faces: np.ndarray, running: Running
) -> None:
    """Staging and validation read the package after ``activate``; the next transfer replacing
    ``received.pkg`` meanwhile must not fail the swap (issue 12, finding 9)."""
    import os
    import shutil

    app = running.app
    assert app.swap is not None and app.runtime is not None
    received = tmp_path / "updates" / "received.pkg"
    received.parent.mkdir()
    shutil.copyfile(_package(tmp_path, keys, shared_models, reference_faces, "2.0.0", 2), received)
    assert app.swap.verify(received) == "2.0.0"
    app.swap.activate()
    second = tmp_path / "updates" / "incoming.part"
    second.write_bytes(b"x" * 1000)
    os.replace(second, received)  # before the swap's staging and validation have read the package
    assert running.wait_swap(("done", "failed", "rolled_back")) == "done", app.swap.status()
    assert app.runtime.model_versions["embedder"] == "mobilefacenet@2.0.0"


def _failed_swap(
    tmp_path: Path, shared_models: Path, keys: Path, faces: np.ndarray, running: Running
) -> None:
    """A swap of a signed package whose reference outputs the model does not reproduce: it fails."""
    app = running.app
    assert app.swap is not None
    package = _package(tmp_path, keys, shared_models, faces, "3.0.0", 3)
    liar = tmp_path / "liar-signed.pkg"
    _resign_with_other_reference(package, liar, keys / "release.key")
    app.swap.verify(liar)
    app.swap.activate()
    assert running.wait_swap(("done", "failed", "rolled_back")) == "failed"


def test_a_failed_swap_leaves_no_extracted_folder(
    tmp_path: Path, shared_models: Path, keys: Path, reference_faces: np.ndarray, running: Running
) -> None:
    """Every end of a swap removes the package folders no model uses, not only a restart (finding 13)."""
    _failed_swap(tmp_path, shared_models, keys, reference_faces, running)
    app = running.app
    packages = ActiveModels(app.config.storage.dir).packages_dir
    assert not packages.exists() or list(packages.iterdir()) == []
    assert app.swap is not None and not app.swap.kept_path.exists()


def test_a_refused_verify_after_a_failed_swap_is_one_event(
    tmp_path: Path,
    shared_models: Path,
    keys: Path,
    reference_faces: np.ndarray,
    running: Running,
    recorder: Recorder,
) -> None:
    """After a failed swap, a package refused at verify is reported alone — state, step and error of
    that verify, the same in the status identifiers and on ``…/model`` — not beside the failed swap's
    step; a refused verify after a verified one leaves nothing staged and says so (finding 12)."""
    _failed_swap(tmp_path, shared_models, keys, reference_faces, running)
    app = running.app
    assert app.swap is not None
    failed = app.swap.document()
    assert failed["swap"]["step"] == "reference outputs and latency"
    assert failed["last_error"] == failed["swap"]["error"] == app.swap.status().last_error

    # Verified, then a package signed by a key the appliance does not trust.
    app.swap.verify(_package(tmp_path, keys, shared_models, reference_faces, "2.0.0", 2))
    assert app.swap.status().swap_state == "verified"
    stranger = tmp_path / "stranger"
    generate_keypair(stranger, "stranger")
    foreign = tmp_path / "foreign.pkg"
    build_package(
        shared_models / MFN,
        "mobilefacenet",
        "mobilefacenet",
        "4.0.0",
        4,
        stranger / "stranger.key",
        foreign,
        reference=False,
    )
    with pytest.raises(PackageError) as refused:
        app.swap.verify(foreign)
    assert refused.value.reason == "unknown_key"
    status = app.swap.status()
    assert (status.swap_state, status.staged_version) == ("idle", "")
    assert status.last_error.startswith("unknown_key:")
    document = app.swap.document()
    assert document["staged"] is None and document["swap"]["state"] == "idle"
    assert "reference outputs" not in document["swap"]["step"] and document["swap"]["error"] is None
    assert document["last_error"] == status.last_error and document["last_error_source"] == "verify"
    recorder.wait_for(
        lambda ms: any(
            json.loads(m.payload).get("last_error_source") == "verify"
            for m in ms
            if m.topic == f"{ROOT}/model"
        ),
        30,
        "…/model with the refused verify",
    )
    published = json.loads(recorder.on(f"{ROOT}/model")[-1].payload)
    assert published["swap"]["state"] == "idle" and published["last_error"] == status.last_error
