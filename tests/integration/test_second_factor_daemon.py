"""Face + card, face + PIN, and card + PIN without a face in the daemon: the real models on a real face, a real broker, and libosdp's
real peripheral device playing the card-and-keypad reader over a ``socat`` pty pair (Secure Channel on).

Obama, in ``vault``, is held for his second factor; a wrong PIN is reported, his card opens the door
(and the reader turns green), and, at his next passage, his duress PIN opens it too, with the alarm in
the event only. Vera, enrolled without a face, passes by her card and PIN alone (schema-2 events), and
sets a new PIN by typing it twice at the reader; enrolled by the fleet's authority, her card and PIN
are learned at the reader for the authority, which publishes them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, Iterator, List, Tuple

import pytest

from appliance.access.credentials import verify_pin
from appliance.access.policy import IdentityPolicy
from appliance.gallery.store import TemplateStore
from tests.card_reader_support import KeypadReader
from tests.mqtt_broker import MosquittoBroker, Recorder, wait_until
from tests.osdp_support import KEY, pty_pair, write_key
from tests.support import (
    DEVICE,
    ROOT,
    Daemon,
    command,
    daemon_config,
    event_documents,
    fleet_authority_config,
    make_passage_video,
    run_cli,
    unique_events,
)

REPOSITORY = Path(__file__).resolve().parents[2]

#: Facility 7, card 12345 as a 26-bit Wiegand read.
CARD_READ = bytes.fromhex("83981cc0")


def _wait_event(
    recorder: Recorder, daemon: Daemon, what: str, matches: Callable[[Dict[str, Any]], bool], after: int = 0
) -> int:
    """Wait for an access event after the first ``after`` ones that ``matches``; its index."""

    def found(messages: List[Any]) -> bool:
        return any(matches(e) for e in unique_events(event_documents(messages))[after:])

    try:
        recorder.wait_for(found, timeout=90, what=what)
    except AssertionError:
        raise AssertionError(f"{what}; daemon log:\n{daemon.text[-4000:]}") from None
    events = unique_events(event_documents(recorder.messages))
    return next(i for i in range(after, len(events)) if matches(events[i]))


def _event(recorder: Recorder, index: int) -> Dict[str, Any]:
    return unique_events(event_documents(recorder.messages))[index]


#: ``door_with_reader(**sections)``: a context of the daemon and its reader (the fixture below).
DoorWithReader = Callable[..., ContextManager[Tuple[Daemon, KeypadReader]]]


@pytest.fixture
def door_with_reader(
    tmp_path: Path, storage: Path, shared_models: Path, shared_data: Path, mosquitto: MosquittoBroker
) -> DoorWithReader:
    """``door_with_reader(**sections)``: the daemon on a loop of Obama's photo with those sections, and
    libosdp's peripheral device as its card-and-keypad reader (Secure Channel) on a pty pair; stopped
    cleanly at the end."""

    @contextmanager
    def start(**config: str) -> Iterator[Tuple[Daemon, KeypadReader]]:
        video = make_passage_video(tmp_path / "door.avi", [(shared_data / "faces/fr_obama/obama2.jpg", 30)])
        key = write_key(tmp_path / "reader_scbk", KEY)
        with pty_pair(tmp_path) as (appliance_end, reader_end), KeypadReader(reader_end, 0) as reader:
            path = daemon_config(
                tmp_path,
                storage,
                shared_models,
                mosquitto,
                video,
                at_end="loop",
                credential_reader=f'enabled = true\nport = "{appliance_end}"\naddress = 0\nscbk_file = "{key}"',
                **config,
            )
            daemon = Daemon(path)
            try:
                yield daemon, reader
            finally:
                assert daemon.stop() == 0, daemon.text[-4000:]

    return start


def test_a_held_face_is_opened_by_its_card_and_by_its_duress_pin(
    storage: Path, door_with_reader: DoorWithReader, recorder: Recorder
) -> None:
    policy = IdentityPolicy(groups=("vault",)).changed(
        {"cards": ["w26:7:12345"], "pin": "2468", "duress_pin": "1357"}
    )
    with TemplateStore.open(storage / "gallery.db", storage / "gallery.key") as store:
        store.set_policy("obama", policy)
    with door_with_reader(
        access='[access.second_factor]\nrequire = "card_or_pin"\ngroups = ["vault"]\nwithin_s = 60',
        decision="reannounce_s = 4.0",
    ) as (daemon, reader):
        held = _wait_event(
            recorder,
            daemon,
            "Obama's face held for his second factor",
            lambda e: e["reason"] == "second_factor" and e["identity"]["id"] == "obama",
        )
        assert _event(recorder, held)["decision"] == "denied"
        reader.wait_for(reader.secure, "the reader's Secure Channel")
        reader.keys("0000#")
        wrong = _wait_event(
            recorder, daemon, "a wrong PIN reported", lambda e: e["reason"] == "wrong_credential", held
        )
        assert _event(recorder, wrong)["identity"]["id"] == "obama"
        reader.card(CARD_READ, 26)
        opened = _wait_event(recorder, daemon, "the card opens", lambda e: e["decision"] == "granted", wrong)
        event = _event(recorder, opened)
        assert event["factors"] == ["face", "card"] and "duress" not in event
        green = reader.osdp.CommandLEDColor.Green
        reader.wait_for(
            lambda: any(c.get("on_color") == green for c in reader.of(reader.osdp.Command.LED)),
            "a green LED on the reader",
        )
        again = _wait_event(
            recorder,
            daemon,
            "his next passage held again",
            lambda e: e["reason"] == "second_factor",
            opened + 1,
        )
        reader.keys("1357#")
        duress = _wait_event(
            recorder, daemon, "the duress PIN opens", lambda e: e["decision"] == "granted", again
        )
        event = _event(recorder, duress)
        assert event["factors"] == ["face", "pin"] and event["duress"] is True
        assert event["identity"]["id"] == "obama" and event["reason"] is None
        door_events = [m for m in recorder.messages if m.topic == f"{ROOT}/door"]
        assert any(b'"reader_online"' in m.payload for m in door_events)

        # a second card, learned by presenting it: the answer comes when it is read
        request = {"request_id": "learn-1", "id": "obama", "within_s": 60}
        recorder.publish(f"{ROOT}/cmd/learn_card", json.dumps(request).encode())
        daemon.wait_log("learning a card at the reader")
        reader.card(bytes.fromhex("04800f80"), 26)  # facility 9, card 31
        answer = recorder.wait_for_message(f"{ROOT}/cmd/learn_card/result", timeout=30)
        assert json.loads(answer.payload)["result"] == {"id": "obama", "card": "w26:9:31", "added": True}
        busy = command(recorder, "learn_card", {"request_id": "learn-2", "id": "nobody"})
        assert busy["error"]["code"] == "refused" and "no identity" in busy["error"]["message"], busy


def test_someone_without_a_face_passes_by_card_and_pin_and_the_events_say_so(
    storage: Path, door_with_reader: DoorWithReader, recorder: Recorder
) -> None:
    """Vera declined face enrolment: her card, then her PIN at the reader open the door — schema-2
    events without a face, the reader amber while it waits for the PIN, then green."""
    policy = IdentityPolicy().changed({"cards": ["w26:7:12345"], "pin": "2468", "duress_pin": "1357"})
    with TemplateStore.open(storage / "gallery.db", storage / "gallery.key") as store:
        store.add_identity("vera", "Vera", policy=policy)
    with door_with_reader(
        access='[access.without_face]\nrequire = "card_and_pin"\nwithin_s = 30',
    ) as (daemon, reader):
        reader.wait_for(reader.secure, "the reader's Secure Channel")
        reader.card(CARD_READ, 26)
        held = _wait_event(
            recorder,
            daemon,
            "Vera's card held for her PIN",
            lambda e: e["schema"] == 2 and e["reason"] == "second_factor",
        )
        event = _event(recorder, held)
        assert event["identity"] == {"id": "vera", "name": "Vera"} and event["factors"] == ["card"]
        assert (event["face"], event["track_id"], event["score"]) == (None, None, None)
        amber = reader.osdp.CommandLEDColor.Amber
        reader.wait_for(
            lambda: any(c.get("on_color") == amber for c in reader.of(reader.osdp.Command.LED)),
            "the reader blinking amber for the PIN",
        )
        reader.keys("0000#")
        wrong = _wait_event(
            recorder,
            daemon,
            "a wrong PIN reported",
            lambda e: e["schema"] == 2 and e["reason"] == "wrong_credential",
            held,
        )
        reader.keys("1357#")
        opened = _wait_event(
            recorder,
            daemon,
            "her duress PIN opens",
            lambda e: e["schema"] == 2 and e["decision"] == "granted",
            wrong,
        )
        event = _event(recorder, opened)
        assert event["factors"] == ["card", "pin"] and event["duress"] is True
        assert event["identity"]["id"] == "vera" and event["camera_id"] == "cam0"
        green = reader.osdp.CommandLEDColor.Green
        reader.wait_for(
            lambda: any(c.get("on_color") == green for c in reader.of(reader.osdp.Command.LED)),
            "a green LED on the reader",
        )
        reader.card(bytes.fromhex("04800f80"), 26)  # facility 9, card 31: nobody's
        nobody = _wait_event(
            recorder,
            daemon,
            "an unknown card reported",
            lambda e: e["schema"] == 2 and e["decision"] == "unknown",
            opened,
        )
        assert _event(recorder, nobody)["identity"] is None
        faces = [e for e in unique_events(event_documents(recorder.messages)) if e["schema"] == 1]
        assert faces and all(e["face"] is not None for e in faces)  # Obama, by his face, as before

        # Vera chooses a new PIN at the reader: typed twice, it never travels; then it opens
        request = {"request_id": "pin-1", "id": "vera"}
        recorder.publish(f"{ROOT}/cmd/learn_pin", json.dumps(request).encode())
        daemon.wait_log("learning a pin at the reader")
        reader.card(CARD_READ, 26)  # hers, first: nobody else at the reader chooses her PIN
        daemon.wait_log("their card was shown")
        reader.keys("2580#")
        reader.keys("2580#")
        answer = recorder.wait_for_message(f"{ROOT}/cmd/learn_pin/result", timeout=30)
        assert json.loads(answer.payload)["result"] == {"id": "vera", "pin": "set"}
        assert not [m for m in recorder.messages if b"2580" in m.payload]
        reader.card(CARD_READ, 26)
        reader.keys("2580#")
        again = _wait_event(
            recorder,
            daemon,
            "her new PIN opens",
            lambda e: e["schema"] == 2 and e["decision"] == "granted" and "duress" not in e,
            nobody,
        )
        assert _event(recorder, again)["factors"] == ["card", "pin"]


def test_a_fleet_persons_card_and_pin_are_learned_at_a_door_and_published_by_the_authority(
    tmp_path: Path,
    storage: Path,
    shared_models: Path,
    mosquitto: MosquittoBroker,
    door_with_reader: DoorWithReader,
    recorder: Recorder,
) -> None:
    """Vera is the fleet's, enrolled without a face by the authority: the door refuses to learn her
    PIN for itself (her next record would undo it), but learns her card, then her PIN, for the
    authority (``fleet learn-card`` / ``fleet learn-pin``), which publishes them; every door applies the
    record, and her card and PIN open this one. The PIN's digits are in no MQTT message and no output."""
    authority = fleet_authority_config(tmp_path / "authority", "hq", mosquitto, shared_models)
    auth = ("--config", str(authority))
    assert run_cli("fleet", "init", *auth).returncode == 0
    enrolled = run_cli("fleet", "enroll", *auth, "--no-face", "--name", "Vera", "--id", "vera")
    assert enrolled.returncode == 0, enrolled.stderr
    keys, trusted = authority.parent / "keys", tmp_path / "trusted"
    trusted.mkdir()
    shutil.copy(keys / "authority.pub", trusted / "authority.pub")
    fleet = f'enabled = true\nsite = "hq"\nfleet_key_file = "{keys / "fleet.key"}"\ntrusted_keys_dir = "{trusted}"'
    with door_with_reader(
        access='[access.without_face]\nrequire = "card_and_pin"\nwithin_s = 30',
        fleet=fleet,
    ) as (daemon, reader):
        wait_until(lambda: _policy(storage, "vera") is not None, 60, "the door applies Vera's record")
        reader.wait_for(reader.secure, "the reader's Secure Channel")
        refused = command(recorder, "learn_pin", {"request_id": "local-pin", "id": "vera"})
        assert refused["ok"] is False and "fleet set vera" in refused["error"]["message"], refused
        local = command(recorder, "learn_card", {"request_id": "f-obama", "id": "obama", "for_fleet": True})
        assert local["ok"] is False and "enrolled at this door" in local["error"]["message"], local

        learn_card = _authority_learning(authority, "learn-card", "vera", "--within", "30")
        daemon.wait_log("learning a card at the reader")
        reader.card(CARD_READ, 26)
        out, err = learn_card.communicate(timeout=60)
        assert learn_card.returncode == 0, err
        assert json.loads(out)["card"] == "w26:7:12345" and json.loads(out)["learned"] == "card"
        wait_until(
            lambda: _policy(storage, "vera").cards == ("w26:7:12345",), 60, "the door applies her card"
        )

        learn_pin = _authority_learning(authority, "learn-pin", "vera")
        daemon.wait_log("learning a pin at the reader")
        reader.card(CARD_READ, 26)  # hers, first
        daemon.wait_log("their card was shown")
        reader.keys("2580#")
        reader.keys("2580#")
        out, err = learn_pin.communicate(timeout=60)
        assert learn_pin.returncode == 0, err
        assert json.loads(out)["learned"] == "pin" and "2580" not in out + err
        assert not [m for m in recorder.messages if b"2580" in m.payload]
        wait_until(lambda: _policy(storage, "vera").pin is not None, 60, "the door applies her PIN")
        assert verify_pin("2580", _policy(storage, "vera").pin)

        reader.card(CARD_READ, 26)
        reader.keys("2580#")
        _wait_event(
            recorder,
            daemon,
            "her card and the PIN she chose open the door",
            lambda e: e["schema"] == 2 and e["decision"] == "granted" and e["identity"]["id"] == "vera",
        )


def _authority_learning(authority: Path, action: str, identity_id: str, *more: str) -> subprocess.Popen:
    """``fleet learn-card`` / ``learn-pin`` at the test's door, running while the test plays the person."""
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "appliance", "fleet", action, "--config", str(authority), identity_id),
            *("--door", DEVICE, "--json", *more),
        ],
        cwd=REPOSITORY,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _policy(storage: Path, identity_id: str) -> Any:
    with TemplateStore.open(storage / "gallery.db", storage / "gallery.key") as store:
        identity = store.identity(identity_id)
        return None if identity is None else identity.policy
