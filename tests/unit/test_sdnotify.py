"""SystemdNotifier against real AF_UNIX datagram sockets bound by the test, as systemd binds its own."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import struct
import tempfile
import time
import uuid
from pathlib import Path
from typing import Dict, Iterator, Tuple

import pytest

from appliance.sdnotify import SystemdNotifier


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: an AF_UNIX socket path must fit in 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="sdn-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def path_socket(short_dir: Path) -> Iterator[Tuple[socket.socket, str]]:
    """A bound file-system datagram socket and the ``NOTIFY_SOCKET`` value naming it."""
    path = str(short_dir / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2.0)
    yield sock, path
    sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[Tuple[socket.socket, str]]:
    """A bound abstract-namespace datagram socket and its ``@name`` form."""
    name = f"face-appliance-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2.0)
    yield sock, "@" + name
    sock.close()


def env(notify_socket: str = "", **extra: str) -> Dict[str, str]:
    values = {"NOTIFY_SOCKET": notify_socket} if notify_socket else {}
    values.update(extra)
    return values


def received(sock: socket.socket) -> str:
    return sock.recv(4096).decode("utf-8")


def test_each_helper_sends_the_exact_datagram_to_a_path_socket(
    path_socket: Tuple[socket.socket, str],
) -> None:
    sock, path = path_socket
    with SystemdNotifier(env(path)) as notifier:
        assert notifier.enabled
        assert notifier.ready()
        assert received(sock) == "READY=1"
        assert notifier.ready(status="serving: 25.0 fps")
        assert received(sock) == "READY=1\nSTATUS=serving: 25.0 fps"
        assert notifier.status("camera lost")
        assert received(sock) == "STATUS=camera lost"
        assert notifier.stopping()
        assert received(sock) == "STOPPING=1"
        assert notifier.stopping(status="draining the outbox")
        assert received(sock) == "STOPPING=1\nSTATUS=draining the outbox"
        assert notifier.watchdog()
        assert received(sock) == "WATCHDOG=1"
        assert notifier.extend_timeout(90)
        assert received(sock) == "EXTEND_TIMEOUT_USEC=90000000"
        assert notifier.extend_timeout(0.25)
        assert received(sock) == "EXTEND_TIMEOUT_USEC=250000"
        assert notifier.notify("X_CUSTOM=1\nERRNO=2")
        assert received(sock) == "X_CUSTOM=1\nERRNO=2"


def test_the_abstract_namespace_socket_is_reached_through_its_at_name(
    abstract_socket: Tuple[socket.socket, str],
) -> None:
    sock, name = abstract_socket
    with SystemdNotifier(env(name)) as notifier:
        assert notifier.ready()
        assert received(sock) == "READY=1"
        assert notifier.watchdog()
        assert received(sock) == "WATCHDOG=1"


def test_reloading_carries_the_monotonic_clock_in_microseconds(
    path_socket: Tuple[socket.socket, str],
) -> None:
    sock, path = path_socket
    with SystemdNotifier(env(path)) as notifier:
        before = time.monotonic_ns() // 1000
        assert notifier.reloading(status="reloading the gallery")
        after = time.monotonic_ns() // 1000
    lines = received(sock).split("\n")
    assert lines[0] == "RELOADING=1"
    assert lines[2] == "STATUS=reloading the gallery"
    key, _, value = lines[1].partition("=")
    assert key == "MONOTONIC_USEC"
    assert value.isdigit() and before <= int(value) <= after


def test_a_status_is_kept_to_one_line(path_socket: Tuple[socket.socket, str]) -> None:
    sock, path = path_socket
    with SystemdNotifier(env(path)) as notifier:
        notifier.status("engine build failed:\nout of memory\r\n")
    assert received(sock) == "STATUS=engine build failed: out of memory"


def test_the_kernel_attaches_our_pid_so_systemd_can_attribute_the_message(
    path_socket: Tuple[socket.socket, str],
) -> None:
    """systemd's socket has SO_PASSCRED; with NotifyAccess=main it accepts only the main PID."""
    sock, path = path_socket
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    with SystemdNotifier(env(path)) as notifier:
        notifier.ready()
    data, ancillary, _flags, _address = sock.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("iII")))
    assert data == b"READY=1"
    credentials = [
        d for level, kind, d in ancillary if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)
    ]
    assert credentials, "no SCM_CREDENTIALS came with the datagram"
    pid, uid, _gid = struct.unpack("iII", credentials[0][: struct.calcsize("iII")])
    assert (pid, uid) == (os.getpid(), os.getuid())


def test_without_notify_socket_nothing_is_sent_and_nothing_fails() -> None:
    notifier = SystemdNotifier({})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog() is False
    assert notifier.watchdog_interval() is None
    notifier.close()


def test_a_missing_socket_is_harmless_and_logged_once(
    short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="appliance.sdnotify")
    notifier = SystemdNotifier(env(str(short_dir / "no-such-socket")))
    assert notifier.enabled
    assert [notifier.watchdog() for _ in range(3)] == [False, False, False]
    assert notifier.status("still running") is False
    messages = [r for r in caplog.records if r.name == "appliance.sdnotify"]
    assert len(messages) == 1
    assert messages[0].levelno == logging.DEBUG
    assert "no-such-socket" in messages[0].getMessage()


def test_an_abstract_socket_nobody_listens_on_is_harmless() -> None:
    notifier = SystemdNotifier(env(f"@face-appliance-nobody-{uuid.uuid4().hex}"))
    assert notifier.ready() is False
    assert notifier.watchdog() is False


def test_a_socket_that_goes_away_and_comes_back(short_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A broken socket is one DEBUG line; when it works again, so do the notifications."""
    caplog.set_level(logging.DEBUG, logger="appliance.sdnotify")
    path = str(short_dir / "notify")
    first = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    first.bind(path)
    notifier = SystemdNotifier(env(path))
    try:
        assert notifier.watchdog()
        first.close()
        os.unlink(path)
        assert notifier.watchdog() is False
        assert notifier.watchdog() is False
        second = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        second.bind(path)
        second.settimeout(2.0)
        try:
            assert notifier.watchdog()
            assert received(second) == "WATCHDOG=1"
        finally:
            second.close()
    finally:
        notifier.close()
    messages = [r.getMessage() for r in caplog.records if r.name == "appliance.sdnotify"]
    assert len(messages) == 2, messages
    assert "cannot notify" in messages[0] and "works again" in messages[1]


def test_an_unusable_notify_socket_value_is_ignored() -> None:
    for value in ("vsock:2:1234", "relative/path", "@"):
        notifier = SystemdNotifier(env(value))
        assert not notifier.enabled
        assert notifier.ready() is False


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert SystemdNotifier(env(WATCHDOG_USEC="30000000")).watchdog_interval() == 15.0
    assert SystemdNotifier(env(WATCHDOG_USEC="1000")).watchdog_interval() == 0.0005


def test_watchdog_interval_follows_the_pid_rule() -> None:
    mine = str(os.getpid())
    other = str(os.getpid() + 1)
    assert SystemdNotifier(env(WATCHDOG_USEC="30000000", WATCHDOG_PID=mine)).watchdog_interval() == 15.0
    assert SystemdNotifier(env(WATCHDOG_USEC="30000000", WATCHDOG_PID=other)).watchdog_interval() is None
    assert SystemdNotifier(env(WATCHDOG_USEC="30000000", WATCHDOG_PID="x")).watchdog_interval() is None


@pytest.mark.parametrize("value", ["", "0", "-5", "soon"])
def test_watchdog_interval_is_none_without_a_usable_watchdog_usec(value: str) -> None:
    environ = env(WATCHDOG_USEC=value) if value else env()
    assert SystemdNotifier(environ).watchdog_interval() is None


def test_the_environment_is_read_from_os_environ_by_default(
    path_socket: Tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = path_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    with SystemdNotifier() as notifier:
        assert notifier.watchdog_interval() == 10.0
        assert notifier.ready()
    assert received(sock) == "READY=1"


def test_extend_timeout_refuses_a_non_positive_time() -> None:
    notifier = SystemdNotifier({})
    with pytest.raises(ValueError, match="positive"):
        notifier.extend_timeout(0)
    with pytest.raises(ValueError, match="positive"):
        notifier.extend_timeout(-1.0)
