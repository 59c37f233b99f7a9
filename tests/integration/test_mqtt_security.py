"""Security against a real broker: TLS with server and client certificates, passwords, and an ACL.

The test makes a throw-away CA, a server certificate and client certificates with ``cryptography``,
a Mosquitto password file (``mosquitto_passwd``) and an ACL file, and starts a Mosquitto that accepts
only TLS clients with a certificate of that CA and a valid password:

=============  ============================================================================
user           ACL
=============  ============================================================================
``door-1``     the appliance's own topics (what :mod:`appliance.mqtt_link` documents)
``operator``   everything under the appliance's root, commands included
``viewer``     read-only under the root: may watch events, must not command
``stranger``   a valid password and certificate, but no ACL entry at all
=============  ============================================================================

Checked: the daemon connects over TLS and verifies the broker; a wrong CA, a wrong password, a
missing client certificate and a user outside the ACL are refused with a clear error; the viewer's
``enroll``/``remove`` never reach the daemon and change nothing; the MQTT password, the gallery key
and the client key appear nowhere in the daemon's DEBUG log.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from pathlib import Path
from typing import Any, Dict, Iterator, NamedTuple, Optional, Tuple

import pytest

from appliance import mqtt_link
from appliance.config import ApplianceConfig
from appliance.config_load import validate_config
from appliance.mqtt_link import MqttLink
from appliance.outbox import Outbox
from tests.mqtt_broker import (
    MosquittoBroker,
    Pki,
    Recorder,
    make_acl_file,
    make_client_certificate,
    make_password_file,
    make_pki,
    tls_listener_config,
    wait_until,
)
from tests.support import DEVICE, ROOT, Daemon, command, daemon_config, passage_video, wait_online

PASSWORDS = {
    "door-1": "door-pass-7f3a9c",
    "operator": "operator-pass-51be",
    "viewer": "viewer-pass-0d2e",
    "stranger": "stranger-pass-c4a1",
}
ACL = {
    "door-1": [
        ("readwrite", f"{ROOT}/availability"),
        ("write", f"{ROOT}/state"),
        ("write", f"{ROOT}/model"),
        ("write", f"{ROOT}/events"),
        ("read", f"{ROOT}/cmd/+"),
        ("write", f"{ROOT}/cmd/+/result"),
    ],
    "operator": [("readwrite", f"{ROOT}/#")],
    "viewer": [("read", f"{ROOT}/#")],
    "stranger": [],
}


class Secure(NamedTuple):
    """The broker and the files of everyone who talks to it."""

    broker: MosquittoBroker
    pki: Pki
    rogue: Pki
    certs: Dict[str, Tuple[Path, Path]]
    folder: Path

    def client(self, user: str, topic_filter: str = f"{ROOT}/#") -> Recorder:
        cert, key = self.certs[user]
        return Recorder(
            self.broker.host,
            self.broker.port,
            topic_filter,
            username=user,
            password=PASSWORDS[user],
            ca_file=self.pki.ca_cert,
            cert_file=cert,
            key_file=key,
        )


@pytest.fixture
def secure(tmp_path: Path) -> Iterator[Secure]:
    pki = make_pki(tmp_path / "pki")
    rogue = make_pki(tmp_path / "rogue-pki", name="rogue")
    certs = {user: make_client_certificate(pki, user) for user in PASSWORDS}
    passwords = make_password_file(tmp_path / "passwd", list(PASSWORDS.items()))
    acl = make_acl_file(tmp_path / "acl", ACL)
    extra = (
        tls_listener_config(pki, require_certificate=True) + f"password_file {passwords}\nacl_file {acl}\n"
    )
    broker = MosquittoBroker(tmp_path / "broker", extra_config=extra, allow_anonymous=False).start()
    try:
        yield Secure(broker, pki, rogue, certs, tmp_path)
    finally:
        broker.stop()


def _secret_forms(*secrets: bytes) -> Dict[str, str]:
    """Text forms in which a secret could leak into a log: as is, hex, base64."""
    forms: Dict[str, str] = {}
    for secret in secrets:
        forms[secret.decode("latin-1")] = "raw"
        forms[binascii.hexlify(secret).decode()] = "hex"
        forms[base64.b64encode(secret).decode().rstrip("=")] = "base64"
    return forms


def test_daemon_over_tls_with_acl_and_no_secrets_in_its_debug_log(
    secure: Secure,
    storage: Path,
    shared_models: Path,
    shared_data: Path,
) -> None:
    folder = secure.folder
    password_file = folder / "mqtt_password"
    password_file.write_text(PASSWORDS["door-1"] + "\n")
    password_file.chmod(0o600)
    cert, key = secure.certs["door-1"]
    video = passage_video(folder, shared_data)
    config = daemon_config(
        folder,
        storage,
        shared_models,
        secure.broker,
        video,
        at_end="loop",
        mqtt=(
            f'host = "{secure.broker.host}"\nport = {secure.broker.port}\nusername = "door-1"\n'
            f'password_file = "{password_file}"\nreconnect_min_s = 0.2\nreconnect_max_s = 1.0\n'
            f'[mqtt.tls]\nenabled = true\nca_file = "{secure.pki.ca_cert}"\ncert_file = "{cert}"\n'
            f'key_file = "{key}"'
        ),
        logging='level = "DEBUG"',
    )
    operator, viewer = secure.client("operator"), secure.client("viewer")
    daemon = Daemon(config)
    try:
        operator.start()
        viewer.start()
        wait_online(operator, daemon)
        first = command(operator, "status", {"request_id": "op-1"})
        assert first["ok"] and first["result"]["gallery"]["identities"] == 1
        assert first["result"]["mqtt"]["connected"] is True

        # The viewer may read everything but command nothing: the broker drops its publications.
        viewer.publish(f"{ROOT}/cmd/remove", json.dumps({"request_id": "viewer-1", "id": "obama"}).encode())
        photo = base64.b64encode((shared_data / "faces/fr_biden/biden.jpg").read_bytes()).decode()
        viewer.publish(
            f"{ROOT}/cmd/enroll",
            json.dumps({"request_id": "viewer-2", "name": "Joe Biden", "image": photo}).encode(),
        )
        # Commands are answered in the order they reach the daemon: once the operator's later
        # status is answered, an answer to the viewer's commands can no longer be on its way.
        second = command(operator, "status", {"request_id": "op-2"})
        assert second["ok"] and second["result"]["gallery"]["identities"] == 1, "the gallery changed"
        answers = [
            json.loads(m.payload).get("request_id") for m in operator.messages if m.topic.endswith("/result")
        ]
        assert answers == ["op-1", "op-2"], answers
        assert "viewer-" not in daemon.text
        assert viewer.on(f"{ROOT}/events") or viewer.on(f"{ROOT}/state"), "the viewer should read the root"
    finally:
        code = daemon.stop()
        operator.close()
        viewer.close()
    assert code == 0, daemon.text[-3000:]
    assert any("MQTT: connected to" in line for line in daemon.log)
    assert any(" DEBUG " in line for line in daemon.log), "the log is not at DEBUG level"

    gallery_key = (storage / "gallery.key").read_bytes()
    client_key_body = "".join(key.read_text().splitlines()[1:-1])
    leaks = _secret_forms(PASSWORDS["door-1"].encode(), gallery_key)
    leaks[client_key_body[:40]] = "client key"
    found = [f"{kind} form of a secret" for text, kind in leaks.items() if text and text in daemon.text]
    assert not found, found


# -- refusals (the MQTT link in-process, as the daemon runs it) ----------------------------------------


def _link_config(secure: Secure, tmp_path: Path, **changes: Any) -> ApplianceConfig:
    user = changes.get("user", "door-1")
    cert, key = secure.certs[user]
    tls: Dict[str, Any] = {"enabled": True, "ca_file": str(changes.get("ca_file", secure.pki.ca_cert))}
    if changes.get("client_certificate", True):
        tls.update(cert_file=str(cert), key_file=str(key))
    return validate_config(
        {
            "device": {"id": DEVICE},
            "mqtt": {
                "host": secure.broker.host,
                "port": secure.broker.port,
                "username": user,
                "password": changes.get("password", PASSWORDS[user]),
                "reconnect_min_s": 0.1,
                "reconnect_max_s": 1.0,
                "tls": tls,
            },
            "storage": {"dir": str(tmp_path)},
        }
    )


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong_ca", "certificate verify failed"),
        ("wrong_password", "refused the connection"),
        ("no_client_certificate", "certificate required"),
        ("outside_the_acl", "does not pass our messages"),
    ],
)
def test_refused_clients_get_a_clear_error(
    secure: Secure,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    expected: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    # The link waits this long for its own `online` before it reports the ACL (10 s on a door): the
    # broker on loopback echoes in milliseconds when it passes our messages at all.
    monkeypatch.setattr(mqtt_link, "ECHO_TIMEOUT_S", 1.0)
    changes: Dict[str, Any] = {
        "wrong_ca": {"ca_file": secure.rogue.ca_cert},
        "wrong_password": {"password": "not-the-password"},
        "no_client_certificate": {"client_certificate": False},
        "outside_the_acl": {"user": "stranger"},
    }[case]
    config = _link_config(secure, tmp_path, **changes)
    commands: list = []
    outbox = Outbox.open(tmp_path / "outbox.db", 1000, 3600.0)
    link: Optional[MqttLink] = MqttLink(config, outbox, lambda name, payload: commands.append(name))
    observer = secure.client("operator")
    try:
        observer.start()
        link.start()
        wait_until(lambda: expected in caplog.text, 30, f"the error {expected!r}")
        reports = [r for r in caplog.records if expected in r.getMessage() and r.name.startswith("appliance")]
        assert reports and max(r.levelno for r in reports) >= logging.WARNING, caplog.text[-2000:]
        if case == "outside_the_acl":
            # Connected, but nothing it publishes is let through, and it can receive no command.
            observer.publish(f"{ROOT}/cmd/status", b'{"request_id": "x"}')
            outbox.put("event-1", b'{"event_id": "event-1"}')
            link.notify()
            wait_until(lambda: link.status()["published_total"] >= 1, 10, "the broker's PUBACK")
            assert not observer.on(f"{ROOT}/availability") and not observer.on(f"{ROOT}/events")
            assert not commands
        else:
            assert link.status()["connected"] is False
            assert not observer.on(f"{ROOT}/availability")
        secrets = [PASSWORDS[changes.get("user", "door-1")], "not-the-password"]
        assert not [s for s in secrets if s in caplog.text]
    finally:
        link.stop(timeout=3.0)
        outbox.close()
        observer.close()
