"""[osdp] validation: defaults, ranges, the credential format's limits; every error names its key."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import pytest

from appliance.config_load import validate_config
from appliance.errors import ConfigError
from appliance.osdp.settings import OsdpConfig

ENABLED = {"enabled": True, "port": "/dev/ttyUSB0", "scbk_file": "/etc/face-appliance/osdp_scbk"}


def issues(osdp: Dict[str, Any]) -> List[str]:
    with pytest.raises(ConfigError) as raised:
        validate_config({"osdp": osdp})
    return [str(issue) for issue in raised.value.issues]


def test_defaults_are_off_secure_and_wiegand26() -> None:
    config = validate_config({}).osdp
    assert config == OsdpConfig()
    assert not config.enabled and config.secure_channel and not config.install_mode
    assert config.baud_rate == 9600 and config.address == 0
    assert config.credential.format == "wiegand26" and config.credential.facility_width() == 8
    assert not config.report_denied and config.unknown_card is None
    assert config.identity.firmware_number() == 0x010000


def test_a_working_section_and_relative_key_files(tmp_path: Path) -> None:
    config = validate_config(
        {
            "osdp": {
                **ENABLED,
                "scbk_file": "osdp_scbk",
                "baud_rate": 115200,
                "address": 126,
                "identity": {
                    "vendor_code": 0xA0B1C2,
                    "serial_number": 2**32 - 1,
                    "firmware_version": "2.10.255",
                },
                "credential": {"format": "wiegand34", "facility_code": 65535},
            }
        },
        base_dir=tmp_path,
    ).osdp
    assert config.scbk_file == tmp_path / "osdp_scbk"
    assert config.credential.facility_width() == 16
    assert config.identity.firmware_number() == (2 << 16) | (10 << 8) | 255


@pytest.mark.parametrize(
    ("osdp", "expected"),
    [
        ({"enabled": True}, "osdp: osdp.port is needed when osdp.enabled is true"),
        (
            {"enabled": True, "port": "/dev/ttyUSB0"},
            "osdp: osdp.scbk_file is needed when osdp.secure_channel",
        ),
        ({**ENABLED, "port": "ttyUSB0"}, "osdp.port: 'ttyUSB0' has characters or a form that is not allowed"),
        ({**ENABLED, "address": 127}, "osdp.address: 127"),
        ({**ENABLED, "baud_rate": 14400}, "osdp.baud_rate: 14400 is not allowed; allowed: 9600, 19200"),
        (
            {**ENABLED, "install_mode": True, "secure_channel": False},
            "osdp.install_mode needs osdp.secure_channel",
        ),
        (
            {**ENABLED, "credential": {"facility_code": 256}},
            "osdp.credential.facility_code 256 does not fit the 8",
        ),
        ({**ENABLED, "credential": {"facility_bits": 12}}, "osdp.credential.facility_bits of wiegand26 is 8"),
        ({**ENABLED, "credential": {"format": "raw"}}, "osdp.credential.bits is needed when"),
        (
            {**ENABLED, "credential": {"format": "raw", "bits": 8, "facility_code": 1}},
            "facility_code and facility_bits apply",
        ),
        ({**ENABLED, "credential": {"bits": 26}}, "osdp.credential.bits applies to raw"),
        ({**ENABLED, "credential": {"format": "raw", "bits": 129}}, "osdp.credential.bits: 129"),
        (
            {**ENABLED, "credential": {"format": "wiegand37"}},
            "osdp.credential.format: 'wiegand37' is not allowed",
        ),
        ({**ENABLED, "credential": {"number_base": 8}}, "osdp.credential.number_base: 8 is not allowed"),
        ({**ENABLED, "identity": {"firmware_version": "1.2"}}, "osdp.identity.firmware_version '1.2' is not"),
        ({**ENABLED, "identity": {"firmware_version": "1.2.256"}}, "osdp.identity.firmware_version"),
        ({**ENABLED, "identity": {"vendor_code": 2**24}}, "osdp.identity.vendor_code: 16777216"),
        ({**ENABLED, "unknown_card": "70000"}, "osdp.unknown_card cannot be sent as osdp.credential says"),
        ({**ENABLED, "card_read_ttl_s": 0.0}, "osdp.card_read_ttl_s: 0.0"),
        ({**ENABLED, "scbk": "00112233"}, "osdp.scbk: unknown key"),
    ],
)
def test_errors_name_the_key(osdp: Dict[str, Any], expected: str) -> None:
    found = issues(osdp)
    assert any(expected in issue for issue in found), found


def test_a_disabled_section_needs_no_port() -> None:
    assert validate_config({"osdp": {"enabled": False, "address": 3}}).osdp.port is None
