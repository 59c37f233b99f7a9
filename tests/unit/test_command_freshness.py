"""The freshness check of commands: ``ts`` (RFC 3339) against ``commands.max_age_s``."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Optional

import pytest

from appliance.commands import CommandError, check_fresh, parse, parse_rfc3339

NOW = datetime(2026, 12, 3, 18, 0, 0, tzinfo=timezone.utc)


def _status(ts: Optional[str]) -> bytes:
    document = {"request_id": "r-1"} if ts is None else {"request_id": "r-1", "ts": ts}
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-03T18:00:00Z", NOW),
        ("2026-12-03t18:00:00z", NOW),
        ("2026-12-03T19:00:00+01:00", NOW),
        ("2026-12-03T18:00:00.123456789Z", NOW + timedelta(microseconds=123456)),
        ("2026-12-03 18:00:00.5-00:00", NOW + timedelta(milliseconds=500)),
    ],
)
def test_rfc3339_times(text: str, expected: datetime) -> None:
    assert parse_rfc3339(text) == expected


@pytest.mark.parametrize(
    "text",
    ["2026-12-03T18:00:00", "2026-12-03", "2026-13-03T18:00:00Z", "yesterday", "2026-12-03T18:00:00+0100"],
)
def test_not_rfc3339_is_invalid(text: str) -> None:
    with pytest.raises(CommandError) as caught:
        parse("status", _status(text), max_age_s=60)
    assert caught.value.code == "invalid" and caught.value.request_id == "r-1"
    assert "ts" in str(caught.value)


@pytest.mark.parametrize(
    ("offset_s", "fresh"), [(-59, True), (0, True), (59, True), (-61, False), (61, False), (-3600, False)]
)
def test_stamped_commands_within_max_age_only(offset_s: float, fresh: bool) -> None:
    _, command = parse("status", _status((NOW + timedelta(seconds=offset_s)).isoformat()))
    if fresh:
        check_fresh(command, 60, now=NOW)
        return
    with pytest.raises(CommandError) as caught:
        check_fresh(command, 60, now=NOW)
    assert caught.value.code == "stale" and caught.value.request_id == "r-1"


def test_unstamped_commands_are_not_checked() -> None:
    _, command = parse("status", _status(None), max_age_s=1)
    check_fresh(command, 1, now=NOW + timedelta(days=365))


def test_parse_checks_freshness_only_when_asked() -> None:
    old = _status("2001-01-01T00:00:00Z")
    parse("status", old)
    with pytest.raises(CommandError) as caught:
        parse("status", old, max_age_s=60)
    assert caught.value.code == "stale"
