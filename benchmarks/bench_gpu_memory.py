"""GPU memory estimates at a realistic head-CT plan (issue 19): a synthetic dataset with BHSD's geometry,
nnU-Net's own planner, then ``nnunetv2_sss.training.memory_estimate`` for nnUNetTrainer, nnUNetTrainerSAM2
and nnUNetTrainerSSS and the plans ``nnUNetv2_sss_plan_memory`` gives for several GPU sizes.

    .venv/bin/python benchmarks/bench_gpu_memory.py [--cases 192] [--gpu-memory 24 48 80] \
        [--sam2-configs sam2.1_hiera_s sam2.1_hiera_t] [--workdir benchmarks/work_bhsd]

The dataset (``Dataset992_BHSDLike``, made once under ``--workdir``): ``--cases`` non-contrast-CT-like
volumes of 512 x 512 x 28-36 voxels, 0.45 x 0.45 mm in-plane, 5 mm slices (BHSD: 192 labeled scans of
about this geometry), a skull ring, brain, and one small lesion of one of 5 classes each (BHSD's 5
haemorrhage types); only the geometry matters here. ``nnUNetv2_extract_fingerprint`` and
``nnUNetv2_plan_experiment`` (nnU-Net's default planner, 8 GB) make nnU-Net's plans; nothing is
preprocessed. No GPU is used: every number is an estimate (docs/gpu_memory.md).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DATASET = "Dataset992_BHSDLike"
GiB = 2 ** 30


def make_dataset(raw: str, cases: int, seed: int = 0) -> str:
    import SimpleITK as sitk
    folder = os.path.join(raw, DATASET)
    if os.path.isfile(os.path.join(folder, "dataset.json")):
        return folder
    os.makedirs(os.path.join(folder, "imagesTr"), exist_ok=True)
    os.makedirs(os.path.join(folder, "labelsTr"), exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:512, :512]
    for case in range(cases):
        depth = int(rng.integers(28, 37))
        z = np.arange(depth)[:, None, None]
        radius = 1 - ((yy - 256) / 230.0) ** 2 - ((xx - 256) / 190.0) ** 2 - ((z - depth / 2) / (depth * 0.7)) ** 2
        image = np.full((depth, 512, 512), -1000, np.int16)
        image[radius > 0] = 800                       # skull
        image[radius > 0.12] = 35                     # brain
        label = np.zeros(image.shape, np.uint8)
        centre = rng.integers([depth // 3, 180, 180], [2 * depth // 3, 330, 330])
        lesion = ((z - centre[0]) / 2.0) ** 2 + ((yy - centre[1]) / 20.0) ** 2 + ((xx - centre[2]) / 16.0) ** 2 < 1
        label[lesion] = 1 + case % 5
        image[lesion] = 70
        for array, path in ((image, f"imagesTr/case_{case:03d}_0000.nii.gz"), (label, f"labelsTr/case_{case:03d}.nii.gz")):
            itk = sitk.GetImageFromArray(array)
            itk.SetSpacing((0.45, 0.45, 5.0))
            sitk.WriteImage(itk, os.path.join(folder, path), useCompression=True)
    labels = {"background": 0, "EDH": 1, "IPH": 2, "IVH": 3, "SAH": 4, "SDH": 5}
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump({"channel_names": {"0": "CT"}, "labels": labels, "numTraining": cases, "file_ending": ".nii.gz"},
                  f, indent=1)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=192)
    parser.add_argument("--gpu-memory", type=float, nargs="+", default=[24, 48, 80])
    parser.add_argument("--sam2-configs", nargs="+", default=["sam2.1_hiera_s", "sam2.1_hiera_t"])
    parser.add_argument("--workdir", default=os.path.join(HERE, "work_bhsd"))
    args = parser.parse_args()
    workdir = os.path.abspath(args.workdir)
    env = {**os.environ, "nnUNet_raw": os.path.join(workdir, "nnUNet_raw"),
           "nnUNet_preprocessed": os.path.join(workdir, "nnUNet_preprocessed"),
           "nnUNet_results": os.path.join(workdir, "nnUNet_results"), "nnUNet_n_proc_DA": "2"}
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.makedirs(env[key], exist_ok=True)
    os.environ.update(env)
    make_dataset(env["nnUNet_raw"], args.cases)
    plans_file = os.path.join(env["nnUNet_preprocessed"], DATASET, "nnUNetPlans.json")
    binary = lambda name: os.path.join(os.path.dirname(sys.executable), name)
    if not os.path.isfile(plans_file):
        subprocess.run([binary("nnUNetv2_extract_fingerprint"), "-d", "992", "-np", "2"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        subprocess.run([binary("nnUNetv2_plan_experiment"), "-d", "992"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
    with open(plans_file) as f:
        plans = json.load(f)
    with open(os.path.join(env["nnUNet_raw"], DATASET, "dataset.json")) as f:
        dataset_json = json.load(f)

    from nnunetv2_sss.plan_memory import plan_for_memory
    from nnunetv2_sss.training.memory_estimate import (calibrate, estimate_step, nnunet_reference_bytes,
                                                       trainer_class_named)
    configuration = "3d_fullres"
    entry = plans["configurations"][configuration]
    print(f"{DATASET} ({args.cases} cases, 512 x 512 x 28-36, 0.45 x 0.45 x 5 mm): nnU-Net's {configuration} plan: "
          f"patch {entry['patch_size']}, batch {entry['batch_size']}, spacing {entry['spacing']}, median shape "
          f"{entry['median_image_size_in_voxels']}")
    reference = nnunet_reference_bytes(plans, dataset_json, configuration)
    k = calibrate(plans, dataset_json, configuration)
    print(f"nnU-Net's own estimate for this plan: {reference / GiB:.2f} GiB of its 8 GB target; k = {k:.3f}")
    if "2d" in plans["configurations"]:
        print(f"2d (patch {plans['configurations']['2d']['patch_size']}, batch "
              f"{plans['configurations']['2d']['batch_size']}): k = {calibrate(plans, dataset_json, '2d'):.3f}")
    print("\n| trainer | SAM-2 config | fp32 peak of the step GiB | x nnUNetTrainer | of it state GiB | peak reached in | "
          "estimated GPU GiB (k = %.2f) |\n|---|---|---|---|---|---|---|" % k)
    base = None
    rows = [("nnUNetTrainer", None, None)]
    for config in args.sam2_configs:
        rows += [("nnUNetTrainerSAM2", config, None), ("nnUNetTrainerSAM2", config, True),
                 ("nnUNetTrainerSSS", config, None), ("nnUNetTrainerSSS", config, True)]
    for trainer, config, checkpointing in rows:
        step = estimate_step(trainer_class_named(trainer), plans, dataset_json, configuration, sam2_config=config,
                             activation_checkpointing=checkpointing, k=k)
        base = step.peak_bytes if base is None else base
        name = trainer + (" + Hiera checkpointing" if checkpointing else "")
        print(f"| {name} | {config or '-'} | {step.peak_bytes / GiB:.2f} | {step.peak_bytes / base:.2f} | "
              f"{step.state_bytes / GiB:.2f} | {step.peak_phase} | {step.gpu_bytes / GiB:.1f} |", flush=True)
    print("\nnnUNetv2_sss_plan_memory (nnUNetTrainerSSS):\n")
    print("| GPU GB | SAM-2 config | Hiera checkpointing | patch | batch | estimated GPU GiB |\n|---|---|---|---|---|---|")
    for config in args.sam2_configs:
        for checkpointing in (False, True):
            for gpu in args.gpu_memory:
                try:
                    plan = plan_for_memory(plans, dataset_json, configuration, gpu, "nnUNetTrainerSSS", sam2_config=config,
                                           activation_checkpointing=checkpointing, k=k)
                    print(f"| {gpu:g} | {config} | {'on' if checkpointing else 'off'} | "
                          f"{'x'.join(map(str, plan.patch_size))} | {plan.batch_size} | {plan.gpu_bytes / GiB:.1f} |",
                          flush=True)
                except Exception as error:  # noqa: BLE001 - a row that does not fit
                    print(f"| {gpu:g} | {config} | {'on' if checkpointing else 'off'} | {error} | | |", flush=True)


if __name__ == "__main__":
    main()
