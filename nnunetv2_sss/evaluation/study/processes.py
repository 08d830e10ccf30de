"""Child processes of the study (and the demo): console scripts of this environment that die with
the process that started them (``PR_SET_PDEATHSIG`` on Linux), their output in a log file or not."""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from typing import Sequence

from nnunetv2_sss.errors import UserRuntimeError


def die_with_parent() -> None:
    """``preexec_fn``: the child gets SIGKILL when its parent dies (Linux only) and ignores SIGUSR2, the warning
    SLURM sends a job's processes before its time limit (submitit's cue to requeue the study's job)."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: children may outlive a killed parent
        pass


def console_script(name: str) -> str:
    """The console script ``name`` of this environment (next to the running Python)."""
    return os.path.join(os.path.dirname(sys.executable), name)


def run_child(command: Sequence, env: dict, **options) -> subprocess.CompletedProcess:
    """``subprocess.run`` of the console script ``command[0]`` with the other items (``str``-ed) as its
    arguments; the child dies with this process."""
    return subprocess.run([console_script(command[0])] + [str(c) for c in command[1:]], env=env,
                          preexec_fn=die_with_parent if sys.platform.startswith("linux") else None, **options)


def run_logged(command: Sequence, env: dict, log: str) -> float:
    """:func:`run_child` with its output in ``log``; its seconds. A failure stops the study: one
    :class:`UserRuntimeError` with the child's last ``ERROR`` line (else its last line) and the log."""
    os.makedirs(os.path.dirname(log), exist_ok=True)
    started = time.time()
    with open(log, "w") as f:
        f.write("$ " + " ".join(shlex.quote(str(c)) for c in [console_script(command[0])] + list(command[1:])) + "\n")
        f.flush()
        completed = run_child(command, env, stdout=f, stderr=subprocess.STDOUT)
    if completed.returncode != 0:
        with open(log, errors="replace") as f:
            text = f.read()
        errors = [line for line in text.splitlines() if line.startswith("ERROR")]
        last = errors[-1] if errors else (text.strip().splitlines() or [""])[-1]
        raise UserRuntimeError(f"{command[0]} exited with code {completed.returncode} ({last.strip()[:300]}); "
                               f"full output: {log}")
    return time.time() - started
