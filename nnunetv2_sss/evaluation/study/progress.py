"""The study's progress lines: one per change of a job's state (a finished run with its Dice, the runs left
and an estimate of their time from the finished runs), and a summary line with the counts."""
from __future__ import annotations

import time
from typing import Dict, Sequence, Set

import numpy as np

from nnunetv2_sss.evaluation.study.executor import (FAILED, FINISHED, LOST, QUEUED, REQUEUED, STARTED, SUBMITTED, Event,
                                                    Executor)
from nnunetv2_sss.evaluation.study.jobs import Job
from nnunetv2_sss.evaluation.study.plan import Run
from nnunetv2_sss.evaluation.study.rows import class_names_of, number
from nnunetv2_sss.evaluation.study.summary import format_seconds

SUMMARY_STATES = {SUBMITTED: QUEUED, REQUEUED: QUEUED, STARTED: "running"}


class Progress:
    def __init__(self, study, pending: Sequence[Run]):
        """``pending``: the runs not done when the command started."""
        self.study, self.pending = study, list(pending)
        self.index = {run: i for i, run in enumerate(study.runs, 1)}
        self.done_before = {r: number(study.workspace.row(r).get("seconds")) for r in study.runs if r not in pending}
        self.this_session: Dict[Run, float] = {}
        self.started = time.time()

    def prefix(self, job: Job) -> str:
        if job.pretraining:
            return f"[pretraining] {job.trainer}"
        return f"[{self.index[job.run]}/{len(self.study.runs)}] {job.label}"

    def line(self, event: Event, executor: Executor) -> str:
        if event.state == FINISHED and not event.job.pretraining:
            return self.finished(event.job, executor)
        state = "training ..." if event.state == STARTED and not event.job.pretraining else event.state
        return f"{self.prefix(event.job)}: {state}" + (f" ({event.detail})" if event.detail else "")

    def finished(self, job: Job, executor: Executor) -> str:
        """The run's Dice and seconds, the time since the start, the runs left and about how long they take."""
        row = self.study.workspace.row(job.run)
        self.this_session[job.run] = number(row["seconds"])
        left = [r for r in self.pending if r not in self.this_session]
        counts = executor.counts()
        return (f"{self.prefix(job)}: mean Dice {row['dice_mean']:.2f} % ("
                + ", ".join(f"{c} {number(row[f'dice_{c}']):.2f}" for c in class_names_of([row]))
                + f"), {row['seconds']:.0f} s; elapsed {format_seconds(time.time() - self.started)}, "
                f"{len(left)} runs left" + (f" ({counts})" if counts else "")
                + f", about {format_seconds(self.time_left(left, executor))}")

    def time_left(self, left: Sequence[Run], executor: Executor) -> float:
        """The runs ``left`` at the mean seconds of the finished runs (of their trainer, else of all), spread
        over the jobs the executor runs at once."""
        seconds = {**self.done_before, **self.this_session}
        total = sum(_estimate(run, seconds) for run in left)
        return total / max(1, min(executor.parallel(), len(left)))

    def summary(self, jobs: Sequence[Job], done: Set[str], states: Dict[str, str], executor: Executor) -> str:
        """``runs: F finished, ... ; about T left``: the study's runs by state (``done``: names of the finished
        jobs; ``states``: name -> state of the others this command knows; the rest are still to do)."""
        counts: Dict[str, int] = {}
        for job in jobs:
            if not job.pretraining:
                state = "finished" if job.name in done else SUMMARY_STATES.get(states.get(job.name, "to do"),
                                                                                states.get(job.name, "to do"))
                counts[state] = counts.get(state, 0) + 1
        left = [j.run for j in jobs if not j.pretraining and j.name not in done]
        known = {**self.done_before, **self.this_session}
        order = ["finished", "running", QUEUED, FAILED, LOST, "to do"]
        return ("runs: " + ", ".join(f"{counts[state]} {state}" for state in order if state in counts) +
                (f"; about {format_seconds(self.time_left(left, executor))} left" if known and left else ""))


def _estimate(run: Run, seconds: Dict[Run, float]) -> float:
    """Mean seconds of the trainer's completed runs, else of all completed runs."""
    same = [s for r, s in seconds.items() if r.trainer == run.trainer and np.isfinite(s)]
    every = [s for s in seconds.values() if np.isfinite(s)]
    return float(np.mean(same)) if same else (float(np.mean(every)) if every else 0.0)
