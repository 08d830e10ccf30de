"""``--executor slurm``: each job of the study a SLURM job, submitted through submitit (``slurm_job.py`` is what
runs on the node).

- Checks first, before anything is submitted: submitit and SLURM's commands, the partition (``sinfo``),
  nnU-Net's folders and ``-o`` (``shared_paths.py``), and every job's ``#SBATCH`` lines (``sbatch
  --test-only``). Each problem is one error naming the option.
- Dependencies are SLURM's: a job waits for the jobs it needs (``--dependency=afterok:<ids>``); when one of
  them fails or is cancelled, SLURM cancels the waiting ones (``--kill-on-invalid-dep=yes``) and the next
  command submits them again. So one command submits the whole study, and ``--no-wait`` can return at once.
- Jobs of one trainer with the same dependencies go into one job array (``--array-parallelism``).
- The state of a job, without SLURM's accounting database: done marker (finished), else ``squeue`` (queued,
  running; the job ids of ``OUT/jobs/<job>.json``), else the job's ``OUT/jobs/<job>.state.json`` (failed, with
  its error), else lost (cancelled, timed out, node failure: ``squeue`` still tells which for a few minutes).
  A job queued or running is never submitted again; a failed or lost one is, by the next command.

Uses submitit 1.5.4's ``SlurmExecutor`` and, for ``sbatch --test-only``, the script it would submit
(``_make_submission_file_text``).
"""
from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import tempfile
import time
from typing import Dict, List, Optional, Sequence, Set, Tuple

from nnunetv2_sss.errors import UserRuntimeError, UserValueError
from nnunetv2_sss.evaluation.study.executor import (FAILED, FINISHED, LOST, QUEUED, REQUEUED, STARTED, SUBMITTED,
                                                    Event, Executor)
from nnunetv2_sss.evaluation.study.job_files import (FAILED as JOB_FAILED, JOBS_FOLDER, read_record, state_file,
                                                     submission_file, write_outputs_locked, write_record)
from nnunetv2_sss.evaluation.study.jobs import Job, is_done
from nnunetv2_sss.evaluation.study.pretraining import nnunet_trainer
from nnunetv2_sss.evaluation.study.resources import augmentation_workers, host_memory_gib
from nnunetv2_sss.evaluation.study.shared_paths import NNUNET_PATHS, unshared_path
from nnunetv2_sss.evaluation.study.slurm_options import SlurmOptions
from nnunetv2_sss.evaluation.study.trainers import trainer_classes

QUEUED_STATES = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SPECIAL_EXIT"}
RUNNING_STATES = {"RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "STOPPED", "RESIZING", "SIGNALING",
                  "STAGE_OUT"}
SQUEUE_FORMAT = "JobArrayID:|,State:|,NodeList:|,Reason:|,RestartCnt"


def command_output(command: List[str], what: str) -> str:
    """stdout of a SLURM command; its error as one :class:`UserRuntimeError` (nothing is submitted after it)."""
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        message = (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[-1]
        raise UserRuntimeError(f"{' '.join(command[:2])} failed ({message}): {what}")
    return result.stdout


def squeue() -> Dict[str, Tuple[str, str, str, int]]:
    """This user's jobs SLURM still knows: job id (``123`` or ``123_4``) -> (state, node, reason, restarts)."""
    text = command_output(["squeue", "-h", "-r", "--states=all", "-u", getpass.getuser(), "-O", SQUEUE_FORMAT],
                          "the state of the study's jobs is unknown")
    jobs = {}
    for line in text.splitlines():
        fields = [f.strip() for f in line.split("|")]
        if len(fields) == 5:
            jobs[fields[0]] = (fields[1], fields[2], fields[3], int(fields[4] or 0))
    return jobs


def active_jobs(out: str, jobs: Sequence[Job]) -> List[str]:
    """Names of the ``jobs`` of the study in ``out`` that an earlier ``--executor slurm`` submitted and SLURM
    still has queued or running."""
    records = {job.name: read_record(submission_file(out, job.name)) for job in jobs}
    ids = {record["job_id"]: name for name, record in records.items() if record}
    if not ids:
        return []
    return [ids[i] for i, entry in squeue().items() if i in ids and entry[0] in QUEUED_STATES | RUNNING_STATES]


def partition_nodes(partition: Optional[str]) -> int:
    """How many nodes ``partition`` (``None``: the default one) has; :class:`UserValueError` if there is none."""
    text = command_output(["sinfo", "-h", "-N", "-o", "%N %P"], "is SLURM's controller reachable from here?")
    lines = [line.split() for line in text.splitlines()]
    partitions = {p.rstrip("*") for _, p in lines}
    wanted = [node for node, p in lines if (p.rstrip("*") == partition if partition else p.endswith("*"))]
    if not wanted:
        what = f"--partition {partition}: no such partition" if partition else "the cluster has no default partition"
        raise UserValueError(f"{what} (sinfo lists: {', '.join(sorted(partitions)) or 'none'}); give one of them")
    return len(set(wanted))


def check_cluster(options: SlurmOptions, output: str) -> None:
    """What ``--executor slurm`` needs before a study is even read: submitit, SLURM's commands, the partition,
    and nnU-Net's folders and the output folder (``output``: ``-o`` as given, else the current folder) where
    jobs on other nodes find them."""
    try:
        import submitit  # noqa: F401
    except ImportError as error:
        raise UserRuntimeError(f"--executor slurm needs submitit ({error}): pip install 'nnunetv2-sss[cluster]'") \
            from None
    for tool in ("sbatch", "squeue", "sinfo", "srun"):
        if shutil.which(tool) is None:
            raise UserRuntimeError(f"--executor slurm: {tool} not found on PATH; run the study where SLURM's commands "
                                   "are (a login node)")
    one_node = partition_nodes(options.partition) == 1
    problem = unshared_path({**{name: os.environ.get(name) for name in NNUNET_PATHS}, "-o": output}, os.environ,
                            one_node)
    if problem:
        raise UserValueError(problem)


class SlurmExecutor(Executor):
    holds_dependencies = True
    stops_on_failure = False
    interrupted = "interrupted: the submitted jobs keep running; run the same command again to follow them"

    def __init__(self, study, options: SlurmOptions):
        """After :func:`check_cluster`: each trainer's ``#SBATCH`` lines, checked by ``sbatch --test-only``."""
        import submitit
        self.study, self.options, self.submitit = study, options, submitit
        classes = trainer_classes(sorted({nnunet_trainer(t) for t in study.trainers}), study.env["nnUNet_extTrainer"])
        self.parameters = {trainer: self._parameters(trainer_class) for trainer, trainer_class in classes.items()}
        self._test_submission()
        self.jobs: Dict[str, Job] = {}
        self.records: Dict[str, dict] = {}            # name -> submission record
        self.states: Dict[str, Tuple[str, str]] = {}  # name -> (state, detail) of the jobs in flight

    # -- what a job asks for ---------------------------------------------------------------------------------
    def _parameters(self, trainer_class: type) -> dict:
        """submitit's parameters (``#SBATCH`` lines) of a job of ``trainer_class``."""
        o = self.options
        workers = o.cpus_per_job - 1 if o.cpus_per_job else augmentation_workers(self.study.env)
        mem_gib = o.mem_gib or host_memory_gib(trainer_class, self.study, workers)
        parameters = {"time": o.time_minutes, "cpus_per_task": workers + 1, "mem": f"{int(mem_gib * 1024)}M",
                      "gpus_per_node": o.gpus_per_job or None, "partition": o.partition, "account": o.account,
                      "qos": o.qos, "array_parallelism": o.array_parallelism, "stderr_to_stdout": True,
                      "additional_parameters": {"requeue": True, "kill-on-invalid-dep": "yes", **o.sbatch}}
        return {k: v for k, v in parameters.items() if v is not None}

    def _executor(self, trainer: str, job_name: str, dependency: Optional[str] = None):
        executor = self.submitit.SlurmExecutor(folder=os.path.join(self.study.out, JOBS_FOLDER, "slurm"))
        executor.update_parameters(**self.parameters[trainer], job_name=job_name,
                                   **({"dependency": dependency} if dependency else {}))
        return executor

    def _test_submission(self) -> None:
        """``sbatch --test-only`` of each job's script: SLURM's verdict on every option before any submission."""
        for trainer in self.parameters:
            text = self._executor(trainer, "test")._make_submission_file_text("true", "test")
            with tempfile.NamedTemporaryFile("w", suffix=".sh") as script:
                script.write(text)
                script.flush()
                result = subprocess.run(["sbatch", "--test-only", script.name], capture_output=True, text=True)
            if result.returncode != 0:
                message = " ".join(result.stderr.split())
                raise UserValueError(f"sbatch rejects the study's jobs ({message}); check --partition, --time-limit, "
                                     "--mem, --cpus-per-job, --gpus-per-job, --account, --qos, --sbatch")

    # -- the executor ----------------------------------------------------------------------------------------
    def attach(self, jobs: Sequence[Job]) -> List[Event]:
        """The jobs of an earlier command: queued, running, failed (with its error) or lost."""
        queue, events = squeue(), []
        for job in jobs:
            record = read_record(submission_file(self.study.out, job.name))
            if record is None:
                continue
            self.jobs[job.name], self.records[job.name] = job, record
            state, detail = self._state(job, queue)
            if state in (QUEUED, STARTED):
                self.states[job.name] = (state, detail)
            if state != FINISHED:
                events.append(Event(job, state, detail))
        return events

    def free(self) -> int:
        return 1 << 30

    def start(self, jobs: Sequence[Job]) -> List[Event]:
        """Submit ``jobs``: those whose dependencies are submitted first; one array per trainer and dependencies."""
        events, left = [], list(jobs)
        while left:
            names = {job.name for job in left}
            level = [job for job in left if not names & set(job.after)]
            batches: Dict[tuple, List[Job]] = {}
            for job in level:
                after = tuple(self.records[d]["job_id"] for d in job.after if d in self.records and
                              not is_done(self.study, self.jobs[d]))
                batches.setdefault((job.trainer, job.pretraining, after), []).append(job)
            for (trainer, _, after), batch in batches.items():
                events += self._submit(batch, nnunet_trainer(trainer), after)
            left = [job for job in left if job not in level]
        return events

    def _submit(self, batch: List[Job], trainer: str, after: Tuple[str, ...]) -> List[Event]:
        name = f"{os.path.basename(self.study.out)}:{batch[0].trainer}"
        executor = self._executor(trainer, name, "afterok:" + ":".join(after) if after else None)
        from nnunetv2_sss.evaluation.study.slurm_job import SlurmJob
        for job in batch:  # a state left by an earlier submission is not this one's
            if os.path.exists(state_file(self.study.out, job.name)):
                os.remove(state_file(self.study.out, job.name))
        try:
            with executor.batch():
                handles = [executor.submit(SlurmJob(self.study, job)) for job in batch]
        except Exception as error:  # noqa: BLE001 - submitit's errors carry sbatch's message
            raise UserRuntimeError(f"sbatch failed for {batch[0].label} ({' '.join(str(error).split())[:300]}); the "
                                   "jobs submitted before are kept, run the same command again") from None
        events = []
        for job, handle in zip(batch, handles):
            record = {"job_id": handle.job_id, "log": str(handle.paths.stdout),
                      "submitted": time.strftime("%Y-%m-%d %H:%M:%S")}
            write_record(submission_file(self.study.out, job.name), record)
            self.jobs[job.name], self.records[job.name] = job, record
            self.states[job.name] = (QUEUED, f"job {handle.job_id}")
            events.append(Event(job, SUBMITTED, f"job {handle.job_id}"))
        return events

    def wait(self) -> List[Event]:
        time.sleep(self.options.poll_seconds)
        queue, events = squeue(), []
        for name, (old, old_detail) in list(self.states.items()):
            job = self.jobs[name]
            state, detail = self._state(job, queue)
            if (state, detail) == (old, old_detail):
                continue
            if state in (QUEUED, STARTED):
                self.states[name] = (state, detail)
                if state == QUEUED and old == STARTED:
                    events.append(Event(job, REQUEUED, f"{detail}; it continues from its last checkpoint"))
                elif state == STARTED:
                    events.append(Event(job, STARTED, detail))
            else:
                del self.states[name]
                events.append(Event(job, state, detail))
        return events

    def _state(self, job: Job, queue: Dict[str, Tuple[str, str, str, int]]) -> Tuple[str, str]:
        """(state, detail) of a submitted job (module docstring)."""
        record = self.records[job.name]
        job_id, log = record["job_id"], record["log"]
        entry = queue.get(job_id)
        if is_done(self.study, job):
            return FINISHED, ""
        if entry and entry[0] in QUEUED_STATES:
            return QUEUED, f"job {job_id}"
        if entry and entry[0] in RUNNING_STATES:
            return STARTED, f"job {job_id} on {entry[1]}" + (f", restart {entry[3]}" if entry[3] else "")
        state = read_record(state_file(self.study.out, job.name))
        if state and state.get("job_id") == job_id and state.get("state") == JOB_FAILED:
            return FAILED, f"job {job_id}: {state.get('error')}; job log {log}"
        ended = (entry[0] + (f", {entry[2]}" if entry[2] not in ("", "None") else "")) if entry else \
            "no longer known to SLURM"
        return LOST, f"job {job_id}: {ended}; job log {log}"

    def in_flight(self) -> Set[str]:
        return set(self.states)

    def parallel(self) -> int:
        return max(1, sum(1 for state, _ in self.states.values() if state == STARTED))

    def counts(self) -> str:
        running = sum(1 for state, _ in self.states.values() if state == STARTED)
        return f"{running} running, {len(self.states) - running} queued"

    def write_outputs(self, study) -> None:
        write_outputs_locked(study)
