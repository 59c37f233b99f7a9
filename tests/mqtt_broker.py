"""A real Mosquitto broker for tests, and a client that records what the broker delivers.

:class:`MosquittoBroker` runs the ``mosquitto`` binary on a free 127.0.0.1 port from a
configuration written into a temporary folder (anonymous access, no persistence by default) and
waits until the port accepts connections (no fixed sleeps). ``extra_config`` is appended after the
``listener`` line, so it can hold global options (``password_file``, ``acl_file``,
``allow_anonymous false``; ``per_listener_settings`` is false) as well as options of that listener
(``cafile``/``certfile``/``keyfile`` make it a TLS listener, ``require_certificate true`` asks
clients for a certificate). :func:`make_password_file`, :func:`make_pki`,
:func:`make_client_certificate` and :func:`make_acl_file` write the files such options name.

:class:`Recorder` is a paho client subscribed to a topic filter that records every message
(topic, payload, retain, qos) and waits for conditions on them (:meth:`Recorder.wait_for`).
"""

from __future__ import annotations

import datetime
import getpass
import ipaddress
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

HOST = "127.0.0.1"
#: A :meth:`Recorder.wait_for` predicate that takes longer than this is evaluated at most a tenth
#: of the time.
PREDICATE_PACING_FLOOR_S = 0.001


class MosquittoMissingError(RuntimeError):
    """The ``mosquitto`` binary is not installed."""


def find_mosquitto() -> str:
    """Path of the ``mosquitto`` binary (``$MOSQUITTO`` overrides).

    Raises:
        MosquittoMissingError: it is not installed.
    """
    candidates = [os.environ.get("MOSQUITTO"), shutil.which("mosquitto"), "/usr/sbin/mosquitto"]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise MosquittoMissingError(
        "the MQTT integration tests need the `mosquitto` broker binary (apt-get install mosquitto "
        "mosquitto-clients), or $MOSQUITTO naming it"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
    """Poll ``predicate`` until it holds.

    Raises:
        AssertionError: it did not hold within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class MosquittoBroker:
    """One ``mosquitto`` process on 127.0.0.1.

    Args:
        workdir: folder for its configuration, log and persistence files (created).
        port: the listener's port; a free one by default. ``restart`` keeps it.
        extra_config: lines appended after the ``listener`` line (see the module docstring).
        persistence: keep retained messages and persistent sessions across a graceful restart.
        allow_anonymous: accept clients without a user name.
    """

    def __init__(
        self,
        workdir: Path,
        port: Optional[int] = None,
        extra_config: str = "",
        *,
        persistence: bool = False,
        allow_anonymous: bool = True,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = HOST
        self.port = port or free_port()
        self.extra_config = extra_config
        self.persistence = persistence
        self.allow_anonymous = allow_anonymous
        self.config_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        self._process: Optional[subprocess.Popen] = None
        self._paused = False

    def _write_config(self) -> None:
        lines = [
            "per_listener_settings false",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            f"user {getpass.getuser()}",  # as root, mosquitto would otherwise switch to `mosquitto`
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            f"listener {self.port} {self.host}",
            self.extra_config.strip(),
        ]
        self.config_path.write_text("\n".join(lines) + "\n")

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 10.0) -> MosquittoBroker:
        """Start the broker and wait until its port accepts connections.

        Raises:
            MosquittoMissingError: no ``mosquitto`` binary.
            RuntimeError: it exited (bad configuration, port taken) or never accepted connections.
        """
        if self.running:
            raise RuntimeError("the broker is already running")
        binary = find_mosquitto()
        self._write_config()
        self._process = subprocess.Popen(
            [binary, "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                stderr = self._process.stderr.read().decode(errors="replace") if self._process.stderr else ""
                raise RuntimeError(
                    f"mosquitto exited with {self._process.returncode} at start:\n{stderr}\n{self.log_text()}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop(kill=True)
                    raise RuntimeError(
                        f"mosquitto did not accept connections on {self.host}:{self.port} within {timeout} s\n"
                        f"{self.log_text()}"
                    ) from None
                time.sleep(0.01)

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open, nothing is answered."""
        if self._process is None:
            raise RuntimeError("the broker is not running")
        self._process.send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Thaw a paused broker (SIGCONT)."""
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)
        self._paused = False

    def stop(self, kill: bool = False, timeout: float = 10.0) -> None:
        """Stop the broker: SIGTERM (it saves persistence) or SIGKILL (a crash). Idempotent.

        A paused broker is sent the signal and then thawed, so it stops without serving anyone.
        """
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            if self._paused:
                process.send_signal(signal.SIGCONT)
                self._paused = False
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        if process.stderr is not None:
            process.stderr.close()
        self._process = None

    def restart(self, kill: bool = False) -> MosquittoBroker:
        """Stop and start again on the same port."""
        self.stop(kill=kill)
        return self.start()

    def log_text(self) -> str:
        """The broker's log so far (for failure messages)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def make_password_file(path: Path, users: Sequence[Tuple[str, str]]) -> Path:
    """Write a Mosquitto password file with ``(user, password)`` pairs (``mosquitto_passwd -b``)."""
    binary = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    path = Path(path)
    if path.exists():
        path.unlink()
    for index, (user, password) in enumerate(users):
        command = [binary, "-b", str(path), user, password]
        if index == 0:
            command.insert(1, "-c")
        subprocess.run(command, check=True, capture_output=True, timeout=30)
    return path


class Pki(NamedTuple):
    """A throw-away certificate authority and a server certificate it signed (PEM files)."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    #: The CA's private key, to sign client certificates (:func:`make_client_certificate`).
    ca_key: Optional[Path] = None


def _write_key(path: Path, key: object) -> None:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(
        key.private_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(path, 0o600)


def make_pki(directory: Path, hosts: Sequence[str] = ("127.0.0.1", "localhost"), name: str = "test") -> Pki:
    """Create a CA and a server certificate for ``hosts`` (IP addresses or DNS names), EC P-256."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA {uuid.uuid4().hex[:8]}")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    alt_names: List[x509.GeneralName] = []
    for host in hosts:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = Pki(
        directory / "ca.crt", directory / "server.crt", directory / "server.key", directory / "ca.key"
    )
    paths.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(paths.server_key, server_key)
    assert paths.ca_key is not None
    _write_key(paths.ca_key, ca_key)
    return paths


def make_client_certificate(pki: Pki, name: str, directory: Optional[Path] = None) -> Tuple[Path, Path]:
    """A client certificate (common name ``name``, EC P-256) signed by ``pki``'s CA: ``(cert, key)`` PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if pki.ca_key is None:
        raise ValueError("this Pki has no CA key (made by an older make_pki)")
    directory = Path(directory or pki.ca_cert.parent)
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key_path, key)
    return cert_path, key_path


def make_acl_file(path: Path, rules: Dict[str, Sequence[Tuple[str, str]]]) -> Path:
    """A Mosquitto ACL file: per user name, ``(access, topic filter)`` pairs (access: read, write, readwrite).

    A user without rules gets no access at all (Mosquitto still lets it connect).
    """
    lines: List[str] = []
    for user, entries in rules.items():
        lines.append(f"user {user}")
        lines.extend(f"topic {access} {topic}" for access, topic in entries)
        lines.append("")
    path = Path(path)
    path.write_text("\n".join(lines))
    return path


def tls_listener_config(pki: Pki, require_certificate: bool = False) -> str:
    """``extra_config`` lines that make the broker's listener a TLS one (optionally asking for client certificates)."""
    lines = f"cafile {pki.ca_cert}\ncertfile {pki.server_cert}\nkeyfile {pki.server_key}\n"
    if require_certificate:
        lines += "require_certificate true\n"
    return lines


class Message(NamedTuple):
    """One message as a subscriber received it."""

    topic: str
    payload: bytes
    retain: bool
    qos: int
    received_at: float = 0.0  # time.time() when the subscriber got it

    @property
    def text(self) -> str:
        """The payload as UTF-8 text."""
        return self.payload.decode("utf-8")


class Recorder:
    """A paho client subscribed to ``topic_filter`` (QoS 1) that records every message it receives.

    It re-subscribes after a reconnect. Use it as a context manager or call :meth:`start` and
    :meth:`close`.

    Args:
        host, port: the broker.
        topic_filter: what to subscribe to.
        client_id: a random one by default; give a fixed one with ``clean_session=False`` for a
            session the broker keeps while the recorder is away.
        clean_session: see above.
        username, password: for brokers with a password file.
        ca_file: connect with TLS, trusting this CA.
        cert_file, key_file: a client certificate, for brokers that ask for one.
    """

    def __init__(
        self,
        host: str,
        port: int,
        topic_filter: str = "#",
        *,
        client_id: Optional[str] = None,
        clean_session: bool = True,
        username: Optional[str] = None,
        password: Optional[str] = None,
        ca_file: Optional[Path] = None,
        cert_file: Optional[Path] = None,
        key_file: Optional[Path] = None,
    ) -> None:
        self.host = host
        self.port = port
        self.topic_filter = topic_filter
        self._messages: List[Message] = []
        self._condition = threading.Condition()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"recorder-{uuid.uuid4().hex[:12]}",
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
        )
        if username is not None:
            self._client.username_pw_set(username, password)
        if ca_file is not None:
            context = ssl.create_default_context(cafile=str(ca_file))
            if cert_file is not None:
                context.load_cert_chain(str(cert_file), None if key_file is None else str(key_file))
            self._client.tls_set_context(context)
        self._client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._started = False

    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object
    ) -> None:
        if not getattr(reason, "is_failure", False):
            client.subscribe(self.topic_filter, qos=1)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: object, mid: int, codes: object, props: object
    ) -> None:
        self._subscribed.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object
    ) -> None:
        self._subscribed.clear()

    @property
    def subscribed(self) -> bool:
        """Connected, and the broker acknowledged the subscription (again, after a reconnection)."""
        return self._subscribed.is_set()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        with self._condition:
            self._messages.append(
                Message(message.topic, bytes(message.payload), bool(message.retain), message.qos, time.time())
            )
            self._condition.notify_all()

    def start(self, timeout: float = 10.0) -> Recorder:
        """Connect and wait until the subscription is acknowledged (retained messages follow it)."""
        self._client.connect_async(self.host, self.port, keepalive=10)
        self._client.loop_start()
        self._started = True
        if not self._subscribed.wait(timeout):
            self.close()
            raise AssertionError(
                f"recorder could not subscribe to {self.topic_filter} on {self.host}:{self.port}"
            )
        return self

    def close(self) -> None:
        """Disconnect and stop the network thread. Idempotent."""
        if not self._started:
            return
        self._started = False
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> Recorder:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def messages(self) -> List[Message]:
        """A copy of everything received so far, in order of arrival."""
        with self._condition:
            return list(self._messages)

    def on(self, topic: str) -> List[Message]:
        """The messages received on exactly ``topic``."""
        return [message for message in self.messages if message.topic == topic]

    def clear(self) -> None:
        """Forget what was received."""
        with self._condition:
            self._messages.clear()

    def wait_for(
        self, predicate: Callable[[List[Message]], bool], timeout: float = 10.0, what: str = "a condition"
    ) -> List[Message]:
        """Wait until ``predicate(messages)`` holds; return the messages at that moment.

        Raises:
            AssertionError: it did not hold in time (the message lists what was received).
        """
        deadline = time.monotonic() + timeout
        while True:
            # The predicate runs outside the lock: a slow one (thousands of messages) must not hold
            # up the network thread, which takes the lock for every message it records.
            messages = self.messages
            started = time.monotonic()
            if predicate(messages):
                return messages
            spent = time.monotonic() - started
            if spent > PREDICATE_PACING_FLOOR_S:
                # Evaluated on every message, such a predicate would take the CPU from the clients
                # the test waits for (a flood of thousands of messages): keep it to a tenth.
                time.sleep(min(9 * spent, max(0.0, deadline - time.monotonic())))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seen = "\n".join(
                    f"  {m.topic} retain={m.retain} qos={m.qos} {m.payload[:120]!r}" for m in messages[-30:]
                )
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {what}; received {len(messages)} "
                    f"message(s), the last ones:\n{seen}"
                )
            with self._condition:
                if len(self._messages) == len(messages):
                    self._condition.wait(min(remaining, 0.5))

    def wait_for_message(self, topic: str, payload: Optional[bytes] = None, timeout: float = 10.0) -> Message:
        """Wait for a message on ``topic`` (with ``payload``, if given) and return the first such."""

        def matching(messages: List[Message]) -> List[Message]:
            return [m for m in messages if m.topic == topic and (payload is None or m.payload == payload)]

        messages = self.wait_for(lambda ms: bool(matching(ms)), timeout, f"{payload!r} on {topic}")
        return matching(messages)[0]

    def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, timeout: float = 5.0
    ) -> None:
        """Publish and wait until the broker acknowledged it (QoS > 0) or it was sent."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise AssertionError(f"publishing to {topic} was not acknowledged within {timeout} s")
