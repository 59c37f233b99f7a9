"""The door's GPIO back-ends, each against a double of its library at the library's own API.

No GPIO hardware and no ``gpio-sim`` kernel module exist here, so ``tests/fake_gpio.py`` doubles
``gpiod`` 2.x, libgpiod v1's ``gpiod`` and ``Jetson.GPIO`` over simulated chips. The doubles cannot
drift from the real libraries unnoticed: their names are checked against the installed ``gpiod``
wheel, against a real libgpiod v1 binding when a Python here has one (apt ``python3-libgpiod``), and
against Jetson.GPIO's source when it is installed. The real ``gpiod`` wheel is also run where it
needs no chip (a missing chip, a device that is not a chip).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import importlib.util
import inspect
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, Iterator, Optional, Set, Tuple

import pytest

from appliance.door.doctor import doctor_checks
from appliance.door.errors import DoorError, DoorLineBusyError
from appliance.door.gpiod2 import Gpiod2Lines
from appliance.door.lines import (
    CONSUMER,
    DoorLines,
    gpiod_api,
    import_gpiod,
    line_specs,
    open_lines,
    resolve_backend,
)
from appliance.door.settings import DoorConfig
from tests.fake_gpio import GpioSim, door_config, door_sim, gpiod_v1, gpiod_v2, install, jetson_gpio

BACKENDS = ("gpiod", "gpiod1", "jetson-gpio")
CHIP0 = "/dev/gpiochip0"


WIRED: Dict[str, Any] = {
    "enabled": True,
    "relay": {"line": 12},
    "contact": {"line": 13},
    "exit": {"line": 14},
}


def _config(backend: str, **door: Any) -> DoorConfig:
    config: DoorConfig = door_config(WIRED, {"backend": backend}, **door)
    return config


@pytest.fixture
def sim() -> GpioSim:
    return door_sim()


@pytest.fixture
def wake() -> Iterator[Tuple[int, int]]:
    read_fd, write_fd = os.pipe()
    yield read_fd, write_fd
    os.close(read_fd)
    os.close(write_fd)


@contextlib.contextmanager
def _opened(backend: str, **door: Any) -> Iterator[DoorLines]:
    """The lines of ``_config(backend, **door)``, released at the end."""
    lines = open_lines(_config(backend, **door))
    try:
        yield lines
    finally:
        lines.close()


def _wait(lines: DoorLines, wake_fd: int) -> bool:
    """``lines.wait`` with a long timeout, which must end early (an edge, the wake fd, a poll)."""
    started = time.monotonic()
    result = lines.wait(30.0, wake_fd)
    assert time.monotonic() - started < 30.0
    return result


def _public(obj: Any) -> Set[str]:
    return {name for name in dir(obj) if not name.startswith("_")}


# -- one contract, three back-ends -----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_relay_and_inputs(backend: str, sim: GpioSim, monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, backend, sim)
    relay = sim.line(CHIP0, 12)
    with _opened(backend) as lines:
        assert lines.backend == backend
        assert relay.consumer == CONSUMER and relay.output and not relay.level  # requested, released
        lines.set_relay(True)
        assert relay.level
        assert lines.read_inputs() == {"contact": False, "exit": False}
        sim.set_input(CHIP0, 13, True)
        sim.set_input(CHIP0, 14, True)
        assert lines.read_inputs() == {"contact": True, "exit": True}
        lines.set_relay(False)
        assert not relay.level
    assert sim.held() == []
    lines.close()  # idempotent


@pytest.mark.parametrize("backend", ("gpiod", "gpiod1"))
def test_active_low_lines_invert(backend: str, sim: GpioSim, monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, backend, sim)
    with _opened(backend, relay={"active_low": True}, contact={"active_low": True}) as lines:
        assert sim.line(CHIP0, 12).level  # released = high for an active-low relay
        lines.set_relay(True)
        assert not sim.line(CHIP0, 12).level
        assert lines.read_inputs()["contact"]  # the contact line is low: the door is open
        sim.set_input(CHIP0, 13, True)
        assert not lines.read_inputs()["contact"]


def test_jetson_gpio_active_low_and_initial_level(sim: GpioSim, monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, "jetson-gpio", sim)
    with _opened("jetson-gpio", relay={"active_low": True}, contact={"active_low": True}) as lines:
        # Jetson.GPIO starts an output HIGH unless told: the back-end always passes `initial`.
        assert sim.line(CHIP0, 12).level
        lines.set_relay(True)
        assert not sim.line(CHIP0, 12).level
        assert lines.read_inputs() == {"contact": True, "exit": False}


@pytest.mark.parametrize("backend", ("gpiod", "gpiod1"))
def test_an_edge_ends_the_wait(
    backend: str, sim: GpioSim, wake: Tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    install(monkeypatch, backend, sim)
    with _opened(backend) as lines:
        assert not lines.wait(0.0, wake[0])
        sim.bounce(CHIP0, 13, [True, False, True])
        assert _wait(lines, wake[0])
        assert not lines.wait(0.0, wake[0])  # every pending event was read


def test_jetson_gpio_is_polled(sim: GpioSim, wake: Tuple[int, int], monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, "jetson-gpio", sim)
    with _opened("jetson-gpio", poll_interval_s=0.01) as lines:
        assert lines.poll_interval == 0.01 and lines.event_fds() == []
        assert not _wait(lines, wake[0])  # it returns after the poll interval


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_wake_fd_ends_the_wait(
    backend: str, sim: GpioSim, wake: Tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    install(monkeypatch, backend, sim)
    with _opened(backend) as lines:
        os.write(wake[1], b"\0")
        assert not _wait(lines, wake[0])


# -- what each back-end asks of its library --------------------------------------------------------------------


def test_gpiod_v2_line_settings(sim: GpioSim, monkeypatch: pytest.MonkeyPatch) -> None:
    gpiod = install(monkeypatch, "gpiod", sim)
    with _opened(
        "gpiod",
        relay={"line": "RELAY", "drive": "open-drain"},
        contact={"line": 3, "chip": "/dev/gpiochip1", "bias": "pull-up", "debounce_s": 0.02},
        exit={"line": "REX", "bias": "pull-down"},
    ) as lines:
        relay = sim.line(CHIP0, 12).settings
        assert relay.direction == gpiod.line.Direction.OUTPUT
        assert relay.drive == gpiod.line.Drive.OPEN_DRAIN
        assert relay.output_value == gpiod.line.Value.INACTIVE
        contact = sim.line("/dev/gpiochip1", 3).settings
        assert contact.direction == gpiod.line.Direction.INPUT
        assert contact.edge_detection == gpiod.line.Edge.BOTH
        assert contact.bias == gpiod.line.Bias.PULL_UP
        assert contact.debounce_period == timedelta(seconds=0.02)
        assert sim.line(CHIP0, 14).settings.bias == gpiod.line.Bias.PULL_DOWN
        assert sim.line(CHIP0, 12).consumer == CONSUMER
        # One request per chip; both hold an input, so both fds are watched.
        assert len(lines.event_fds()) == 2


def test_gpiod_v1_request_flags(sim: GpioSim, monkeypatch: pytest.MonkeyPatch) -> None:
    gpiod = install(monkeypatch, "gpiod1", sim)
    with _opened(
        "gpiod1",
        relay={"line": "RELAY", "active_low": True, "drive": "open-source"},
        contact={"bias": "pull-up"},
    ):
        relay = sim.line(CHIP0, 12).settings
        assert relay["type"] == gpiod.LINE_REQ_DIR_OUT
        assert relay["flags"] == gpiod.LINE_REQ_FLAG_ACTIVE_LOW | gpiod.LINE_REQ_FLAG_OPEN_SOURCE
        contact = sim.line(CHIP0, 13).settings
        assert contact == {"type": gpiod.LINE_REQ_EV_BOTH_EDGES, "flags": gpiod.LINE_REQ_FLAG_BIAS_PULL_UP}


def test_gpiod_v1_before_1_5_has_no_pull_resistors(sim: GpioSim, monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, "gpiod1", sim, bias_flags=False)
    with pytest.raises(DoorError, match=r"door\.contact\.bias: .*1\.4\.1-fake.*LINE_REQ_FLAG_BIAS_PULL_UP"):
        open_lines(_config("gpiod1", contact={"bias": "pull-up"}))
    assert sim.held() == []  # the relay requested first was released again
    open_lines(_config("gpiod1")).close()  # without a bias it works


# -- refusals that name the key ----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ("gpiod", "gpiod1"))
def test_a_missing_chip(backend: str, sim: GpioSim, monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, backend, sim)
    with pytest.raises(
        DoorError, match=r"door\.contact\.chip = '/dev/gpiochip7': no such GPIO chip; chips here"
    ):
        open_lines(_config(backend, contact={"chip": "/dev/gpiochip7"}))
    assert sim.held() == []


@pytest.mark.parametrize("backend", ("gpiod", "gpiod1"))
def test_a_chip_this_user_may_not_open(backend: str, sim: GpioSim, monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, backend, sim)
    sim.denied.append(CHIP0)
    with pytest.raises(
        DoorError, match=r"door\.chip = '/dev/gpiochip0': permission denied; run the service as"
    ):
        open_lines(_config(backend))


@pytest.mark.parametrize("backend", ("gpiod", "gpiod1"))
@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("STRIKE", r"door\.relay\.line = 'STRIKE': no line of that name on /dev/gpiochip0 \(64 lines\)"),
        (99, r"door\.relay\.line = 99: /dev/gpiochip0 has 64 lines \(offsets 0 to 63\)"),
    ],
)
def test_a_line_not_on_the_chip(
    backend: str, line: Any, words: str, sim: GpioSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(monkeypatch, backend, sim)
    with pytest.raises(DoorError, match=words):
        open_lines(_config(backend, relay={"line": line}))


@pytest.mark.parametrize("backend", ("gpiod", "gpiod1"))
def test_a_line_someone_else_holds(backend: str, sim: GpioSim, monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, backend, sim)
    sim.hold(CHIP0, 13, "alarm-panel")
    with pytest.raises(
        DoorLineBusyError, match=r"door\.contact\.line = 13: .* in use by 'alarm-panel'"
    ) as caught:
        open_lines(_config(backend))
    assert caught.value.consumer == "alarm-panel"
    assert sim.held() == [(CHIP0, 13)]  # nothing of ours is left held


def test_jetson_gpio_refusals(sim: GpioSim, monkeypatch: pytest.MonkeyPatch) -> None:
    gpio = install(monkeypatch, "jetson-gpio", sim)
    with pytest.raises(
        DoorError, match=r"door\.relay\.line = 99: Jetson\.GPIO cannot set up this pin in BOARD"
    ):
        open_lines(_config("jetson-gpio", relay={"line": 99}))
    assert sim.held() == []
    gpio = install(monkeypatch, "jetson-gpio", sim)
    gpio.setmode(gpio.BCM)  # another part of the process chose another numbering
    with pytest.raises(DoorError, match=r"door\.jetson_pin_mode = 'BOARD': Jetson\.GPIO refused it"):
        open_lines(_config("jetson-gpio"))


def test_jetson_gpio_that_will_not_load(monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance.door import jetson_gpio as module

    monkeypatch.setitem(sys.modules, "Jetson.GPIO", None)
    with pytest.raises(DoorError, match=r"Jetson\.GPIO is not installed .* pip install Jetson\.GPIO"):
        module.import_jetson_gpio()

    def off_a_jetson(name: str) -> ModuleType:
        raise RuntimeError("Could not determine Jetson model")

    monkeypatch.setattr(module.importlib, "import_module", off_a_jetson)
    with pytest.raises(
        DoorError, match=r"refused to load: Could not determine Jetson model; it runs on a Jetson"
    ):
        module.import_jetson_gpio()


# -- choosing the binding --------------------------------------------------------------------------------------


def test_auto_takes_whichever_gpiod_imports(sim: GpioSim, monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, "gpiod", sim)
    assert resolve_backend(_config("auto")) == "gpiod"
    install(monkeypatch, "gpiod1", sim)
    assert resolve_backend(_config("auto")) == "gpiod1"
    lines = open_lines(_config("auto"))
    assert lines.backend == "gpiod1"
    lines.close()
    assert resolve_backend(_config("jetson-gpio")) == "jetson-gpio"  # never chosen by auto


def test_a_gpiod_that_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gpiod", None)
    with pytest.raises(
        DoorError, match=r"`import gpiod` failed on Python 3\.\d+ .*pip install 'gpiod>=2\.2'"
    ):
        import_gpiod("gpiod")
    with pytest.raises(DoorError, match=r"apt install python3-libgpiod .*--system-site-packages"):
        import_gpiod("gpiod1")


def test_the_wrong_gpiod(sim: GpioSim, monkeypatch: pytest.MonkeyPatch) -> None:
    unrelated = ModuleType("gpiod")  # PyPI's pure-Python gpiod 1.5 (what pip picks on Python 3.8)
    unrelated.chip = object  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gpiod", unrelated)
    with pytest.raises(
        DoorError, match=r"neither libgpiod v2 nor libgpiod v1 .*unrelated pure-Python gpiod 1\.5"
    ):
        import_gpiod(None)
    install(monkeypatch, "gpiod1", sim)
    with pytest.raises(DoorError, match=r"finds libgpiod v1 .*set door\.backend = 'gpiod1'"):
        open_lines(_config("gpiod"))
    install(monkeypatch, "gpiod", sim)
    with pytest.raises(DoorError, match=r"finds libgpiod v2 \(gpiod 2\.x\) .*set door\.backend = 'gpiod'"):
        open_lines(_config("gpiod1"))


# -- doctor ---------------------------------------------------------------------------------------------------------


def _rows(config: DoorConfig) -> Dict[str, Tuple[str, str]]:
    return {subject: (status, detail) for status, subject, detail, _ in doctor_checks(config)}


def test_doctor_on_a_good_setup(sim: GpioSim, monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, "gpiod", sim)
    sim.set_input(CHIP0, 14, True)
    rows = _rows(_config("auto", exit={"line": 2, "chip": "/dev/gpiochip1"}))
    assert rows["door back-end"] == ("ok", "gpiod imports")
    assert rows["door chip /dev/gpiochip0"] == ("ok", "opens: 'sim-gpiochip0', 64 lines")
    assert rows["door chip /dev/gpiochip1"][0] == "ok"
    status, detail = rows["door lines"]
    assert status == "ok" and "requested and released (door closed; exit released)" in detail
    assert sim.held() == []
    assert doctor_checks(DoorConfig()) == [("ok", "door", "door I/O is off (door.enabled = false)", "")]


@pytest.mark.parametrize("backend", BACKENDS)
def test_doctor_finds_what_is_wrong(backend: str, sim: GpioSim, monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, backend, sim)
    sim.hold(CHIP0, 13, CONSUMER)  # the running appliance holds its lines: fine
    # Jetson.GPIO cannot tell who holds a pin: a warning, not a failure.
    assert _rows(_config(backend))["door lines"][0] == ("warn" if backend == "jetson-gpio" else "ok")
    sim.hold(CHIP0, 13, "alarm-panel")
    status, detail = _rows(_config(backend))["door lines"]
    assert status in ("warn" if backend == "jetson-gpio" else "fail") and "door.contact.line" in detail
    rows = _rows(_config(backend, contact={"line": None}))
    assert rows["door contact"][0] == "warn"


def test_doctor_names_a_missing_chip_and_back_end(sim: GpioSim, monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, "gpiod1", sim)
    rows = _rows(_config("gpiod1", chip="/dev/gpiochip5"))
    assert rows["door chip /dev/gpiochip5"][0] == "fail"
    assert "no such GPIO chip" in rows["door chip /dev/gpiochip5"][1]
    assert "door lines" not in rows
    monkeypatch.setitem(sys.modules, "gpiod", None)
    [(status, subject, detail, hint)] = doctor_checks(_config("gpiod"))
    assert (status, subject) == ("fail", "door back-end") and "import gpiod" in detail and "gpiod1" in hint


# -- the doubles against the real libraries ------------------------------------------------------------------------


def _real_gpiod_v2() -> ModuleType:
    real = pytest.importorskip("gpiod", reason="gpiod 2.x is not installed (Python < 3.9 has no wheel)")
    if gpiod_api(real) != "gpiod":
        pytest.skip(f"the installed gpiod is not libgpiod v2: {real.__file__}")
    return real


def test_the_v2_double_has_the_real_wheels_names() -> None:
    real = _real_gpiod_v2()
    fake = gpiod_v2(GpioSim())
    assert _public(fake) <= _public(real)
    for name in ("Direction", "Value", "Edge", "Bias", "Drive", "Clock"):
        assert list(getattr(fake.line, name).__members__) == list(getattr(real.line, name).__members__), name
    real_fields = {f.name: f.default for f in dataclasses.fields(real.LineSettings)}
    fake_fields = {f.name: f.default for f in dataclasses.fields(fake.LineSettings)}
    assert list(fake_fields) == list(real_fields)
    for name, default in real_fields.items():
        assert getattr(fake_fields[name], "name", fake_fields[name]) == getattr(default, "name", default), (
            name
        )
    for cls in ("Chip", "LineRequest"):
        assert _public(getattr(fake, cls)) <= _public(getattr(real, cls)), cls
    for cls in ("ChipInfo", "LineInfo"):
        fields = [f.name for f in dataclasses.fields(getattr(real, cls))]
        assert [f.name for f in dataclasses.fields(getattr(fake, cls))] == fields, cls
    assert list(fake.EdgeEvent.Type.__members__) == list(real.EdgeEvent.Type.__members__)
    event_fields = [f.name for f in dataclasses.fields(real.EdgeEvent)]
    assert list(inspect.signature(fake.EdgeEvent).parameters) == event_fields
    for path in (
        "request_lines",
        "Chip.request_lines",
        "Chip.get_line_info",
        "Chip.line_offset_from_id",
        "LineRequest.get_value",
        "LineRequest.set_value",
        "LineRequest.read_edge_events",
        "LineRequest.release",
    ):
        signatures = []
        for module in (fake, real):
            obj: Any = module
            for part in path.split("."):
                obj = getattr(obj, part)
            signatures.append(list(inspect.signature(obj).parameters))
        assert signatures[0] == signatures[1], path
    assert isinstance(inspect.getattr_static(real.LineRequest, "fd"), property)


def test_the_real_wheel_on_a_machine_without_the_chip(tmp_path: Path) -> None:
    real = _real_gpiod_v2()
    config = _config("gpiod", chip="/dev/gpiochip-not-here")
    with pytest.raises(
        DoorError, match=r"door\.chip = '/dev/gpiochip-not-here': no such GPIO chip; chips here"
    ):
        Gpiod2Lines(line_specs(config), real)
    with pytest.raises(DoorError, match=r"door\.chip = '/dev/null': not a GPIO chip device"):
        Gpiod2Lines(line_specs(_config("gpiod", chip="/dev/null")), real)


_V1_PROBE = """
import errno, json, gpiod
assert hasattr(gpiod, "LINE_REQ_EV_BOTH_EDGES"), "not libgpiod v1"
try:
    gpiod.Chip("/dev/gpiochip-not-here", gpiod.Chip.OPEN_BY_PATH)
    missing = None
except OSError as err:
    missing = err.errno
print(json.dumps({"module": dir(gpiod), "Chip": dir(gpiod.Chip), "Line": dir(gpiod.Line),
                  "LineEvent": dir(gpiod.LineEvent), "version": gpiod.version_string(), "missing": missing}))
"""


def _real_gpiod_v1() -> Dict[str, Any]:
    """What a real libgpiod v1 binding on this machine has (apt python3-libgpiod, system Python)."""
    candidates = ["/usr/bin/python3", shutil.which("python3"), sys.executable]
    for python in dict.fromkeys(c for c in candidates if c):
        try:
            done = subprocess.run(
                [python, "-c", _V1_PROBE], check=False, capture_output=True, text=True, timeout=60
            )
        except OSError:
            continue
        if done.returncode == 0:
            return dict(json.loads(done.stdout))
    pytest.skip("no Python here has libgpiod v1's binding (apt install python3-libgpiod to check the double)")


def test_the_v1_double_has_the_real_bindings_names() -> None:
    real = _real_gpiod_v1()
    fake = gpiod_v1(GpioSim())
    assert _public(fake) <= set(real["module"])
    assert _public(fake.Chip) <= set(real["Chip"])
    assert _public(fake.Line) <= set(real["Line"])
    event = fake.LineEvent(fake.LineEvent.RISING_EDGE, source=None)
    assert _public(event) <= set(real["LineEvent"])
    assert real["missing"] == errno.ENOENT  # what chip_error() reads as "no such GPIO chip"


def _real_jetson_gpio_names() -> Optional[Set[str]]:
    import ast

    spec = importlib.util.find_spec("Jetson")  # finds, does not import (Jetson.GPIO probes the board)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "GPIO"
    names: Set[str] = set()
    for file in ("__init__.py", "gpio.py", "constants.py"):
        path = folder / file
        if not path.exists():
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef):
                names.add(node.name)
                if node.name == "setup":
                    names.update(f"setup({arg.arg})" for arg in node.args.args)
            elif isinstance(node, ast.Assign):
                names.update(target.id for target in node.targets if isinstance(target, ast.Name))
    return names


def test_the_jetson_gpio_double_has_the_real_names() -> None:
    names = _real_jetson_gpio_names()
    if names is None:
        pytest.skip("Jetson.GPIO is not installed (pip install Jetson.GPIO: pure Python, installs anywhere)")
    fake = jetson_gpio(GpioSim())
    assert _public(fake) <= names
    assert {"setup(initial)", "setup(pull_up_down)"} <= names


def test_lines_interface_is_small() -> None:
    abstract = {
        name for name, value in vars(DoorLines).items() if getattr(value, "__isabstractmethod__", False)
    }
    assert abstract == {"set_relay", "read_inputs", "close"}
