"""The files a scheduler's jobs share with the coordinator in ``OUT/jobs/``: ``<job>.json`` (the submission: job
id, log; written by the coordinator) and ``<job>.state.json`` (written by the job: running, or failed with its
error), and the lock under which jobs and coordinator rewrite the study's outputs."""
from __future__ import annotations

import fcntl
import json
import os
from typing import Optional

from nnunetv2_sss.atomic_files import write_text_atomically

JOBS_FOLDER = "jobs"
OUTPUTS_LOCK = ".outputs.lock"
RUNNING, FAILED = "running", "failed"


def submission_file(out: str, name: str) -> str:
    return os.path.join(out, JOBS_FOLDER, f"{name}.json")


def state_file(out: str, name: str) -> str:
    return os.path.join(out, JOBS_FOLDER, f"{name}.state.json")


def read_record(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_record(path: str, record: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_text_atomically(path, json.dumps(record, indent=1))


def write_outputs_locked(study) -> None:
    """The study's outputs, one writer at a time (jobs and coordinator; ``flock`` works on NFS too)."""
    with open(os.path.join(study.out, OUTPUTS_LOCK), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        study.write_outputs()
