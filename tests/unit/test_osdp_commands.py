"""The panel's commands as the reader reports them, and the LED colour rule of the panel's decision."""

from __future__ import annotations

from typing import Any, Dict

import pytest

from appliance.osdp.commands import summarize, verdict


def led(**values: Any) -> Dict[str, Any]:
    command = {
        "reader": 0,
        "led_number": 0,
        "control_code": 2,
        "on_count": 10,
        "off_count": 0,
        "on_color": 2,
        "off_color": 0,
        "temporary": True,
        "timer_count": 30,
    }
    command.update(values)
    return command


@pytest.mark.parametrize(
    ("command", "decision"),
    [
        (led(on_color=2), "granted"),  # temporary green
        (led(on_color=2, temporary=False, control_code=1), "granted"),  # permanent green
        (led(on_color=1), "denied"),  # temporary red
        (led(on_color=1, off_color=0, on_count=3, off_count=3), "denied"),  # flashing red
        (led(on_color=3), None),  # amber: no decision
        (led(on_color=4), None),
        (led(on_color=0), None),  # off
        (led(on_color=2, control_code=0), None),  # "no change"
        (led(on_color=2, cancel_temporary=True), None),
    ],
)
def test_the_led_colour_rule(command: Dict[str, Any], decision: Any) -> None:
    assert verdict("led", command) == decision


def test_only_led_commands_decide() -> None:
    assert verdict("buzzer", {"control_code": 2, "on_color": 2}) is None
    assert verdict("text", {"data": "GRANTED", "on_color": 2}) is None


def test_summaries_hold_no_secret() -> None:
    keyset = summarize("keyset", {"command": 5, "type": 1, "data": bytes(range(16))})
    assert keyset == {"command": "keyset", "type": 1, "length": 16}
    assert summarize("led", led(on_color=9))["on_color"] == "color_9"
    text = summarize("text", {"reader": 0, "control_code": 1, "data": "x" * 200})
    assert text["text"] == "x" * 64
    assert summarize("comset", {"address": 3, "baud_rate": 38400}) == {
        "command": "comset",
        "address": 3,
        "baud_rate": 38400,
    }
