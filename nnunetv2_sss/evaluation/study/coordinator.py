"""The study's coordinator: which jobs run this time (those not done, ``--max-runs``), when (a job after the
jobs it needs; with an executor that holds dependencies, such as SLURM's, all at once), a group's split files
written before its first job starts, one line per change of a job's state, and the outputs rewritten as runs
finish. It holds the study's lock (one coordinator per output folder) and checks ``study.json`` first."""
from __future__ import annotations

import os
from typing import Dict, List

from nnunetv2_sss.data.folder_lock import FolderLock
from nnunetv2_sss.errors import UserRuntimeError
from nnunetv2_sss.evaluation.study.environment import check_settings
from nnunetv2_sss.evaluation.study.executor import (FAILED, FINISHED, LOST, QUEUED, REQUEUED, STARTED, SUBMITTED, Event,
                                                    Executor)
from nnunetv2_sss.evaluation.study.jobs import Job, is_done, jobs_to_do, study_jobs
from nnunetv2_sss.evaluation.study.progress import Progress

LOCK_FILE = ".study.lock"  # one study per output folder (data/folder_lock.py)
IN_FLIGHT = (SUBMITTED, QUEUED, REQUEUED, STARTED)


def coordinate(study, executor: Executor, wait: bool = True) -> None:
    """Run the study's jobs that are not done on ``executor``; ``wait=False``: submit them and return."""
    with FolderLock(study.out, "nnUNetv2_sss_study", LOCK_FILE):
        check_settings(study.out, study.record)
        jobs = study_jobs(study)
        done = {job.name for job in jobs if is_done(study, job)}
        pending = [job.run for job in jobs if not job.pretraining and job.name not in done]
        active = study.active
        print(f"nnUNetv2_sss_study: {len(study.runs)} runs ({len(study.trainers)} trainers x {len(study.counts)} "
              f"labeled counts x {len(study.seeds)} seeds" + (f" + {len(study.seeds)} ceiling runs" if study.ceiling
                                                               else "") +
              (f" + {len(study.trainers) * len(active.strategies) * active.rounds * len(study.seeds)} active-learning "
               f"runs: {len(active.strategies)} strategies x {active.rounds} rounds of {active.budget} scans from "
               f"{active.initial} labeled" if active else "") +
              f"), {len(study.runs) - len(pending)} already done; evaluated on {study.evaluated_on}; output {study.out}",
              flush=True)
        todo, stopped = jobs_to_do(jobs, done, study.args.max_runs)
        progress = Progress(study, pending)
        states: Dict[str, str] = {}  # name -> state of the jobs not done
        _report(executor.attach(todo), progress, executor, states, done)  # jobs of an earlier command
        waiting = [job for job in todo if states.get(job.name) not in IN_FLIGHT]
        prepared, failures = set(), []
        while True:
            started = _start(study, executor, todo, waiting, done, prepared, bool(failures))
            failures += _report(started, progress, executor, states, done)
            waiting = [job for job in waiting if job not in {e.job for e in started}]
            if not wait or not executor.in_flight():
                break
            failures += _report(executor.wait(), progress, executor, states, done)
        if stopped and not failures:
            print(f"stopped after {study.args.max_runs} runs (--max-runs); run the same command again to continue",
                  flush=True)
        if any(not job.pretraining and job.name in done for job in jobs):
            executor.write_outputs(study)
            print(f"written {os.path.join(study.out, 'runs.csv')}, summary.md, learning_curve.png"
                  + (", active_learning.png" if active else ""), flush=True)
        if executor.holds_dependencies:
            print(progress.summary(jobs, done, states, executor), flush=True)
        if not wait and executor.in_flight():
            print(f"{len(executor.in_flight())} jobs queued or running; run the same command again to see how they "
                  "are doing (it submits nothing twice)", flush=True)
        if failures:
            more = f" (and {len(failures) - 1} more job(s), above)" if len(failures) > 1 else ""
            raise UserRuntimeError(f"{failures[0].job.label}: {failures[0].detail}{more}; run the same command again "
                                   f"to redo the failed jobs")


def _start(study, executor: Executor, todo: List[Job], waiting: List[Job], done: set, prepared: set,
           failed: bool) -> List[Event]:
    """Start what ``executor`` takes of the ``waiting`` jobs whose dependencies are done (or, with an executor
    that holds dependencies, in flight or starting with them); a group's split files are written before its
    first job starts, unless a job of the group is running (it reads them); an active-learning round writes
    its own (``active_rounds.py``)."""
    if failed and executor.stops_on_failure:
        return []
    in_flight = executor.in_flight()
    held = in_flight | {job.name for job in waiting} if executor.holds_dependencies else set()
    ready = [job for job in waiting if all(d in done or d in held for d in job.after)][:executor.free()]
    busy = {job.run.group for job in todo if job.name in in_flight}
    for job in ready:
        if job.run.group not in prepared and job.run.group not in busy and not job.run.strategy:
            study.workspace.prepare_group(job.run)
        prepared.add(job.run.group)
    return executor.start(ready) if ready else []


def _report(events: List[Event], progress: Progress, executor: Executor, states: Dict[str, str],
            done: set) -> List[Event]:
    """Print one line per event, keep the jobs' states; rewrite the outputs when a run finished. The failed
    and lost jobs' events."""
    failures = []
    for event in events:
        if event.state == FINISHED:
            done.add(event.job.name)
            states.pop(event.job.name, None)
            if not event.job.pretraining:
                executor.write_outputs(progress.study)
        else:
            states[event.job.name] = event.state
        print(progress.line(event, executor), flush=True)
        if event.state in (FAILED, LOST):
            failures.append(event)
    return failures
