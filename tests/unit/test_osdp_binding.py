"""The libosdp names the reader and the tests use, pinned against the installed module.

The reader drives ``osdp_sys`` (libosdp's C extension) directly: its ``osdp`` wrapper does not
import on Python 3.8, whose last wheel (3.2.0) is what a JetPack 5 board gets. Importing
``appliance.osdp`` must not load libosdp at all.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from typing import Any

import pytest

from appliance.osdp import binding, commands
from appliance.osdp.reader import OsdpReader
from appliance.osdp.settings import OsdpConfig
from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def lib() -> Any:
    try:
        return importlib.import_module(binding.MODULE)
    except ImportError as err:
        pytest.fail(f"libosdp is not installed ({err}): pip install -e '.[osdp]'", pytrace=False)


def test_every_name_the_reader_uses_exists(lib: Any) -> None:
    assert binding.load() is lib
    for name in binding.CONSTANTS:
        assert isinstance(getattr(lib, name), int), name
    for method in binding.PD_METHODS:
        assert callable(getattr(lib.PeripheralDevice, method)), method
    assert callable(lib.set_loglevel)


def test_osdp_colour_codes_and_command_ids(lib: Any) -> None:
    for code, name in commands.LED_COLORS.items():
        constant = "NONE" if name == "black" else name.upper()
        assert getattr(lib, f"LED_COLOR_{constant}") == code
    names = binding.command_names(lib)
    assert len(names) == len(set(names.values())) == 10
    assert names[lib.CMD_LED] == "led" and names[lib.CMD_KEYSET] == "keyset"
    assert lib.CARD_FMT_RAW_UNSPECIFIED == 0 and lib.CARD_FMT_RAW_WIEGAND == 1  # OSDP's osdp_RAW formats


@pytest.mark.skipif(sys.version_info < (3, 9), reason="libosdp's osdp wrapper does not import on Python 3.8")
def test_the_wrapper_names_the_tests_use() -> None:
    osdp = importlib.import_module("osdp")
    for name in ("start", "teardown", "submit_command", "is_sc_active", "is_online"):
        assert callable(getattr(osdp.ControlPanel, name)), name
    assert {osdp.Command.LED, osdp.Command.Buzzer, osdp.Command.Text, osdp.Command.Keyset}
    assert osdp.CommandLEDColor.Green == commands.GREEN and osdp.CommandLEDColor.Red == commands.RED
    assert osdp.Event.CardRead and osdp.CardFormat.Wiegand == 1 and osdp.LogLevel.Emergency == 0
    assert osdp.PDInfo(1, object(), scbk=bytes(16)).get()["address"] == 1


def test_importing_the_package_does_not_load_libosdp() -> None:
    probe = (
        "import sys, appliance.config, appliance.osdp, appliance.osdp.doctor, appliance.osdp.reader; "
        "assert 'osdp_sys' not in sys.modules and 'osdp' not in sys.modules, sorted(sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


def test_the_command_callback_returns_a_fresh_tuple_every_time() -> None:
    # libosdp's C callback drops a reference to the tuple's second item it never took: a constant
    # `(0, None)` would take one reference from None per panel command (fatal on Python < 3.12).
    reader = OsdpReader(OsdpConfig(enabled=True, port="/dev/null", scbk_file="/nonexistent"))
    first = reader._on_command({"command": -1})
    second = reader._on_command({"command": -1})
    assert first == second == (0, None) and first is not second
