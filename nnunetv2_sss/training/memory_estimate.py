"""GPU memory of a trainer's training step for any patch and batch size, without a GPU.

1. **The fp32 peak of the whole step**, measured, not modelled: the trainer's own network (built by its recipe
   for the configuration with the given patch size on the ``meta`` device: shapes, no data), its EMA teacher,
   its extra networks and its own optimiser (with the state it has after a first step) run the step as
   ``train_step`` does on CUDA: the objective's loss parts (``loss_parts``: every forward pass of the step),
   each part's backward pass before the next (``split_backward``), clipping, the optimiser's multi-tensor
   update, the EMA update; :class:`~nnunetv2_sss.training.peak_memory.LiveBytesTracker` counts every storage the
   step allocates until it is freed (activations, gradients of activations and weights, regions recomputed by
   activation checkpointing, losses and softmax copies at full resolution, the teacher's no-grad pass,
   temporaries of the optimiser). ``peak_bytes`` = ``state_bytes`` (weights and buffers of every network, the
   optimiser's state) + ``step_bytes`` (the batch and the largest number of the step's bytes alive at once).
   Two substitutions: SSS's PCSW refinement of the pseudo-labels (numpy, on the host) is left out, and its
   ground-truth prompts for the prompt head are ``max_prompts_per_step`` (16) boxes (the most a step uses).
   Attention runs as on a GPU (flash attention: linear in tokens; on 'meta' PyTorch would fall back to the
   quadratic math kernel). Checked against the real step on the CPU (``peak_memory.measure_train_step``) in
   ``tests/test_memory.py`` and ``benchmarks/bench_memory.py``.
2. **GPU bytes** = ``state_bytes + k * step_bytes``: ``k`` converts the fp32 step to what a mixed-precision GPU
   step takes (half-precision activations, the allocator's caching), calibrated on nnU-Net's own reference:
   nnU-Net's planner sizes the plain U-Net's step so that ``8 GB * E(patch) * batch / (ref_bs * ref_val)`` is its
   GPU memory (``static_estimate_VRAM_usage`` = E, ``UNet_reference_val_3d`` 560e6 at batch 2, ``_2d`` 85e6 at
   batch 12, 8 GB). :func:`calibrate` estimates nnUNetTrainer's step at an nnU-Net plan and solves
   ``k = (reference - state) / step`` (:data:`DEFAULT_K`: the values for the plans of docs/gpu_memory.md, per 2-D
   / 3-D).

No GPU was measured; the caveats are in docs/gpu_memory.md.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn


GiB = 2 ** 30
# nnU-Net 2.8.1, ExperimentPlanner: what the plain U-Net's step is planned to fit into
NNUNET_REFERENCE = {2: (85000000, 12), 3: (560000000, 2)}  # dims -> (UNet_reference_val, at batch size)
NNUNET_REFERENCE_GB = 8  # UNet_reference_val_corresp_GB
# k of the calibration (calibrate()) on nnU-Net's own plans of the BHSD-like dataset of docs/gpu_memory.md
# (benchmarks/bench_gpu_memory.py): 3d_fullres (patch 20 x 320 x 256, batch 2) 0.767, 2d (512 x 512, batch 12) 0.848.
DEFAULT_K = {2: 0.85, 3: 0.77}


def default_k(patch_size) -> float:
    return DEFAULT_K[len(patch_size)]


@contextlib.contextmanager
def flash_attention_everywhere():
    """``scaled_dot_product_attention`` as the flash kernel (saves q, k, v, output and log-sum-exp), also on
    'meta', where PyTorch would pick the math kernel that saves the attention matrix; and
    ``torch.is_autocast_enabled('meta')`` False (PyTorch raises for it)."""
    original = F.scaled_dot_product_attention

    def flash(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
        if attn_mask is not None or dropout_p or kwargs:
            return original(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, **kwargs)
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, 0.0, is_causal,
                                                                         scale=scale)[0]

    autocast_enabled = torch.is_autocast_enabled

    def autocast_enabled_or_meta(*args):  # 'meta' has no autocast (torch raises for it: sss/dfe.py asks)
        return False if args and args[0] == 'meta' else autocast_enabled(*args)

    F.scaled_dot_product_attention = flash
    torch.is_autocast_enabled = autocast_enabled_or_meta
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original
        torch.is_autocast_enabled = autocast_enabled


@dataclass
class StepEstimate:
    trainer: str
    configuration: str
    patch_size: List[int]
    batch_size: int
    unlabeled_batch_size: Optional[int]
    state_bytes: int                      # weights, buffers, optimizer state, EMA teacher (fp32)
    step_bytes: int                       # the batch and the step's live peak: activations, gradients, temporaries
    peak_phase: str                       # where the step reaches its peak
    parameters: Dict[str, int] = field(default_factory=dict)
    k: float = DEFAULT_K[3]

    @property
    def peak_bytes(self) -> int:
        """The fp32 peak of the step: what :func:`~nnunetv2_sss.training.peak_memory.measure_train_step` measures
        on the CPU."""
        return self.state_bytes + self.step_bytes

    @property
    def gpu_bytes(self) -> float:
        """The estimated peak on a GPU under the trainer's mixed precision (``k``: module docstring)."""
        return self.state_bytes + self.k * self.step_bytes


class _Trainer:
    """What objectives, the loss and the recipes read from a trainer, for an estimate."""

    def __init__(self, trainer_class, plans_manager, configuration_manager, dataset_json, device):
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
        self.trainer_class = trainer_class
        self.plans_manager, self.configuration_manager = plans_manager, configuration_manager
        self.label_manager = plans_manager.get_label_manager(dataset_json)
        self.num_input_channels = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
        self.device = torch.device(device)
        self.is_ddp, self.local_rank, self.enable_deep_supervision = False, 0, True
        self.current_epoch, self.num_epochs, self.num_iterations_per_epoch, self.ssl_iteration = 0, 1000, 250, 0
        self.initial_lr, self.weight_decay = 1e-2, 3e-5  # nnU-Net's (the optimiser's state does not depend on them)
        self.sss_seed, self.teacher, self.sam2_checkpoint = None, None, None
        self.network_recipe = trainer_class.recipe(**trainer_class.recipe_options()) \
            if hasattr(trainer_class, 'recipe_options') else None
        from nnunetv2_sss.networks.sam2_config import PLANS_KEY, SAM2NetworkSpec
        entry = configuration_manager.configuration.get(PLANS_KEY)
        self.sam2_spec = SAM2NetworkSpec.from_configuration(configuration_manager.configuration) if entry else None

    def print_to_log_file(self, *args, **kwargs):
        pass

    def unlabeled_share(self) -> slice:
        return slice(None)

    def _do_i_compile(self) -> bool:
        return False

    def _get_deep_supervision_scales(self):
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
        scales = self.network_recipe.deep_supervision_scales(self) if self.network_recipe is not None else None
        return scales if scales is not None else nnUNetTrainer._get_deep_supervision_scales(self)

    def build_network_architecture(self, plans_manager, configuration_manager, num_input_channels,
                                   num_output_channels, enable_deep_supervision=True) -> nn.Module:
        """The trainer class's network, built on the CPU (SAM-2's constructor reads values) and moved to the
        estimate's device."""
        return self.trainer_class.build_network_architecture(
            plans_manager, configuration_manager, num_input_channels, num_output_channels,
            enable_deep_supervision).to(self.device)


def _objective(trainer_class, trainer: _Trainer):
    """The trainer class's objective with its options as the class gives them (declared defaults, class
    attributes); SSS without PCSW refinement and with synthetic ground-truth prompts (module docstring)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2_sss.errors import UserValueError
    from nnunetv2_sss.objectives.cps4 import CPS4Objective
    from nnunetv2_sss.objectives.sss import SSSObjective
    from nnunetv2_sss.training.options import class_overrides, declared_defaults
    objective_class = trainer_class.objective
    if issubclass(objective_class, CPS4Objective):
        raise UserValueError(f"{trainer_class.__name__}: the memory estimate does not run CPS4 (its step needs the "
                             f"stage-1 model); its step is a Mean Teacher step of nnU-Net's network (2d only)")
    defaults = declared_defaults(objective_class)
    values = {name: value for name, (value, _) in defaults.items()}
    values.update({name: value for name, (value, _) in class_overrides(trainer_class, defaults, nnUNetTrainer).items()})
    if issubclass(objective_class, SSSObjective):
        objective_class = type('EstimatedSSSObjective', (_EstimatedSSS, objective_class), {})
    return objective_class(trainer, **values)


class _EstimatedSSS:
    """SSS for an estimate: no PCSW refinement (no gradient, saves nothing), ``max_prompts_per_step`` prompts."""

    def pseudo_labels(self, weak):
        from nnunetv2_sss.objectives.unimatch_v2 import UniMatchV2Objective
        return UniMatchV2Objective.pseudo_labels(self, weak)

    def supervised_loss(self, data, target):
        from nnunetv2_sss.networks.passes import unwrap
        from nnunetv2_sss.objectives.sss import mask_loss
        trainer = self.trainer
        features = trainer.network(data, pass_='encode')
        output = trainer.network(features, pass_='segment')
        loss = trainer.loss(output, target)
        network = unwrap(trainer.network)
        if network.prompt_head is None:
            return loss, output, {}
        prompts = self.max_prompts_per_step
        slices = network.to_slices(data[:, :1]).shape
        height, width = slices[-2:]
        rows = torch.arange(prompts, device=data.device) % slices[0]
        boxes = torch.tensor([[0.0, 0.0, width - 1.0, height - 1.0]] * prompts).to(data.device)
        points = torch.tensor([[width / 2, height / 2]] * prompts).to(data.device)
        logits = trainer.network(features, rows, boxes, points, pass_='prompt')
        masks = torch.zeros(logits.shape, dtype=torch.bool, device=data.device)
        return loss + self.prompt_loss_weight * mask_loss(logits, masks), output, {}


def configuration_for(plans: dict, configuration: str, patch_size=None, batch_size=None, sam2: bool = False,
                      sam2_config: Optional[str] = None, sam2_input_size: Optional[int] = None):
    """``(plans_manager, configuration_manager)`` of a plans copy with ``patch_size`` / ``batch_size`` and, for the
    SAM-2 network (``sam2``), the SAM-2 config (``sam2_config``, a name or YAML; default: the plans' own entry,
    else ``nnUNet_sss_sam2_config``)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunetv2_sss.networks.sam2_config import PLANS_KEY, SAM2NetworkSpec, load_image_encoder_node
    plans = copy.deepcopy(plans)
    entry = plans['configurations'][configuration]
    if patch_size is not None:
        entry['patch_size'] = [int(n) for n in patch_size]
    if batch_size is not None:
        entry['batch_size'] = int(batch_size)
    if sam2 and (sam2_config is not None or PLANS_KEY not in entry):
        from nnunetv2_sss import settings
        name = sam2_config or settings.sam2_config()
        entry[PLANS_KEY] = SAM2NetworkSpec(name, load_image_encoder_node(name), sam2_input_size).to_plans()
    plans_manager = PlansManager(plans)
    return plans_manager, plans_manager.get_configuration(configuration)


def trainer_class_named(name: str) -> type:
    """A trainer class by name: nnU-Net's, the plugin's (``nnunetv2_sss.training.trainers``), else as
    ``nnUNetv2_train -tr`` finds it (``nnUNet_extTrainer``); a :class:`UserError` if there is none."""
    import io
    import nnunetv2_sss.training.trainers as trainers
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    if isinstance(getattr(trainers, name, None), type):
        return getattr(trainers, name)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return recursive_find_trainer_class_by_name(name)
    except (RuntimeError, AssertionError):
        from nnunetv2_sss.errors import UserValueError
        raise UserValueError(f"trainer {name!r}: no such trainer (nnU-Net's, the plugin's or in nnUNet_extTrainer)") \
            from None


def uses_sam2(trainer_class) -> bool:
    """Whether the trainer's network is the SAM-2 U-Net (a SAM-2 recipe)."""
    from nnunetv2_sss.networks.recipes import SAM2Recipe
    recipe = getattr(trainer_class, 'recipe', None)
    return isinstance(recipe, type) and issubclass(recipe, SAM2Recipe)


def _optimizer(trainer_class, trainer: _Trainer, objective) -> torch.optim.Optimizer:
    """The trainer's own optimiser (its recipe's, else nnU-Net's SGD; the objective's extra networks as more
    parameter groups, as ``nnUNetTrainerSemiSupervised.initialize`` adds them), with its state as after a first
    step (momentum; AdamW's moments), in its multi-tensor form as on CUDA (``peak_memory.use_foreach``)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2_sss.training.peak_memory import use_foreach
    configured = trainer.network_recipe.configure_optimizers(trainer) if trainer.network_recipe is not None else None
    optimizer = (configured or nnUNetTrainer.configure_optimizers(trainer))[0]
    for module in (objective.trained_modules.values() if objective is not None else []):
        optimizer.add_param_group({'params': list(module.parameters())})
    use_foreach(optimizer)
    parameters = [p for group in optimizer.param_groups for p in group['params'] if p.requires_grad]
    for parameter in parameters:
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return optimizer


def estimate_step(trainer_class, plans: dict, dataset_json: dict, configuration: str, patch_size=None,
                  batch_size=None, *, sam2_config: Optional[str] = None, split_backward: Optional[bool] = None,
                  activation_checkpointing: Optional[bool] = None, dfe_checkpointing: Optional[bool] = None,
                  k: Optional[float] = None, device: str = 'meta') -> StepEstimate:
    """The fp32 peak of one training step of ``trainer_class`` and its GPU estimate (module docstring).
    ``split_backward`` / ``activation_checkpointing`` / ``dfe_checkpointing``: None = the trainer's own setting
    (on CUDA)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2_sss.networks.activation_checkpointing import set_activation_checkpointing, set_dfe_checkpointing
    from nnunetv2_sss.networks.passes import NetworkPasses
    from nnunetv2_sss.ssl.ema import ema_update, make_teacher
    from nnunetv2_sss.training.options import class_option
    from nnunetv2_sss.training.peak_memory import (LiveBytesTracker, batch_tensors, resident_bytes,
                                                   step_resident_bytes)
    from nnunetv2_sss.training.semi_supervised import nnUNetTrainerSemiSupervised

    sam2 = uses_sam2(trainer_class)
    recipe_options = trainer_class.recipe_options() if hasattr(trainer_class, 'recipe_options') else {}
    plans_manager, configuration_manager = configuration_for(plans, configuration, patch_size, batch_size, sam2,
                                                             sam2_config, recipe_options.get('sam2_input_size'))
    trainer = _Trainer(trainer_class, plans_manager, configuration_manager, dataset_json, device)
    heads = trainer.label_manager.num_segmentation_heads
    network = trainer.build_network_architecture(plans_manager, configuration_manager, trainer.num_input_channels,
                                                 heads, True)
    if not isinstance(network, NetworkPasses):
        network = NetworkPasses(network)
    if activation_checkpointing is not None:
        set_activation_checkpointing(network, activation_checkpointing)
    if dfe_checkpointing is not None:
        set_dfe_checkpointing(network, dfe_checkpointing)
    trainer.network = network.train()
    trainer.loss = nnUNetTrainer._build_loss(trainer)
    semi = issubclass(trainer_class, nnUNetTrainerSemiSupervised)
    objective = _objective(trainer_class, trainer) if semi else None
    if objective is not None:
        objective.build_modules()
        if objective.uses_teacher:
            trainer.teacher = make_teacher(network)
    if split_backward is None:
        split_backward = class_option(trainer_class, 'split_backward') is not False if semi else True  # None: CUDA's
    trainer.split_backward = split_backward
    optimizer = _optimizer(trainer_class, trainer, objective)

    patch = list(configuration_manager.patch_size)
    batch = configuration_manager.batch_size
    channels = trainer.num_input_channels
    data = torch.randn(batch, channels, *patch, device=device)
    scales = trainer._get_deep_supervision_scales()
    target = [torch.zeros(batch, 1, *[int(round(n * s)) for n, s in zip(patch, scale)], dtype=torch.int16,
                          device=device) for scale in scales]
    unlabeled, unlabeled_batch = None, None
    if semi:
        slabs = objective.unlabeled_slabs_in_2d and len(patch) == 2
        unlabeled_batch = max(batch, objective.min_unlabeled_batch_size)
        unlabeled_batch = batch if slabs else unlabeled_batch
        unlabeled = {'data': torch.randn(unlabeled_batch, channels, *patch, device=device),
                     'keys': ['case'] * unlabeled_batch}
        if objective.num_strong_views:
            unlabeled['strong'] = torch.randn(objective.num_strong_views, unlabeled_batch, channels, *patch,
                                              device=device)

    trained = [network, *(objective.trained_modules.values() if objective is not None else [])]
    modules = [*trained, *([trainer.teacher] if trainer.teacher is not None else [])]
    parameters = {'trained': sum(p.numel() for m in trained for p in m.parameters()),
                  'teacher': sum(p.numel() for p in trainer.teacher.parameters()) if trainer.teacher is not None
                  else 0}
    state = step_resident_bytes(modules, optimizer, [])
    inputs = resident_bytes(batch_tensors([data, target, unlabeled]))
    with flash_attention_everywhere(), LiveBytesTracker(torch.device(device).type) as tracker:
        tracker.set_phase('forward of loss part 1' if split_backward else 'forward')
        if objective is None:
            step_parts = iter([trainer.loss(network(data), target)])
        else:
            step_parts = (_part_sum(part, device) for part in objective.loss_parts(data, target, unlabeled))
        pending = []
        for index, loss in enumerate(step_parts):
            tracker.set_phase(f'backward of loss part {index + 1}' if split_backward else 'backward')
            if split_backward:
                loss.backward()
            else:
                pending.append(loss)
            del loss
            tracker.set_phase(f'forward of loss part {index + 2}' if split_backward else 'forward')
        if pending:
            tracker.set_phase('backward')
            torch.stack(pending).sum().backward()
        del pending
        tracker.set_phase('optimizer step')
        for module in trained:
            torch.nn.utils.clip_grad_norm_(module.parameters(), 12.0)  # its buffers are one scalar per tensor
        optimizer.step()
        if trainer.teacher is not None:
            tracker.set_phase('EMA update')
            ema_update(trainer.teacher, network, 0.99)
    return StepEstimate(trainer_class.__name__, configuration, patch, batch, unlabeled_batch, state,
                        inputs + tracker.peak, tracker.peak_phase, parameters,
                        default_k(patch) if k is None else k)


def _part_sum(part, device) -> torch.Tensor:
    terms = [t for t in (part.supervised, part.unlabeled) if t is not None]
    return sum(terms[1:], terms[0]) if terms else torch.zeros((), device=device)


# ---- calibration on nnU-Net's reference ------------------------------------------------------------------
def nnunet_reference_bytes(plans: dict, dataset_json: dict, configuration: str, patch_size=None,
                           batch_size=None) -> float:
    """GPU bytes nnU-Net's planner assigns to its plain U-Net's step at this patch and batch:
    ``8 GB * E * batch / (ref_bs * ref_val)`` with ``E = static_estimate_VRAM_usage`` (GB taken as GiB)."""
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    manager = PlansManager(plans)
    entry = manager.get_configuration(configuration)
    patch = list(patch_size if patch_size is not None else entry.patch_size)
    batch = batch_size if batch_size is not None else entry.batch_size
    architecture = entry.configuration['architecture']
    estimate = ExperimentPlanner.static_estimate_VRAM_usage(
        tuple(patch), determine_num_input_channels(manager, entry, dataset_json), len(dataset_json['labels']),
        architecture['network_class_name'], architecture['arch_kwargs'], tuple(architecture['_kw_requires_import']))
    reference, reference_batch = NNUNET_REFERENCE[len(patch)]
    return NNUNET_REFERENCE_GB * GiB * float(estimate) * batch / (reference_batch * reference)


def calibrate(plans: dict, dataset_json: dict, configuration: str) -> float:
    """``k`` such that nnUNetTrainer's estimate at the configuration's own plan equals nnU-Net's reference."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    step = estimate_step(nnUNetTrainer, plans, dataset_json, configuration)
    return (nnunet_reference_bytes(plans, dataset_json, configuration) - step.state_bytes) / step.step_bytes
