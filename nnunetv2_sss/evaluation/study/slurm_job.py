"""One job of the study as submitit runs it on a SLURM node: :class:`SlurmJob`.

It writes its state for the coordinator (``job_files.py``), takes the study's environment with the node's
own allocation variables, runs the job and rewrites the study's outputs. Requeued (preemption, ``scontrol
requeue``, or submitit's requeue at the time limit, which calls :meth:`checkpoint`), a run continues its
training from the last epoch's checkpoint (nnU-Net's ``--c``): SLURM counts the restarts
(``SLURM_RESTART_COUNT``). A run the coordinator submits again starts from scratch.
"""
from __future__ import annotations

import os
import signal
import socket
import time
from contextlib import contextmanager
from typing import Iterator

import submitit

from nnunetv2_sss.errors import UserError, one_line
from nnunetv2_sss.evaluation.study.job_files import FAILED, RUNNING, state_file, write_outputs_locked, write_record
from nnunetv2_sss.evaluation.study.job_process import prepare
from nnunetv2_sss.evaluation.study.jobs import Job, run_job


@contextmanager
def scheduler_stop() -> Iterator[list]:
    """A list that gets an entry when SLURM sends SIGTERM (cancel, preemption, requeue) during the block: the
    children die of it, which then is no failure of the job."""
    stopped: list = []
    previous = signal.signal(signal.SIGTERM, lambda *_: stopped.append(True))
    try:
        yield stopped
    finally:
        signal.signal(signal.SIGTERM, previous)


class SlurmJob(submitit.helpers.Checkpointable):
    """``job`` of ``study``; submitit pickles it (the study's settings and environment travel with it)."""

    def __init__(self, study, job: Job):
        self.study, self.job = study, job

    def __call__(self) -> None:
        restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        state = {"job_id": submitit.JobEnvironment().job_id, "host": socket.gethostname(), "restarts": restarts,
                 "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        path = state_file(self.study.out, self.job.name)
        write_record(path, {**state, "state": RUNNING})
        prepare(self.study)
        with scheduler_stop() as stopped:
            try:
                run_job(self.study, self.job, resume=restarts > 0)
            except UserError as error:
                if stopped:
                    raise SystemExit(f"stopped by SLURM (SIGTERM): {one_line(error)}") from None
                write_record(path, {**state, "state": FAILED, "error": one_line(error)})
                raise
        if not self.job.pretraining:
            write_outputs_locked(self.study)
