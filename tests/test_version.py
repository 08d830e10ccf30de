"""The plugin's version: one number (``nnunetv2_sss.__version__``), the installed package's, in ``--help`` and
``--version`` of every command and in the line training logs and records carry."""
from __future__ import annotations

from importlib.metadata import version

import pytest

import nnunetv2_sss
from doc_checks import command_parser, console_scripts
from nnunetv2_sss.version import PLUGIN, version_line

PLUGIN_COMMANDS = sorted(name for name in console_scripts() if name.startswith("nnUNetv2_sss_"))
# the study's parser is rebuilt in another branch at the same time; it takes command_parser when both merge


def test_one_version_number():
    assert version("nnunetv2-sss") == nnunetv2_sss.__version__
    assert PLUGIN == f"nnunetv2-sss {nnunetv2_sss.__version__}"
    assert version_line().startswith(PLUGIN + " (nnunetv2 ") and ", torch " in version_line()


@pytest.mark.parametrize("command", PLUGIN_COMMANDS)
def test_every_command_says_its_version(command, capsys):
    parser = command_parser(command)
    assert parser is not None, f"{command} has no argparse parser"
    assert parser.description.startswith(PLUGIN), parser.description
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == PLUGIN
