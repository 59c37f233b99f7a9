"""Configuration validation: strict types, ranges, cross-field rules, key paths, secrets."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Dict

import pytest

from appliance.config import config_schema, render_default_toml
from appliance.config_load import default_config, load_config, validate_config
from appliance.errors import ConfigError
from tests.conftest import REPO_ROOT

MINIMAL: Dict[str, Any] = {
    "device": {"id": "door-1"},
    "camera": {"source": "/srv/clip.mp4", "at_end": "loop"},
    "mqtt": {"host": "broker.local", "port": 8883, "tls": {"enabled": True}},
    "storage": {"dir": "state"},
    "models": {"dir": "/opt/models"},
}


def _issues(data: Dict[str, Any]) -> Dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        validate_config(data, base_dir=Path("/etc/fa"))
    return {issue.path: issue.message for issue in caught.value.issues}


def test_minimal_config_is_valid_and_relative_paths_follow_the_file() -> None:
    config = validate_config(copy.deepcopy(MINIMAL), base_dir=Path("/etc/fa"))
    assert config.device.id == "door-1"
    assert config.mqtt.port == 8883
    assert config.storage.dir == Path("/etc/fa/state")
    assert config.models.dir == Path("/opt/models")
    assert config.engine_dir == Path("/etc/fa/state/engines")
    assert config.mqtt_client_id == "face-appliance-door-1"


def test_the_three_classic_mistakes_are_reported_together() -> None:
    data = copy.deepcopy(MINIMAL)
    data["mqtt"]["hots"] = "broker"  # unknown key
    data["match"] = {"threshold": -0.2}  # out of range
    data["mqtt"]["port"] = "1883"  # wrong type
    issues = _issues(data)
    assert set(issues) == {"mqtt.hots", "match.threshold", "mqtt.port"}
    assert "unknown key" in issues["mqtt.hots"] and "did you mean 'host'" in issues["mqtt.hots"]
    assert "-0.2" in issues["match.threshold"] and "≥ 0.2" in issues["match.threshold"]
    assert "expected an integer" in issues["mqtt.port"] and "'1883'" in issues["mqtt.port"]
    assert "≤ 65535" in issues["mqtt.port"]


@pytest.mark.parametrize(
    ("section", "values", "path", "fragment"),
    [
        ("mqtt", {"port": 0}, "mqtt.port", "≥ 1"),
        ("mqtt", {"prefix": "a/#"}, "mqtt.prefix", "not allowed"),
        ("camera", {"at_end": "rewind"}, "camera.at_end", "'stop' or 'loop'"),
        ("camera", {"width": 640}, "camera", "width and camera.height"),
        ("camera", {"reconnect_min_s": 10.0, "reconnect_max_s": 2.0}, "camera", "above"),
        ("detector", {"type": "retinaface"}, "detector.type", "'mtcnn' or 'yunet'"),
        (
            "detector",
            {"mtcnn": {"thresholds": [0.6, 1.5, 0.7]}},
            "detector.mtcnn.thresholds[1]",
            "less than 1",
        ),
        ("detector", {"mtcnn": {"thresholds": [0.6, 0.7]}}, "detector.mtcnn.thresholds", "at least 3"),
        ("backend", {"type": "cuda"}, "backend.type", "'cpu' or 'tensorrt'"),
        (
            "backend",
            {"tensorrt": {"dla_core": 0, "precision": "fp32"}},
            "backend.tensorrt",
            "DLA has no FP32",
        ),
        ("liveness", {"enabled": "yes"}, "liveness.enabled", "true or false"),
        ("device", {"id": "door/1"}, "device.id", "not allowed"),
        ("mqtt", {"tls": {"enabled": False, "ca_file": "/x"}}, "mqtt.tls", "enabled is false"),
        ("mqtt", {"tls": {"enabled": True, "cert_file": "/c"}}, "mqtt.tls", "together"),
        ("mqtt", {"password": "pw"}, "mqtt", "username is not"),
        ("storage", {"dir": 5}, "storage.dir", "path"),
    ],
)
def test_each_rule_names_its_key(section: str, values: Dict[str, Any], path: str, fragment: str) -> None:
    data = copy.deepcopy(MINIMAL)
    data.setdefault(section, {}).update(values)
    issues = _issues(data)
    assert path in issues, issues
    assert fragment in issues[path], issues[path]


def test_unknown_section_lists_the_allowed_ones() -> None:
    issues = _issues({"mqtt": {}, "camra": {}})
    assert "camra" in issues
    assert "did you mean 'camera'" in issues["camra"]


def test_secret_values_never_appear_in_errors() -> None:
    issues = _issues({"mqtt": {"username": "u", "password": 123456789}})
    assert "123456789" not in json.dumps(issues)
    assert "secret, not shown" in issues["mqtt.password"]


def test_secret_is_masked_when_shown() -> None:
    config = validate_config({"mqtt": {"username": "u", "password": "hunter2-secret"}})
    assert "hunter2-secret" not in repr(config)
    assert "hunter2-secret" not in json.dumps(config.model_dump(mode="json"))
    assert config.mqtt.secret_password().get_secret_value() == "hunter2-secret"


def test_password_from_file_and_from_a_systemd_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "mqtt_password"
    secret.write_text("s3cret-from-file\n")
    config = validate_config({"mqtt": {"username": "u", "password_file": str(secret)}})
    assert config.mqtt.secret_password().get_secret_value() == "s3cret-from-file"

    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    config = validate_config(
        {"mqtt": {"username": "u", "password_file": "${CREDENTIALS_DIRECTORY}/mqtt_password"}}
    )
    assert config.mqtt.password_file == secret
    assert config.mqtt.secret_password().get_secret_value() == "s3cret-from-file"


def test_credential_without_systemd_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    issues = _issues({"mqtt": {"username": "u", "password_file": "${CREDENTIALS_DIRECTORY}/pw"}})
    assert "CREDENTIALS_DIRECTORY is not set" in issues["mqtt.password_file"]


def test_unreadable_or_empty_password_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("")
    issues = _issues({"mqtt": {"username": "u", "password_file": str(tmp_path / "absent")}})
    assert "does not exist" in issues["mqtt.password_file"]
    issues = _issues({"mqtt": {"username": "u", "password_file": str(empty)}})
    assert "is empty" in issues["mqtt.password_file"]


def test_password_and_password_file_conflict(tmp_path: Path) -> None:
    issues = _issues({"mqtt": {"username": "u", "password": "a", "password_file": str(tmp_path)}})
    assert "both set" in issues["mqtt"]


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[mqtt\nport = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)
    bom = tmp_path / "bom.toml"
    bom.write_bytes(b"\xef\xbb\xbf[match]\nthreshold = 0.6\n")  # Windows editors write a UTF-8 BOM
    assert load_config(bom).match.threshold == 0.6
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(binary)


def test_default_file_is_generated_from_the_model_and_loads() -> None:
    path = REPO_ROOT / "config" / "appliance.toml"
    assert path.read_text() == render_default_toml(), (
        "config/appliance.toml is out of date: run `face-appliance config default > config/appliance.toml`"
    )
    loaded = load_config(path)
    defaults = default_config()
    assert loaded.model_dump(exclude={"device"}) == defaults.model_dump(exclude={"device"})


def test_default_file_documents_every_key() -> None:
    text = (REPO_ROOT / "config" / "appliance.toml").read_text()
    schema = config_schema()

    def walk(node: Dict[str, Any], prefix: str) -> None:
        for name, prop in node.get("properties", {}).items():
            ref = prop.get("$ref") or (prop.get("allOf") or [{}])[0].get("$ref")
            tables = [a for a in prop.get("anyOf", []) if a.get("type") == "array" and "$ref" in a["items"]]
            if ref:
                walk(schema["$defs"][ref.split("/")[-1]], f"{prefix}{name}.")
            elif tables:  # an array of tables ([[cameras]]): shown as a commented example
                assert f"\n# [[{prefix}{name}]]" in text, f"{prefix}{name} is not documented"
            else:
                assert f"\n{name} = " in text or f"\n# {name} = " in text, f"{prefix}{name} is not documented"

    walk(schema, "")


def test_exported_schema_is_current() -> None:
    path = REPO_ROOT / "config" / "appliance.schema.json"
    assert json.loads(path.read_text()) == config_schema(), (
        "config/appliance.schema.json is out of date: run `face-appliance config schema > config/appliance.schema.json`"
    )


def test_demo_config_is_valid() -> None:
    config = load_config(REPO_ROOT / "config" / "demo.toml")
    assert config.backend.type == "cpu"
    assert os.fspath(config.storage.dir).startswith(os.fspath(REPO_ROOT))


# -- several cameras ([[cameras]]) -------------------------------------------------------------------------

TWO_CAMERAS: Dict[str, Any] = {
    **{key: value for key, value in MINIMAL.items() if key != "camera"},
    "cameras": [
        {"id": "entry", "source": "entry.avi", "at_end": "loop"},
        {"id": "exit", "source": "rtsp://10.0.0.7/stream", "width": 1280, "height": 720},
    ],
}


def test_a_single_camera_table_is_the_one_camera() -> None:
    config = validate_config(copy.deepcopy(MINIMAL), base_dir=Path("/etc/fa"))
    assert config.cameras is None
    assert [camera.id for camera in config.configured_cameras] == ["cam0"]
    assert config.configured_cameras[0].source == "/srv/clip.mp4"
    assert [camera.id for camera in default_config().configured_cameras] == ["cam0"]


def test_a_list_of_cameras_each_with_its_id_and_settings() -> None:
    config = validate_config(copy.deepcopy(TWO_CAMERAS), base_dir=Path("/etc/fa"))
    entry, exit_ = config.configured_cameras
    assert (entry.id, exit_.id) == ("entry", "exit")
    assert entry.source == "/etc/fa/entry.avi" and entry.at_end == "loop"  # relative to the file
    assert exit_.source == "rtsp://10.0.0.7/stream" and exit_.width == 1280


def test_cameras_as_toml_arrays_of_tables(tmp_path: Path) -> None:
    path = tmp_path / "appliance.toml"
    path.write_text(
        '[[cameras]]\nid = "entry"\nsource = "a.avi"\n[[cameras]]\nid = "exit"\nsource = "b.avi"\n'
    )
    config = load_config(path)
    assert [(c.id, c.source) for c in config.configured_cameras] == [
        ("entry", str(tmp_path / "a.avi")),
        ("exit", str(tmp_path / "b.avi")),
    ]


@pytest.mark.parametrize(
    ("cameras", "path", "fragments"),
    [
        ([], "cameras", ("an empty list", "[[cameras]]")),
        (
            [{"id": "door", "source": "a"}, {"id": "door", "source": "b"}],
            "cameras",
            ("cameras[1] has the id 'door' of cameras[0]", "an id of its own"),
        ),
        ([{"id": "a"}, {"source": "b"}], "cameras", ("cameras[1] has no id", 'id = "entry"')),
        ([{"id": "entry/1"}], "cameras[0].id", ("not allowed", "letters, digits", "MQTT topics")),
        ([{"id": "in #1"}], "cameras[0].id", ("not allowed",)),
        (
            [{"id": "a", "sorce": "x"}],
            "cameras[0].sorce",
            ("keys allowed in cameras[0]", "did you mean 'source'"),
        ),
        ([{"id": "a", "width": 8}], "cameras[0].width", ("≥ 16",)),
        ([{"id": "a", "width": 640}], "cameras[0]", ("width and camera.height",)),
        ({"id": "a"}, "cameras", ("found a table", "[[cameras]]")),
    ],
)
def test_camera_list_refusals_name_the_key_and_what_to_try(cameras: Any, path: str, fragments: tuple) -> None:
    data = copy.deepcopy(TWO_CAMERAS)
    data["cameras"] = cameras
    issues = _issues(data)
    assert path in issues, issues
    for fragment in fragments:
        assert fragment in issues[path], issues[path]


def test_camera_and_cameras_together_are_refused() -> None:
    data = copy.deepcopy(TWO_CAMERAS)
    data["camera"] = {"source": "/dev/video0"}
    issues = _issues(data)
    assert list(issues) == [""], issues  # a rule of the whole file: the message names both keys
    assert "[camera] and [[cameras]] are both given" in issues[""]
    assert "one more [[cameras]] table" in issues[""]
