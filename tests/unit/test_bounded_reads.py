"""Files named by the configuration or the command line: read bounded, and only as regular files.

Issue 12, finding 2: ``gallery.key_file = "/dev/zero"`` grew the process until the OOM killer came,
a FIFO hung it, ``--config /dev/zero`` ended in a bare ``MemoryError`` and ``config check`` called
such configurations valid. Every case here must be refused quickly, with the key or option named.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict

import pytest

from appliance.config_load import load_config, read_secret_file, validate_config
from appliance.errors import ConfigError
from appliance.gallery.crypto import create_key, read_key
from appliance.gallery.errors import GalleryKeyError
from appliance.updates.errors import KeyFileError, UpdateError
from appliance.updates.keys import load_trusted_keys
from appliance.updates.uds_protocol import read_security_secret
from appliance.vision.image import ImageError, read_image
from engines.errors import FileReadError
from engines.files import open_regular, read_bounded, read_bounded_text
from tests.conftest import REPO_ROOT
from tests.support import run_cli

pytestmark = pytest.mark.timeout(60)

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")


def _fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


def _link_to_zero(tmp_path: Path) -> Path:
    path = tmp_path / "zero-link"
    path.symlink_to("/dev/zero")
    return path


def _loop(tmp_path: Path) -> Path:
    path = tmp_path / "loop"
    path.symlink_to(path)
    return path


BAD_FILES: Dict[str, Callable[[Path], Path]] = {
    "/dev/zero": lambda _: Path("/dev/zero"),
    "link to /dev/zero": _link_to_zero,
    "directory": lambda tmp_path: tmp_path,
    "symlink loop": _loop,
}


@pytest.fixture(params=[*BAD_FILES, "fifo"])
def bad_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A path that must never be read whole: a device, a link to one, a FIFO, a folder, a loop."""
    if request.param == "fifo":
        if not hasattr(os, "mkfifo"):
            pytest.skip("no FIFOs on this platform")
        return _fifo(tmp_path)
    return BAD_FILES[request.param](tmp_path)


# -- the helper -----------------------------------------------------------------------------------------


def test_read_bounded_reads_a_regular_file_and_a_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "secret").write_bytes(b"abc\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    assert read_bounded(credentials / "secret", 4) == b"abc\n"
    assert read_bounded_text(credentials / "secret", 4) == "abc\n"


def test_read_bounded_refuses_what_is_not_a_regular_file(bad_file: Path) -> None:
    with pytest.raises(FileReadError) as caught:
        read_bounded(bad_file, 1024)
    assert str(bad_file) in str(caught.value)
    assert "regular file" in str(caught.value)


def test_open_regular_refuses_a_fifo_without_waiting(tmp_path: Path) -> None:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    with pytest.raises(FileReadError, match="a FIFO"):
        open_regular(_fifo(tmp_path))


def test_read_bounded_refuses_a_file_over_the_bound_and_says_what_is_missing(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"x" * 11)
    assert read_bounded(big, 11) == b"x" * 11
    with pytest.raises(FileReadError, match="larger than the 10 bytes"):
        read_bounded(big, 10)
    with pytest.raises(FileReadError, match="does not exist") as caught:
        read_bounded(tmp_path / "absent", 10)
    assert caught.value.missing
    with pytest.raises(FileReadError, match="symlink loop"):
        read_bounded(_loop(tmp_path), 10)
    with pytest.raises(FileReadError, match="NUL"):
        read_bounded("a\x00b", 10)


# -- the configuration ---------------------------------------------------------------------------------


def test_a_config_file_that_is_not_a_regular_file_is_a_config_error(bad_file: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(bad_file)
    assert "regular file" in str(caught.value)


def test_a_huge_config_file_is_refused(tmp_path: Path) -> None:
    huge = tmp_path / "huge.toml"
    huge.write_bytes(b"# " + b"x" * (2 * 1024 * 1024))
    with pytest.raises(ConfigError, match="larger than"):
        load_config(huge)


@pytest.mark.parametrize(
    "key",
    [
        "gallery.key_file",
        "mqtt.tls.ca_file",
        "mqtt.tls.key_file",
        "mqtt.password_file",
        "updates.security_secret_file",
        "osdp.scbk_file",
        "fleet.fleet_key_file",
    ],
)
def test_a_named_file_that_is_not_a_regular_file_is_an_issue_at_its_key(key: str, bad_file: Path) -> None:
    section, *middle, name = key.split(".")
    data: Dict[str, dict] = {"mqtt": {"username": "door"}} if section == "mqtt" else {}
    table = data.setdefault(section, {})
    for part in middle:
        table = table.setdefault(part, {"enabled": True})
    table[name] = str(bad_file)
    if key == "mqtt.tls.key_file":
        table["cert_file"] = str(REPO_ROOT / "README.md")
    with pytest.raises(ConfigError) as caught:
        validate_config(data, base_dir=bad_file.parent)
    issues = {issue.path: issue.message for issue in caught.value.issues}
    assert key in issues, issues
    assert str(bad_file) in issues[key]


def test_named_files_that_do_not_exist_yet_are_left_to_their_users(tmp_path: Path) -> None:
    config = validate_config({"gallery": {"key_file": str(tmp_path / "not-yet.key")}})
    assert config.gallery_key_file == tmp_path / "not-yet.key"


@pytest.mark.parametrize("name", ["/dev/zero", "fifo"])
def test_config_check_refuses_a_gallery_key_on_dev_zero_or_a_fifo_with_exit_2(
    tmp_path: Path, name: str
) -> None:
    if name == "fifo" and not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    key = _fifo(tmp_path) if name == "fifo" else Path(name)
    config = tmp_path / "appliance.toml"
    config.write_text(f'[storage]\ndir = "{tmp_path / "state"}"\n[gallery]\nkey_file = "{key}"\n')
    result = run_cli("config", "check", "--config", str(config), timeout=50)
    assert result.returncode == 2, result.stderr
    assert "gallery.key_file" in result.stderr and "not a regular file" in result.stderr


@pytest.mark.parametrize("name", ["/dev/zero", "fifo"])
def test_config_check_on_dev_zero_or_a_fifo_exits_2(tmp_path: Path, name: str) -> None:
    if name == "fifo" and not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    path = _fifo(tmp_path) if name == "fifo" else Path(name)
    result = run_cli("config", "check", "--config", str(path), timeout=50)
    assert result.returncode == 2, result.stderr
    assert "not a regular file" in result.stderr and "MemoryError" not in result.stderr


# -- the readers behind the configuration --------------------------------------------------------------


def test_gallery_key_readers_refuse_what_is_not_a_regular_file(bad_file: Path) -> None:
    with pytest.raises(GalleryKeyError, match=r"gallery\.key_file"):
        read_key(bad_file)


def test_a_gallery_key_that_is_a_symlink_loop_is_called_one(tmp_path: Path) -> None:
    """Finding 8: it was reported as "refusing to overwrite the existing key"."""
    with pytest.raises(GalleryKeyError) as caught:
        create_key(_loop(tmp_path))
    assert "symlink loop" in str(caught.value)
    assert "refusing to overwrite" not in str(caught.value)


def test_secret_readers_refuse_what_is_not_a_regular_file(bad_file: Path) -> None:
    with pytest.raises(FileReadError):
        read_secret_file(bad_file)
    with pytest.raises(UpdateError, match=r"updates\.security_secret_file"):
        read_security_secret(bad_file)


@needs_fifo
def test_a_trusted_key_that_is_a_fifo_is_refused(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    os.mkfifo(keys / "release.pub")
    with pytest.raises(KeyFileError, match="a FIFO"):
        load_trusted_keys(keys)


def test_an_image_on_the_command_line_must_be_a_regular_file(bad_file: Path) -> None:
    with pytest.raises(ImageError, match="regular file"):
        read_image(bad_file)
