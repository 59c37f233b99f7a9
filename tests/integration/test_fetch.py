"""`models fetch` against a real loopback HTTP mirror and a folder: verified, atomic, resumable."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest

from engines.errors import ModelFetchError, ModelIntegrityError
from engines.fetch import ModelFetcher
from engines.files import sha256_file
from engines.registry import MODELS, get_model
from engines.store import ModelState, ModelStore
from tests.support import MirrorFaults, MirrorServer, files_under

PNET = get_model("mtcnn-pnet")
EMBEDDER = get_model("mobilefacenet")


def _fetcher(dest: Path, source: str, retries: int = 3) -> ModelFetcher:
    return ModelFetcher(dest, source=source, retries=retries, backoff_s=0.0, timeout_s=10)


def _assert_nothing_installed(dest: Path, file: str) -> None:
    assert not (dest / file).exists(), "a file that failed verification has the final name"
    leftovers = [f for f in files_under(dest) if f.endswith(".part")] if dest.exists() else []
    assert leftovers == []


def test_fetch_all_over_http_verifies_every_file(shared_models: Path, tmp_path: Path) -> None:
    dest = tmp_path / "models"
    with MirrorServer(shared_models) as server:
        results, errors = _fetcher(dest, server.url).fetch_all(MODELS)
    assert errors == []
    assert [r.action for r in results] == ["downloaded"] * len(MODELS)
    for spec in MODELS:
        assert sha256_file(dest / spec.file) == spec.sha256
    assert all(status.ok for status in ModelStore(dest).check_all(MODELS))
    assert not [f for f in files_under(dest) if not f.endswith(".onnx")], "temporary files left behind"


def test_second_fetch_reads_nothing(shared_models: Path, tmp_path: Path) -> None:
    dest = tmp_path / "models"
    with MirrorServer(shared_models) as server:
        _fetcher(dest, server.url).fetch(PNET)
        server.requests.clear()
        result = _fetcher(dest, server.url).fetch(PNET)
    assert result.action == "present"
    assert server.requests == []


@pytest.mark.parametrize("as_url", [False, True], ids=["folder", "file-url"])
def test_fetch_from_a_folder_mirror(shared_models: Path, tmp_path: Path, as_url: bool) -> None:
    dest = tmp_path / "models"
    source = shared_models.resolve().as_uri() if as_url else str(shared_models)
    results, errors = _fetcher(dest, source).fetch_all(MODELS)
    assert errors == []
    assert all(ModelStore(dest).check(spec).ok for spec in MODELS)
    assert {r.spec.name for r in results} == {spec.name for spec in MODELS}


def test_corrupted_http_file_is_refused_with_both_digests(shared_models: Path, tmp_path: Path) -> None:
    dest = tmp_path / "models"
    good = (shared_models / EMBEDDER.file).read_bytes()
    corrupted = bytearray(good)
    corrupted[len(corrupted) // 2] ^= 0xFF
    faults = MirrorFaults(replace_body={EMBEDDER.file: bytes(corrupted)})
    with MirrorServer(shared_models, faults) as server, pytest.raises(ModelIntegrityError) as caught:
        _fetcher(dest, server.url).fetch(EMBEDDER)
    message = str(caught.value)
    assert EMBEDDER.file in message
    assert EMBEDDER.sha256 in message
    assert hashlib.sha256(bytes(corrupted)).hexdigest() in message
    _assert_nothing_installed(dest, EMBEDDER.file)


def test_truncated_http_file_is_refused(shared_models: Path, tmp_path: Path) -> None:
    dest = tmp_path / "models"
    truncated = (shared_models / EMBEDDER.file).read_bytes()[:100_000]
    faults = MirrorFaults(replace_body={EMBEDDER.file: truncated})
    with MirrorServer(shared_models, faults) as server, pytest.raises(ModelIntegrityError) as caught:
        _fetcher(dest, server.url).fetch(EMBEDDER)
    assert "100000 bytes" in str(caught.value)
    _assert_nothing_installed(dest, EMBEDDER.file)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_folder_mirror_is_refused(shared_models: Path, tmp_path: Path, damage: str) -> None:
    mirror = tmp_path / "mirror"
    (mirror / EMBEDDER.file).parent.mkdir(parents=True)
    data = bytearray((shared_models / EMBEDDER.file).read_bytes())
    if damage == "truncate":
        data = data[: len(data) - 1]
    else:
        data[1234] ^= 0x01
    (mirror / EMBEDDER.file).write_bytes(bytes(data))
    dest = tmp_path / "models"
    with pytest.raises(ModelIntegrityError) as caught:
        _fetcher(dest, str(mirror)).fetch(EMBEDDER)
    assert EMBEDDER.sha256 in str(caught.value)
    _assert_nothing_installed(dest, EMBEDDER.file)


def test_interrupted_download_resumes_with_range(shared_models: Path, tmp_path: Path) -> None:
    dest = tmp_path / "models"
    faults = MirrorFaults(cut_after={EMBEDDER.file: 1_000_000})
    with MirrorServer(shared_models, faults) as server:
        result = _fetcher(dest, server.url).fetch(EMBEDDER)
    assert result.action == "resumed"
    assert sha256_file(dest / EMBEDDER.file) == EMBEDDER.sha256
    ranges = [header for path, header in server.requests if path == EMBEDDER.file]
    assert ranges == [None, "bytes=1000000-"]
    assert result.bytes_transferred == EMBEDDER.size - 1_000_000


def test_resume_when_server_ignores_range_starts_over(shared_models: Path, tmp_path: Path) -> None:
    dest = tmp_path / "models"
    faults = MirrorFaults(cut_after={EMBEDDER.file: 500_000}, ignore_range=True)
    with MirrorServer(shared_models, faults) as server:
        result = _fetcher(dest, server.url).fetch(EMBEDDER)
    assert result.action == "downloaded"
    assert sha256_file(dest / EMBEDDER.file) == EMBEDDER.sha256


def test_stale_part_file_from_another_download_is_discarded(shared_models: Path, tmp_path: Path) -> None:
    dest = tmp_path / "models"
    part = dest / (EMBEDDER.file + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\0" * 4096)  # not a prefix of the real file
    with MirrorServer(shared_models) as server:
        result = _fetcher(dest, server.url).fetch(EMBEDDER)
    assert sha256_file(dest / EMBEDDER.file) == EMBEDDER.sha256
    assert not part.exists()
    assert result.action == "downloaded"
    assert [h for _, h in server.requests] == ["bytes=4096-", None]


def test_wrong_installed_file_is_replaced(shared_models: Path, tmp_path: Path) -> None:
    dest = tmp_path / "models"
    (dest / PNET.file).parent.mkdir(parents=True)
    (dest / PNET.file).write_bytes(b"not a model")
    assert ModelStore(dest).check(PNET).state is ModelState.WRONG_SIZE
    result = _fetcher(dest, str(shared_models)).fetch(PNET)
    assert result.action == "downloaded"
    assert ModelStore(dest).check(PNET).ok


def test_transient_503_is_retried(shared_models: Path, tmp_path: Path) -> None:
    faults = MirrorFaults(unavailable={PNET.file: 2})
    with MirrorServer(shared_models, faults) as server:
        result = _fetcher(tmp_path, server.url).fetch(PNET)
    assert result.action == "downloaded"
    assert len(server.requests) == 3


def test_404_fails_at_once(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with MirrorServer(empty) as server, pytest.raises(ModelFetchError, match="HTTP 404"):
        _fetcher(tmp_path / "models", server.url).fetch(PNET)
    assert len(server.requests) == 1


def test_oversized_file_is_refused_before_download(shared_models: Path, tmp_path: Path) -> None:
    faults = MirrorFaults(replace_body={PNET.file: b"x" * (PNET.size + 10)})
    with MirrorServer(shared_models, faults) as server, pytest.raises(ModelIntegrityError, match="offers"):
        _fetcher(tmp_path, server.url).fetch(PNET)
    _assert_nothing_installed(tmp_path, PNET.file)


def test_unreachable_server_gives_up_after_retries_and_keeps_nothing(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ModelFetchError, match="after 3 attempts"):
        _fetcher(tmp_path, f"http://127.0.0.1:{port}", retries=2).fetch(PNET)
    assert not (tmp_path / PNET.file).exists()


def test_missing_mirror_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelFetchError, match="is not a folder"):
        ModelFetcher(tmp_path, source=str(tmp_path / "nope"))


def test_shared_mirror_is_left_untouched(shared_models: Path, tmp_path: Path) -> None:
    before = files_under(shared_models)
    _fetcher(tmp_path, str(shared_models)).fetch(PNET)
    assert files_under(shared_models) == before
