"""Test helpers that are real servers, not mocks: a loopback HTTP mirror with Range support."""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional


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
