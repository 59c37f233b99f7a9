"""A model update as on a real bus: the daemon and ``push-model`` as two processes on one CAN link.

The link is python-can's ``udp_multicast`` interface (CAN FD frames between processes over loopback
multicast; each test its own group) — the kernel here has no ``vcan``. The daemon processes a video
against a real Mosquitto while the real MobileFaceNet, repackaged as version 2.0.0, is pushed, verified,
swapped in and health-checked; the gallery is re-embedded. Then the daemon is SIGKILLed at several
steps of a swap (fault injection ``kill_at``) and must come back with the last committed model and a
gallery consistent with it; those cases start with the package already received, so ``push-model``
goes straight to the verification and the swap (the transfer, 4 MB, is the first case's).
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

from appliance.config_load import load_config
from appliance.gallery.store import TemplateStore
from appliance.updates.active import ActiveModels
from appliance.updates.keys import generate_keypair
from appliance.updates.package import aligned_faces, build_package
from tests.mqtt_broker import MosquittoBroker, Recorder
from tests.support import (
    ROOT,
    Daemon,
    daemon_config,
    grants_by_embedder,
    passage_video,
    received_package,
    swap_states,
    wait_online,
)

REPO = Path(__file__).resolve().parents[2]
MFN = "mobilefacenet_foamliu/MobileFaceNet.onnx"
OLD = "mobilefacenet@foamliu-v1.0"
NEW = "mobilefacenet@2.0.0"
SECRET = "a-test-secret-0123456789abcdef"


def _multicast_works(group: str) -> bool:
    try:
        import can

        with can.Bus(interface="udp_multicast", channel=group, fd=True) as sender, can.Bus(
            interface="udp_multicast", channel=group, fd=True
        ) as receiver:
            sender.send(can.Message(arbitration_id=0x123, data=b"probe", is_extended_id=False))
            return receiver.recv(2.0) is not None
    except Exception:
        return False


@pytest.fixture
def group() -> str:
    address = f"239.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(1, 254)}"
    if not _multicast_works(address):
        pytest.skip("loopback multicast is unavailable here (python-can udp_multicast needs it, and msgpack)")
    return address


@pytest.fixture(scope="module")
def package(
    tmp_path_factory: pytest.TempPathFactory, shared_models: Path, shared_data: Path
) -> Dict[str, Path]:
    folder = tmp_path_factory.mktemp("release")
    generate_keypair(folder / "trusted", "release")
    faces = aligned_faces(
        [shared_data / "faces/fr_obama/obama.jpg", shared_data / "faces/fr_biden/biden.jpg"], shared_models
    )
    out = folder / "mobilefacenet-2.0.0.pkg"
    build_package(
        shared_models / MFN,
        "mobilefacenet",
        "mobilefacenet",
        "2.0.0",
        2,
        folder / "trusted" / "release.key",
        out,
        reference_faces=faces,
    )
    secret = folder / "uds_secret"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o600)
    return {"package": out, "trusted": folder / "trusted", "secret": secret}


def _config(
    tmp_path: Path,
    storage: Path,
    shared_models: Path,
    shared_data: Path,
    mosquitto: MosquittoBroker,
    package: Dict[str, Path],
    group: str,
) -> Path:
    video = passage_video(tmp_path, shared_data)
    return daemon_config(
        tmp_path,
        storage,
        shared_models,
        mosquitto,
        video,
        at_end="loop",
        updates=(
            f'enabled = true\ntrusted_keys_dir = "{package["trusted"]}"\n'
            f'security_secret_file = "{package["secret"]}"\nhealth_frames = 20'
        ),
        **{
            "updates.can": f'interface = "udp_multicast"\nchannel = "{group}"\nfd = true\ndata_bitrate = 2000000'
        },
    )


def _push_command(config: Path, package: Path, *args: str) -> List[str]:
    return [
        sys.executable,
        "-m",
        "appliance",
        "push-model",
        str(package),
        "--config",
        str(config),
        "--no-progress",
        *args,
    ]


def _push(config: Path, package: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        _push_command(config, package, *args),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_push_model_swaps_the_embedder_of_a_running_daemon(
    tmp_path: Path,
    storage: Path,
    shared_models: Path,
    shared_data: Path,
    mosquitto: MosquittoBroker,
    recorder: Recorder,
    package: Dict[str, Path],
    group: str,
) -> None:
    config = _config(tmp_path, storage, shared_models, shared_data, mosquitto, package, group)
    daemon = Daemon(config)
    try:
        wait_online(recorder, daemon)
        recorder.wait_for(lambda ms: OLD in grants_by_embedder(ms), 90, "a grant before the update")
        push = _push(config, package["package"], "--activate")
        assert push.returncode == 0, push.stdout + push.stderr + daemon.text[-3000:]
        assert "done" in push.stdout
        recorder.wait_for(lambda ms: NEW in grants_by_embedder(ms), 90, "a grant by the new embedder")
        transfer = [
            json.loads(m.payload)["transfer"]
            for m in recorder.on(f"{ROOT}/model")
            if json.loads(m.payload)["transfer"]
        ]
        assert (
            transfer
            and transfer[-1]["state"] == "complete"
            and transfer[-1]["received"] == transfer[-1]["size"]
        )
        states = swap_states(recorder.messages)
        for step in (
            "verified",
            "staging",
            "preparing",
            "validating",
            "reembedding",
            "switching",
            "health_check",
            "done",
        ):
            assert step in states, states
        assert not [line for line in daemon.log if "a frame failed" in line or "Traceback" in line], (
            daemon.text
        )
        # …/state is published once a second: the grant can come before the first one after the switch.
        recorder.wait_for(
            lambda ms: any(
                m.topic == f"{ROOT}/state" and json.loads(m.payload)["models"]["embedder"] == NEW for m in ms
            ),
            10,
            "a state document naming the new embedder",
        )
        state = json.loads(recorder.on(f"{ROOT}/state")[-1].payload)
        assert state["models"]["embedder"] == NEW and state["gallery"]["identities"] == 1
        daemon.signal(15)
        assert daemon.wait(60) == 0, daemon.text[-3000:]
    finally:
        daemon.close()
    assert ActiveModels(storage).entry("mobilefacenet").version == "2.0.0"  # type: ignore[union-attr]
    with TemplateStore.open(storage / "gallery.db", storage / "gallery.key") as store:
        assert store.model_versions() == {NEW: 1} and store.check() == []


@pytest.mark.parametrize(
    "point, committed",
    [
        ("staged", False),
        ("validated", False),
        ("templates_written", False),
        ("committed", True),
        ("health", True),
    ],
)
def test_sigkill_during_a_swap_leaves_the_last_committed_model(
    tmp_path: Path,
    storage: Path,
    shared_models: Path,
    shared_data: Path,
    mosquitto: MosquittoBroker,
    recorder: Recorder,
    package: Dict[str, Path],
    group: str,
    point: str,
    committed: bool,
) -> None:
    config = _config(tmp_path, storage, shared_models, shared_data, mosquitto, package, group)
    # Received before: push-model skips the transfer (the case above crosses the bus) for the swap.
    received_package(load_config(config).updates_staging_dir, package["package"])
    daemon = Daemon(config, {"FACE_APPLIANCE_FAULTS": f"kill_at:{point}"})
    try:
        wait_online(recorder, daemon)
        push = subprocess.Popen(
            _push_command(config, package["package"], "--activate"),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            code = daemon.wait(240)
        finally:
            # A dead appliance never answers: the push would only wait out its answer timeout.
            push.send_signal(signal.SIGINT)
            pushed, _ = push.communicate(timeout=60)
        assert code == -9, pushed + daemon.text[-3000:]
        assert f"killed at {point}" in daemon.text
        assert "already holds this package" in pushed, pushed  # no bytes sent: the swap was the test
        assert push.returncode != 0, pushed  # interrupted while it waited for an answer, or gave up
    finally:
        daemon.close()

    recorder.clear()
    daemon = Daemon(config)
    try:
        wait_online(recorder, daemon)
        expected = NEW if committed else OLD
        recorder.wait_for(
            lambda ms: expected in grants_by_embedder(ms), 90, f"a grant by {expected} after the restart"
        )
        state = json.loads(recorder.on(f"{ROOT}/state")[-1].payload)
        assert state["models"]["embedder"] == expected and state["gallery"]["identities"] == 1
        daemon.signal(15)
        assert daemon.wait(60) == 0, daemon.text[-3000:]
    finally:
        daemon.close()
    active = ActiveModels(storage).entry("mobilefacenet")
    assert (active is not None) == committed
    with TemplateStore.open(storage / "gallery.db", storage / "gallery.key") as store:
        assert store.check() == []
        _ids, _vectors, owners = store.embeddings(expected)
        assert owners == ["obama"]
