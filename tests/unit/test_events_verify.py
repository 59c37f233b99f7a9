"""``face-appliance events verify``: saved events checked against the site's key, each line named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from appliance import cli
from appliance.cli.events_cmd import MAX_LINE_BYTES
from appliance.decisions import Decision
from appliance.event_mac import EventKey
from appliance.events import access_event, door_event, encode
from appliance.fleet.records import create_fleet_key


def _events(key: EventKey) -> list:
    made = Decision(
        3, "granted", "ada", "Ada", 0.8, 0.5, 9, None, np.zeros(4, np.float32), 0.9, 0.0, 1.0, "", None, None
    )
    granted = access_event(made, "door-1", "entry", {}, 5.0, direction="in")
    tamper = door_event("door-1", "door", "tamper", {"door_id": "door"})
    for event in (granted, tamper):
        key.sign(event)
    return [granted, tamper]


def test_signed_events_verify_and_every_bad_line_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "fleet.key"
    key = EventKey(create_fleet_key(key_file))
    granted, tamper = _events(key)
    changed = dict(granted, decision="denied")
    other_site = _events(EventKey(bytes(32)))[0]
    saved = tmp_path / "events.jsonl"
    saved.write_bytes(
        b"\n".join(
            [
                encode(granted),
                encode(tamper),
                b"",  # blank lines are skipped
                encode(changed),
                encode({k: v for k, v in granted.items() if k != "mac"}),
                encode(other_site),
                b"{not json",
                b"[1, 2]",
                b"x" * (MAX_LINE_BYTES + 10),
                encode(granted),  # after the long line, reading goes on
            ]
        )
        + b"\n"
    )
    assert cli.main(["events", "verify", "--fleet-key", str(key_file), str(saved)]) == cli.EXIT_FAILURE
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert [line.split()[0] for line in lines] == [
        "ok",
        "ok",
        "FAILED",
        "FAILED",
        "FAILED",
        "FAILED",
        "FAILED",
        "FAILED",
        "ok",
    ]
    assert lines[0].endswith(f"door-1 granted {granted['event_id']}") and "tamper" in lines[1]
    assert f"{saved}:4: the mac does not match" in lines[2]
    assert "carries no mac" in lines[3] and "not this site's" in lines[4]
    assert ":7:" in lines[5] and "not a JSON object" in lines[6] and "longer than" in lines[7]
    assert lines[8].startswith(f"ok     {saved}:10:")
    assert "3 verified, 6 failed" in out.err

    only_good = tmp_path / "good.jsonl"
    only_good.write_bytes(encode(granted) + b"\n" + encode(tamper) + b"\n")
    assert (
        cli.main(["events", "verify", "--quiet", "--fleet-key", str(key_file), str(only_good)]) == cli.EXIT_OK
    )
    out = capsys.readouterr()
    assert out.out == "" and "2 verified, 0 failed" in out.err


def test_the_key_comes_from_the_configuration_or_is_asked_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "fleet.key"
    key = EventKey(create_fleet_key(key_file))
    saved = tmp_path / "events.jsonl"
    saved.write_bytes(encode(_events(key)[0]) + b"\n")
    config = tmp_path / "appliance.toml"
    config.write_text(f'[fleet]\nfleet_key_file = "{key_file}"\n')
    assert cli.main(["events", "verify", "--config", str(config), str(saved)]) == cli.EXIT_OK
    config.write_text("")
    assert cli.main(["events", "verify", "--config", str(config), str(saved)]) == cli.EXIT_CONFIG
    assert "no fleet key" in capsys.readouterr().err
    missing = tmp_path / "missing.jsonl"
    assert cli.main(["events", "verify", "--fleet-key", str(key_file), str(missing)]) == cli.EXIT_FAILURE
    assert f"cannot read {missing}" in capsys.readouterr().err
