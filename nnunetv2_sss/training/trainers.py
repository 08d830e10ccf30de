"""The trainers nnU-Net finds by name (``-tr``): each chooses a network recipe
(``nnunetv2_sss/networks/recipes.py``) and an objective (``nnunetv2_sss/objectives``) and sets
their options as class attributes, as nnU-Net's own variants do. The machinery is in
``base.py`` (everything of nnU-Net's the plugin changes) and ``semi_supervised.py`` (unlabeled
loader, EMA teacher, ``L = L_l + w L_u``, checkpoints, figures, multi-GPU).
"""
from __future__ import annotations

import torch

from nnunetv2_sss.cps4.stage1_io import load_stage1, stage1_output_folder
from nnunetv2_sss.cps4.text_labels import attention_to_label_map
from nnunetv2_sss.errors import UserRuntimeError
from nnunetv2_sss.networks.passes import unwrap
from nnunetv2_sss.networks.recipes import SAM2Recipe, SSSRecipe
from nnunetv2_sss.objectives.cps4 import CPS4Objective
from nnunetv2_sss.objectives.ssl4mis_baselines import (CPSObjective, EntropyMinObjective, ICTObjective,
                                                       MeanTeacherObjective)
from nnunetv2_sss.objectives.sss import SSSObjective
from nnunetv2_sss.objectives.unimatch_v2 import UniMatchV2Objective
from nnunetv2_sss.sss.pcsw import DEFAULT_TAU
from nnunetv2_sss.ssl.ssl4mis import SSL4MIS_MAX_ITERATIONS
from nnunetv2_sss.training.base import nnUNetTrainerPlugin
from nnunetv2_sss.training.ddp import wrap_for_ddp
from nnunetv2_sss.training.seeding import derived_seed
from nnunetv2_sss.training.semi_supervised import nnUNetTrainerSemiSupervised
from nnunetv2_sss.training.ssl4mis_baseline import nnUNetTrainerSSL4MISBaseline


class nnUNetTrainerSAM2(nnUNetTrainerPlugin):
    """Supervised nnU-Net training of the SAM-2 U-Net (:class:`~nnunetv2_sss.networks.recipes.SAM2Recipe`)."""
    recipe = SAM2Recipe()


# ---- the SSL4MIS baselines (README, "Baseline settings (SSL4MIS)") -------------------------------------
class nnUNetTrainerMeanTeacher(nnUNetTrainerSSL4MISBaseline):
    """Mean Teacher; no unlabeled term for the first 1000 / 30000 of the iterations (SSL4MIS)."""
    objective = MeanTeacherObjective
    ema_decay = 0.99
    num_strong_views = 0
    consistency_start_fraction = 1000 / SSL4MIS_MAX_ITERATIONS
    teacher_noise_std = 0.1
    teacher_noise_clip = 0.2
    teacher_noise_relative_to_range = True


class nnUNetTrainerEntropyMin(nnUNetTrainerSSL4MISBaseline):
    """Entropy minimisation; exports the student (SSL4MIS has no teacher here)."""
    objective = EntropyMinObjective
    num_strong_views = 0
    export_teacher = False
    entropy_num_classes = None   # None: the dataset's number of classes (SSL4MIS hard-codes 4)
    entropy_on_labeled = True    # SSL4MIS: entropy of the whole (labeled + unlabeled) batch


class nnUNetTrainerICT(nnUNetTrainerSSL4MISBaseline):
    """Interpolation Consistency Training."""
    objective = ICTObjective
    ema_decay = 0.99
    num_strong_views = 0
    min_unlabeled_batch_size = 2  # mixup needs a pair
    mixup_alpha = 0.2
    random_generators = ('mixup_rng',)


class nnUNetTrainerCPS(nnUNetTrainerSSL4MISBaseline):
    """Cross Pseudo Supervision: two networks of the same recipe, network 2 (``network_b``) built
    under ``second_network_seed`` (derived from ``nnUNet_sss_seed`` when set). One optimizer holds
    both as two parameter groups (nnU-Net's ``optimizer_state`` and ``--c`` cover both); the
    checkpoint adds ``network_b_weights``; prediction uses network 1 (``network_weights``); the
    base's EMA teacher is no part of CPS (``export_teacher = False``)."""
    objective = CPSObjective
    num_strong_views = 0
    export_teacher = False
    second_network_seed = 1234

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.network_b = None

    def build_second_network(self) -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.second_network_seed if self.sss_seed is None
                              else derived_seed(self.sss_seed, "second_network"))
            network = self.build_network_architecture(
                self.plans_manager, self.configuration_manager, self.num_input_channels,
                self.label_manager.num_segmentation_heads, self.enable_deep_supervision)
        return network.to(self.device)

    def configure_optimizers(self):
        """nnU-Net's optimizer and schedule with network 2 as a second parameter group (called by
        ``initialize`` right after network 1 is built, so network 2 is built here too)."""
        network_b = self.build_second_network()
        optimizer, lr_scheduler = super().configure_optimizers()
        optimizer.add_param_group({'params': list(network_b.parameters())})
        self.network_b = wrap_for_ddp(network_b, self.device) if self.is_ddp else network_b
        return optimizer, lr_scheduler

    def trained_modules(self):
        return [self.network, self.network_b]

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self.network_b.train()

    def set_deep_supervision_enabled(self, enabled: bool):
        super().set_deep_supervision_enabled(enabled)
        if self.network_b is not None:
            unwrap(self.network_b).decoder.deep_supervision = enabled

    def extra_checkpoint_state(self) -> dict:
        return {**super().extra_checkpoint_state(), 'network_b_weights': unwrap(self.network_b).state_dict()}

    def load_extra_checkpoint_state(self, checkpoint: dict) -> None:
        super().load_extra_checkpoint_state(checkpoint)
        if 'network_b_weights' not in checkpoint:
            raise RuntimeError(f"{self.__class__.__name__}: the checkpoint holds no 'network_b_weights' (it was not "
                               f"written by this trainer); cannot resume the second network.")
        unwrap(self.network_b).load_state_dict(checkpoint['network_b_weights'])


# ---- UniMatch V2 and SSS --------------------------------------------------------------------------------
class nnUNetTrainerUniMatchV2(nnUNetTrainerSemiSupervised):
    """UniMatch V2 on nnU-Net's network (SSS without SAM-2, DFE and PCSW; METHOD.md 1.1)."""
    objective = UniMatchV2Objective
    num_strong_views = 2
    min_unlabeled_batch_size = 2  # CutMix pastes from another patch of the batch
    cutmix_probability = 0.5
    cutmix_area_range = (0.02, 0.4)
    feature_dropout_probability = 0.5
    random_generators = ('cutmix_rng',)


class nnUNetTrainerSSS(nnUNetTrainerUniMatchV2):
    """Semi-Supervised SAM-2 (METHOD.md section 1): UniMatch V2 + DFE + PCSW on the SAM-2 network.
    All four SSS trainers draw the same unlabeled batches: in 2-D a slab of consecutive slices of
    one case (PCSW needs a slice axis), in 3-D patches sliced along the SAM-2 slice axis."""
    recipe = SSSRecipe()
    objective = SSSObjective
    use_dfe = True
    use_pcsw = True
    pcsw_tau = DEFAULT_TAU
    pcsw_warmup_fraction = 0.1   # only while the prompt head has random weights
    prompt_loss_weight = 1.0
    max_prompts_per_step = 16    # ground-truth prompts per iteration for the prompt head
    unlabeled_slabs_in_2d = True
    random_generators = ('cutmix_rng', 'prompt_rng')

    def extra_checkpoint_state(self) -> dict:
        return {**super().extra_checkpoint_state(), 'prompt_head_pretrained': self.prompt_head_pretrained}

    def load_extra_checkpoint_state(self, checkpoint: dict) -> None:
        super().load_extra_checkpoint_state(checkpoint)
        self.prompt_head_pretrained = checkpoint.get('prompt_head_pretrained', False)


class nnUNetTrainerSSS_noDFE(nnUNetTrainerSSS):
    use_dfe = False


class nnUNetTrainerSSS_noPCSW(nnUNetTrainerSSS):
    use_pcsw = False


class nnUNetTrainerSSS_baseline(nnUNetTrainerSSS):
    """UniMatch V2 on the SAM-2 network (the paper's Table 3 baseline row)."""
    use_dfe = False
    use_pcsw = False


# ---- CPS4 stage 2 ----------------------------------------------------------------------------------------
class nnUNetTrainerCPS4(nnUNetTrainerSemiSupervised):
    """Class-prompt-driven Mean Teacher (METHOD.md 2.2) with the frozen stage-1 vision-text model of
    the same dataset, plans and fold (``nnUNetv2_sss_pretrain_cps4``; the training stops at once
    naming that command if it is missing). No ramp-up (``unlabeled_rampup_fraction`` > 0 adds the
    base's). 2-D only; ``nnUNetv2_predict`` needs neither encoder (the exported model is the teacher)."""
    objective = CPS4Objective
    ema_decay = 0.99
    unlabeled_loss_weight = 1.0
    unlabeled_rampup_fraction = 0.0
    num_strong_views = 1
    export_teacher = True

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if len(self.configuration_manager.patch_size) != 2:
            raise UserRuntimeError(f"{self.__class__.__name__} is 2-D only (CPS4's stage 1 works on slices); "
                                   f"train the '2d' configuration, not '{configuration}'.")
        self.text_model = None

    def on_train_start(self):
        if not self.was_initialized:
            self.initialize()
        folder = stage1_output_folder(self.plans_manager.dataset_name, self.plans_manager.plans_name, self.fold,
                                      self.configuration_name)
        self.text_model = load_stage1(folder, self.device, num_input_channels=self.num_input_channels,
                                      num_classes=self.label_manager.num_segmentation_heads)
        self.print_to_log_file(f"CPS4 stage-1 model: {folder}")
        super().on_train_start()

    @torch.no_grad()
    def text_labels(self, weak: torch.Tensor) -> torch.Tensor:
        """``y_text`` ``(B, H, W)`` of the weak view from the frozen stage-1 attention maps."""
        return attention_to_label_map(self.text_model(weak), weak.shape[2:]).to(weak.device)
