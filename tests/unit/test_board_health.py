"""The board's health against recorded Xavier NX and Orin Nano sysfs trees (tests/data/board_health):
values parsed right, missing and garbage files read as null, throttling and its events, and how
``…/state`` and the Prometheus endpoint show it."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Mapping, Tuple

import pytest

from appliance.board_health import BoardHealthReader, BoardMonitor
from appliance.metrics import board_metrics, prometheus_text
from appliance.peripherals import PeripheralHub
from appliance.state_report import StateReporter

TREES = Path(__file__).resolve().parents[1] / "data" / "board_health"
XAVIER = TREES / "xavier_nx"
ORIN = TREES / "orin_nano"


def copy_tree(source: Path, tmp_path: Path) -> Path:
    """A writable copy of a recorded tree."""
    return Path(shutil.copytree(source, tmp_path / source.name))


def write(root: Path, relative: str, data: bytes) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the recorded trees -----------------------------------------------------------------------------


def test_xavier_nx_tree() -> None:
    board = BoardHealthReader(XAVIER).read()
    assert board == {
        "jetson": True,
        "temperatures_c": {
            "CPU-therm": 47.5,
            "GPU-therm": 45.0,
            "AUX-therm": 45.5,
            "AO-therm": 44.0,
            "Tboard_tegra": 41.0,
            "Tdiode_tegra": 43.25,
            "thermal-fan-est": 45.9,
        },
        "gpu_load_pct": 23.7,
        "power_mode": {"id": 8, "name": "MODE_20W_6CORE"},
        "clocks_locked": True,
        "throttling": False,
        "throttling_zones": [],
        "overcurrent": False,
        "overcurrent_events": {f"oc{n}": 0 for n in range(1, 7)},
    }
    assert "PMIC-Die" not in board["temperatures_c"]  # a fixed 100 °C on Xavier: left out


def test_orin_nano_tree() -> None:
    board = BoardHealthReader(ORIN).read()
    assert board["temperatures_c"] == {
        "cpu-thermal": 52.875,
        "gpu-thermal": 51.5,
        "cv0-thermal": None,  # no CV cluster on an Orin Nano: its temp cannot be read
        "cv1-thermal": None,
        "cv2-thermal": None,
        "soc0-thermal": 49.062,
        "soc1-thermal": 49.031,
        "soc2-thermal": 48.656,
        "tj-thermal": 52.875,
    }
    assert board["gpu_load_pct"] == 81.2  # /sys/devices/platform/bus@0/17000000.gpu/load = 812 ‰
    assert board["power_mode"] == {"id": 2, "name": "MAXN_SUPER"}
    assert board["clocks_locked"] is False  # DVFS free: scaling_min_freq < scaling_max_freq
    assert board["throttling"] is False and board["throttling_zones"] == []
    assert board["overcurrent_events"] == {"oc1": 0, "oc2": 0, "oc3": 0}


def test_off_a_jetson_only_says_so(tmp_path: Path) -> None:
    write(tmp_path, "sys/class/thermal/thermal_zone0/type", b"x86_pkg_temp\n")
    write(tmp_path, "sys/class/thermal/thermal_zone0/temp", b"55000\n")
    assert BoardHealthReader(tmp_path).read() == {"jetson": False}
    assert BoardHealthReader(tmp_path / "absent").read() == {"jetson": False}


# -- missing and garbage files ----------------------------------------------------------------------


def test_missing_files_read_as_null(tmp_path: Path) -> None:
    root = copy_tree(ORIN, tmp_path)
    for relative in (
        "sys/devices/platform/bus@0/17000000.gpu/load",
        "var/lib/nvpmodel/status",
        "sys/class/thermal/thermal_zone0/temp",
        "sys/devices/system/cpu/cpu3/cpufreq/scaling_max_freq",
    ):
        (root / relative).unlink()
    shutil.rmtree(root / "sys/class/hwmon")
    board = BoardHealthReader(root).read()
    assert board["temperatures_c"]["cpu-thermal"] is None
    assert board["temperatures_c"]["gpu-thermal"] == 51.5
    assert board["gpu_load_pct"] is None
    assert board["power_mode"] is None
    assert board["clocks_locked"] is None  # one online core's limits unknown: unknown, not False
    assert board["overcurrent_events"] == {}
    assert board["throttling"] is False


def test_no_mode_name_without_nvpmodel_conf(tmp_path: Path) -> None:
    root = copy_tree(XAVIER, tmp_path)
    (root / "etc/nvpmodel.conf").unlink()
    assert BoardHealthReader(root).read()["power_mode"] == {"id": 8, "name": None}


def test_only_the_sysfs_tree_of_a_bare_jetson(tmp_path: Path) -> None:
    write(tmp_path, "etc/nv_tegra_release", b"# R32 (release), REVISION: 7.1\n")
    board = BoardHealthReader(tmp_path).read()
    assert board == {
        "jetson": True,
        "temperatures_c": {},
        "gpu_load_pct": None,
        "power_mode": None,
        "clocks_locked": None,
        "throttling": False,
        "throttling_zones": [],
        "overcurrent": False,
        "overcurrent_events": {},
    }


@pytest.mark.parametrize(
    "garbage",
    [b"", b"\n", b"garbage\n", b"\xff\xfe\x00\x01", b"12abc\n", b"9" * 5000, b"-256000\n"],
    ids=["empty", "newline", "text", "binary", "mixed", "oversized", "sensor-off"],
)
def test_garbage_reads_as_null_never_raises(tmp_path: Path, garbage: bytes) -> None:
    root = copy_tree(ORIN, tmp_path)
    for relative in (
        "sys/class/thermal/thermal_zone0/temp",
        "sys/devices/platform/bus@0/17000000.gpu/load",
        "var/lib/nvpmodel/status",
        "sys/class/devfreq/17000000.gpu/min_freq",
        "sys/class/hwmon/hwmon3/oc1_event_cnt",
    ):
        write(root, relative, garbage)
    board = BoardHealthReader(root).read()
    assert board["jetson"] is True and "error" not in board
    assert board["temperatures_c"]["cpu-thermal"] is None
    assert board["gpu_load_pct"] is None
    assert board["power_mode"] is None
    assert board["clocks_locked"] is None
    assert "oc1" not in board["overcurrent_events"]
    json.dumps(board)  # JSON-ready whatever the files held


def test_out_of_range_load_is_null(tmp_path: Path) -> None:
    root = copy_tree(XAVIER, tmp_path)
    write(root, "sys/devices/gpu.0/load", b"1001\n")
    assert BoardHealthReader(root).read()["gpu_load_pct"] is None


def test_special_files_are_refused_without_hanging(tmp_path: Path) -> None:
    root = copy_tree(XAVIER, tmp_path)
    load = root / "sys/devices/gpu.0/load"
    load.unlink()
    os.mkfifo(load)  # a FIFO with no writer would block a plain open()
    status = root / "var/lib/nvpmodel/status"
    status.unlink()
    status.mkdir()
    board = BoardHealthReader(root).read()
    assert board["gpu_load_pct"] is None
    assert board["power_mode"] is None


def test_a_reader_bug_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    reader = BoardHealthReader(ORIN)

    def broken() -> List[Dict[str, Any]]:
        raise RuntimeError("boom")

    monkeypatch.setattr(reader, "thermal_zones", broken)
    assert reader.read() == {"jetson": True, "error": "boom"}


def test_gpu_found_through_the_devfreq_device_link(tmp_path: Path) -> None:
    """As on a device: /sys/class/devfreq/<gpu>/device links to the GPU, whose load is read."""
    root = copy_tree(ORIN, tmp_path)
    shutil.rmtree(root / "sys/devices/platform/bus@0")
    write(root, "sys/devices/platform/17000000.gpu/load", b"455\n")
    os.symlink("../../../devices/platform/17000000.gpu", root / "sys/class/devfreq/17000000.gpu/device")
    assert BoardHealthReader(root).read()["gpu_load_pct"] == 45.5


# -- throttling --------------------------------------------------------------------------------------


def test_a_zone_above_its_passive_trip_is_throttling(tmp_path: Path) -> None:
    root = copy_tree(ORIN, tmp_path)
    write(root, "sys/class/thermal/thermal_zone0/temp", b"99500\n")  # cpu-thermal, passive trip 99 °C
    board = BoardHealthReader(root).read()
    assert board["throttling"] is True
    assert board["throttling_zones"] == [
        {"zone": "cpu-thermal", "temp_c": 99.5, "trip_c": 99.0, "trip": "passive"}
    ]


def test_the_most_severe_trip_reached_is_named(tmp_path: Path) -> None:
    root = copy_tree(XAVIER, tmp_path)
    write(root, "sys/class/thermal/thermal_zone1/temp", b"95600\n")  # GPU-therm: passive 88, hot 95.5
    board = BoardHealthReader(root).read()
    assert board["throttling_zones"] == [{"zone": "GPU-therm", "temp_c": 95.6, "trip_c": 95.5, "trip": "hot"}]


def test_active_and_critical_trips_are_not_throttling() -> None:
    # Xavier's thermal-fan-est (45.9 °C) is above its active (fan) trip at 35 °C.
    assert BoardHealthReader(XAVIER).read()["throttling"] is False


def test_overcurrent_events_since_the_last_sample(tmp_path: Path) -> None:
    root = copy_tree(ORIN, tmp_path)
    reader = BoardHealthReader(root)
    assert reader.read()["overcurrent"] is False  # the first sample has nothing to compare with
    write(root, "sys/class/hwmon/hwmon3/oc3_event_cnt", b"37\n")
    board = reader.read()
    assert board["overcurrent"] is True and board["throttling"] is True
    assert board["throttling_zones"] == []
    assert board["overcurrent_events"]["oc3"] == 37
    assert reader.read()["overcurrent"] is False  # no new event since


# -- the monitor: cache and events --------------------------------------------------------------------


class CountingReader(BoardHealthReader):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads = 0

    def read(self) -> Dict[str, Any]:
        self.reads += 1
        return super().read()


def test_the_monitor_reads_at_most_once_per_interval() -> None:
    clock = Clock()
    reader = CountingReader(ORIN)
    monitor = BoardMonitor(reader, interval_s=5.0, clock=clock)
    first = monitor.document()
    monitor.document()
    clock.now += 4.9
    monitor.document()
    assert reader.reads == 1
    clock.now += 0.2
    assert monitor.document() == first
    assert reader.reads == 2
    first["jetson"] = "changed"  # callers get copies
    assert monitor.document()["jetson"] is True


def test_throttling_start_and_end_are_events(tmp_path: Path) -> None:
    root = copy_tree(ORIN, tmp_path)
    clock = Clock()
    events: List[Tuple[str, Mapping[str, Any]]] = []
    monitor = BoardMonitor(BoardHealthReader(root), interval_s=5.0, clock=clock)
    monitor.attach(lambda kind, details: events.append((kind, details)))
    monitor.document()
    assert events == []
    write(root, "sys/class/thermal/thermal_zone1/temp", b"99200\n")  # gpu-thermal
    clock.now += 5
    monitor.document()
    clock.now += 5
    monitor.document()  # still throttling: no second event
    write(root, "sys/class/thermal/thermal_zone1/temp", b"90000\n")
    clock.now += 5
    monitor.document()
    assert [kind for kind, _ in events] == ["board_throttling", "board_throttling_ended"]
    started = events[0][1]
    assert started["zones"] == [{"zone": "gpu-thermal", "temp_c": 99.2, "trip_c": 99.0, "trip": "passive"}]
    assert started["temperatures_c"]["gpu-thermal"] == 99.2
    assert started["overcurrent"] is False
    assert events[1][1]["zones"] == []


def test_an_emitter_failure_does_not_reach_the_caller(tmp_path: Path) -> None:
    root = copy_tree(ORIN, tmp_path)
    write(root, "sys/class/thermal/thermal_zone0/temp", b"100000\n")
    monitor = BoardMonitor(BoardHealthReader(root))

    def broken(kind: str, details: Mapping[str, Any]) -> None:
        raise OSError("disk full")

    monitor.attach(broken)
    assert monitor.document()["throttling"] is True


def test_throttling_reaches_the_door_topic_through_the_hub(tmp_path: Path) -> None:
    stored: List[Tuple[str, bytes]] = []
    notified: List[bool] = []
    hub = PeripheralHub(
        [],
        "door-1",
        lambda event_id, payload: stored.append((event_id, payload)),
        lambda: notified.append(True),
    )
    root = copy_tree(XAVIER, tmp_path)
    write(root, "sys/class/thermal/thermal_zone0/temp", b"97000\n")  # CPU-therm past hot and critical
    monitor = BoardMonitor(BoardHealthReader(root))
    monitor.attach(hub.emitter("board"))
    monitor.document()
    assert len(stored) == 1 and notified == [True] and hub.events_total == 1
    event = json.loads(stored[0][1])
    assert event["source"] == "board" and event["kind"] == "board_throttling"
    assert event["device_id"] == "door-1" and event["event_id"] == stored[0][0]
    assert event["zones"] == [{"zone": "CPU-therm", "temp_c": 97.0, "trip_c": 95.5, "trip": "hot"}]


# -- …/state and Prometheus ----------------------------------------------------------------------------


def fake_app() -> SimpleNamespace:
    """The parts of an :class:`appliance.daemon.Appliance` the state reporter reads, all idle."""
    config = SimpleNamespace(
        device=SimpleNamespace(id="door-1"),
        backend=SimpleNamespace(type="cpu"),
        match=SimpleNamespace(threshold=0.5),
    )
    none = dict.fromkeys(
        (
            "gallery",
            "worker",
            "recorder",
            "runtime",
            "engines",
            "pipeline",
            "cameras",
            "outbox",
            "link",
            "door",
            "fleet",
            "keeper",
            "templates",
            "area",
        )
    )
    return SimpleNamespace(
        config=config,
        started_at=0.0,
        ready=True,
        degraded=[],
        fps=SimpleNamespace(rate=lambda: 0.0),
        latencies=SimpleNamespace(percentiles=lambda: {}),
        **none,
    )


def test_the_state_document_carries_the_board(tmp_path: Path) -> None:
    root = copy_tree(ORIN, tmp_path)
    reporter = StateReporter(fake_app(), BoardMonitor(BoardHealthReader(root)))  # type: ignore[arg-type]
    state = reporter.state()
    assert state["board"]["power_mode"] == {"id": 2, "name": "MAXN_SUPER"}
    assert state["degraded"] == []
    json.dumps(state)

    write(root, "sys/class/thermal/thermal_zone8/temp", b"104000\n")  # tj: only a critical trip
    write(root, "sys/class/thermal/thermal_zone5/temp", b"99100\n")  # soc0: passive 99 °C
    reporter = StateReporter(fake_app(), BoardMonitor(BoardHealthReader(root)))  # type: ignore[arg-type]
    assert reporter.state()["degraded"] == ["board: throttling (soc0-thermal)"]


def test_off_a_jetson_the_state_says_so_and_prometheus_adds_nothing(tmp_path: Path) -> None:
    reporter = StateReporter(fake_app(), BoardMonitor(BoardHealthReader(tmp_path)))  # type: ignore[arg-type]
    state = reporter.state()
    assert state["board"] == {"jetson": False}
    assert "board" not in prometheus_text(state)


def test_prometheus_gauges_of_the_board() -> None:
    board = BoardHealthReader(XAVIER).read()
    text = prometheus_text({"fps": 12.5, "board": board})
    lines = text.splitlines()
    assert 'face_appliance_board_temperature_celsius{zone="CPU-therm"} 47.5' in lines
    assert 'face_appliance_board_temperature_celsius{zone="Tdiode_tegra"} 43.25' in lines
    assert "face_appliance_gpu_load_ratio 0.237" in lines
    assert "face_appliance_board_throttling 0" in lines
    assert "face_appliance_clocks_locked 1" in lines
    assert 'face_appliance_board_power_mode{id="8",name="MODE_20W_6CORE"} 1' in lines
    assert "face_appliance_fps 12.5" in lines
    assert "# TYPE face_appliance_board_temperature_celsius gauge" in lines
    assert lines.count("# TYPE face_appliance_board_temperature_celsius gauge") == 1
    assert not any(line.startswith("face_appliance_board_temperatures") for line in lines)  # not flattened
    assert not any("overcurrent" in line for line in lines)


def test_prometheus_leaves_unknown_values_out_and_escapes_labels() -> None:
    board = {
        "jetson": True,
        "temperatures_c": {"cv0-thermal": None, 'odd"zone\\\n': 40.0},
        "gpu_load_pct": None,
        "power_mode": None,
        "clocks_locked": None,
        "throttling": True,
    }
    lines = board_metrics(board)
    assert 'face_appliance_board_temperature_celsius{zone="odd\\"zone\\\\\\n"} 40' in lines
    assert not any("cv0" in line for line in lines)
    assert not any(
        line.startswith(("face_appliance_gpu_load_ratio", "face_appliance_clocks_locked")) for line in lines
    )
    assert "face_appliance_board_throttling 1" in lines
    assert board_metrics({"jetson": False}) == []


def test_the_state_counts_kept_faces_and_learnt_templates(tmp_path: Path) -> None:
    app = fake_app()
    reporter = StateReporter(app, BoardMonitor(BoardHealthReader(tmp_path)))  # type: ignore[arg-type]
    state = reporter.state()
    assert state["sightings"] is None and state["adaptive"] is None  # both off
    app.keeper = SimpleNamespace(kept=12, lost=1, error=None)
    app.templates = SimpleNamespace(added=3, refused=Counter({"low margin": 2, "too soon": 5}))
    state = reporter.state()
    assert state["sightings"] == {"kept": 12, "lost": 1, "error": None}
    assert state["adaptive"] == {"added": 3, "refused": {"low margin": 2, "too soon": 5}}
    json.dumps(state)


def test_a_camera_whose_faces_have_no_colour_degrades_the_state(tmp_path: Path) -> None:
    """Liveness cannot judge faces without colour (an infrared / night-mode camera): the state says so
    per camera (``colourless``) and in ``degraded``."""
    app = fake_app()
    lane = SimpleNamespace(colourless=None)
    app.pipeline = SimpleNamespace(settings=SimpleNamespace(threshold=0.5), lanes={"door": lane})
    app.cameras = [SimpleNamespace(status=lambda: {"id": "door", "state": "running"})]
    reporter = StateReporter(app, BoardMonitor(BoardHealthReader(tmp_path)))  # type: ignore[arg-type]
    assert reporter.state()["cameras"][0]["colourless"] is None and reporter.state()["degraded"] == []
    lane.colourless = True
    state = reporter.state()
    assert state["cameras"][0]["colourless"] is True
    (line,) = state["degraded"]
    assert line.startswith("camera: faces without colour") and "denied for liveness" in line
    lane.colourless = False
    assert reporter.state()["degraded"] == []
