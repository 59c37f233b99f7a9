"""Writers that fill a disk: run as subprocesses by the fault-injection tests.

    python -m tests.fault_writers outbox  DB_PATH  LIMIT_BYTES
    python -m tests.fault_writers gallery FOLDER   LIMIT_BYTES

Each applies ``RLIMIT_FSIZE`` = LIMIT_BYTES to itself (0: no limit, the folder is a small tmpfs
instead) with ``SIGXFSZ`` ignored, so a write past the limit fails with ``EFBIG`` as a full disk fails
with ``ENOSPC``, then writes (outbox events, or gallery identities with encrypted crops) until the
store refuses. Every write the store **accepted** (the call returned) is printed on stdout as
``ok <id>`` before the next one starts; a refusal is printed as ``refused <error type>: <message>``.
After the first refusal it tries a few more writes and an acknowledgement/removal (they must fail
cleanly or succeed, never crash), closes the store, and exits 0. Any other exception ends the process
with a traceback and a non-zero status: that is the bug the test looks for.
"""

from __future__ import annotations

import resource
import signal
import sys
import uuid
from pathlib import Path

import numpy as np


def _limit(limit_bytes: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    if limit_bytes > 0:
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, hard))


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def fill_outbox(path: Path, limit_bytes: int) -> None:
    """Put events into the outbox at ``path`` until it refuses."""
    from appliance.outbox import Outbox, OutboxError

    _limit(limit_bytes)
    payload = b'{"schema": 1, "decision": "granted", "pad": "' + b"x" * 2000 + b'"}'
    refusals = 0
    with Outbox.open(path, 1_000_000, 3600.0) as outbox:
        while refusals < 5:
            event_id = str(uuid.uuid4())
            try:
                outbox.put(event_id, payload)
            except OutboxError as err:
                refusals += 1
                _say(f"refused {type(err).__name__}: {err}")
                continue
            _say(f"ok {event_id}")
        try:  # acknowledging needs a write too: it may fail, it must not crash
            entries = outbox.pending(3)
            outbox.ack_many([entry.seq for entry in entries])
            for entry in entries:
                _say(f"acked {entry.event_id}")
        except OutboxError as err:
            _say(f"refused {type(err).__name__}: {err}")


def fill_gallery(folder: Path, limit_bytes: int) -> None:
    """Enrol identities (random unit embeddings, random crops) into the gallery in ``folder`` until it refuses."""
    from appliance.gallery.errors import GalleryError
    from appliance.gallery.gallery import Gallery
    from appliance.gallery.store import TemplateStore

    _limit(limit_bytes)
    rng = np.random.default_rng(0)
    refusals = 0
    store = TemplateStore.open(folder / "gallery.db", folder / "gallery.key")
    with Gallery(store, "mobilefacenet@test", 128, folder / "gallery.index") as gallery:
        number = 0
        while refusals < 5:
            number += 1
            identity = f"person-{number}"
            vectors = rng.standard_normal((2, 128)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            crops = rng.integers(0, 255, (2, 112, 112, 3), dtype=np.uint8)  # noise: PNG cannot shrink it
            try:
                gallery.add(identity, f"Person {number}", vectors, crops)
            except GalleryError as err:
                refusals += 1
                _say(f"refused {type(err).__name__}: {err}")
                continue
            _say(f"ok {identity}")
        try:  # a removal on a full disk: it may fail, it must not crash or lose anything else
            gallery.remove("person-1")
            _say("removed person-1")
        except GalleryError as err:
            _say(f"refused {type(err).__name__}: {err}")


if __name__ == "__main__":
    kind, target, limit = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    {"outbox": fill_outbox, "gallery": fill_gallery}[kind](target, limit)
