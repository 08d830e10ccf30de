"""``nnUNetTrainerPlugin``: what every trainer of the plugin shares with nnU-Net's own.

- every option (nnU-Net's ``initial_lr``, ``num_epochs``, ..., the recipe's and the objective's)
  resolved through one path when the trainer is initialised: declared defaults, class attributes,
  instance attributes, ``nnUNet_sss_*`` variables (``training/options.py``); the values that differ
  from their defaults go to the training log with their source;
- the network recipe (``recipe = SAM2Recipe``, ``networks/recipes.py``), built with its options;
- atomic checkpoint files, ``checkpoint_latest.pth`` after every epoch
  (``nnUNet_sss_save_every``; nnU-Net's own cadence is 50 epochs), with the LR schedule and
  every random generator's state, so ``--c`` after a crash loses at most the running epoch;
- the plugin's version (and nnU-Net's and torch's) in every training log, when the trainer is initialised;
- ``nnUNet_sss_seed``: one number seeds Python, NumPy, torch, the trainer's own generators and the
  data-augmentation workers (``seed_everything``, ``training/seeding.py``);
- extra checkpoint state through two hooks (``extra_checkpoint_state`` /
  ``load_extra_checkpoint_state``), which nnU-Net's ``save_checkpoint`` lacks;
- known user errors (:class:`~nnunetv2_sss.errors.UserError`, e.g. a bad ``nnUNet_sss_*``
  value, a missing SAM-2 checkpoint or unlabeled data) stop ``nnUNetv2_train`` with one
  ``ERROR: ...`` line and exit code 1, no traceback; a fold folder that this run created is
  removed again. nnU-Net calls the trainer through ``__init__``, ``initialize``,
  ``load_checkpoint``, ``run_training`` and ``perform_actual_validation``; every class of the
  hierarchy gets these methods (and ``on_train_start``) wrapped (``__init_subclass__``), so a
  subclass raises ``UserError`` anywhere in them.
"""
from __future__ import annotations

import functools
import inspect
import os
import shutil
import sys
from time import perf_counter
from typing import Optional, Union

import torch

from batchgenerators.utilities.file_and_folder_operations import join

from nnunetv2.paths import nnUNet_results
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2_sss.data.splits import hidden_label_cases
from nnunetv2_sss.errors import UserError, UserRuntimeError, UserValueError, trainer_exit
from nnunetv2_sss.networks.passes import unwrap
from nnunetv2_sss.networks.recipes import PlainRecipe
from nnunetv2_sss.training import options as trainer_options
from nnunetv2_sss.training import precision as trainer_precision
from nnunetv2_sss.training import pretrained_start
from nnunetv2_sss.training.checkpoint_io import capture_rng_state, restore_rng_state, save_atomically
from nnunetv2_sss.training.compilation import compile_network_parts, deferring_nnunet_compile
from nnunetv2_sss.training.ddp import cpu_ddp_wrapping, rank_seed
from nnunetv2_sss.settings import cpu_threads, seed as seed_setting
from nnunetv2_sss.training.seeding import describe as describe_seed, seed_augmenter_workers, seed_trainer, \
    trainer_generators
from nnunetv2_sss.version import version_line


# methods through which nnU-Net (run_training.py) enters a trainer, plus on_train_start and the -pretrained_weights check
USER_ERROR_SEAMS = ('__init__', 'initialize', 'on_train_start', 'load_checkpoint', 'run_training',
                    'perform_actual_validation', 'check_pretrained_weights')


def first_new_folder(folder: Optional[str], stop: Optional[str]) -> Optional[str]:
    """The outermost folder of ``folder`` and its parents below ``stop`` that does not exist yet
    (what ``maybe_mkdir_p(folder)`` would create), ``None`` if ``folder`` exists."""
    if folder is None or os.path.isdir(folder):
        return None
    new = folder = os.path.abspath(folder)
    stop = os.path.abspath(stop) if stop else None
    while True:
        parent = os.path.dirname(new)
        if parent == new or parent == stop or os.path.isdir(parent):
            return new
        new = parent


def _fold_folder(trainer_class: type, plans: dict, configuration: str, fold) -> Optional[str]:
    """``output_folder`` that nnU-Net's ``__init__`` will create, computed before it runs."""
    if not nnUNet_results.is_set():
        return None
    try:
        return os.path.join(nnUNet_results.get(), plans['dataset_name'],
                            f"{trainer_class.__name__}__{plans['plans_name']}__{configuration}", f"fold_{fold}")
    except (KeyError, TypeError):
        return None


def user_error_seam(method):
    """Wrap a trainer method: :class:`UserError` -> clean up, ``ERROR: ...``, exit 1."""
    if getattr(method, '_user_error_seam', False):
        return method
    signature = inspect.signature(method)

    @functools.wraps(method)
    def seam(self, *args, **kwargs):
        if method.__name__ == '__init__' and '_sss_new_folder' not in self.__dict__:
            # the outermost __init__: before nnU-Net's maybe_mkdir_p(output_folder)
            try:
                bound = signature.bind(self, *args, **kwargs).arguments
                folder = _fold_folder(type(self), bound['plans'], bound['configuration'], bound['fold'])
            except (TypeError, KeyError):
                folder = None
            self._sss_new_folder = first_new_folder(folder, nnUNet_results.get())
        try:
            return method(self, *args, **kwargs)
        except UserError as error:
            self.stop_on_user_error(error)

    seam._user_error_seam = True
    return seam


# what load_checkpoint takes from a saved LR schedule (its length and base lr come from the run)
LR_SCHEDULE_COUNTERS = ('ctr', 'last_epoch', '_step_count', '_last_lr')


class nnUNetTrainerPlugin(nnUNetTrainer):
    recipe = PlainRecipe  # the network (networks/recipes.py)
    # options of the plugin's trainers and their defaults (training/options.py); save_every: nnU-Net's
    # attribute, the plugin's cadence (see on_epoch_end)
    # compile_backend: torch.compile's backend where nnU-Net compiles (None: torch's default; training/compilation.py)
    option_defaults = {'save_every': 1, 'compile_backend': None}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in USER_ERROR_SEAMS:
            if name in cls.__dict__:
                setattr(cls, name, user_error_seam(cls.__dict__[name]))

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        # nnU-Net's option values as its __init__ left them (later changes are overrides)
        self._nnunet_defaults = {name: getattr(self, name) for name in trainer_options.NNUNET_OPTIONS}
        self.options = None  # -> resolve_options (initialize)
        self.network_recipe = self.recipe(**self.recipe_options())
        trainer_precision.configure(self)  # self.precision: the recipe's mixed_precision on this device (precision.py)
        self._rng_state_to_restore = None  # from load_checkpoint, put back when the next epoch starts
        self.sss_seed = seed_setting()  # nnUNet_sss_seed (None: unseeded); applied by seed_everything
        self.network_recipe.prepare(self)
        self._limit_cpu_threads()

    def _limit_cpu_threads(self) -> None:
        """On the CPU, ``nnUNet_sss_cpu_threads`` replaces nnU-Net's one torch thread per core (its
        ``run_training`` sets them before the trainer exists): trainings that share a machine's cores (the
        study's ``--jobs N``) each get their share instead of all of them."""
        threads = cpu_threads()
        if threads is not None and self.device.type == 'cpu':
            torch.set_num_threads(threads)
            self.print_to_log_file(f"CPU threads: {threads} (nnUNet_sss_cpu_threads)")

    def stop_on_user_error(self, error: UserError):
        """Stop the training on a known user error: workers shut down, a fold folder created by
        this run removed (else the error goes to its log), ``ERROR: ...`` on stderr, exit 1."""
        for name in ('dataloader_train', 'dataloader_val', 'dataloader_unlabeled'):
            finish = getattr(getattr(self, name, None), '_finish', None)
            if finish is not None:
                try:
                    finish()
                except Exception:  # noqa: BLE001 - shutting down, the user error is what matters
                    pass
        new_folder = self.__dict__.get('_sss_new_folder')
        if new_folder is not None and getattr(self, 'local_rank', 0) == 0:
            shutil.rmtree(new_folder, ignore_errors=True)
        elif getattr(self, 'log_file', None) is not None and os.path.isdir(os.path.dirname(self.log_file)):
            self.print_to_log_file(f"ERROR: {error}", also_print_to_console=False)
        raise trainer_exit(error) from None

    # ---- options (training/options.py) ---------------------------------------------------------
    @classmethod
    def recipe_options(cls) -> dict:
        """The recipe's own options from the class alone (its defaults and the class attributes): what
        ``nnUNetv2_predict`` sees too."""
        declared = trainer_options.declared_defaults(cls.recipe)
        options = trainer_options.resolve_options(
            [declared], [trainer_options.class_overrides(cls, declared, nnUNetTrainer)])
        return {name: option.value for name, option in options.items() if name not in trainer_options.NNUNET_OPTIONS}

    def option_declarations(self) -> list:
        """Declared defaults (``{name: (default, source)}``), lowest layer first: nnU-Net, the trainer
        bases, the recipe (the semi-supervised trainers add their objective's)."""
        return [{name: (value, trainer_options.NNUNET) for name, value in self._nnunet_defaults.items()},
                trainer_options.declared_defaults(type(self), 'option_defaults'),
                trainer_options.declared_defaults(self.recipe)]

    def resolve_options(self) -> None:
        """Resolve every option into ``self.options``; nnU-Net's and the trainer bases' become attributes
        (the recipe got its own from the class, ``recipe_options``), and what differs from the defaults
        goes to the log."""
        declarations = self.option_declarations()
        names = set().union(*declarations)
        environment, empty = trainer_options.environment_overrides()
        instance = {name: (self.__dict__[name], "instance attribute (set after nnU-Net's __init__)")
                    for name in names if name in self.__dict__
                    and (name not in self._nnunet_defaults or self.__dict__[name] != self._nnunet_defaults[name])}
        self.options = trainer_options.resolve_options(
            declarations, [trainer_options.class_overrides(type(self), names, nnUNetTrainer), instance, environment])
        for name, value in self.recipe_options().items():
            if self.options[name].value != value:
                raise UserValueError(f"option {name}={self.options[name].value!r} of {type(self).__name__} shapes the "
                                     f"network and is set as an {self.options[name].source}: set it as a class "
                                     f"attribute, which nnUNetv2_predict sees too")
        for name in set(declarations[0]) | set(declarations[1]):
            setattr(self, name, self.options[name].value)
        for line in trainer_options.log_lines(self.options, empty):
            self.print_to_log_file(f"option {line}")
        for name in trainer_options.unknown_class_attributes(type(self), names):
            self.print_to_log_file(f"WARNING: class attribute {name} is no option of this trainer and is ignored "
                                   f"(a misspelt option?)")

    # ---- the network: the trainer's recipe (networks/recipes.py) ----------------------------
    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        recipe = cls.recipe(**cls.recipe_options())
        network = recipe.build(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                               enable_deep_supervision)
        network.mixed_precision = recipe.mixed_precision  # its autocast dtype, in nnUNetv2_predict too (precision.py)
        return network

    def _get_deep_supervision_scales(self):
        scales = self.network_recipe.deep_supervision_scales(self) if self.enable_deep_supervision else None
        return scales if scales is not None else super()._get_deep_supervision_scales()

    def configure_optimizers(self):
        return self.network_recipe.configure_optimizers(self) or super().configure_optimizers()

    # ---- nnUNet_sss_seed (training/seeding.py) ---------------------------------------------
    def seed_everything(self) -> None:
        """Seed Python, NumPy, torch and the trainer's own generators from ``nnUNet_sss_seed``
        (nothing when unset; each rank of a multi-GPU run its own stream); called when the trainer
        is initialised, before the network is built."""
        if self.sss_seed is not None:
            seed_trainer(self, rank_seed(self.sss_seed, self.local_rank))
        self.print_to_log_file(describe_seed(self.sss_seed))

    def initialize(self):
        self.print_to_log_file(version_line())  # which plugin, nnU-Net and torch trained this fold
        self.resolve_options()
        self.seed_everything()
        self.network_recipe.before_initialize(self)
        # nnU-Net's torch.compile(self.network) is deferred to on_train_start, part by part (compilation.py)
        with cpu_ddp_wrapping(self.is_ddp and self.device.type != 'cuda'), deferring_nnunet_compile(self):
            super().initialize()
        self.network_recipe.after_initialize(self)

    def on_train_start(self):
        if not self.was_initialized:
            self.initialize()
        compile_network_parts(self)  # if nnU-Net compiles: the networks' parts, in place (compilation.py)
        super().on_train_start()

    def do_split(self):
        """nnU-Net's split, refused if a labeled training case of the fold is one whose label
        ``splits_semi_supervised.json`` hides (nnUNetv2_sss_make_splits)."""
        tr_keys, val_keys = super().do_split()
        hidden = set(hidden_label_cases(self.preprocessed_dataset_folder_base, self.fold))
        leaked = sorted(hidden & set(tr_keys))
        if leaked:
            raise UserRuntimeError(f"splits_final.json lists {leaked} as labeled training cases of fold {self.fold}, "
                                   f"but splits_semi_supervised.json marks them unlabeled. Re-run nnUNetv2_sss_make_splits.")
        return tr_keys, val_keys

    def on_train_epoch_start(self):
        if self.sss_seed is not None:  # workers of augmenters that have not started yet (first epoch)
            seed_augmenter_workers(self, rank_seed(self.sss_seed, self.local_rank), self.current_epoch)
        super().on_train_epoch_start()

    # ---- mixed precision (training/precision.py): nnU-Net's autocast(device, enabled=True) takes the
    # thread's default dtype, set to the trainer's for nnU-Net's steps and its validation's predictor ----
    def train_step(self, batch: dict) -> dict:
        with self.precision.default_dtype():
            return super().train_step(batch)

    def validation_step(self, batch: dict) -> dict:
        with self.precision.default_dtype():
            return super().validation_step(batch)

    def perform_actual_validation(self, save_probabilities: bool = False):
        with self.precision.default_dtype():
            return super().perform_actual_validation(save_probabilities)

    def check_pretrained_weights(self, path: str) -> None:
        """``nnUNetv2_train -pretrained_weights FILE``: ``FILE`` against this trainer's network, before nnU-Net
        loads it into the student (training/pretrained_start.py); a file that does not fit is one ``ERROR:`` line."""
        if not self.was_initialized:
            self.initialize()
        pretrained_start.check_compatible(self, path)
        self.print_to_log_file(f"-pretrained_weights {path}: fits the network; nnU-Net loads it into the student")

    # ---- hooks for subclasses -------------------------------------------------------------
    def exported_network_weights(self) -> dict:
        """State dict written as ``network_weights`` (what ``nnUNetv2_predict`` loads)."""
        return unwrap(self.network).state_dict()

    def extra_checkpoint_state(self) -> dict:
        """Additional entries of the checkpoint dict."""
        return {}

    def load_extra_checkpoint_state(self, checkpoint: dict) -> None:
        """Restore what ``extra_checkpoint_state`` saved (called after the network is loaded)."""

    def trained_network_weights(self, checkpoint: dict) -> dict:
        """The state dict to put into ``self.network`` when resuming."""
        return checkpoint['network_weights']

    # ---- checkpoint cadence ----------------------------------------------------------------
    def on_epoch_start(self):
        if self._rng_state_to_restore is not None:  # first epoch after --c: the generators of the checkpoint
            if self.local_rank == 0:
                restore_rng_state(self._rng_state_to_restore, self.device, trainer_generators(self))
            elif self.sss_seed is not None:  # the checkpoint holds rank 0's; the others continue on streams of their own
                seed_trainer(self, rank_seed(self.sss_seed, self.local_rank, self.current_epoch))
            self._rng_state_to_restore = None
        super().on_epoch_start()

    def on_epoch_end(self):
        """nnU-Net's epoch end (log, best checkpoint, progress.png, epoch counter), then
        ``checkpoint_latest.pth`` every ``save_every`` completed epochs. nnU-Net writes it before
        the best-checkpoint bookkeeping (``_best_ema``) of the epoch; the plugin writes it last,
        so it holds the completed epoch whole. The last epoch is left to ``checkpoint_final.pth``."""
        save_every, self.save_every = self.save_every, sys.maxsize  # nnU-Net's own write is skipped
        try:
            super().on_epoch_end()
        finally:
            self.save_every = save_every
        completed = self.current_epoch  # nnU-Net's on_epoch_end has counted the epoch
        if completed % self.save_every == 0 and completed < self.num_epochs and not self.disable_checkpointing:
            started = perf_counter()
            self.current_epoch -= 1  # save_checkpoint stores current_epoch + 1 (as nnU-Net's on_train_end does)
            try:
                self.save_checkpoint(join(self.output_folder, 'checkpoint_latest.pth'))
            finally:
                self.current_epoch += 1
            self.print_to_log_file(f"checkpoint_latest.pth: {completed} epochs done "
                                   f"(written in {perf_counter() - started:.3f} s)", also_print_to_console=True)

    # ---- nnU-Net's checkpoint I/O, atomic and with the hooks above -------------------------
    def save_checkpoint(self, filename: str) -> None:
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file('No checkpoint written, checkpointing is disabled')
            return
        checkpoint = {
            'network_weights': self.exported_network_weights(),
            'optimizer_state': self.optimizer.state_dict(),
            'grad_scaler_state': self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            'logging': self.logger.get_checkpoint(),
            '_best_ema': self._best_ema,
            'current_epoch': self.current_epoch + 1,
            'init_args': self.my_init_kwargs,
            'trainer_name': self.__class__.__name__,
            'inference_allowed_mirroring_axes': self.inference_allowed_mirroring_axes,
            'lr_scheduler_state': self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None,
            'rng_state': capture_rng_state(self.device, trainer_generators(self)),
        }
        checkpoint.update(self.extra_checkpoint_state())
        save_atomically(checkpoint, filename)
        self._sss_new_folder = None  # the fold folder now holds a checkpoint: a later user error keeps it

    def load_checkpoint(self, filename_or_checkpoint: Union[dict, str]) -> None:
        # nnU-Net's own (2.8.1) cannot take a checkpoint dict and loads network_weights, which is the
        # teacher for most trainers here (the student is student_weights)
        checkpoint = filename_or_checkpoint
        if isinstance(checkpoint, str):
            checkpoint = torch.load(checkpoint, map_location=self.device, weights_only=False)
        self.network_recipe.before_load_checkpoint(self, checkpoint)
        if not self.was_initialized:
            self.initialize()
        network = unwrap(self.network)
        own_keys = network.state_dict().keys()
        weights = {(k[7:] if k not in own_keys and k.startswith('module.') else k): v
                   for k, v in self.trained_network_weights(checkpoint).items()}
        network.load_state_dict(weights)

        self.my_init_kwargs = checkpoint['init_args']
        self.current_epoch = checkpoint['current_epoch']
        self.logger.load_checkpoint(checkpoint['logging'])
        self._best_ema = checkpoint['_best_ema']
        self.inference_allowed_mirroring_axes = checkpoint.get('inference_allowed_mirroring_axes',
                                                               self.inference_allowed_mirroring_axes)
        self.optimizer.load_state_dict(checkpoint['optimizer_state'])
        if self.grad_scaler is not None and checkpoint['grad_scaler_state'] is not None:
            self.grad_scaler.load_state_dict(checkpoint['grad_scaler_state'])
        schedule = checkpoint.get('lr_scheduler_state')  # absent in checkpoints of older versions
        if schedule and self.lr_scheduler is not None:
            # the counters only: length and base lr come from this run (--c with more epochs extends the
            # schedule); nnU-Net steps the schedule with current_epoch, restored above
            self.lr_scheduler.__dict__.update({k: schedule[k] for k in LR_SCHEDULE_COUNTERS if k in schedule})
        self._rng_state_to_restore = checkpoint.get('rng_state')
        self.load_extra_checkpoint_state(checkpoint)


for _name in USER_ERROR_SEAMS:
    setattr(nnUNetTrainerPlugin, _name, user_error_seam(getattr(nnUNetTrainerPlugin, _name)))

# nnUNetv2_train -pretrained_weights: the file checked by check_pretrained_weights before nnU-Net loads it
# (training/pretrained_start.py says why this needs a wrap of nnU-Net's maybe_load_checkpoint)
pretrained_start.install()
