"""Names and external ids with control characters (issue 12, finding 6).

Refused on every way in — the store, the CLI ``enroll``, the MQTT ``enroll`` command, a bundle
import — by one validator (:mod:`appliance.gallery.text`), and escaped on the way out for data
stored before the check existed.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
from pathlib import Path
from typing import Iterator, List

import pytest

from appliance.commands import CommandError, parse
from appliance.gallery.bundle import read_bundle
from appliance.gallery.errors import BundleError, IdentityError
from appliance.gallery.store import TemplateStore
from appliance.gallery.text import printable
from tests.support import run_cli
from tests.synthetic import unit_vectors

VERSION = "mobilefacenet@foamliu-v1.0"
PASSPHRASE = "correct horse battery"

HOSTILE = [
    pytest.param("\x1b[2J\x1b[31mMallory", id="ESC"),
    pytest.param("Mallory\r  alice                    Alice Smith", id="CR-fake-row"),
    pytest.param("Mal\nlory", id="LF"),
    pytest.param("Mal\x00lory", id="NUL"),
    pytest.param("Mal\tlory", id="TAB"),
    pytest.param("Mal\x7flory", id="DEL"),
    pytest.param("Mal\x9b2Jlory", id="C1-CSI"),
    pytest.param("\u202eyrollaM", id="RLO"),
    pytest.param("Mal\u2066lory\u2069", id="LRI"),
    pytest.param("Mal\u200flory", id="RLM"),
    pytest.param("Mal\u200elory", id="LRM"),
    pytest.param("Mal\u202alory", id="LRE"),
]
FRIENDLY = [
    "Zoë Ångström",
    "محمد عبد الله",
    "李小龙",
    "O'Brien-Smith, Jr.",
    "👩\u200d🔬 Ada",
    "Ada\u00a0Lovelace",
]
RAW = ("\x1b", "\r", "\n", "\x00", "\x9b", "\u202e", "\u2066", "\u200f")


def _raw_free(text: str) -> bool:
    return not any(char in text for char in RAW)


def _terminal_safe(output: str) -> bool:
    """No raw control character in a program's output but the line ends."""
    return _raw_free(output.replace("\n", "")) and "\x07" not in output


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TemplateStore]:
    opened = TemplateStore.open(tmp_path / "gallery.db", tmp_path / "gallery.key")
    yield opened
    opened.close()


@pytest.mark.parametrize("name", HOSTILE)
def test_the_store_refuses_control_characters(store: TemplateStore, name: str) -> None:
    with pytest.raises(IdentityError, match=r"name '.*' holds U\+[0-9A-F]{4} .* at position \d+") as caught:
        store.add("mallory", name, VERSION, unit_vectors(1))
    assert _raw_free(str(caught.value))
    with pytest.raises(IdentityError, match=r"external id '.*' holds U\+"):
        store.add("mallory", "Mallory", VERSION, unit_vectors(1), external_id=name)
    assert store.identities() == []


@pytest.mark.parametrize("name", FRIENDLY)
def test_names_of_any_script_are_kept(store: TemplateStore, name: str) -> None:
    store.add("person", name, VERSION, unit_vectors(1), external_id=f"B-{name}")
    (identity,) = store.identities()
    assert identity.name == name and printable(name) == name


@pytest.mark.parametrize("name", HOSTILE)
def test_the_mqtt_enroll_command_refuses_control_characters(name: str) -> None:
    for field in ("name", "external_id"):
        document = {"request_id": "r1", "name": "Mallory", "image": "AAAA", field: name}
        with pytest.raises(CommandError) as caught:
            parse("enroll", json.dumps(document).encode())
        assert caught.value.code == "invalid" and caught.value.request_id == "r1"
        assert f"{field}: " in str(caught.value) and "holds U+" in str(caught.value)
        assert _raw_free(str(caught.value))


def test_the_mqtt_enroll_command_still_takes_a_plain_name() -> None:
    _, command = parse("enroll", json.dumps({"request_id": "r", "name": "Zoë", "image": "AAAA"}).encode())
    assert command.name == "Zoë"  # type: ignore[attr-defined]


def _forge(identity: dict) -> bytes:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from appliance.gallery.bundle import MAGIC, _key

    document = {"format": 1, "identities": [identity]}
    salt, nonce = b"s" * 16, b"n" * 12
    return (
        MAGIC
        + salt
        + nonce
        + AESGCM(_key(PASSPHRASE, salt)).encrypt(nonce, json.dumps(document).encode(), MAGIC)
    )


@pytest.mark.parametrize("name", HOSTILE)
def test_a_bundle_import_refuses_control_characters(name: str) -> None:
    good = {
        "id": "mallory",
        "name": "Mallory",
        "consent_at": "2024-01-01T00:00:00Z",
        "templates": [
            {"model_version": VERSION, "embedding": base64.b64encode(unit_vectors(1).tobytes()).decode()}
        ],
    }
    assert read_bundle(_forge(good), PASSPHRASE)[0].name == "Mallory"
    for field in ("name", "external_id"):
        with pytest.raises(BundleError, match=rf"identities\[0\]\.{field}: .* holds U\+") as caught:
            read_bundle(_forge({**good, field: name}), PASSPHRASE)
        assert _raw_free(str(caught.value)) and "nothing was imported" in str(caught.value)


def test_printable_escapes_what_older_data_may_hold() -> None:
    assert (
        printable("\x1b[31mA\rB\x00\x9b\u202eC\u2066\u200f")
        == "\\x1b[31mA\\x0dB\\x00\\x9b\\u202eC\\u2066\\u200f"
    )
    assert printable(None) == "" and printable("Zoë") == "Zoë"


# -- the CLI ---------------------------------------------------------------------------------------------


def _toml(tmp_path: Path) -> Path:
    toml = tmp_path / "appliance.toml"
    toml.write_text(f'[storage]\ndir = "{tmp_path / "state"}"\n[models]\ndir = "{tmp_path / "no-models"}"\n')
    return toml


def test_cli_enroll_refuses_control_characters_before_loading_anything(tmp_path: Path) -> None:
    toml = _toml(tmp_path)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"not read")
    runs: List[subprocess.CompletedProcess] = [
        run_cli("enroll", "--name", "\x1b[2JMallory", "--id", "mallory", str(photo), "--config", str(toml)),
        run_cli(
            "enroll", "--name", "Mallory", "--external-id", "B\u202e7", str(photo), "--config", str(toml)
        ),
    ]
    people = tmp_path / "people"
    (people / "Mal\rlory").mkdir(parents=True)
    runs.append(run_cli("enroll", "--from-dir", str(people), "--config", str(toml)))
    for result in runs:
        assert result.returncode == 1, (result.stdout, result.stderr)
        assert "holds U+" in result.stderr and _terminal_safe(result.stderr + result.stdout), result.stderr
        assert "model" not in result.stderr.lower(), "the names must be checked before the models are loaded"
    assert not (tmp_path / "state" / "gallery.db").exists()


def test_gallery_list_escapes_names_stored_before_the_check(tmp_path: Path) -> None:
    toml = _toml(tmp_path)
    assert run_cli("gallery", "list", "--config", str(toml)).returncode == 0  # creates the gallery
    hostile = "Mallory\r  alice                    Alice Smith    "
    with sqlite3.connect(str(tmp_path / "state" / "gallery.db")) as db:  # as older firmware could store it
        db.execute(
            "INSERT INTO identities (id, name, external_id, consent_at, created_at) "
            "VALUES ('mallory', ?, ?, '2024-01-01T00:00:00Z', '2024-01-01T00:00:00Z')",
            (hostile, "\x1b]0;owned\x07\u202e71-B"),
        )
    listed = run_cli("gallery", "list", "--config", str(toml))
    assert listed.returncode == 0, listed.stderr
    assert _terminal_safe(listed.stdout) and len(listed.stdout.splitlines()) == 2
    assert (
        "Mallory\\x0d  alice" in listed.stdout
        and "external id \\x1b]0;owned\\x07\\u202e71-B" in listed.stdout
    )
    as_json = json.loads(run_cli("gallery", "list", "--json", "--config", str(toml)).stdout)
    assert as_json["identities"][0]["name"] == hostile  # JSON escapes it itself, and keeps the data exact
