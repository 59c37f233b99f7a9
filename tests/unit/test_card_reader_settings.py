"""[credential_reader] validation: defaults, ranges, the cross-field rules; every error names its key;
and several [[credential_readers]] on one serial port (one line): addresses of their own, one speed."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Dict, List

import pytest
from pydantic import Field, ValidationError

from appliance.config_load import validate_config, validation_issues
from appliance.config_types import StrictModel
from appliance.errors import ConfigError
from appliance.osdp.card_reader_settings import MAX_READERS_PER_LINE, CredentialReaderConfig
from appliance.osdp.settings import BAUD_RATES

ENABLED = {"enabled": True, "port": "/dev/ttyUSB1", "scbk_file": "/etc/face-appliance/reader_scbk"}


class Root(StrictModel):
    """The section where the configuration file has it (the daemon's own root model holds more)."""

    credential_reader: CredentialReaderConfig = Field(default_factory=CredentialReaderConfig)


def validate(section: Dict[str, Any], base_dir: Path = Path("/etc/face-appliance")) -> CredentialReaderConfig:
    data = {"credential_reader": section}
    return Root.model_validate(data, context={"base_dir": base_dir}).credential_reader


def issues(section: Dict[str, Any]) -> List[str]:
    data = {"credential_reader": section}
    with pytest.raises(ValidationError) as raised:
        Root.model_validate(data)
    return [str(issue) for issue in validation_issues(raised.value, data, Root)]


def test_defaults_are_off_secure_with_feedback() -> None:
    config = validate({})
    assert config == CredentialReaderConfig()
    assert not config.enabled and config.id == "reader" and config.port is None
    assert config.baud_rate == 9600 and config.address == 0
    assert config.secure_channel and config.scbk_file is None
    assert config.cameras == [] and config.pin_timeout_s == 5.0 and config.feedback


def test_a_working_section_and_a_relative_key_file(tmp_path: Path) -> None:
    config = validate(
        {
            **ENABLED,
            "id": "entry.reader-2",
            "scbk_file": "reader_scbk",
            "baud_rate": 115200,
            "address": 126,
            "cameras": ["entry", "lobby"],
            "pin_timeout_s": 10.0,
            "feedback": False,
        },
        base_dir=tmp_path,
    )
    assert config.scbk_file == tmp_path / "reader_scbk"
    assert (config.id, config.baud_rate, config.address, config.pin_timeout_s) == (
        "entry.reader-2",
        115200,
        126,
        10.0,
    )
    assert config.cameras == ["entry", "lobby"] and not config.feedback


def test_without_secure_channel_no_key_is_needed() -> None:
    config = validate({"enabled": True, "port": "/dev/ttyUSB1", "secure_channel": False})
    assert config.scbk_file is None


def test_a_disabled_section_needs_no_port_or_key() -> None:
    assert validate({"enabled": False, "address": 3}).port is None


def test_the_baud_rates_are_the_osdp_readers() -> None:
    annotation = CredentialReaderConfig.model_fields["baud_rate"].annotation
    assert typing.get_args(annotation) == BAUD_RATES


def test_it_stands_at_its_cameras_or_every_camera() -> None:
    assert CredentialReaderConfig().stands_at("anything")
    config = CredentialReaderConfig(cameras=["entry"])
    assert config.stands_at("entry") and not config.stands_at("exit")
    assert config.stands_at(None)  # a camera-less caller (a test), as a door's opens_for


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (
            {"enabled": True, "scbk_file": "/k"},
            "credential_reader: credential_reader.port is needed when credential_reader.enabled is true",
        ),
        (
            {"enabled": True, "port": "/dev/ttyUSB1"},
            "credential_reader: credential_reader.scbk_file is needed when credential_reader.secure_channel",
        ),
        ({**ENABLED, "port": "ttyUSB1"}, "credential_reader.port: 'ttyUSB1' has characters or a form"),
        ({**ENABLED, "id": ""}, "credential_reader.id: '' has characters or a form that is not allowed"),
        ({**ENABLED, "id": "door/1"}, "credential_reader.id: 'door/1' has characters or a form"),
        ({**ENABLED, "id": "-reader"}, "credential_reader.id: '-reader' has characters or a form"),
        ({**ENABLED, "id": "r" * 65}, "credential_reader.id:"),
        ({**ENABLED, "id": "osdp"}, "'osdp' is the OSDP reader's name"),
        ({**ENABLED, "address": 127}, "credential_reader.address: 127"),
        ({**ENABLED, "address": -1}, "credential_reader.address: -1"),
        ({**ENABLED, "baud_rate": 14400}, "credential_reader.baud_rate: 14400 is not allowed; allowed: 9600"),
        ({**ENABLED, "cameras": ["entry", "entry"]}, "credential_reader.cameras: a camera is listed twice"),
        ({**ENABLED, "cameras": ["en try"]}, "credential_reader.cameras[0]: 'en try' has characters"),
        ({**ENABLED, "cameras": "entry"}, "credential_reader.cameras: expected an array"),
        ({**ENABLED, "pin_timeout_s": 0.5}, "credential_reader.pin_timeout_s: 0.5"),
        ({**ENABLED, "pin_timeout_s": 61.0}, "credential_reader.pin_timeout_s: 61.0"),
        ({**ENABLED, "feedback": "yes"}, "credential_reader.feedback: expected true or false"),
        ({**ENABLED, "secure_channel": 1}, "credential_reader.secure_channel: expected true or false"),
        ({**ENABLED, "scbk": "00112233"}, "credential_reader.scbk: unknown key"),
    ],
)
def test_errors_name_the_key(section: Dict[str, Any], expected: str) -> None:
    found = issues(section)
    assert any(expected in issue for issue in found), found


def test_every_key_is_described() -> None:
    for name, field in CredentialReaderConfig.model_fields.items():
        assert field.description, name


# -- several readers on one serial port (the daemon's root model checks them together) --------------------

TWO_CAMERAS = [{"id": "entry", "source": "0"}, {"id": "exit", "source": "1"}]


def _readers(*tables: Dict[str, Any]) -> Dict[str, Any]:
    """A configuration with ``tables`` as [[credential_readers]] (each on /dev/ttyUSB1, no key, unless
    it says otherwise)."""
    base = {"port": "/dev/ttyUSB1", "secure_channel": False}
    return {"cameras": TWO_CAMERAS, "credential_readers": [{**base, **table} for table in tables]}


def _refused(document: Dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as raised:
        validate_config(document)
    return str(raised.value)


def test_readers_share_a_line_at_addresses_of_their_own(tmp_path: Path) -> None:
    """Everything but the port and its speed is each reader's own: id, address, key, cameras, feedback."""
    key = tmp_path / "exit_scbk"
    document = _readers(
        {"id": "entry-reader", "address": 0, "cameras": ["entry"], "pin_timeout_s": 8.0},
        {
            "id": "exit-reader",
            "address": 1,
            "cameras": ["exit"],
            "secure_channel": True,
            "scbk_file": str(key),
            "feedback": False,
        },
        {"id": "lobby-reader", "address": 2, "port": "/dev/ttyUSB2", "baud_rate": 115200},
        {"id": "spare-reader", "address": 3, "baud_rate": 38400, "enabled": False},  # off: not on the line
    )
    readers = validate_config(document).configured_readers
    assert [(r.id, r.port, r.address) for r in readers] == [
        ("entry-reader", "/dev/ttyUSB1", 0),
        ("exit-reader", "/dev/ttyUSB1", 1),
        ("lobby-reader", "/dev/ttyUSB2", 2),
    ]
    assert readers[1].scbk_file == key and not readers[1].feedback and readers[0].pin_timeout_s == 8.0
    # The same address on another port is another line's.
    assert validate_config(
        _readers({"id": "a", "address": 0}, {"id": "b", "address": 0, "port": "/dev/ttyS1"})
    )


def test_one_line_takes_at_most_max_readers() -> None:
    assert MAX_READERS_PER_LINE == 32  # libosdp's Python binding: a 32-bit mask of the links
    full = [{"id": f"r{address}", "address": address} for address in range(MAX_READERS_PER_LINE)]
    assert len(validate_config(_readers(*full)).configured_readers) == MAX_READERS_PER_LINE
    found = _refused(_readers(*full, {"id": "one-more", "address": 100}))
    assert "reader 'one-more' would be reader 33 on port /dev/ttyUSB1; one line polls at most 32" in found


@pytest.mark.parametrize(
    ("tables", "expected"),
    [
        (
            [{"id": "entry-reader", "address": 5}, {"id": "exit-reader", "address": 5}],
            "readers 'entry-reader' and 'exit-reader' both name address 5 on port /dev/ttyUSB1; readers "
            "sharing a serial port (one RS-485 line) each need an address of their own",
        ),
        (
            [{"id": "a", "address": 0}, {"id": "b", "address": 1}, {"id": "c", "address": 0}],
            "readers 'a' and 'c' both name address 0 on port /dev/ttyUSB1",
        ),
        (
            [{"id": "entry-reader", "address": 0}, {"id": "exit-reader", "address": 1, "baud_rate": 19200}],
            "readers 'entry-reader' and 'exit-reader' share port /dev/ttyUSB1 but not its baud_rate (9600 "
            "and 19200); the readers on one line run at one speed",
        ),
        (
            [{"id": "a", "address": 0}, {"id": "b", "address": 0}],
            "readers 'a' and 'b' both name address 0",  # both left at the default address
        ),
        (
            [{"id": "a", "address": 0}, {"id": "a", "address": 1}],
            "an id of its own",  # still: a reader id is one reader's
        ),
    ],
)
def test_readers_on_one_line_that_do_not_fit_together(tables: List[Dict[str, Any]], expected: str) -> None:
    found = _refused(_readers(*[{"address": 0, **table} for table in tables]))
    assert expected in found, found
