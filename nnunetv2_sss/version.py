"""The plugin's version where users see it: one line for training logs and records, and the parser of every
``nnUNetv2_sss_*`` command (the version in ``--help`` and ``--version``)."""
from __future__ import annotations

import argparse
from importlib.metadata import PackageNotFoundError, version
from typing import Optional

from nnunetv2_sss import __version__

PLUGIN = f"nnunetv2-sss {__version__}"


def _installed(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def version_line() -> str:
    """``nnunetv2-sss X.Y.Z (nnunetv2 A.B.C, torch D.E.F)``: what a training log and a record say."""
    return f"{PLUGIN} (nnunetv2 {_installed('nnunetv2')}, torch {_installed('torch')})"


def command_parser(description: Optional[str] = None, **kwargs) -> argparse.ArgumentParser:
    """``argparse.ArgumentParser(description=..., **kwargs)`` with the plugin's version at the head of the
    description and a ``--version`` option."""
    parser = argparse.ArgumentParser(description=f"{PLUGIN}: {description}" if description else PLUGIN, **kwargs)
    parser.add_argument("--version", action="version", version=PLUGIN)
    return parser
