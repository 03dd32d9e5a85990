"""The CLI as a person meets it: --version and a help text for every argument of every command."""

from __future__ import annotations

import argparse

import pytest

from jaxtl import cli


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def test_every_argument_of_every_command_has_help():
    parser = cli.build_parser()
    commands = _subparsers(parser)
    assert {"finetune", "pretrain", "evaluate", "predict", "export", "convert"} <= set(commands)
    missing = [
        f"{name} {'/'.join(action.option_strings) or action.dest}"
        for name, sub in commands.items()
        for action in sub._actions
        if not isinstance(action, argparse._HelpAction) and not (action.help or "").strip()
    ]
    assert not missing, f"arguments without --help text: {missing}"


def test_version(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("jaxtl ")
