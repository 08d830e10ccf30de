"""Activation memory (issue 19): the saved-for-backward tracker against hand-counted networks, the split
backward halving the peak of two equal parts, activation checkpointing of the Hiera blocks, and the
planner's estimate against a measured step."""
from __future__ import annotations

import contextlib
import copy
import os

import pytest
import torch
from torch import nn

from nnunetv2_sss.training.memory import SavedTensorTracker, StepMemory
from tiny_sam2 import TINY_IMAGE_ENCODER

F32 = 4  # bytes per float32 element


def chain() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def test_linear_chain_by_hand():
    """Linear(8, 16) -> ReLU -> Linear(16, 4) on a batch of 4 that needs no gradient: the first linear saves
    its input x (for its weight's gradient; 4 x 8), ReLU saves its output r (4 x 16), the second linear saves
    r again (same storage: counted once) and its weight (a parameter: not counted)."""
    net = chain()
    x = torch.randn(4, 8)
    with SavedTensorTracker([net], attribute_depth=1) as tracker:
        loss = net(x).sum()
        assert tracker.current == (4 * 8 + 4 * 16) * F32 == 384
        assert tracker.peak_by_module == {'0': 4 * 8 * F32, '1': 4 * 16 * F32}
        loss.backward()
        assert tracker.current == 0  # autograd freed every saved tensor
    assert tracker.peak == 384


def test_parameters_count_unless_excluded_and_dropped_graph_is_freed():
    net = chain()
    x = torch.randn(4, 8, requires_grad=True)  # now the first linear saves its weight too (for x's gradient)
    with SavedTensorTracker([net]) as excluded:
        net(x).sum().backward()
    with SavedTensorTracker() as included:
        loss = net(x).sum()
        weights = (8 * 16 + 16 * 4) * F32
        assert included.current == excluded.peak + weights
        del loss  # the graph is dropped without a backward pass
        assert included.current == 0
    assert excluded.peak == 384


def test_conv_chain_by_hand():
    """Conv2d(1, 2, 3, padding 1) -> LeakyReLU(inplace) -> Conv2d(2, 3, 1) on (2, 1, 8, 8): the input
    (2 x 1 x 8 x 8), the activation after the in-place LeakyReLU (2 x 2 x 8 x 8; the first conv's output is the
    same storage, saved by LeakyReLU, counted once), which the second conv saves again."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.LeakyReLU(inplace=True), nn.Conv2d(2, 3, 1))
    x = torch.randn(2, 1, 8, 8)
    with SavedTensorTracker([net]) as tracker:
        net(x).sum().backward()
    assert tracker.peak == (2 * 1 * 8 * 8 + 2 * 2 * 8 * 8) * F32


def test_split_backward_halves_the_peak_of_two_equal_parts():
    net = chain()
    x1, x2 = torch.randn(4, 8), torch.randn(4, 8)
    with SavedTensorTracker([net]) as one_backward:
        (net(x1).sum() + net(x2).sum()).backward()
    with SavedTensorTracker([net]) as split:
        net(x1).sum().backward()
        net(x2).sum().backward()
    assert one_backward.peak == 2 * 384
    assert split.peak == 384


def test_semi_supervised_step_split_halves_two_equal_parts():
    """The trainer's compute_gradients: two equal loss parts, a backward per part (split_backward) against one
    backward of their sum; the gradients are the same."""
    from nnunetv2_sss.objectives.base import LossPart
    from nnunetv2_sss.training.memory import track_step
    from nnunetv2_sss.training.semi_supervised import nnUNetTrainerSemiSupervised

    net = chain()

    class Objective:
        trained_modules = {}

        def loss_parts(self, data, target, unlabeled):
            yield LossPart(supervised=net(data).sum())
            yield LossPart(unlabeled=net(unlabeled['data']).sum())

    class Trainer:  # the attributes compute_gradients uses
        device = torch.device('cpu')
        is_ddp = False
        grad_scaler = None
        network = net
        ssl_objective = Objective()
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        compute_gradients = nnUNetTrainerSemiSupervised.compute_gradients
        part_loss = nnUNetTrainerSemiSupervised.part_loss

        def autocast(self):
            return contextlib.nullcontext()

        def backward(self, loss):
            loss.backward()

        def unlabeled_weight(self):
            return 1.0

        def trained_modules(self):
            return [net]

    batch = {'data': torch.randn(4, 8), 'target': torch.zeros(4, 4),
             'unlabeled': {'data': torch.randn(4, 8), 'keys': ['a']}}
    results, gradients = {}, {}
    for split in (True, False):
        trainer = Trainer()
        trainer.split_backward = split
        results[split] = track_step(trainer, batch)
        gradients[split] = torch.cat([p.grad.flatten() for p in net.parameters()])
    # each part saves 384 bytes in the network (test_linear_chain_by_hand) and the unlabeled part 4 more (the
    # 0-d weight its loss is multiplied with)
    assert results[False] == StepMemory(2 * 384 + 4, [2 * 384 + 4])
    assert results[True] == StepMemory(384 + 4, [384, 384 + 4])
    assert torch.allclose(gradients[True], gradients[False], rtol=1e-6, atol=1e-8)


# ---- activation checkpointing of the Hiera blocks ------------------------------------------------------------
def tiny_sam2_unet(conv_dim: int = 3):
    from nnunetv2_sss.networks.sam2_unet import SAM2UNet
    torch.manual_seed(0)
    return SAM2UNet(TINY_IMAGE_ENCODER, 1, 3, conv_dim, 0, deep_supervision=True)


def gradients_and_peak(network, x):
    network.train()
    network.zero_grad(set_to_none=True)
    with SavedTensorTracker([network], attribute_depth=3) as tracker:
        loss = sum(o.square().mean() for o in network(x))
        loss.backward()
        tracker.end_backward()
    return torch.cat([p.grad.flatten() for p in network.parameters()]), tracker


@pytest.mark.parametrize("conv_dim", [2, 3])
def test_activation_checkpointing_same_gradients_fewer_saved_bytes(conv_dim):
    from nnunetv2_sss.networks.activation_checkpointing import (CheckpointedMultiScaleBlock,
                                                                activation_checkpointing_enabled,
                                                                set_activation_checkpointing)
    plain = tiny_sam2_unet(conv_dim)
    checkpointed = copy.deepcopy(plain)
    assert set_activation_checkpointing(checkpointed) == 5  # the tiny Hiera's blocks
    assert activation_checkpointing_enabled(checkpointed) and not activation_checkpointing_enabled(plain)
    assert checkpointed.state_dict().keys() == plain.state_dict().keys()
    torch.manual_seed(1)
    x = torch.randn(2, 1, 4, 32, 32) if conv_dim == 3 else torch.randn(2, 1, 64, 64)
    g_plain, t_plain = gradients_and_peak(plain, x)
    g_checkpointed, t_checkpointed = gradients_and_peak(checkpointed, x)
    assert float((g_plain - g_checkpointed).norm() / g_plain.norm()) <= 1e-5
    hiera = 'encoder.sam2.image_encoder'
    assert t_checkpointed.peak_by_module[hiera] < t_plain.peak_by_module[hiera] / 3
    assert t_checkpointed.peak < t_plain.peak
    # the checkpoint's inputs and the recomputed block are counted
    with SavedTensorTracker([checkpointed]) as tracker:
        output = checkpointed(x)
        assert tracker.current > 0
        sum(o.sum() for o in output).backward()
        assert tracker.current > 0  # the last recomputed block, until the backward pass is declared ended
        tracker.end_backward()
        assert tracker.current == 0
    # eval mode (teacher, prediction) and no_grad run the blocks as they are
    teacher = copy.deepcopy(checkpointed).eval()
    assert all(type(b) is CheckpointedMultiScaleBlock for b in teacher.encoder.sam2.image_encoder.trunk.blocks)
    with torch.no_grad():
        for a, b in zip(teacher(x), plain.eval()(x)):
            assert torch.equal(a, b)


def test_recipe_option_checkpoints_the_blocks():
    from nnunetv2_sss.networks.activation_checkpointing import activation_checkpointing_enabled
    from nnunetv2_sss.networks.recipes import SAM2Recipe, SSSRecipe
    assert SAM2Recipe().activation_checkpointing is False
    assert SSSRecipe.defaults.get('activation_checkpointing') is None  # inherited from SAM2Recipe
    assert activation_checkpointing_enabled(SSSRecipe(activation_checkpointing=True).checkpointed(tiny_sam2_unet()))
    assert not activation_checkpointing_enabled(SAM2Recipe().checkpointed(tiny_sam2_unet()))


# ---- the planner's estimate (training/memory_estimate.py, nnUNetv2_sss_plan_memory) ------------------------------
def _trainer_environment(monkeypatch, dataset, **overrides):
    for key in [k for k in os.environ if k.startswith(("nnUNet_", "nnunet_"))]:
        monkeypatch.delenv(key)
    env = dataset.env(nnUNet_sss_seed=0, nnUNet_sss_sam2_config=ESTIMATE_SAM2_CONFIG,
                      nnUNet_sss_sam2_checkpoint="random", **overrides)
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    return env


ESTIMATE_SAM2_CONFIG = "sam2.1_hiera_t"  # a real Hiera (random weights)


def _measured(trainer_name: str, plans_identifier: str = "nnUNetPlans"):
    from nnunetv2.run.run_training import get_trainer_from_args
    from nnunetv2_sss.training.memory import track_step
    torch.manual_seed(0)
    trainer = get_trainer_from_args("901", "3d_fullres", 0, trainer_name, plans_identifier, device=torch.device("cpu"))
    try:
        trainer.on_train_start()
        trainer.on_epoch_start()
        trainer.on_train_epoch_start()
        batch = next(trainer.dataloader_train)
        if hasattr(trainer, "compute_gradients"):
            trainer.split_backward = True  # CUDA's default, which the estimate is for
            batch["unlabeled"] = next(trainer.dataloader_unlabeled)
        return trainer, track_step(trainer, batch)
    finally:
        for name in ("dataloader_train", "dataloader_val", "dataloader_unlabeled"):
            finish = getattr(getattr(trainer, name, None), "_finish", None)
            if finish is not None:
                finish()


@pytest.mark.parametrize("trainer_name", ["nnUNetTrainer", "nnUNetTrainerSSS"])
def test_estimate_matches_the_measured_step(nnunet_dataset, monkeypatch, trainer_name):
    """The planner's saved-bytes estimate ('meta' device, the objective's own loss parts) against the bytes
    saved for backward by the real trainer's step on the CPU (same plans, patch and batch): within 25 %."""
    import json
    from nnunetv2_sss.training.memory_estimate import estimate_step
    _trainer_environment(monkeypatch, nnunet_dataset)
    trainer, measured = _measured(trainer_name)
    with open(nnunet_dataset.preprocessed / nnunet_dataset.dataset_name / "nnUNetPlans.json") as f:
        plans = json.load(f)
    estimate = estimate_step(type(trainer), plans, trainer.dataset_json, "3d_fullres",
                             sam2_config=ESTIMATE_SAM2_CONFIG)
    assert estimate.patch_size == list(trainer.configuration_manager.patch_size)
    assert estimate.batch_size == trainer.batch_size
    print(f"{trainer_name}: measured {measured.peak} bytes saved for backward, estimated {estimate.saved_bytes}")
    assert abs(estimate.saved_bytes - measured.peak) <= 0.25 * measured.peak, (estimate, measured)
    assert len(estimate.parts) == len(measured.parts)


def test_calibration_reproduces_nnunets_reference(nnunet_dataset):
    import json
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2_sss.training.memory_estimate import calibrate, estimate_step, nnunet_reference_bytes
    with open(nnunet_dataset.preprocessed / nnunet_dataset.dataset_name / "nnUNetPlans.json") as f:
        plans = json.load(f)
    with open(nnunet_dataset.raw / nnunet_dataset.dataset_name / "dataset.json") as f:
        dataset_json = json.load(f)
    k = calibrate(plans, dataset_json, "3d_fullres")
    step = estimate_step(nnUNetTrainer, plans, dataset_json, "3d_fullres", k=k)
    assert step.gpu_bytes == pytest.approx(nnunet_reference_bytes(plans, dataset_json, "3d_fullres"), rel=1e-9)
    # nnU-Net's static estimate and the saved bytes grow alike with the patch (same network)
    patch = [2 * n for n in plans["configurations"]["3d_fullres"]["patch_size"]]
    bigger = estimate_step(nnUNetTrainer, plans, dataset_json, "3d_fullres", patch, k=k)
    ratio = nnunet_reference_bytes(plans, dataset_json, "3d_fullres") / step.saved_bytes
    assert nnunet_reference_bytes(plans, dataset_json, "3d_fullres", patch) / bigger.saved_bytes == \
        pytest.approx(ratio, rel=0.1)


def test_plan_memory_command_writes_a_variant_that_trains(nnunet_dataset, monkeypatch, capsys):
    """nnUNetv2_sss_plan_memory: a small target shrinks the patch (accepted sizes, batch >= 2, the estimate
    within the target); the variant keeps everything but plans_name, patch and batch, reuses the preprocessed
    data (labeled and unlabeled) and trains."""
    import json
    from nnunetv2_sss.plan_memory import axis_steps, hiera_total_stride_of, initial_patch, main
    from nnunetv2_sss.training.memory_estimate import estimate_step, trainer_class_named
    _trainer_environment(monkeypatch, nnunet_dataset)
    folder = nnunet_dataset.preprocessed / nnunet_dataset.dataset_name
    with open(folder / "nnUNetPlans.json") as f:
        plans = json.load(f)
    with open(nnunet_dataset.raw / nnunet_dataset.dataset_name / "dataset.json") as f:
        dataset_json = json.load(f)
    # a target 10 % of the activations below the first candidate's estimate: the search has to shrink
    entry = plans["configurations"]["3d_fullres"]
    first = initial_patch(entry, axis_steps(entry, hiera_total_stride_of(ESTIMATE_SAM2_CONFIG)))
    step = estimate_step(trainer_class_named("nnUNetTrainerSSS"), plans, dataset_json, "3d_fullres", first, 2,
                         sam2_config=ESTIMATE_SAM2_CONFIG)
    target = (step.state_bytes + 0.9 * (step.gpu_bytes - step.state_bytes)) / 2 ** 30
    main(["-d", "901", "-c", "3d_fullres", "--gpu-memory", f"{target:.3f}", "-o", "nnUNetPlans_mem", "--sam2-config",
          ESTIMATE_SAM2_CONFIG])
    output = capsys.readouterr().out
    with open(folder / "nnUNetPlans_mem.json") as f:
        variant = json.load(f)
    assert variant["plans_name"] == "nnUNetPlans_mem"
    old, new = plans["configurations"]["3d_fullres"], variant["configurations"]["3d_fullres"]
    assert {k: v for k, v in new.items() if k not in ("patch_size", "batch_size")} == \
        {k: v for k, v in old.items() if k not in ("patch_size", "batch_size")}
    assert {k: v for k, v in variant.items() if k not in ("plans_name", "configurations")} == \
        {k: v for k, v in plans.items() if k not in ("plans_name", "configurations")}
    assert new["batch_size"] >= 2 and new["patch_size"][1] % 32 == 0 and new["patch_size"][2] % 32 == 0
    assert "labeled preprocessed" in output and " 0 unlabeled" not in output
    estimates = [float(line.split(": ")[-1].split()[0]) for line in output.splitlines() if line.startswith("  patch")]
    assert len(estimates) >= 2 and estimates[0] > round(target, 2) >= estimates[-1]  # it shrank, the last one fits
    assert new["patch_size"] != first
    trainer, measured = _measured("nnUNetTrainerSSS", "nnUNetPlans_mem")
    assert list(trainer.configuration_manager.patch_size) == new["patch_size"] and measured.peak > 0


def test_semi_supervised_progress_png_takes_little_host_memory(tmp_path):
    """The semi-supervised trainers' progress.png (nnU-Net's three panels + the semi-supervised one) is drawn
    without reading nnU-Net's 3000 x 5400 image back into a figure: that took 1.3 GB of host memory at every
    epoch end (the batch-independent peak of issue 19); now the panels are joined as 8-bit pixels."""
    import threading
    import time
    from PIL import Image
    from nnunetv2_sss.training.progress import SemiSupervisedLocalLogger

    def rss() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))

    logger = SemiSupervisedLocalLogger({"ssl_unlabeled_loss": "unlabeled loss", "ssl_prompts_per_volume": "prompts"},
                                       ("ssl_prompts_per_volume",))
    for epoch in range(3):
        for key, values in logger.my_fantastic_logging.items():
            values.append([0.5, 0.4] if key == "dice_per_class_or_region" else 0.1 * epoch)
    start, peak, done = rss(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        logger.plot_progress_png(str(tmp_path))
    finally:
        done.set()
        sampler.join()
    with Image.open(tmp_path / "progress.png") as image:
        assert image.size == (3000, 5400 + 1800)
    assert peak[0] - start < 700 * 2 ** 20


def test_dfe_checkpointing_same_gradients_fewer_saved_bytes():
    """SSSRecipe's dfe_checkpointing (default on): DFE's two-view pass recomputed in backward keeps the two
    views' features only; the gradients are those without it."""
    from nnunetv2_sss.networks.activation_checkpointing import CheckpointedScaleDFE, set_dfe_checkpointing
    from nnunetv2_sss.networks.recipes import SSSRecipe
    from nnunetv2_sss.networks.sss_network import SSSNetwork
    assert SSSRecipe().dfe_checkpointing is True
    torch.manual_seed(0)
    network = SSSNetwork(TINY_IMAGE_ENCODER, 1, 3, 3, 0, use_dfe=True).train()
    assert set_dfe_checkpointing(network) == 4  # the SAM-2 levels
    assert all(type(m) is CheckpointedScaleDFE for m in network.fusion.per_scale.values())
    x1, x2 = torch.randn(2, 1, 4, 32, 32), torch.randn(2, 1, 4, 32, 32)
    results = {}
    for checkpointing in (False, True):
        set_dfe_checkpointing(network, checkpointing)
        network.zero_grad(set_to_none=True)
        with SavedTensorTracker([network], attribute_depth=2) as tracker:
            inputs_1, inputs_2 = network.fuse_pair(network.encoder(x1), network.encoder(x2))
            loss = sum(o.square().mean() for o in network.decoder([torch.cat(f) for f in zip(inputs_1, inputs_2)]))
            loss.backward()
            tracker.end_backward()
        results[checkpointing] = (torch.cat([p.grad.flatten() for p in network.parameters() if p.grad is not None]),
                                  tracker.peak_by_module.get('fusion.per_scale', 0), tracker.peak)
    (g_plain, dfe_plain, peak_plain), (g_checkpointed, dfe_checkpointed, peak_checkpointed) = \
        results[False], results[True]
    assert float((g_plain - g_checkpointed).norm() / g_plain.norm()) <= 1e-5
    assert dfe_checkpointed < dfe_plain / 3 and peak_checkpointed < peak_plain
