"""SystemdNotifier through the real ``systemd.daemon.notify`` (libsystemd's ``sd_notify``), against
AF_UNIX datagram sockets bound by the test as systemd binds its own."""

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
from typing import Iterator, List, Tuple

import pytest
import systemd.daemon

from appliance import systemd_notify
from appliance.systemd_notify import SystemdNotifier
from tests.support import notify_listener


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: an AF_UNIX socket path must fit in 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="sdn-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def path_socket(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A bound file-system datagram socket, named by ``$NOTIFY_SOCKET``."""
    path = short_dir / "notify"
    sock = notify_listener(path, 2.0)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


@pytest.fixture
def abstract_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A bound abstract-namespace datagram socket, named ``@name`` by ``$NOTIFY_SOCKET``."""
    name = f"face-appliance-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2.0)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    yield sock
    sock.close()


@pytest.fixture(autouse=True)
def no_systemd_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test runner may itself run under systemd: start from none of its variables."""
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)


def received(sock: socket.socket) -> str:
    return sock.recv(4096).decode("utf-8")


def delivered(sock: socket.socket, sent: bool) -> str:
    """The datagram ``sock`` received for a notification that reported it was sent."""
    assert sent is True
    return received(sock)


def test_the_library_is_installed_and_does_the_sending(
    path_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the daemon sends goes through ``systemd.daemon.notify``, not a socket of its own."""
    assert systemd_notify.systemd_daemon() is systemd.daemon
    calls: List[str] = []
    real_notify = systemd.daemon.notify

    def recording_notify(status: str) -> bool:
        calls.append(status)
        return real_notify(status)

    monkeypatch.setattr(systemd.daemon, "notify", recording_notify)
    notifier = SystemdNotifier()
    assert notifier.enabled
    assert notifier.ready(status="serving")
    assert calls == ["READY=1\nSTATUS=serving"]
    assert received(path_socket) == "READY=1\nSTATUS=serving"


def test_each_helper_sends_the_exact_datagram_to_a_path_socket(path_socket: socket.socket) -> None:
    notifier = SystemdNotifier()
    assert delivered(path_socket, notifier.ready()) == "READY=1"
    assert (
        delivered(path_socket, notifier.ready(status="serving: 25.0 fps"))
        == "READY=1\nSTATUS=serving: 25.0 fps"
    )
    assert delivered(path_socket, notifier.status("camera lost")) == "STATUS=camera lost"
    assert delivered(path_socket, notifier.stopping()) == "STOPPING=1"
    assert (
        delivered(path_socket, notifier.stopping(status="draining the outbox"))
        == "STOPPING=1\nSTATUS=draining the outbox"
    )
    assert delivered(path_socket, notifier.watchdog()) == "WATCHDOG=1"
    assert delivered(path_socket, notifier.extend_timeout(90)) == "EXTEND_TIMEOUT_USEC=90000000"
    assert delivered(path_socket, notifier.extend_timeout(0.25)) == "EXTEND_TIMEOUT_USEC=250000"
    assert delivered(path_socket, notifier.notify("X_CUSTOM=1\nERRNO=2")) == "X_CUSTOM=1\nERRNO=2"


def test_the_abstract_namespace_socket_is_reached_through_its_at_name(
    abstract_socket: socket.socket,
) -> None:
    notifier = SystemdNotifier()
    assert delivered(abstract_socket, notifier.ready()) == "READY=1"
    assert delivered(abstract_socket, notifier.watchdog()) == "WATCHDOG=1"


def test_reloading_carries_the_monotonic_clock_in_microseconds(path_socket: socket.socket) -> None:
    notifier = SystemdNotifier()
    before = time.monotonic_ns() // 1000
    assert notifier.reloading(status="reloading the gallery")
    after = time.monotonic_ns() // 1000
    lines = received(path_socket).split("\n")
    assert lines[0] == "RELOADING=1"
    assert lines[2] == "STATUS=reloading the gallery"
    key, _, value = lines[1].partition("=")
    assert key == "MONOTONIC_USEC"
    assert value.isdigit() and before <= int(value) <= after
    assert delivered(path_socket, notifier.ready()) == "READY=1"


def test_a_status_is_kept_to_one_line_and_to_a_c_string(path_socket: socket.socket) -> None:
    notifier = SystemdNotifier()
    assert (
        delivered(path_socket, notifier.status("engine build failed:\nout of memory\r\n"))
        == "STATUS=engine build failed: out of memory"
    )
    assert delivered(path_socket, notifier.status("a\0b")) == "STATUS=a b"


def test_the_kernel_attaches_our_pid_so_systemd_can_attribute_the_message(
    path_socket: socket.socket,
) -> None:
    """systemd's socket has SO_PASSCRED; with NotifyAccess=main it accepts only the main PID."""
    path_socket.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    SystemdNotifier().ready()
    data, ancillary, _flags, _address = path_socket.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("iII")))
    assert data == b"READY=1"
    credentials = [
        d for level, kind, d in ancillary if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)
    ]
    assert credentials, "no SCM_CREDENTIALS came with the datagram"
    pid, uid, _gid = struct.unpack("iII", credentials[0][: struct.calcsize("iII")])
    assert (pid, uid) == (os.getpid(), os.getuid())


def test_without_notify_socket_nothing_is_sent_and_nothing_fails() -> None:
    notifier = SystemdNotifier()
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.reloading() is False
    assert notifier.watchdog() is False
    assert notifier.extend_timeout(30) is False
    assert notifier.watchdog_interval() is None


def test_without_the_library_every_call_is_a_no_op_and_systemd_is_warned_of(
    path_socket: socket.socket, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A laptop or a container without systemd-python: nothing is sent, nothing fails; under a
    Type=notify unit (NOTIFY_SOCKET set) the missing READY=1 is an ERROR that says what to install."""
    monkeypatch.setattr(systemd_notify, "systemd_daemon", lambda: None)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    caplog.set_level(logging.DEBUG, logger="appliance.systemd_notify")
    notifier = SystemdNotifier()
    assert not notifier.enabled
    assert [notifier.ready(), notifier.status("x"), notifier.watchdog(), notifier.stopping()] == [False] * 4
    assert notifier.watchdog_interval() is None
    path_socket.settimeout(0.2)
    with pytest.raises(socket.timeout):
        path_socket.recv(4096)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "python3-systemd" in errors[0].getMessage() and "face-appliance[systemd]" in errors[0].getMessage()


def test_without_the_library_or_a_socket_nothing_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(systemd_notify, "systemd_daemon", lambda: None)
    caplog.set_level(logging.DEBUG, logger="appliance.systemd_notify")
    assert SystemdNotifier().ready() is False
    assert not caplog.records


def test_a_missing_socket_is_harmless_and_logged_once(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="appliance.systemd_notify")
    monkeypatch.setenv("NOTIFY_SOCKET", str(short_dir / "no-such-socket"))
    notifier = SystemdNotifier()
    assert notifier.enabled
    assert [notifier.watchdog() for _ in range(3)] == [False, False, False]
    assert notifier.status("still running") is False
    messages = [r for r in caplog.records if r.name == "appliance.systemd_notify"]
    assert len(messages) == 1
    assert messages[0].levelno == logging.DEBUG
    assert "no-such-socket" in messages[0].getMessage()


def test_an_abstract_socket_nobody_listens_on_is_harmless(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", f"@face-appliance-nobody-{uuid.uuid4().hex}")
    notifier = SystemdNotifier()
    assert notifier.ready() is False
    assert notifier.watchdog() is False


def test_a_socket_that_goes_away_and_comes_back(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A broken socket is one DEBUG line; when it works again, so do the notifications."""
    caplog.set_level(logging.DEBUG, logger="appliance.systemd_notify")
    path = short_dir / "notify"
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    first = notify_listener(path, 2.0)
    notifier = SystemdNotifier()
    assert notifier.watchdog()
    first.close()
    os.unlink(path)
    assert notifier.watchdog() is False
    assert notifier.watchdog() is False
    second = notify_listener(path, 2.0)
    try:
        assert notifier.watchdog()
        assert received(second) == "WATCHDOG=1"
    finally:
        second.close()
    messages = [r.getMessage() for r in caplog.records if r.name == "appliance.systemd_notify"]
    assert len(messages) == 2, messages
    assert "cannot notify" in messages[0] and "works again" in messages[1]


@pytest.mark.parametrize("value", ["relative/path", "@", "/"])
def test_an_unusable_notify_socket_value_is_harmless(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    notifier = SystemdNotifier()
    assert notifier.ready() is False
    assert notifier.watchdog() is False


def watchdog_interval(monkeypatch: pytest.MonkeyPatch, usec: str, pid: str = "") -> object:
    monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid:
        monkeypatch.setenv("WATCHDOG_PID", pid)
    else:
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
    return SystemdNotifier().watchdog_interval()


def test_watchdog_interval_is_half_of_watchdog_usec(monkeypatch: pytest.MonkeyPatch) -> None:
    assert watchdog_interval(monkeypatch, "30000000") == 15.0
    assert watchdog_interval(monkeypatch, "1000") == 0.0005


def test_watchdog_interval_follows_the_pid_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    mine = str(os.getpid())
    other = str(os.getpid() + 1)
    assert watchdog_interval(monkeypatch, "30000000", mine) == 15.0
    assert watchdog_interval(monkeypatch, "30000000", other) is None
    assert watchdog_interval(monkeypatch, "30000000", "x") is None


@pytest.mark.parametrize("value", ["", "0", "-5", "soon"])
def test_watchdog_interval_is_none_without_a_usable_watchdog_usec(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert watchdog_interval(monkeypatch, value) is None


def test_the_environment_is_read_when_the_notifier_is_made(
    path_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = SystemdNotifier()
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    assert notifier.watchdog_interval() == 10.0
    assert delivered(path_socket, notifier.ready()) == "READY=1"


def test_extend_timeout_refuses_a_non_positive_time() -> None:
    notifier = SystemdNotifier()
    with pytest.raises(ValueError, match="positive"):
        notifier.extend_timeout(0)
    with pytest.raises(ValueError, match="positive"):
        notifier.extend_timeout(-1.0)


def test_many_threads_notify_at_once(path_socket: socket.socket) -> None:
    """The supervisor, the stop path and the engine builder share one notifier."""
    import threading

    notifier = SystemdNotifier()
    results: List[Tuple[int, bool]] = []

    def ping(index: int) -> None:
        results.append((index, notifier.notify(f"STATUS=thread {index}")))

    threads = [threading.Thread(target=ping, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [(i, True) for i in range(8)]
    assert sorted(received(path_socket) for _ in range(8)) == sorted(f"STATUS=thread {i}" for i in range(8))
