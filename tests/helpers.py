"""Running the real nnU-Net / plugin commands from tests."""
from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional

import pytest

from nnunetv2_sss.evaluation.study.executor import cpu_share

BIN = os.path.dirname(sys.executable)
# the suite's pytest-xdist workers share the machine's cores: each test's trainings get their share of torch
# threads (nnUNet_sss_cpu_threads, OMP_NUM_THREADS), the study's --jobs N share, not one per core each
# (nnU-Net's default on the CPU): two workers with two threads each ran the suite 1.15x slower
CPU_SHARE = str(cpu_share(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))


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


def kill_at_first_output(args: List[str], env: Dict[str, str], folder: pathlib.Path, pattern: str,
                         timeout: float = 300) -> int:
    """Start a console script, SIGKILL it as soon as ``folder`` holds a file matching ``pattern`` (what it
    writes per finished case); returns how many such files were there after the kill."""
    command = [os.path.join(BIN, args[0])] + [str(a) for a in args[1:]]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    while time.time() < deadline and not list(folder.glob(pattern)):
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return len(list(folder.glob(pattern)))


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
