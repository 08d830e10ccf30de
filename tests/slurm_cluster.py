"""A real one-node SLURM cluster for the tests, from Debian's ``slurmctld``, ``slurmd``, ``slurm-client`` and
``munge`` packages: its own munged socket, ports, state and spool folders and ``slurm.conf`` (``SLURM_CONF``)
in a private folder, so it never touches a cluster the machine may already run. The daemons run as the
user of the tests (root or not), who is then SLURM's administrator.

``ProctrackType=proctrack/linuxproc``, ``TaskPlugin=task/none`` (no cgroups), the node's CPUs and memory,
memory a consumable resource (``--mem`` counts), ``cred_expire=5`` (a requeued job may start again after 6 s
instead of SLURM's default 2 minutes), ``KillWait=5``. No accounting database: ``sacct`` does not work here,
as on clusters without one."""
from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Dict, List, Optional

PROGRAMS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo", "srun")
PACKAGES = "slurmctld slurmd slurm-client munge"


def missing() -> Optional[str]:
    """Why this machine cannot run the cluster, or ``None``."""
    absent = [p for p in PROGRAMS if shutil.which(p) is None and not os.path.exists(f"/usr/sbin/{p}")]
    if absent:
        return (f"SLURM tests need Debian's {PACKAGES} packages ({', '.join(absent)} not found): "
                f"apt-get install -y {PACKAGES} (.ci/run installs them)")
    return None


def _program(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_mib() -> int:
    with open("/proc/meminfo") as f:
        total_kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    return total_kib // 1024 - 512


class OneNodeCluster:
    def __init__(self):
        self.folder = tempfile.mkdtemp(prefix="sss-slurm-")
        os.chmod(self.folder, 0o755)  # munged wants its socket's folders searchable by all
        self.node = socket.gethostname().split(".")[0]
        self.conf = os.path.join(self.folder, "slurm.conf")
        self.user = getpass.getuser()
        self.env: Dict[str, str] = {"SLURM_CONF": self.conf}

    def path(self, *parts: str) -> str:
        return os.path.join(self.folder, *parts)

    def _config(self) -> str:
        return "\n".join([
            "ClusterName=sss-test", f"SlurmctldHost={self.node}(127.0.0.1)", f"SlurmUser={self.user}",
            f"SlurmdUser={self.user}",
            f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}", "AuthType=auth/munge",
            f"AuthInfo=socket={self.path('munge.socket')},cred_expire=5", "CredType=cred/munge",
            f"StateSaveLocation={self.path('state')}", f"SlurmdSpoolDir={self.path('spool')}",
            f"SlurmctldPidFile={self.path('slurmctld.pid')}", f"SlurmdPidFile={self.path('slurmd.pid')}",
            f"SlurmctldLogFile={self.path('slurmctld.log')}", f"SlurmdLogFile={self.path('slurmd.log')}",
            f"PlugStackConfig={self.path('plugstack.conf')}", "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none", "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU_Memory",
            "SchedulerType=sched/backfill", "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none", "JobCompType=jobcomp/none", "MpiDefault=none",
            "ReturnToService=2", "KillWait=5", "DefMemPerCPU=500",
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={_memory_mib()} State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""])

    def start(self) -> None:
        for folder in ("state", "spool"):
            os.makedirs(self.path(folder))
        open(self.path("plugstack.conf"), "w").close()
        with open(self.conf, "w") as f:
            f.write(self._config())
        self._run(["mungekey", "--create", f"--keyfile={self.path('munge.key')}"])
        self._run(["munged", f"--socket={self.path('munge.socket')}", f"--key-file={self.path('munge.key')}",
                   f"--log-file={self.path('munged.log')}", f"--pid-file={self.path('munged.pid')}",
                   f"--seed-file={self.path('munged.seed')}"])
        self._run(["slurmctld", "-f", self.conf, "-i"])
        self._run(["slurmd", "-f", self.conf, "-N", self.node])
        deadline = time.time() + 60
        while "idle" not in self.command(["sinfo", "-h", "-o", "%T"], check=False).stdout:
            if time.time() > deadline:
                raise RuntimeError(f"the test cluster did not come up; logs in {self.folder}")
            time.sleep(0.5)

    def _run(self, command: List[str]) -> None:
        subprocess.run([_program(command[0])] + command[1:], check=True, env={**os.environ, **self.env},
                       capture_output=True)

    def command(self, command: List[str], check: bool = True) -> subprocess.CompletedProcess:
        """A SLURM client command on this cluster."""
        return subprocess.run(command, env={**os.environ, **self.env}, capture_output=True, text=True, check=check)

    def jobs(self) -> Dict[str, str]:
        """Job id -> state of the jobs SLURM still knows."""
        text = self.command(["squeue", "-h", "-r", "--states=all", "-o", "%i %T"]).stdout
        return dict(line.split() for line in text.splitlines())

    def stop(self) -> None:
        """Cancel every job (their processes end), then stop the daemons and remove the folder."""
        self.command(["scancel", "--full", "-u", self.user], check=False)
        deadline = time.time() + 20
        while self.command(["squeue", "-h"], check=False).stdout.strip() and time.time() < deadline:
            time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            try:
                with open(self.path(f"{name}.pid")) as f:
                    os.kill(int(f.read().split()[0]), signal.SIGTERM)
            except (OSError, ValueError):
                pass
        time.sleep(1)
        shutil.rmtree(self.folder, ignore_errors=True)
