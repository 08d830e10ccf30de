"""Running the real nnU-Net / plugin commands from tests."""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Dict, List

import pytest

BIN = os.path.dirname(sys.executable)


def run_cli(args: List[str], env: Dict[str, str], timeout: float = 900, expect_failure: bool = False
            ) -> subprocess.CompletedProcess:
    """Run a console script of this virtual environment; fail the test with its output on a
    non-zero exit (or on success when ``expect_failure``)."""
    command = [os.path.join(BIN, args[0])] + [str(a) for a in args[1:]]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    failed = result.returncode != 0
    if failed != expect_failure:
        pytest.fail(f"{' '.join(command)} exited {result.returncode}\n--- stdout ---\n{result.stdout[-6000:]}"
                    f"\n--- stderr ---\n{result.stderr[-6000:]}")
    return result
