"""Where the study's jobs run: the :class:`Executor` interface and the local executor (``--executor local``).

An executor starts the jobs the coordinator hands it (``coordinator.py`` decides which and when) and tells
what became of them as :class:`Event` s; what is done is still read from the done markers. To add a
scheduler (LSF, PBS, ...): subclass :class:`Executor` (``slurm.py`` is the example: submission, dependencies
held by the scheduler, state from its queue and from files the jobs write) and add it to
``command.make_executor``.

:class:`LocalExecutor`: up to ``--jobs N`` jobs at once on this machine, each on a GPU of ``--gpus``
(``CUDA_VISIBLE_DEVICES``; round robin when there are more jobs than GPUs), a job when the jobs it needs
have finished. ``--jobs 1`` runs each job in this process, as the study always did; with N > 1 each job is a
process of its own (:mod:`.job_process`) that dies with the study, and a plugin training on the CPU gets the
cores divided by N as its torch threads (``nnUNet_sss_cpu_threads``, unless the study's environment sets
it). After a failure no job is started; the
ones running finish.
"""
from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Set

from nnunetv2_sss.errors import UserRuntimeError
from nnunetv2_sss.evaluation.study.jobs import Job, run_job
from nnunetv2_sss.evaluation.study.processes import die_with_parent
from nnunetv2_sss.settings import CPU_THREADS

# what became of a job (Event.state)
SUBMITTED, QUEUED, STARTED, REQUEUED, FINISHED, FAILED, LOST = (
    "submitted", "queued", "started", "requeued", "finished", "failed", "lost")
POLL_SECONDS = 0.5  # local jobs: how often the coordinator looks at the running processes


@dataclass
class Event:
    job: Job
    state: str        # one of the states above
    detail: str = ""  # where it runs, or what went wrong


class Executor(ABC):
    """Runs the jobs the coordinator hands it."""
    holds_dependencies = False  # True: takes jobs whose dependencies are still running and starts them after
    stops_on_failure = True     # after a failed job the coordinator starts no other
    interrupted = "interrupted: the runs finished so far are kept; run the same command again to continue"

    def attach(self, jobs: Sequence[Job]) -> List[Event]:
        """Of ``jobs``, those an earlier command started that are still known (queued, running, failed, lost)."""
        return []

    @abstractmethod
    def free(self) -> int:
        """How many more jobs it takes now."""

    @abstractmethod
    def start(self, jobs: Sequence[Job]) -> List[Event]:
        """Start (submit) ``jobs``: a STARTED or SUBMITTED event each."""

    @abstractmethod
    def wait(self) -> List[Event]:
        """Blocks until at least one job in flight changes state; those changes."""

    @abstractmethod
    def in_flight(self) -> Set[str]:
        """Names of the jobs queued or running."""

    def parallel(self) -> int:
        """How many jobs run at once now (for the estimate of the time left)."""
        return 1

    def counts(self) -> str:
        """What is in flight, for the progress lines ('' with one job at a time)."""
        return ""

    def write_outputs(self, study) -> None:
        study.write_outputs()


class LocalExecutor(Executor):
    def __init__(self, study, jobs: int = 1, gpus: Optional[Sequence[str]] = None):
        self.study, self.slots = study, jobs
        self.gpus = list(gpus) if gpus else []
        self.running: Dict[int, tuple] = {}  # slot -> (job, process or None, output file)
        if jobs == 1 and self.gpus:
            study.env = {**study.env, "CUDA_VISIBLE_DEVICES": self.gpus[0]}
        if jobs > 1 and CPU_THREADS not in study.env:  # CPU trainings at once share the cores, not oversubscribe them
            study.env = {**study.env, CPU_THREADS: str(cpu_share(jobs))}

    def attach(self, jobs: Sequence[Job]) -> List[Event]:
        """Refuses jobs that an earlier ``--executor slurm`` has queued or running."""
        if shutil.which("squeue"):
            from nnunetv2_sss.evaluation.study.slurm import active_jobs
            active = active_jobs(self.study.out, jobs)
            if active:
                raise UserRuntimeError(f"{self.study.out}: {len(active)} jobs of this study are queued or running on "
                                       f"SLURM ({', '.join(active[:3])}{', ...' if len(active) > 3 else ''}); follow "
                                       "them with --executor slurm or scancel them, then run --executor local")
        return []

    def free(self) -> int:
        return self.slots - len(self.running)

    def gpu(self, slot: int) -> Optional[str]:
        return self.gpus[slot % len(self.gpus)] if self.gpus else None

    def start(self, jobs: Sequence[Job]) -> List[Event]:
        events = []
        for job in jobs:
            slot = min(set(range(self.slots)) - set(self.running))
            gpu = self.gpu(slot)
            self.running[slot] = (job,) + (self._spawn(job, gpu) if self.slots > 1 else (None, None))
            events.append(Event(job, STARTED, f"GPU {gpu}" if gpu is not None and self.slots > 1 else ""))
        return events

    def _spawn(self, job: Job, gpu: Optional[str]) -> tuple:
        output = tempfile.TemporaryFile()
        process = subprocess.Popen([sys.executable, "-m", "nnunetv2_sss.evaluation.study.job_process"],
                                   stdin=subprocess.PIPE, stdout=output, stderr=subprocess.STDOUT,
                                   preexec_fn=die_with_parent if sys.platform.startswith("linux") else None)
        process.stdin.write(pickle.dumps((self.study, job, gpu)))
        process.stdin.close()
        return process, output

    def wait(self) -> List[Event]:
        if self.slots == 1:  # in this process: a failure stops the study with its error, as it always did
            (job, _, _), = self.running.values()
            run_job(self.study, job)
            self.running.clear()
            return [Event(job, FINISHED)]
        while True:
            ended = [slot for slot, (_, process, _) in self.running.items() if process.poll() is not None]
            if ended:
                return [self._ended(slot) for slot in ended]
            time.sleep(POLL_SECONDS)

    def _ended(self, slot: int) -> Event:
        job, process, output = self.running.pop(slot)
        output.seek(0)
        text = output.read().decode(errors="replace")
        output.close()
        if process.returncode == 0:
            return Event(job, FINISHED)
        lines = text.strip().splitlines() or [f"exited with code {process.returncode}"]
        errors = [line for line in lines if line.startswith("ERROR")]
        if not errors:  # not a known user error: the job's whole output (a traceback) for the bug report
            print(text, file=sys.stderr, flush=True)
        return Event(job, FAILED, (errors or lines)[-1].removeprefix("ERROR: "))

    def in_flight(self) -> Set[str]:
        return {job.name for job, _, _ in self.running.values()}

    def parallel(self) -> int:
        return self.slots

    def counts(self) -> str:
        return f"{len(self.running)} running" if self.slots > 1 else ""


def cpu_share(jobs: int) -> int:
    """torch threads for each of ``jobs`` CPU trainings at once: this machine's cores divided among them."""
    return max(1, (os.cpu_count() or 1) // jobs)


def visible_gpus() -> List[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` names them (else 0 .. count - 1)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip()]
    import torch
    return [str(i) for i in range(torch.cuda.device_count())]
