"""The resumable staging file of incoming packages (appliance.updates.transfer) on a real file system."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest

from appliance.updates.transfer import (
    IncomingPackage,
    NoSpaceError,
    TransferIntegrityError,
    TransferRangeError,
    TransferState,
)

DATA = bytes(range(256)) * 40  # 10240 bytes
DIGEST = hashlib.sha256(DATA).digest()


def _blocks(data: bytes, size: int = 1000) -> list:
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_a_complete_download_becomes_received_pkg(tmp_path: Path) -> None:
    incoming = IncomingPackage(tmp_path, reserve_bytes=0)
    assert incoming.state is TransferState.EMPTY
    incoming.begin(0, len(DATA), DIGEST)
    for block in _blocks(DATA):
        incoming.write(block)
    path = incoming.finish()
    assert path == tmp_path / "received.pkg" and path.read_bytes() == DATA
    assert not incoming.part_path.exists()
    progress = incoming.progress()
    assert (progress.state, progress.size, progress.received, progress.sha256) == (
        TransferState.COMPLETE,
        len(DATA),
        len(DATA),
        DIGEST,
    )
    incoming.close()
    reopened = IncomingPackage(tmp_path, reserve_bytes=0)
    assert reopened.state is TransferState.COMPLETE and reopened.sha256 == DIGEST
    reopened.close()


def test_resume_after_a_restart_from_the_synced_offset(tmp_path: Path) -> None:
    incoming = IncomingPackage(tmp_path, sync_every=3, reserve_bytes=0)
    incoming.begin(0, len(DATA), DIGEST)
    blocks = _blocks(DATA)
    for block in blocks[:4]:
        incoming.write(block)
    # A power cut now: the sidecar names the 3 synced blocks; the 4th is on disk but unconfirmed.
    sidecar = json.loads(incoming.sidecar_path.read_text())
    assert sidecar["received"] == 3000 and sidecar["sha256"] == DIGEST.hex() and not sidecar["complete"]
    stream = incoming._file
    assert stream is not None
    stream.flush()  # what the kernel may have written before the cut …
    stream.close()  # … and the process is gone
    incoming._file = None
    assert incoming.part_path.stat().st_size == 4000

    reopened = IncomingPackage(tmp_path, reserve_bytes=0)
    assert reopened.state is TransferState.PARTIAL and reopened.received == 3000
    assert reopened.part_path.stat().st_size == 3000  # cut back to what the sidecar confirmed
    with pytest.raises(TransferRangeError, match="resume at 3000"):
        reopened.begin(4000, len(DATA), DIGEST)
    with pytest.raises(TransferRangeError, match="another one"):
        reopened.begin(3000, len(DATA), bytes(32))
    assert reopened.received == 3000
    reopened.begin(3000, len(DATA), DIGEST)
    for block in blocks[3:]:
        reopened.write(block)
    assert reopened.finish().read_bytes() == DATA
    reopened.close()


def test_close_syncs_an_open_download(tmp_path: Path) -> None:
    incoming = IncomingPackage(tmp_path, sync_every=100, reserve_bytes=0)
    incoming.begin(0, len(DATA), DIGEST)
    incoming.write(DATA[:1234])
    incoming.close()
    incoming.close()  # idempotent
    assert json.loads(incoming.sidecar_path.read_text())["received"] == 1234
    assert IncomingPackage(tmp_path, reserve_bytes=0).received == 1234


@pytest.mark.parametrize(
    "sidecar",
    [
        b"{not json",
        json.dumps(
            {"version": 2, "size": 10, "received": 0, "sha256": "00" * 32, "complete": False}
        ).encode(),
        json.dumps(
            {"version": 1, "size": 10, "received": 11, "sha256": "00" * 32, "complete": False}
        ).encode(),
        json.dumps({"version": 1, "size": 10, "received": 5, "sha256": "zz", "complete": False}).encode(),
        json.dumps(
            {"version": 1, "size": "10", "received": 5, "sha256": "00" * 32, "complete": False}
        ).encode(),
        # claims more than the part file holds
        json.dumps(
            {"version": 1, "size": 10240, "received": 9000, "sha256": "00" * 32, "complete": False}
        ).encode(),
        # complete, but received.pkg is missing
        json.dumps(
            {"version": 1, "size": 10240, "received": 10240, "sha256": "00" * 32, "complete": True}
        ).encode(),
    ],
    ids=["not-json", "layout", "impossible", "digest", "types", "part-too-short", "no-received-pkg"],
)
def test_a_corrupt_sidecar_means_start_over(
    tmp_path: Path, sidecar: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "incoming.part").write_bytes(DATA[:5000])
    (tmp_path / "incoming.json").write_bytes(sidecar)
    with caplog.at_level(logging.WARNING, logger="appliance.updates.transfer"):
        incoming = IncomingPackage(tmp_path, reserve_bytes=0)
    assert incoming.state is TransferState.EMPTY and incoming.received == 0
    assert not (tmp_path / "incoming.part").exists() and not (tmp_path / "incoming.json").exists()
    assert "starting over" in caplog.text
    incoming.close()


def test_a_part_file_without_sidecar_is_removed(tmp_path: Path) -> None:
    (tmp_path / "incoming.part").write_bytes(DATA[:100])
    incoming = IncomingPackage(tmp_path, reserve_bytes=0)
    assert incoming.state is TransferState.EMPTY and not incoming.part_path.exists()
    incoming.close()


def test_a_wrong_digest_at_the_end_discards_the_download(tmp_path: Path) -> None:
    incoming = IncomingPackage(tmp_path, reserve_bytes=0)
    (tmp_path / "received.pkg").write_bytes(b"the previous package")
    incoming.begin(0, len(DATA), hashlib.sha256(b"something else").digest())
    incoming.write(DATA)
    with pytest.raises(TransferIntegrityError, match="starts over"):
        incoming.finish()
    assert incoming.state is TransferState.EMPTY
    assert not incoming.part_path.exists()
    assert (tmp_path / "received.pkg").read_bytes() == b"the previous package"  # untouched
    incoming.close()


def test_limits(tmp_path: Path) -> None:
    incoming = IncomingPackage(tmp_path, reserve_bytes=0)
    with pytest.raises(TransferRangeError, match="no partial package"):
        incoming.begin(10, len(DATA), DIGEST)
    with pytest.raises(TransferRangeError):
        incoming.write(b"x")  # nothing open
    incoming.begin(0, 10, DIGEST)
    with pytest.raises(TransferRangeError, match="beyond the announced size"):
        incoming.write(bytes(11))
    incoming.write(bytes(4))
    with pytest.raises(TransferRangeError, match="still missing"):
        incoming.finish()
    assert incoming.received == 4
    incoming.close()
    huge_reserve = shutil.disk_usage(tmp_path).free + (1 << 40)
    starved = IncomingPackage(tmp_path / "other", reserve_bytes=huge_reserve)
    with pytest.raises(NoSpaceError, match="MiB free"):
        starved.begin(0, len(DATA), DIGEST)
    assert starved.state is TransferState.EMPTY
    starved.close()
