"""Test helpers that are real things, not mocks: a loopback HTTP mirror with Range support, door videos
made of real photos, and the daemon as a subprocess (:class:`Daemon`) with its configuration."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple


@dataclass
class MirrorFaults:
    """Misbehaviour to inject, per relative path."""

    #: close the connection after this many body bytes, once per entry (then serve normally)
    cut_after: Dict[str, int] = field(default_factory=dict)
    #: answer with this body instead of the file (a corrupted mirror)
    replace_body: Dict[str, bytes] = field(default_factory=dict)
    #: ignore Range headers (answer 200 with the whole file)
    ignore_range: bool = False
    #: answer 503 this many times before serving
    unavailable: Dict[str, int] = field(default_factory=dict)


class MirrorServer:
    """Serves a folder over HTTP on 127.0.0.1 and a free port, honouring ``Range: bytes=N-``.

    ``requests`` records (path, range header) for every GET.
    """

    def __init__(self, root: Path, faults: Optional[MirrorFaults] = None) -> None:
        self.root = root
        self.faults = faults or MirrorFaults()
        self.requests: List[tuple] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:
                relative = self.path.lstrip("/")
                range_header = self.headers.get("Range")
                server.requests.append((relative, range_header))
                remaining_503 = server.faults.unavailable.get(relative, 0)
                if remaining_503:
                    server.faults.unavailable[relative] = remaining_503 - 1
                    self._send_status(503)
                    return
                target = (server.root / relative).resolve()
                if server.root.resolve() not in target.parents or not target.is_file():
                    self._send_status(404)
                    return
                body = server.faults.replace_body.get(relative)
                if body is None:
                    body = target.read_bytes()
                start = 0
                match = re.match(r"bytes=(\d+)-$", range_header or "")
                if match and not server.faults.ignore_range:
                    start = int(match.group(1))
                    if start >= len(body):
                        self._send_status(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                payload = body[start:]
                cut = server.faults.cut_after.pop(relative, None)
                if cut is not None:
                    self.wfile.write(payload[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(payload)

            def _send_status(self, code: int) -> None:
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="mirror-http", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> MirrorServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def files_under(root: Path) -> List[str]:
    """Every file under ``root``, relative, sorted."""
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def make_passage_video(
    path: Path,
    passages: List[tuple],
    size: tuple = (640, 480),
    fps: float = 10.0,
) -> Path:
    """Write an MJPG ``.avi`` in which people pass: each passage is ``(photo or None, frames)``.

    A photo is shown growing from 80 % to 95 % of the frame height while it drifts sideways (a person
    walking up to the door); ``None`` is an empty gray scene. Returns ``path``.
    """
    import cv2
    import numpy as np

    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    try:
        for photo, count in passages:
            image = None if photo is None else cv2.imread(str(photo), cv2.IMREAD_COLOR)
            for step in range(count):
                frame = np.full((height, width, 3), 96, np.uint8)
                if image is not None:
                    scale = (0.80 + 0.15 * step / max(count - 1, 1)) * height / image.shape[0]
                    resized = cv2.resize(
                        image, (max(1, int(image.shape[1] * scale)), max(1, int(image.shape[0] * scale)))
                    )
                    resized = resized[:, : min(resized.shape[1], width)]
                    top = (height - resized.shape[0]) // 2
                    left = min(
                        max(0, (width - resized.shape[1]) // 2 + step * 2 - count), width - resized.shape[1]
                    )
                    frame[top : top + resized.shape[0], left : left + resized.shape[1]] = resized
                writer.write(frame)
    finally:
        writer.release()
    return path


# -- the daemon as a subprocess ----------------------------------------------------------------------------

#: The device id of the daemon tests, and its topic root.
DEVICE = "door-test"
ROOT = f"face-appliance/{DEVICE}"


def passage_video(
    tmp_path: Path, shared_data: Path, name: str = "door.avi", rounds: int = 1, pause: int = 12
) -> Path:
    """A door video: an enrolled person (Barack Obama) and a stranger walk up, ``rounds`` times."""
    person, stranger = (
        shared_data / "faces/fr_obama/obama2.jpg",
        shared_data / "faces/fr_kit_harington/john1.jpeg",
    )
    passages: List[tuple] = [(None, 3)]
    for _ in range(rounds):
        passages += [(person, 25), (None, pause), (stranger, 25), (None, pause)]
    return make_passage_video(tmp_path / name, passages)


def daemon_config(
    tmp_path: Path,
    storage: Path,
    models: Path,
    broker: Any,
    source: Optional[Path],
    at_end: str = "stop",
    cameras: Sequence[Tuple[str, Path, str]] = (),
    **sections: str,
) -> Path:
    """Write ``appliance.toml`` for a daemon test: the broker, the video, quick reconnects.

    ``at_end``: ``camera.at_end`` (``"loop"`` keeps the video playing). ``cameras``: several cameras
    instead (``[[cameras]]``), each ``(id, video, at_end)``; ``source`` is then ``None``. ``sections``
    replace or add whole sections (``camera='source = "…"'``; ``mqtt`` replaces the broker settings);
    ``broker`` has ``host`` and ``port``.
    """
    extra = {
        "camera": f'source = "{source}"\nat_end = "{at_end}"\nreconnect_min_s = 0.2\nreconnect_max_s = 1.0',
        "mqtt": f'host = "{broker.host}"\nport = {broker.port}\nreconnect_min_s = 0.2\nreconnect_max_s = 1.0\n'
        "keepalive_s = 5",
        "outbox": "drain_s = 10.0",
        "metrics": "state_interval_s = 1.0",
    }
    if cameras:
        del extra["camera"]
    extra.update(sections)
    text = f'[device]\nid = "{DEVICE}"\n[models]\ndir = "{models}"\n[storage]\ndir = "{storage}"\n'
    for section, body in extra.items():
        text += f"[{section}]\n{body}\n"
    for camera_id, video, camera_at_end in cameras:
        text += (
            f'[[cameras]]\nid = "{camera_id}"\nsource = "{video}"\nat_end = "{camera_at_end}"\n'
            "reconnect_min_s = 0.2\nreconnect_max_s = 1.0\n"
        )
    path = tmp_path / "appliance.toml"
    path.write_text(text)
    return path


def fleet_authority_config(folder: Path, site: str, broker: Any, models: Path) -> Path:
    """Write ``folder/auth.toml``: an enrolment authority of ``site`` on ``broker`` (``host``, ``port``).

    Its keys go to ``folder/keys`` (``authority.key``/``.pub``, ``fleet.key``) and its state to
    ``folder/state`` when ``face-appliance fleet init`` runs on it.
    """
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "auth.toml"
    config.write_text(
        f'[authority]\nsite = "{site}"\nsigning_key = "keys/authority.key"\nfleet_key_file = "keys/fleet.key"\n'
        f'state_dir = "state"\n[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'
        f'[models]\ndir = "{models}"\n'
    )
    return config


def fleet_door_config(
    folder: Path,
    device: str,
    site: str,
    authority: Path,
    models: Path,
    broker: Any,
    video: Path,
    fleet: str = "",
) -> Path:
    """Write ``folder/appliance.toml``: door ``device`` of ``site`` in the fleet of the authority whose
    ``auth.toml`` is ``authority`` (its fleet key, a copy of its public key in ``folder/trusted``), on a
    looping ``video``, with quick reconnects and a ``…/state`` every second; ``fleet``: more lines of
    its ``[fleet]`` section."""
    keys = authority.parent / "keys"
    trusted = folder / "trusted"
    trusted.mkdir(parents=True)
    shutil.copy(keys / "authority.pub", trusted / "authority.pub")
    config = folder / "appliance.toml"
    config.write_text(
        f'[device]\nid = "{device}"\n[models]\ndir = "{models}"\n[storage]\ndir = "{folder / "state"}"\n'
        f'[camera]\nsource = "{video}"\nat_end = "loop"\n'
        f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\nreconnect_min_s = 0.2\nreconnect_max_s = 1.0\n'
        f"[metrics]\nstate_interval_s = 1.0\n"
        f'[fleet]\nenabled = true\nsite = "{site}"\nfleet_key_file = "{keys / "fleet.key"}"\n'
        f'trusted_keys_dir = "{trusted}"\n{fleet}'
    )
    return config


#: ``python -c`` program that limits the size of the files it writes, then runs ``python -m appliance``.
_LIMITED_START = (
    "import resource, runpy, signal, sys; "
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
    "resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.getrlimit(resource.RLIMIT_FSIZE)[1])); "
    "sys.argv[0] = 'appliance'; "
    "runpy.run_module('appliance', run_name='__main__', alter_sys=True)"
)


class Daemon:
    """``python -m appliance run`` in a subprocess; stderr is collected in the background.

    Args:
        config: the configuration file.
        env: extra environment variables (``FACE_APPLIANCE_FAULTS``, ``NOTIFY_SOCKET``, …).
        args: extra arguments of ``run`` (``--print-events``); stdout lines are kept in ``stdout``.
        file_size_limit: run it under ``RLIMIT_FSIZE`` of this many bytes with ``SIGXFSZ`` ignored, so
            that writing past it fails with EFBIG as a full disk fails with ENOSPC (a "full disk" that
            :meth:`give_disk_space` removes).
    """

    def __init__(
        self,
        config: Path,
        env: Optional[Dict[str, str]] = None,
        args: Sequence[str] = (),
        file_size_limit: Optional[int] = None,
    ) -> None:
        command = [sys.executable, "-m", "appliance", "run", "--config", str(config), *args]
        if file_size_limit is not None:
            command[1:3] = ["-c", _LIMITED_START.format(limit=int(file_size_limit))]
        self.process = subprocess.Popen(
            command,
            cwd=Path(__file__).resolve().parent.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self.log: List[str] = []
        self.stdout: List[str] = []
        self._reader = threading.Thread(target=self._read, args=(self.process.stderr, self.log), daemon=True)
        self._reader.start()
        self._out_reader = threading.Thread(
            target=self._read, args=(self.process.stdout, self.stdout), daemon=True
        )
        self._out_reader.start()

    def give_disk_space(self) -> None:
        """Lift the ``file_size_limit``: the "disk" has room again."""
        import resource

        infinity = resource.RLIM_INFINITY
        resource.prlimit(self.process.pid, resource.RLIMIT_FSIZE, (infinity, infinity))

    @staticmethod
    def _read(stream: Any, lines: List[str]) -> None:
        for line in stream:
            lines.append(line.rstrip())

    def wait_log(self, text: str, count: int = 1, timeout: float = 60.0) -> None:
        """Wait until ``text`` appears in ``count`` log lines.

        Raises:
            AssertionError: it did not in time, or the process ended first.
        """
        deadline = time.monotonic() + timeout
        while sum(text in line for line in self.log) < count:
            if time.monotonic() > deadline or (
                self.process.poll() is not None and not self._reader.is_alive()
            ):
                raise AssertionError(f"{text!r} ×{count} not logged; log:\n" + "\n".join(self.log[-40:]))
            time.sleep(0.05)

    def wait(self, timeout: float = 60.0) -> int:
        """Wait for the process to end; its exit code."""
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=5)
        self._out_reader.join(timeout=5)
        return code

    def signal(self, number: int) -> None:
        self.process.send_signal(number)

    def stop(self, timeout: float = 30.0) -> Optional[int]:
        """SIGTERM, wait (then SIGKILL if it hangs), close; the exit code of a process still running."""
        code = None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                code = self.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.close()
        return code

    def close(self) -> None:
        """Kill the process if it still runs and release its pipes. Idempotent."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self._reader.join(timeout=5)
        self._out_reader.join(timeout=5)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()

    @property
    def text(self) -> str:
        """The whole log so far."""
        return "\n".join(self.log)


def event_documents(messages: Sequence[Any]) -> List[Dict[str, Any]]:
    """The access events among recorded messages (``Recorder.messages``), in order of arrival."""
    return [json.loads(m.payload) for m in messages if m.topic == f"{ROOT}/events"]


def unique_events(events: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Events without redeliveries (the first of each ``event_id``), in order."""
    seen, unique = set(), []
    for event in events:
        if event["event_id"] not in seen:
            seen.add(event["event_id"])
            unique.append(event)
    return unique


def wait_online(recorder: Any, daemon: Daemon, timeout: float = 90.0) -> None:
    """Wait until the daemon announced ``online``; the failure shows the daemon's log."""
    try:
        recorder.wait_for_message(f"{ROOT}/availability", b"online", timeout=timeout)
    except AssertionError as err:
        raise AssertionError(
            f"{err}\nexit code {daemon.process.poll()}; daemon log:\n{daemon.text[-6000:]}"
        ) from None


def command(
    recorder: Any, name: str, document: Dict[str, Any], timeout: float = 60.0, root: str = ROOT
) -> Dict[str, Any]:
    """Send a command (a JSON document with a ``request_id``) to the appliance at topic ``root`` and
    wait for its answer."""
    request_id = document["request_id"]
    topic = f"{root}/cmd/{name}/result"
    recorder.publish(f"{root}/cmd/{name}", json.dumps(document).encode("utf-8"))

    def answered(messages: List[Any]) -> bool:
        return any(
            m.topic == topic and json.loads(m.payload).get("request_id") == request_id for m in messages
        )

    messages = recorder.wait_for(answered, timeout, f"the answer to {name} {request_id}")
    return next(
        json.loads(m.payload)
        for m in reversed(messages)
        if m.topic == topic and json.loads(m.payload).get("request_id") == request_id
    )


def notify_listener(path: Path, timeout: float) -> socket.socket:
    """A bound ``AF_UNIX`` datagram socket at ``path`` to stand for systemd's ``NOTIFY_SOCKET``."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    listener.settimeout(timeout)
    return listener


def grants_by_embedder(messages: Sequence[Any]) -> Dict[str, int]:
    """How many distinct ``granted`` events each embedder version decided, among recorded messages."""
    counts: Dict[str, int] = {}
    for event in unique_events(event_documents(messages)):
        if event["decision"] == "granted":
            version = event["models"]["embedder"]
            counts[version] = counts.get(version, 0) + 1
    return counts


def swap_states(messages: Sequence[Any]) -> List[str]:
    """The model swap's states as ``…/model`` reported them, in order, repeats folded."""
    states: List[str] = []
    for message in messages:
        if message.topic != f"{ROOT}/model":
            continue
        state = (json.loads(message.payload).get("swap") or {}).get("state")
        if state and (not states or states[-1] != state):
            states.append(state)
    return states


class Running:
    """An :class:`Appliance` running on a thread until :meth:`stop`."""

    def __init__(self, config_path: Path) -> None:
        from appliance.config_load import load_config
        from appliance.daemon import Appliance

        self.app = Appliance(load_config(config_path), config_path)
        self.code: List[int] = []
        self.thread = threading.Thread(target=lambda: self.code.append(self.app.run()), name="test-daemon")
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.app.ready:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise AssertionError(f"the daemon did not get ready: {self.app.error}")
            time.sleep(0.1)

    def wait_swap(self, states: tuple, timeout: float = 180.0) -> str:
        assert self.app.swap is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.app.swap.status().swap_state
            if state in states:
                return state
            time.sleep(0.1)
        raise AssertionError(f"the swap stayed in {self.app.swap.status()}")

    def stop(self) -> int:
        self.app.stop_event.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "the daemon did not stop"
        return self.code[0]


def run_cli(
    *args: str, env: Optional[Dict[str, str]] = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """``python -m appliance ARGS`` from the repository root; output captured, never raises on exit code."""
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )


@contextmanager
def live_runtime(config: Any) -> Iterator[Any]:
    """The configured models with liveness, loaded and owned by the calling thread (it plays the
    pipeline thread), as an :class:`appliance.runtime.ModelRuntime`; closed afterwards."""
    from appliance.runtime import ModelLoader, ModelRuntime, model_targets

    runtime = ModelRuntime(config, ModelLoader(config))
    runtime.own()
    runtime.load(*model_targets(config, liveness=True))
    try:
        yield runtime
    finally:
        runtime.close()


class Held:
    """A method held at its start until :meth:`release` — a slow disk or a long rebuild, made
    deterministic: ``entered`` is set when a caller reaches it. Patched with pytest's monkeypatch,
    so it is undone after the test; a hold past ``deadline_s`` fails the caller."""

    def __init__(self, monkeypatch: Any, owner: Any, name: str, deadline_s: float = 10.0) -> None:
        self.entered, self._release = threading.Event(), threading.Event()
        original = getattr(owner, name)

        def held(*args: Any, **kwargs: Any) -> Any:
            self.entered.set()
            if not self._release.wait(deadline_s):
                raise AssertionError(f"{name} was held past {deadline_s} s")
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, held)

    def release(self) -> None:
        self._release.set()


def meanwhile(work: Any, deadline_s: float = 10.0) -> List[Any]:
    """Run ``work()`` on another thread and wait up to ``deadline_s`` for it: ``[its result]``, or
    ``[]`` when it did not return in time (it was blocked)."""
    results: List[Any] = []
    thread = threading.Thread(target=lambda: results.append(work()), daemon=True)
    thread.start()
    thread.join(deadline_s)
    return results


def received_package(staging_dir: Path, package: Path, upto: Optional[int] = None) -> None:
    """Put ``package`` in an appliance's staging folder as if it had come over the bus, written by the
    UDS server's own writer (:class:`~appliance.updates.transfer.IncomingPackage`): complete, or with
    ``upto`` bytes received and the download paused (a cut link). ``push-model`` then sends nothing,
    or resumes at ``upto``: what a test is about is after the transfer, or only its end."""
    from appliance.updates.transfer import IncomingPackage

    data = package.read_bytes()
    incoming = IncomingPackage(staging_dir)
    try:
        incoming.begin(0, len(data), hashlib.sha256(data).digest())
        end = len(data) if upto is None else upto
        for start in range(0, end, 1 << 16):
            incoming.write(data[start : min(start + (1 << 16), end)])
        if upto is None:
            incoming.finish()
        else:
            incoming.pause()
    finally:
        incoming.close()
