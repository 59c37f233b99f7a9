"""The SCBK file: 32 hex digits, read bounded like every secret file, written 0600; never echoed."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.osdp.errors import OsdpError
from appliance.osdp.keys import load_scbk, parse_scbk, store_scbk

KEY = bytes.fromhex("00112233445566778899aabbccddeeff")


def test_a_key_file_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "osdp_scbk"
    store_scbk(path, KEY)
    assert path.read_text() == KEY.hex() + "\n" and path.stat().st_mode & 0o777 == 0o600
    assert load_scbk(path) == KEY
    path.write_text("  00112233445566778899AABBCCDDEEFF  \n# commissioned 2026-01-01\n")
    assert load_scbk(path) == KEY


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "0 characters"),
        ("0011223344556677\n", "16 characters"),
        ("00112233445566778899aabbccddeefg\n", "not hex"),
        ("\n00112233445566778899aabbccddeeff\n", "0 characters"),
    ],
)
def test_malformed_keys_are_refused_without_quoting_them(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "osdp_scbk"
    path.write_text(text)
    with pytest.raises(OsdpError, match=r"^osdp\.scbk_file: ") as refused:
        load_scbk(path)
    message = str(refused.value)
    assert words in message and "32 hex digits" in message
    assert not text.strip() or text.strip() not in message


def test_what_is_not_a_small_regular_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OsdpError, match=r"osdp\.scbk_file: .*does not exist"):
        load_scbk(tmp_path / "missing")
    with pytest.raises(OsdpError, match=r"osdp\.scbk_file: /dev/zero is not a regular file"):
        load_scbk(Path("/dev/zero"))
    big = tmp_path / "big"
    big.write_bytes(b"0" * 10_000)
    with pytest.raises(OsdpError, match="larger than"):
        load_scbk(big)
    binary = tmp_path / "binary"
    binary.write_bytes(KEY)
    with pytest.raises(OsdpError, match=r"not ASCII|32 hex digits"):
        load_scbk(binary)


def test_parse_and_store_limits(tmp_path: Path) -> None:
    assert parse_scbk(KEY.hex()) == KEY
    with pytest.raises(ValueError, match="16 bytes"):
        store_scbk(tmp_path / "k", bytes(15))
