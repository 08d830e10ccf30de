"""What a job of the study asks a scheduler for, by default: CPUs for nnU-Net's augmentation workers and host
memory from the plan's memory estimate.

Host memory (GiB, rounded up) = ``BASE_GIB`` (the training process: Python, PyTorch, CUDA context, nnU-Net's
predictor) + the training step's memory estimate for the trainer at the plan's patch and batch size
(:func:`step_bytes`; on a GPU node the batch and the weights also pass through host memory, on ``-device cpu``
the step is there) + ``WORKER_GIB`` per augmentation worker (its process and the batches it queues)."""
from __future__ import annotations

import json
import math
import os

BASE_GIB = 4
WORKER_GIB = 1
GIB = 2 ** 30


def step_bytes(trainer_class: type, plans: dict, dataset_json: dict, configuration: str) -> float:
    """Bytes of one training step of ``trainer_class`` at the plan's patch and batch size: the estimate
    ``nnUNetv2_sss_plan_memory`` fits plans with (training/memory_estimate.py)."""
    from nnunetv2_sss.training.memory_estimate import estimate_step
    return estimate_step(trainer_class, plans, dataset_json, configuration).gpu_bytes


def augmentation_workers(env: dict) -> int:
    """nnU-Net's augmentation workers in a job: ``nnUNet_n_proc_DA``, else nnU-Net's own default."""
    if env.get("nnUNet_n_proc_DA"):
        return int(env["nnUNet_n_proc_DA"])
    from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
    return int(get_allowed_n_proc_DA())


def host_memory_gib(trainer_class: type, study, workers: int) -> int:
    """The default host memory of a job of ``trainer_class`` in ``study`` with ``workers`` augmentation workers
    (module docstring)."""
    with open(os.path.join(study.workspace.shared, f"{study.args.p}.json")) as f:
        plans = json.load(f)
    step = step_bytes(trainer_class, plans, study.dataset_json, study.args.c)
    return math.ceil(BASE_GIB + step / GIB + WORKER_GIB * workers)
