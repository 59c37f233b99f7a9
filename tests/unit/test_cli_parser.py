"""The command line's lazy parser: the sub-command table agrees with the modules it names, ``--help``
reads the same with or without them imported, and the sub-command is found in any spelling of the
top-level options. (Which modules a process imports is tests/integration/test_cli_imports.py.)"""

from __future__ import annotations

import argparse
import importlib
from typing import Dict, List

import pytest

from appliance import cli


def _help_by_command(parser: argparse.ArgumentParser) -> Dict[str, str]:
    (subparsers,) = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return {action.dest: action.help or "" for action in subparsers._choices_actions}


def test_the_table_lists_every_command_its_modules_define_with_their_help() -> None:
    complete = _help_by_command(cli.build_parser())
    table = {name: text for name, _, text in cli._COMMANDS}
    assert complete == table
    assert list(complete) == list(table)  # --help lists them in the table's order
    for name, module_name, _ in cli._COMMANDS:  # each module defines the commands the table gives it
        subparsers = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(f"appliance.cli.{module_name}").add_parser(subparsers)
        assert name in subparsers.choices, (name, module_name)


def test_help_without_the_modules_reads_as_the_complete_one() -> None:
    assert cli.build_parser([]).format_help() == cli.build_parser().format_help()


def _choices(parser: argparse.ArgumentParser) -> Dict[str, argparse.ArgumentParser]:
    (subparsers,) = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return dict(subparsers.choices)


@pytest.mark.parametrize("command", [name for name, _, _ in cli._COMMANDS])
def test_a_command_parsed_alone_gets_its_own_parser_and_stubs_for_the_others(command: str) -> None:
    module = {name: module for name, module, _ in cli._COMMANDS}[command]
    alone, complete = _choices(cli.build_parser([command])), _choices(cli.build_parser())
    for name, parser in alone.items():
        if {n: m for n, m, _ in cli._COMMANDS}[name] == module:
            assert parser.format_help() == complete[name].format_help()
        else:  # a stub: no options, no handler
            assert not parser.add_help and parser.get_default("handler") is None


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        ([], None),
        (["--help"], None),
        (["--version"], None),
        (["detect", "a.jpg"], "detect"),
        (["--log-level", "DEBUG", "config", "check"], "config"),
        (["--log-level=DEBUG", "config", "check"], "config"),
        (["--log", "DEBUG", "evaluate", "dir"], "evaluate"),
        (["--l", "INFO", "run"], "run"),
        (["-h", "doctor"], "doctor"),
        (["--log-level", "DEBUG"], None),
        (["push-model", "--log-level", "x"], "push-model"),
    ],
)
def test_the_command_is_found_as_argparse_reads_the_line(argv: List[str], command: str) -> None:
    assert cli.command_in(argv) == command


def test_a_stub_chosen_by_mistake_is_parsed_again_with_every_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(cli, "command_in", lambda argv: None)  # as if the line were misread
    assert cli.main(["--log-level", "WARNING", "config", "default"]) == cli.EXIT_OK
    assert "[mqtt]" in capsys.readouterr().out


def test_usage_errors_exit_2_and_name_the_commands(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["no-such-command"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'no-such-command'" in err and "'evaluate'" in err
