"""Running the real nnU-Net / plugin commands from tests."""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Dict, List, Optional

import pytest

BIN = os.path.dirname(sys.executable)


def run_cli(args: List[str], env: Dict[str, str], timeout: float = 900, expect_failure: bool = False,
            cwd: Optional[str] = None) -> subprocess.CompletedProcess:
    """Run a console script of this virtual environment (in ``cwd``, default the current folder); fail the
    test with its output on a non-zero exit (or on success when ``expect_failure``)."""
    command = [os.path.join(BIN, args[0])] + [str(a) for a in args[1:]]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    failed = result.returncode != 0
    if failed != expect_failure:
        pytest.fail(f"{' '.join(command)} exited {result.returncode}\n--- stdout ---\n{result.stdout[-6000:]}"
                    f"\n--- stderr ---\n{result.stderr[-6000:]}")
    return result


def train_in_process(monkeypatch, env: Dict[str, str], dataset_id, configuration: str, fold: str, trainer: str,
                     device: str = "cpu") -> str:
    """nnUNetv2_train's own ``run_training`` in this process, with ``env`` as the environment (nnU-Net and
    the plugin read their variables when used); returns what the training exited with (``SystemExit``'s
    message, e.g. ``ERROR: ...``), fails the test if it did not exit."""
    import torch
    from nnunetv2.run.run_training import run_training
    for key in [k for k in os.environ if k.startswith(("nnUNet_", "nnunet_"))]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    with pytest.raises(SystemExit) as exit_info:
        run_training(str(dataset_id), configuration, fold, trainer, device=torch.device(device))
    return str(exit_info.value.code)
