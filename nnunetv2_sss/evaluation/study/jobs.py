"""The study as a graph of jobs: one job per run (train, predict, evaluate, done marker:
:meth:`~.runner.Study.execute`) and the jobs runs depend on: the pretraining of a trainer's ``--pretrained``
rows (one job per trainer, before its rows), for a self-training student its teacher's run of the same
group (the pseudo-labelling is the student's first step), and for an active-learning round the row's
previous round (its model's query is the round's first step). What is done is read from disk (done markers, the
pretrained weights), never from an executor."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Set, Tuple

from nnunetv2_sss.evaluation.study.plan import Run
from nnunetv2_sss.evaluation.study.pretraining import is_pretrained, nnunet_trainer


@dataclass(frozen=True)
class Job:
    name: str                 # unique in the study and a file name: n2_s0_<row>, pretrain_<trainer>
    run: Run                  # the run; of a pretraining: the first row that needs it (its group is the job's)
    pretraining: bool = False
    after: Tuple[str, ...] = ()  # the jobs it needs finished first

    @property
    def trainer(self) -> str:
        """The row of a run (T, T+pretrained); the nnU-Net trainer of a pretraining."""
        return nnunet_trainer(self.run.trainer) if self.pretraining else self.run.trainer

    @property
    def label(self) -> str:
        if self.pretraining:
            return f"pretraining of {self.trainer}"
        run = self.run
        if run.strategy:
            return f"{run.trainer} + {run.strategy}, round {run.round} ({run.labeled} labeled), seed {run.seed}"
        return f"{run.trainer}, {run.num_labeled} labeled, seed {run.seed}"


def run_job_name(run: Run) -> str:
    """``<group>_<row>``; an active-learning round's group names its row already."""
    return run.group if run.strategy else f"{run.group}_{run.trainer}"


def study_jobs(study) -> List[Job]:
    """Every job of ``study`` (a :class:`~.runner.Study`), done or not: the runs in the plan's order, each
    pretraining right before the first run that needs it."""
    jobs, pretraining = [], {}
    for run in study.runs:
        after = []
        if is_pretrained(run.trainer):
            trainer = nnunet_trainer(run.trainer)
            if trainer not in pretraining:
                pretraining[trainer] = Job(f"pretrain_{trainer}", run, pretraining=True)
                jobs.append(pretraining[trainer])
            after.append(pretraining[trainer].name)
        if run.strategy:
            after.append(run_job_name(run.previous_round()))
        elif run.trainer in study.teachers:
            after.append(run_job_name(Run(study.teachers[run.trainer], run.num_labeled, run.seed)))
        jobs.append(Job(run_job_name(run), run, after=tuple(after)))
    return jobs


def is_done(study, job: Job) -> bool:
    """A run with its done marker, a pretraining with its weights file."""
    if job.pretraining:
        return study.has_pretrained_weights(job.trainer)
    return study.workspace.is_done(job.run)


def jobs_to_do(jobs: Sequence[Job], done: Set[str], max_runs: Optional[int]) -> Tuple[List[Job], bool]:
    """The jobs of this session: the first ``max_runs`` runs not done (all without ``--max-runs``) and the
    jobs they need that are not done, in the order of ``jobs``; and whether runs were left out."""
    pending = [j for j in jobs if not j.pretraining and j.name not in done]
    chosen = pending if max_runs is None else pending[:max_runs]
    by_name = {j.name: j for j in jobs}
    needed: Set[str] = set()
    stack = [j.name for j in chosen]
    while stack:
        name = stack.pop()
        if name not in needed and name not in done:
            needed.add(name)
            stack.extend(by_name[name].after)
    return [j for j in jobs if j.name in needed], len(chosen) < len(pending)


def run_job(study, job: Job, resume: bool = False) -> None:
    """Do ``job`` here: its pretraining, or its run (``resume``: continue the training from its checkpoint)."""
    if job.pretraining:
        study.pretrain(job.run)
    else:
        study.execute(job.run, study.workspace.preprocessed_root(job.run), resume)
