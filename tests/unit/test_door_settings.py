"""``[door]``: defaults, and every refusal names its key (through the real configuration loader)."""

from __future__ import annotations

from typing import Any, Dict

import pytest

from appliance.config import render_default_toml
from appliance.config_load import validate_config
from appliance.door.lines import line_specs
from appliance.door.settings import DoorConfig
from appliance.errors import ConfigError


def _issues(door: Dict[str, Any]) -> Dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        validate_config({"door": door})
    return {issue.path: issue.message for issue in caught.value.issues}


def _door(door: Dict[str, Any]) -> DoorConfig:
    return validate_config({"door": door}).door


def test_defaults_are_off_and_valid() -> None:
    door = _door({})
    assert not door.enabled
    assert door.backend == "auto"
    assert door.chip == "/dev/gpiochip0"
    assert door.relay.line is None and door.relay.pulse_s == 3.0 and not door.relay.active_low
    assert door.contact.held_open_s == 30.0 and door.contact.forced_grace_s == 1.0
    assert door.contact.debounce_s == 0.05 and door.exit.unlocks
    assert door.wired() == []


def test_enabled_needs_the_relay_line() -> None:
    issues = _issues({"enabled": True})
    assert "door.relay.line must be set when door.enabled is true" in issues["door"]


@pytest.mark.parametrize("line", [True, -1, 1024, "", 1.5])
def test_a_line_is_an_offset_or_a_name(line: Any) -> None:
    issues = _issues({"relay": {"line": line}})
    assert "expected a line offset" in issues["door.relay.line"]
    assert repr(line) in issues["door.relay.line"]


def test_names_and_offsets_are_both_lines() -> None:
    door = _door(
        {"enabled": True, "relay": {"line": "RELAY"}, "contact": {"line": 4, "chip": "/dev/gpiochip1"}}
    )
    specs = line_specs(door)
    assert [(s.role, s.chip, s.chip_key, s.line) for s in specs] == [
        ("relay", "/dev/gpiochip0", "door.chip", "RELAY"),
        ("contact", "/dev/gpiochip1", "door.contact.chip", 4),
    ]
    assert specs[0].output and not specs[1].output


@pytest.mark.parametrize(
    ("door", "key"),
    [({"chip": "gpiochip0"}, "door.chip"), ({"exit": {"line": 3, "chip": "/sys/gpio"}}, "door.exit.chip")],
)
def test_a_chip_is_a_device_path(door: Dict[str, Any], key: str) -> None:
    message = _issues(door)[key]
    assert "expected a GPIO chip's device path such as /dev/gpiochip0" in message


def test_unknown_keys_are_refused_with_a_suggestion() -> None:
    message = _issues({"contact": {"helt_open_s": 5}})["door.contact.helt_open_s"]
    assert "unknown key" in message and "did you mean 'held_open_s'" in message


def test_one_line_cannot_serve_twice() -> None:
    message = _issues({"relay": {"line": 5}, "exit": {"line": 5}})["door"]
    assert "door.exit.line and door.relay.line are the same line" in message
    # The same offset on two chips is two lines.
    assert _door({"relay": {"line": 5}, "exit": {"line": 5, "chip": "/dev/gpiochip1"}}).exit.line == 5


@pytest.mark.parametrize(
    ("door", "key", "words"),
    [
        ({"relay": {"pulse_s": 0}}, "door.relay.pulse_s", "greater than 0"),
        ({"contact": {"held_open_s": 0}}, "door.contact.held_open_s", "greater than 0"),
        ({"exit": {"debounce_s": 3}}, "door.exit.debounce_s", "≤ 2"),
        ({"poll_interval_s": 0.001}, "door.poll_interval_s", "≥ 0.005"),
        ({"backend": "gpiod2"}, "door.backend", "'jetson-gpio'"),
        ({"contact": {"bias": "up"}}, "door.contact.bias", "'pull-up'"),
        ({"relay": {"drive": "open-collector"}}, "door.relay.drive", "'open-drain'"),
        ({"relay": {"active_low": "yes"}}, "door.relay.active_low", "true or false"),
    ],
)
def test_values_out_of_range_name_their_key(door: Dict[str, Any], key: str, words: str) -> None:
    assert words in _issues(door)[key]


def test_jetson_gpio_numbers_pins_itself() -> None:
    base = {"enabled": True, "backend": "jetson-gpio"}
    assert _door({**base, "relay": {"line": 7}, "contact": {"line": 11}}).jetson_pin_mode == "BOARD"
    door = _door({**base, "jetson_pin_mode": "TEGRA_SOC", "relay": {"line": "SOC_GPIO41"}})
    assert line_specs(door)[0].chip == ""

    assert "takes a pin number" in _issues({**base, "relay": {"line": "SOC_GPIO41"}})["door"]
    assert "takes a pin name" in _issues({**base, "jetson_pin_mode": "CVM", "relay": {"line": 7}})["door"]
    assert (
        "door.chip has no meaning"
        in _issues({**base, "chip": "/dev/gpiochip0", "relay": {"line": 7}})["door"]
    )
    message = _issues({**base, "relay": {"line": 7, "chip": "/dev/gpiochip1"}})["door"]
    assert "door.relay.chip has no meaning" in message
    message = _issues({**base, "relay": {"line": 7}, "contact": {"line": 11, "bias": "pull-up"}})["door"]
    assert "door.contact.bias = 'pull-up'" in message and "cannot set pull resistors" in message
    message = _issues({**base, "relay": {"line": 7, "drive": "open-drain"}})["door"]
    assert "door.relay.drive = 'open-drain'" in message


def test_the_pin_mode_belongs_to_jetson_gpio() -> None:
    message = _issues({"backend": "gpiod", "jetson_pin_mode": "BCM"})["door"]
    assert "door.jetson_pin_mode applies to door.backend = 'jetson-gpio' only" in message


def test_the_default_file_documents_the_sections() -> None:
    text = render_default_toml()
    for section in ("[door]", "[door.relay]", "[door.contact]", "[door.exit]"):
        assert section in text
    assert "# line = 12" in text and "held_open_s = 30.0" in text
