"""A job in a process of its own, where an executor starts it: the study's environment (explicit, from the
coordinator) with the variables of this node's own allocation, then the job.

``python -m nnunetv2_sss.evaluation.study.job_process`` reads ``(study, job, gpu)`` pickled from stdin (the
local executor's ``--jobs N`` with N > 1); a failure is one ``ERROR:`` line and exit code 2."""
from __future__ import annotations

import os
import pickle
import sys
from typing import Mapping, Optional

from nnunetv2_sss.errors import user_errors

# what belongs to the node and allocation a job runs in, never to the coordinator's environment
NODE_VARIABLES = ("SLURM_", "SUBMITIT_", "CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL",
                  "HOSTNAME")


def on_this_node(env: Mapping[str, str], node_env: Mapping[str, str], gpu: Optional[str] = None) -> dict:
    """``env`` (the study's) with the allocation variables (``NODE_VARIABLES``) of ``node_env`` instead of its
    own; ``gpu``: the job's GPU (``CUDA_VISIBLE_DEVICES``)."""
    merged = {k: v for k, v in env.items() if not k.startswith(NODE_VARIABLES)}
    merged.update({k: v for k, v in node_env.items() if k.startswith(NODE_VARIABLES)})
    if gpu is not None:
        merged["CUDA_VISIBLE_DEVICES"] = gpu
    return merged


def prepare(study, gpu: Optional[str] = None) -> None:
    """The study's environment for this process and the children it starts."""
    study.env = on_this_node(study.env, os.environ, gpu)
    os.environ.clear()
    os.environ.update(study.env)


@user_errors
def main() -> None:
    from nnunetv2_sss.evaluation.study.jobs import run_job
    study, job, gpu = pickle.load(sys.stdin.buffer)
    prepare(study, gpu)
    run_job(study, job)


if __name__ == "__main__":
    main()
