"""The parts of nnU-Net that the plugin's trainer base (``training/base.py``, ``training/options.py``,
``training/ddp.py``, ``training/semi_supervised.py``, ``training/progress.py``, ``training/precision.py``, ``training/compilation.py``) relies on beyond nnU-Net's documented seams. The plugin pins the
nnunetv2 versions it was checked against in setup.cfg; after an upgrade, a failure here names
the internal that changed and the plugin code that depends on it."""
import inspect

import pytest
from nnunetv2.training.nnUNetTrainer import nnUNetTrainer as trainer_module
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.logging.nnunet_logger import LocalLogger, MetaLogger

# (what, check, the plugin code that uses it)
METHODS = [
    ("__init__", ["self", "plans", "configuration", "fold", "dataset_json", "device"],
     "every trainer's __init__ and base.user_error_seam (binds plans/configuration/fold)"),
    ("initialize", ["self"], "base.initialize (options, seed, recipe, CPU DDP wrap around nnU-Net's)"),
    ("build_network_architecture", ["plans_manager", "configuration_manager", "num_input_channels",
                                    "num_output_channels", "enable_deep_supervision"],
     "base.build_network_architecture -> networks/recipes.py"),
    ("_get_deep_supervision_scales", ["self"], "base._get_deep_supervision_scales"),
    ("configure_optimizers", ["self"], "base.configure_optimizers (the recipe's optimiser)"),
    ("_set_batch_size_and_oversample", ["self"], "semi_supervised.get_unlabeled_dataloader (per-rank batch)"),
    ("set_deep_supervision_enabled", ["self", "enabled"], "semi_supervised (teacher, the objective's modules)"),
    ("save_checkpoint", ["self", "filename"], "base.save_checkpoint (replaced: atomic, extra state)"),
    ("load_checkpoint", ["self", "filename_or_checkpoint"], "base.load_checkpoint (replaced: student weights)"),
    ("on_epoch_end", ["self"], "base.on_epoch_end (checkpoint cadence via save_every)"),
    ("on_train_epoch_end", ["self", "train_outputs"], "semi_supervised.on_train_epoch_end (figures)"),
    ("configure_rotation_dummyDA_mirroring_and_inital_patch_size", ["self"],
     "semi_supervised.get_unlabeled_dataloader (weak view like the labeled one)"),
    ("perform_actual_validation", ["self", "save_probabilities"],
     "semi_supervised (validates the teacher); base (its predictor's autocast dtype, training/precision.py)"),
    ("train_step", ["self", "batch"], "base.train_step (autocast dtype, training/precision.py)"),
    ("validation_step", ["self", "batch"], "base.validation_step (autocast dtype, training/precision.py)"),
    ("_do_i_compile", ["self"], "training/compilation.py (nnU-Net's decision to compile, kept; tests/test_compile.py "
                                "forces it in a subclass)"),
    ("on_train_start", ["self"], "base.on_train_start (compiles the networks' parts, training/compilation.py)"),
]
INSTANCE_ATTRIBUTES = ["is_ddp", "local_rank", "device", "grad_scaler", "save_every", "disable_checkpointing",
                       "my_init_kwargs", "_best_ema", "current_epoch", "num_epochs", "num_iterations_per_epoch",
                       "logger", "configuration_manager", "plans_manager", "label_manager", "batch_size",
                       "enable_deep_supervision", "output_folder", "inference_allowed_mirroring_axes"]


@pytest.mark.parametrize("name, parameters, user", METHODS, ids=[m[0] for m in METHODS])
def test_trainer_methods(name, parameters, user):
    method = getattr(nnUNetTrainer, name, None)
    assert method is not None, f"nnUNetTrainer.{name} is gone; used by {user}"
    found = list(inspect.signature(method).parameters)
    assert found[:len(parameters)] == parameters, \
        f"nnUNetTrainer.{name}{found} no longer takes {parameters}; used by {user}"


def test_trainer_attributes_set_in_init():
    source = inspect.getsource(nnUNetTrainer.__init__) + inspect.getsource(nnUNetTrainer._set_batch_size_and_oversample)
    missing = [a for a in INSTANCE_ATTRIBUTES if f"self.{a} =" not in source and f"self.{a}=" not in source]
    assert not missing, f"nnUNetTrainer.__init__ no longer sets {missing} (base.py, semi_supervised.py use them)"


def test_options_nnunet_sets_in_init():
    """training/options.NNUNET_OPTIONS: the options nnU-Net's __init__ sets, read right after it as nnU-Net's
    defaults, overridden by class attributes, __init__ assignments and nnUNet_sss_* variables."""
    from nnunetv2_sss.training.options import NNUNET_OPTIONS
    source = inspect.getsource(nnUNetTrainer.__init__)
    missing = [name for name in NNUNET_OPTIONS if f"self.{name} =" not in source]
    assert not missing, f"nnUNetTrainer.__init__ no longer sets {missing} (training/options.py: NNUNET_OPTIONS)"


def test_ddp_wrap_is_a_module_global():
    """training/ddp.cpu_ddp_wrapping swaps the module's ``DDP`` name while nnU-Net's initialize wraps."""
    assert getattr(trainer_module, "DDP", None) is torch_ddp(), \
        "nnunetv2.training.nnUNetTrainer.nnUNetTrainer no longer imports DDP at module level (training/ddp.py)"
    assert "DDP(self.network, device_ids=[self.local_rank])" in inspect.getsource(nnUNetTrainer.initialize), \
        "nnU-Net's initialize wraps the network differently now (training/ddp.py, CPS's wrap_for_ddp)"


def test_network_compile_is_a_call_of_the_module_global_torch():
    """training/compilation.deferring_nnunet_compile swaps the module's ``torch`` while nnU-Net's initialize
    runs: ``torch.compile(self.network)`` (before the optimiser and the DDP wrap) is deferred to
    base.on_train_start, part by part; ``_build_loss``'s ``torch.compile(loss.dc)`` gets ``compile_backend``."""
    import torch
    assert getattr(trainer_module, "torch", None) is torch, \
        "nnunetv2.training.nnUNetTrainer.nnUNetTrainer no longer imports torch at module level (compilation.py)"
    source = inspect.getsource(nnUNetTrainer.initialize)
    assert "if self._do_i_compile():" in source and "self.network = torch.compile(self.network)" in source, \
        "nnU-Net's initialize compiles the network differently now (training/compilation.py)"
    assert source.index("torch.compile(self.network)") < source.index("self.configure_optimizers()"), \
        "nnU-Net now compiles the network after making the optimiser (training/compilation.py)"
    assert "loss.dc = torch.compile(loss.dc)" in inspect.getsource(nnUNetTrainer._build_loss), \
        "nnU-Net's _build_loss compiles its loss differently now (training/compilation.py, compile_backend)"


def torch_ddp():
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel


def test_checkpoint_keys_nnunet_reads():
    """base.save_checkpoint writes nnU-Net's keys itself; the predictor and --c read these."""
    source = inspect.getsource(nnUNetTrainer.save_checkpoint)
    for key in ("network_weights", "optimizer_state", "grad_scaler_state", "logging", "_best_ema", "current_epoch",
                "init_args", "trainer_name", "inference_allowed_mirroring_axes"):
        assert f"'{key}'" in source, f"nnU-Net's checkpoint has no '{key}' any more (base.save_checkpoint writes it)"


def test_logger_internals():
    """training/progress.py extends LocalLogger (figures in the log and progress.png)."""
    assert hasattr(LocalLogger, "plot_progress_png") and hasattr(LocalLogger, "load_checkpoint")
    assert "self.local_logger = LocalLogger(" in inspect.getsource(MetaLogger.__init__), \
        "nnU-Net's MetaLogger no longer holds a LocalLogger as local_logger (semi_supervised.py replaces it)"
    assert "self.local_logger.plot_progress_png(" in inspect.getsource(MetaLogger.plot_progress_png)


# ---- mixed precision (training/precision.py) -----------------------------------------------------------
def test_nnunet_autocasts_with_the_threads_default_dtype():
    """base.train_step / validation_step / perform_actual_validation set the thread's default CUDA autocast
    dtype around nnU-Net's own code, which must autocast without naming a dtype; nnU-Net's train_step must
    step without a GradScaler when ``grad_scaler`` is None (bf16)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    for method in (nnUNetTrainer.train_step, nnUNetTrainer.validation_step):
        assert "autocast(self.device.type, enabled=True)" in inspect.getsource(method), \
            f"nnU-Net's {method.__name__} autocasts differently now (training/precision.py sets the default dtype)"
    assert "if self.grad_scaler is not None:" in inspect.getsource(nnUNetTrainer.train_step)
    assert "torch.autocast(self.device.type, enabled=True)" in \
        inspect.getsource(nnUNetPredictor.predict_sliding_window_return_logits), \
        "nnU-Net's predictor autocasts differently now (training/precision.py, NetworkPasses.forward)"
    assert "nnUNetPredictor(" in inspect.getsource(nnUNetTrainer.perform_actual_validation)
    assert "trainer_class.build_network_architecture(" in \
        inspect.getsource(nnUNetPredictor.initialize_from_trained_model_folder), \
        "nnUNetv2_predict no longer builds the network through the trainer class (the network's precision)"


def test_torch_autocast_internals():
    """torch: ``autocast`` without a dtype takes ``get_autocast_dtype`` (thread-local state that
    ``set_autocast_dtype`` sets); ``is_autocast_enabled(device)``; the GradScaler's per-device inf count that
    semi_supervised.optimizer_step reads after ``unscale_``."""
    import threading
    import torch
    previous = torch.get_autocast_dtype('cpu')
    torch.set_autocast_dtype('cpu', torch.float16)
    try:
        assert torch.autocast('cpu', enabled=True).fast_dtype == torch.float16
        seen = []
        thread = threading.Thread(target=lambda: seen.append(torch.get_autocast_dtype('cpu')))
        thread.start()
        thread.join()
        assert seen == [previous], "the default autocast dtype is no longer thread-local (training/precision.py)"
    finally:
        torch.set_autocast_dtype('cpu', previous)
    assert callable(torch.is_autocast_enabled) and callable(torch.cuda.is_bf16_supported)
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler('cpu')
    scaler.scale(model(torch.ones(1, 2)).sum()).backward()
    model.weight.grad[0, 0] = float('inf')
    scaler.unscale_(optimizer)
    found = scaler._found_inf_per_device(optimizer)
    assert isinstance(found, dict) and float(sum(found.values())) == 1.0, \
        "GradScaler._found_inf_per_device changed (semi_supervised.optimizer_step)"


# ---- pretraining (nnunetv2_sss/pretraining) and -pretrained_weights (training/pretrained_start.py) -----------
def test_pretrained_weights_go_through_maybe_load_checkpoint():
    """training/pretrained_start.install wraps ``nnunetv2.run.run_training.maybe_load_checkpoint``, which
    run_training and run_ddp call as a module global after building the trainer, and which initialises the
    trainer and then loads the file into ``trainer.network`` with ``load_pretrained_weights``."""
    from nnunetv2.run import run_training as run_module
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
    import nnunetv2_sss.training.base  # noqa: F401 - installs the wrapper
    nnunet_function = getattr(run_module.maybe_load_checkpoint, '__wrapped__', run_module.maybe_load_checkpoint)
    assert list(inspect.signature(nnunet_function).parameters) == \
        ["nnunet_trainer", "continue_training", "validation_only", "pretrained_weights_file"]
    for caller in (run_module.run_training, run_module.run_ddp):
        assert "maybe_load_checkpoint(nnunet_trainer, " in inspect.getsource(caller), caller.__name__
    source = inspect.getsource(nnunet_function)
    assert "nnunet_trainer.initialize()" in source and \
        "load_pretrained_weights(nnunet_trainer.network, pretrained_weights_file" in source
    assert list(inspect.signature(load_pretrained_weights).parameters)[:2] == ["network", "fname"]
    assert "'.seg_layers.'" in inspect.getsource(load_pretrained_weights), \
        "nnU-Net's load_pretrained_weights skips other keys now (pretrained_start.SKIPPED)"


def test_pretraining_trainer_internals():
    """pretraining/trainer.py: the output folder (a property in place of nnU-Net's <base>/fold_X), no
    unpacking of the segmentations, nnU-Net's loop calling the hooks it overrides, the logger's keys."""
    from nnunetv2.run.run_training import get_trainer_from_args  # noqa: F401 - run_training's entry still there
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name  # noqa: F401 - command.py
    init = inspect.getsource(nnUNetTrainer.__init__)
    assert "self.output_folder = join(self.output_folder_base, f'fold_{fold}')" in init
    assert init.index("self.output_folder_base =") < init.index("self.output_folder =")
    start = inspect.getsource(nnUNetTrainer.on_train_start)
    assert "self.get_dataloaders()" in start and "self.dataset_class.unpack_dataset(" in start
    loop = inspect.getsource(nnUNetTrainer.run_training)
    for hook in ("self.train_step(", "self.validation_step(", "self.on_validation_epoch_end(val_outputs)",
                 "self.on_epoch_end()", "self.on_train_end()"):
        assert hook in loop, hook
    assert {'mean_fg_dice', 'dice_per_class_or_region', 'val_losses', 'train_losses', 'epoch_start_timestamps',
            'epoch_end_timestamps'} <= set(LocalLogger().my_fantastic_logging)
