"""``nnUNetv2_sss_plan_memory``: a plans variant whose patch and batch size fit a GPU memory target for a
trainer (by default nnUNetTrainerSSS on the SAM-2 network), the way nnU-Net's planner fits its plain U-Net
into 8 GB.

    nnUNetv2_sss_plan_memory -d D -c 3d_fullres --gpu-memory 24 [-p nnUNetPlans] [-tr nnUNetTrainerSSS] \
        [-o PLANS_NAME] [--sam2-config sam2.1_hiera_s] [--activation-checkpointing] [--dry-run]

nnU-Net's own ``-pl`` finds planners only inside the nnunetv2 package, so this is a command of its own. It
reads ``nnUNet_preprocessed/D/<-p>.json`` and writes ``nnUNet_preprocessed/D/<-o>.json``: a copy with a new
``plans_name`` and the configuration's ``patch_size`` and ``batch_size`` changed, everything else kept (the
``data_identifier`` too, so ``nnUNetv2_train D C F -tr T -p <-o>`` trains on the already preprocessed data,
labeled and unlabeled).

The search follows nnU-Net's ``ExperimentPlanner.get_plans_for_configuration``:

- start at nnU-Net's initial patch (the spacing's aspect ratio scaled to 256^3 voxels in 3-D, 2048^2 in 2-D,
  clipped to the median image shape), rounded up to sizes the networks accept (below), as nnU-Net pads it to
  what its network's strides need: where the GPU has room, the patch is never smaller than nnU-Net's own;
- while the estimate at the minimum batch size (2) exceeds the target, shrink the axis that is largest
  relative to the median image shape by one step;
- then the largest batch size that fits, capped so that a batch covers at most 5 % of the dataset's voxels
  (nnU-Net's ``max_dataset_covered``), at least 2.

Accepted sizes: every axis a multiple of the product of the plans' pooling strides along it (so nnU-Net's
own network of these plans still runs on the variant), in-plane axes of the SAM-2 network also a multiple of
Hiera's total stride (no padding before the encoder). The estimate (``training/memory_estimate.py``) is the
peak of the whole training step: weights, optimizer state, EMA teacher, and the step's activations, gradients,
recomputed checkpointed regions and temporaries alive at once.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

from nnunetv2_sss.errors import UserFileNotFoundError, UserValueError, user_errors
from nnunetv2_sss.version import command_parser

GB = 2 ** 30  # the target is read as GiB, as GPUs are sized
MIN_BATCH_SIZE = 2          # nnU-Net's UNet_min_batch_size
MAX_DATASET_COVERED = 0.05  # nnU-Net's max_dataset_covered


@dataclass
class MemoryPlan:
    configuration: str
    trainer: str
    patch_size: List[int]
    batch_size: int
    gpu_bytes: float   # the estimated GPU peak of a step
    peak_bytes: int    # the fp32 peak of the step (what the CPU measures)
    state_bytes: int   # weights, optimizer state, EMA teacher
    k: float
    sam2_config: Optional[str]
    activation_checkpointing: Optional[bool]
    tried: List[tuple] = field(default_factory=list)  # (patch, batch, GPU bytes) in the order evaluated


def hiera_total_stride_of(sam2_config: str) -> int:
    """Hiera's total stride (pixels) of a SAM-2 config, from its ``model.image_encoder.trunk`` node."""
    from nnunetv2_sss.networks.sam2_config import load_image_encoder_node
    from nnunetv2_sss.networks.sam2_encoder import PATCH_EMBED_STRIDE
    trunk = load_image_encoder_node(sam2_config)['trunk']
    q_pool = int(trunk.get('q_pool', 3))
    window = int(list(trunk.get('window_spec', (8, 4, 14, 7)))[0])
    return PATCH_EMBED_STRIDE * math.lcm(2 ** q_pool, window)


def axis_steps(configuration: dict, sam2_stride: Optional[int]) -> List[int]:
    """Per axis, the multiple every patch size must be (module docstring)."""
    strides = np.array(configuration['architecture']['arch_kwargs']['strides'])
    steps = [int(s) for s in np.prod(strides, axis=0)]
    if sam2_stride:
        spacing = configuration['spacing']
        slice_axis = int(np.argmax(spacing)) if len(spacing) == 3 else None
        steps = [step if axis == slice_axis else math.lcm(step, sam2_stride) for axis, step in enumerate(steps)]
    return steps


def initial_patch(configuration: dict, steps: List[int]) -> List[int]:
    """nnU-Net's initial patch size (clipped to the median image shape), rounded up to the accepted sizes as
    nnU-Net's ``pad_shape`` rounds it up to what its strides need."""
    spacing = np.array(configuration['spacing'], dtype=float)
    median = configuration['median_image_size_in_voxels']
    inverse = 1 / spacing
    volume = 256 ** 3 if len(spacing) == 3 else 2048 ** 2
    patch = [round(i) for i in inverse * (volume / np.prod(inverse)) ** (1 / len(spacing))]
    patch = [min(p, m) for p, m in zip(patch, median)]
    return [max(step, math.ceil(p / step) * step) for p, step in zip(patch, steps)]


def plan_for_memory(plans: dict, dataset_json: dict, configuration: str, gpu_memory_gb: float,
                    trainer: str = 'nnUNetTrainerSSS', sam2_config: Optional[str] = None,
                    activation_checkpointing: Optional[bool] = None, k: Optional[float] = None,
                    log=None) -> MemoryPlan:
    """Patch and batch size of ``configuration`` for ``trainer`` within ``gpu_memory_gb`` (module docstring)."""
    from nnunetv2_sss import settings
    from nnunetv2_sss.training.memory_estimate import default_k, estimate_step, trainer_class_named, uses_sam2
    if configuration not in plans['configurations'] or 'patch_size' not in plans['configurations'][configuration]:
        raise UserValueError(f"configuration {configuration!r}: not in the plans (or one that inherits without a "
                             f"patch size); the plans have {', '.join(plans['configurations'])}")
    trainer_class = trainer_class_named(trainer)
    sam2 = uses_sam2(trainer_class)
    sam2_config = (sam2_config or settings.sam2_config()) if sam2 else None
    entry = plans['configurations'][configuration]
    k = default_k(entry['patch_size']) if k is None else k
    steps = axis_steps(entry, hiera_total_stride_of(sam2_config) if sam2 else None)
    median = entry['median_image_size_in_voxels']
    target = gpu_memory_gb * GB
    tried = []

    def estimate(patch, batch):
        step = estimate_step(trainer_class, plans, dataset_json, configuration, patch, batch, sam2_config=sam2_config,
                             activation_checkpointing=activation_checkpointing, k=k)
        tried.append((list(patch), batch, step.gpu_bytes))
        if log is not None:
            log(f"patch {'x'.join(map(str, patch))}, batch {batch}: {step.gpu_bytes / GB:.2f} GiB")
        return step

    patch = initial_patch(entry, steps)
    step = estimate(patch, MIN_BATCH_SIZE)
    while step.gpu_bytes > target:
        reducible = [axis for axis in range(len(patch)) if patch[axis] - steps[axis] >= steps[axis]]
        if not reducible:
            raise UserValueError(f"{trainer} ({sam2_config or 'nnU-Net network'}) does not fit into {gpu_memory_gb:g} "
                                 f"GB at the smallest patch {patch} and batch {MIN_BATCH_SIZE} (estimate "
                                 f"{step.gpu_bytes / GB:.1f} GiB)")
        axis = max(reducible, key=lambda a: patch[a] / median[a])
        patch = list(patch)
        patch[axis] -= steps[axis]
        step = estimate(patch, MIN_BATCH_SIZE)
    per_sample = max(1.0, (step.gpu_bytes - step.state_bytes) / MIN_BATCH_SIZE)
    batch = int((target - step.state_bytes) // per_sample)
    voxels = float(np.prod(median, dtype=np.float64)) * int(dataset_json.get('numTraining', 1))
    batch = max(min(batch, round(voxels * MAX_DATASET_COVERED / np.prod(patch, dtype=np.float64))), MIN_BATCH_SIZE)
    while batch > MIN_BATCH_SIZE:
        candidate = estimate(patch, batch)
        if candidate.gpu_bytes <= target:
            step = candidate
            break
        batch -= 1
    return MemoryPlan(configuration, trainer, [int(n) for n in patch], batch, step.gpu_bytes, step.peak_bytes,
                      step.state_bytes, k, sam2_config, activation_checkpointing, tried)


def plans_variant(plans: dict, configuration: str, plan: MemoryPlan, plans_name: str) -> dict:
    """A copy of ``plans`` with ``plans_name`` and the configuration's patch and batch size of ``plan``."""
    import copy
    variant = copy.deepcopy(plans)
    variant['plans_name'] = plans_name
    variant['configurations'][configuration]['patch_size'] = list(plan.patch_size)
    variant['configurations'][configuration]['batch_size'] = int(plan.batch_size)
    return variant


@user_errors
def main(argv=None) -> None:
    parser = command_parser(
        description="Write a plans variant whose patch and batch size of one configuration fit a GPU memory target "
                    "for a trainer (default nnUNetTrainerSSS), estimated from the peak of the trainer's whole training step "
                    "(measured on the 'meta' device) and nnU-Net's own 8 GB reference (docs/gpu_memory.md).")
    parser.add_argument("-d", required=True, help="dataset name or id")
    parser.add_argument("-c", default="3d_fullres", help="configuration (default 3d_fullres)")
    parser.add_argument("--gpu-memory", type=float, required=True, help="GPU memory target in GB (GiB)")
    parser.add_argument("-p", default="nnUNetPlans", help="plans to start from (default nnUNetPlans)")
    parser.add_argument("-tr", default="nnUNetTrainerSSS", help="trainer (default nnUNetTrainerSSS)")
    parser.add_argument("-o", default=None, help="name of the plans variant (default <-p>_<trainer>_<N>GB)")
    parser.add_argument("--sam2-config", default=None,
                        help="SAM-2 config of the estimate (default: nnUNet_sss_sam2_config, else sam2.1_hiera_s)")
    parser.add_argument("--activation-checkpointing", action="store_true",
                        help="estimate with the Hiera blocks checkpointed (train with a trainer whose "
                             "activation_checkpointing = True)")
    parser.add_argument("--k", type=float, default=None, help="GPU bytes per fp32 byte of the step's activations, "
                                                              "gradients and temporaries (default: the calibration on "
                                                              "nnU-Net's reference, docs/gpu_memory.md)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, write nothing")
    args = parser.parse_args(argv)

    from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2_sss.data.unlabeled_preprocessing import done_cases, unlabeled_folder
    from nnunetv2_sss.errors import dataset_json_of, dataset_name, nnunet_path
    if args.gpu_memory <= 0:
        raise UserValueError(f"--gpu-memory {args.gpu_memory}: must be > 0")
    name = dataset_name(args.d)
    folder = join(nnunet_path(nnUNet_preprocessed), name)
    source = join(folder, args.p + ".json")
    if not isfile(source):
        raise UserFileNotFoundError(f"{source}: no such plans file; run nnUNetv2_plan_and_preprocess -d {args.d} first "
                                    f"(or give -p)")
    with open(source) as f:
        plans = json.load(f)
    dataset_json = dataset_json_of(args.d)
    output = args.o or f"{args.p}_{args.tr}_{args.gpu_memory:g}GB"
    if output == args.p:
        raise UserValueError(f"-o {output}: the variant must not replace the plans it starts from")
    plan = plan_for_memory(plans, dataset_json, args.c, args.gpu_memory, args.tr, args.sam2_config,
                           True if args.activation_checkpointing else None, args.k, log=lambda line: print("  " + line))
    entry = plans['configurations'][args.c]
    print(f"{name} {args.c}, {args.tr}" + (f" ({plan.sam2_config}" + (", Hiera checkpointing" if
                                                                        args.activation_checkpointing else "") + ")"
                                               if plan.sam2_config else "") +
          f": patch {'x'.join(map(str, plan.patch_size))}, batch {plan.batch_size}, estimated "
          f"{plan.gpu_bytes / GB:.1f} GiB of {args.gpu_memory:g} (nnU-Net's plan {args.p}: patch "
          f"{'x'.join(map(str, entry['patch_size']))}, batch {entry['batch_size']})")
    try:  # the calibration's anchor on this dataset: nnU-Net's plain U-Net at its own plan
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
        from nnunetv2_sss.training.memory_estimate import estimate_step, nnunet_reference_bytes
        plain = estimate_step(nnUNetTrainer, plans, dataset_json, args.c, k=plan.k)
        print(f"check: nnUNetTrainer at {args.p}'s own plan: estimate {plain.gpu_bytes / GB:.1f} GiB, nnU-Net's "
              f"planner: {nnunet_reference_bytes(plans, dataset_json, args.c) / GB:.1f} GiB (of its 8 GB)")
    except Exception as error:  # noqa: BLE001 - a check only (e.g. an architecture nnU-Net cannot estimate)
        print(f"check: nnUNetTrainer at {args.p}'s own plan not estimated ({type(error).__name__}: {error})")
    if args.dry_run:
        return
    path = join(folder, output + ".json")
    with open(path + ".tmp", "w") as f:
        json.dump(plans_variant(plans, args.c, plan, output), f, indent=4, sort_keys=False)
    os.replace(path + ".tmp", path)
    identifier = entry['data_identifier']
    labeled = isdir(join(folder, identifier))
    unlabeled = len(done_cases(unlabeled_folder(folder, identifier)))
    print(f"wrote {path}")
    print(f"data: {identifier} (the same as {args.p}'s): labeled {'preprocessed' if labeled else 'NOT preprocessed'}, "
          f"{unlabeled} unlabeled cases preprocessed")
    if not labeled:
        print(f"  run: nnUNetv2_preprocess -d {args.d} -c {args.c} -plans_name {output}")
    if not unlabeled:
        print(f"  run: nnUNetv2_sss_preprocess_unlabeled -d {args.d} -c {args.c} -p {output}")
    print(f"train: nnUNetv2_train {args.d} {args.c} FOLD -tr {args.tr} -p {output}")


if __name__ == "__main__":
    main()
