"""The options of ``--executor slurm`` (what clusters differ in) and their checks: each becomes a parameter of
submitit's ``SlurmExecutor`` (an ``#SBATCH`` line)."""
from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Union

from nnunetv2_sss.errors import UserValueError

DEFAULT_TIME_LIMIT = "24:00:00"
# SLURM warns a job (SIGUSR2, submitit's cue to requeue it) 90 s before its limit, up to a minute earlier: a
# shorter limit would warn the requeued job again before it is ready to continue
MIN_TIME_MINUTES = 5
DEFAULT_POLL_SECONDS = 30
# dest -> flag of the options that only --executor slurm takes
SLURM_ONLY = {"partition": "--partition", "time_limit": "--time-limit", "gpus_per_job": "--gpus-per-job",
              "cpus_per_job": "--cpus-per-job", "mem": "--mem", "account": "--account", "qos": "--qos",
              "sbatch": "--sbatch", "array_parallelism": "--array-parallelism", "no_wait": "--no-wait",
              "poll_seconds": "--poll-seconds"}


def add_slurm_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("--executor slurm (a job per run through submitit; see docs/cluster.md)")
    group.add_argument("--partition", default=None, help="SLURM partition (default: the cluster's default)")
    group.add_argument("--time-limit", default=None, metavar="TIME",
                       help=f"time limit per job as sbatch takes it: minutes, MM:SS, HH:MM:SS or D-HH[:MM[:SS]] "
                            f"(default {DEFAULT_TIME_LIMIT}); a job "
                            "that reaches it is requeued and continues from its last epoch's checkpoint")
    group.add_argument("--gpus-per-job", type=int, default=None, metavar="G",
                       help="GPUs per job (default 1 with -device cuda, else 0); more than 1: nnU-Net's DDP training")
    group.add_argument("--cpus-per-job", type=int, default=None, metavar="C",
                       help="CPUs per job (default: nnU-Net's augmentation workers, nnUNet_n_proc_DA, + 1)")
    group.add_argument("--mem", type=float, default=None, metavar="GB",
                       help="host memory per job in GiB (default: the plan's memory estimate of the trainer's "
                            "training step + 1 GiB per augmentation worker + 4 GiB)")
    group.add_argument("--account", default=None, help="SLURM account to charge")
    group.add_argument("--qos", default=None, help="SLURM quality of service")
    group.add_argument("--sbatch", nargs="+", default=None, metavar="KEY=VALUE",
                       help="extra #SBATCH lines, e.g. --sbatch constraint=a100 exclusive (--constraint=a100, "
                            "--exclusive)")
    group.add_argument("--array-parallelism", type=int, default=None, metavar="P",
                       help="at most P jobs of one job array at once (the runs of a trainer without dependencies "
                            "are one array)")
    group.add_argument("--no-wait", action="store_true",
                       help="submit and return; the same command again reports the jobs and resubmits only failed "
                            "or lost ones")
    group.add_argument("--poll-seconds", type=float, default=None, metavar="S",
                       help=f"how often the waiting command asks squeue (default {DEFAULT_POLL_SECONDS})")


@dataclass
class SlurmOptions:
    time_minutes: int
    partition: Optional[str] = None
    gpus_per_job: Optional[int] = None
    cpus_per_job: Optional[int] = None
    mem_gib: Optional[float] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    sbatch: Dict[str, Union[str, bool]] = field(default_factory=dict)
    array_parallelism: Optional[int] = None
    poll_seconds: float = DEFAULT_POLL_SECONDS


def slurm_options(args: argparse.Namespace) -> SlurmOptions:
    for option in ("gpus_per_job", "cpus_per_job", "array_parallelism"):
        value = getattr(args, option)
        if value is not None and value < (0 if option == "gpus_per_job" else 1):
            raise UserValueError(f"{SLURM_ONLY[option]} {value}: must be >= {0 if option == 'gpus_per_job' else 1}")
    for option in ("mem", "poll_seconds"):
        if getattr(args, option) is not None and getattr(args, option) <= 0:
            raise UserValueError(f"{SLURM_ONLY[option]} {getattr(args, option)}: must be > 0")
    gpus = args.gpus_per_job if args.gpus_per_job is not None else (1 if args.device == "cuda" else 0)
    if gpus and args.device != "cuda":
        raise UserValueError(f"--gpus-per-job {gpus}: the runs use -device {args.device}; use -device cuda")
    return SlurmOptions(time_minutes(args.time_limit or DEFAULT_TIME_LIMIT), args.partition, gpus, args.cpus_per_job,
                        args.mem, args.account, args.qos, sbatch_lines(args.sbatch or []), args.array_parallelism,
                        args.poll_seconds or DEFAULT_POLL_SECONDS)


def time_minutes(text: str) -> int:
    """SLURM's time formats (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) in whole minutes (rounded up),
    at least ``MIN_TIME_MINUTES``."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not match:
        raise UserValueError(f"--time-limit {text}: give minutes, MM:SS, HH:MM:SS or D-HH[:MM[:SS]], e.g. 90 or "
                             "1-12:00:00")
    days, first, second, third = match.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = int(days) * 86400 + int(first) * 3600 + int(second or 0) * 60 + int(third or 0)
    elif third is not None:  # HH:MM:SS
        seconds = int(first) * 3600 + int(second) * 60 + int(third)
    else:  # MM or MM:SS
        seconds = int(first) * 60 + int(second or 0)
    if seconds < MIN_TIME_MINUTES * 60:
        raise UserValueError(f"--time-limit {text}: at least {MIN_TIME_MINUTES} minutes (SLURM warns a job 90 to 150 s "
                             "before its limit, and the job needs the time to requeue itself and continue)")
    return math.ceil(seconds / 60)


def sbatch_lines(values: List[str]) -> Dict[str, Union[str, bool]]:
    """``--sbatch KEY=VALUE FLAG ...`` as submitit's additional parameters (``#SBATCH --KEY=VALUE``, ``--FLAG``)."""
    lines = {}
    for value in values:
        key, sep, content = value.lstrip("-").partition("=")
        if not re.fullmatch(r"[a-zA-Z][a-zA-Z0-9_-]*", key) or (sep and not content):
            raise UserValueError(f"--sbatch {value}: give KEY=VALUE or FLAG, as sbatch's --KEY=VALUE / --FLAG "
                                 "(e.g. constraint=a100, exclusive)")
        lines[key] = content if sep else True
    return lines
