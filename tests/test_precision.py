"""Mixed precision (``nnunetv2_sss/training/precision.py``, issue 19 "Precision"): the recipes'
``mixed_precision`` option (SAM-2 recipes bf16 without GradScaler where the GPU has bf16, else nnU-Net's
fp16 + GradScaler), the network's own autocast dtype (``nnUNetv2_predict``), DFE's similarity in float32
under autocast, one bf16 step of every plugin trainer on the CPU, and a skipped GradScaler step that
leaves the EMA teacher alone and is counted in the epoch's log.

No GPU here: CUDA's choice is checked with ``cuda_bf16_supported`` patched, the steps run under CPU
autocast (which supports bfloat16 and float16)."""
from __future__ import annotations

import contextlib
import math
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

from nnunetv2_sss.errors import UserValueError
from nnunetv2_sss.networks.passes import NetworkPasses, unwrap
from nnunetv2_sss.networks.recipes import PlainRecipe, SAM2Recipe, SSSRecipe
from nnunetv2_sss.sss.dfe import ScaleDFE, similarity_factors
from nnunetv2_sss.training import precision
from nnunetv2_sss.training.base import nnUNetTrainerPlugin
from nnunetv2_sss.training.options import declared_defaults
from nnunetv2_sss.training.trainers import (nnUNetTrainerMeanTeacher, nnUNetTrainerSAM2, nnUNetTrainerSSS,
                                            nnUNetTrainerSSS_noDFE, nnUNetTrainerUniMatchV2)
from plugin_trainers import stepped_trainer_names
from tiny_sam2 import write_tiny_config
from trainer_harness import _finish_loaders, prepare_cps4_stage1

# no CUDA here: torch.autocast('cuda', ...) says so and disables itself (the tests check its dtype only)
pytestmark = pytest.mark.filterwarnings("ignore:CUDA is not available:UserWarning")


class nnUNetTrainerUniMatchV2SAM2(nnUNetTrainerUniMatchV2):  # a user's subclass naming a SAM-2 recipe
    recipe = SAM2Recipe


class nnUNetTrainerSAM2_fp16(nnUNetTrainerSAM2):
    mixed_precision = 'fp16'


# ---- the option and the choice ------------------------------------------------------------------------
def test_the_recipes_declare_their_precision():
    assert declared_defaults(PlainRecipe)['mixed_precision'] == ('fp16', 'PlainRecipe')
    assert declared_defaults(SAM2Recipe)['mixed_precision'] == ('bf16', 'SAM2Recipe')
    assert declared_defaults(SSSRecipe)['mixed_precision'] == ('bf16', 'SAM2Recipe')
    expected = {nnUNetTrainerPlugin: 'fp16', nnUNetTrainerMeanTeacher: 'fp16', nnUNetTrainerUniMatchV2: 'fp16',
                nnUNetTrainerSAM2: 'bf16', nnUNetTrainerSSS: 'bf16', nnUNetTrainerSSS_noDFE: 'bf16',
                nnUNetTrainerUniMatchV2SAM2: 'bf16', nnUNetTrainerSAM2_fp16: 'fp16'}
    assert {cls: cls.recipe_options()['mixed_precision'] for cls in expected} == expected


@pytest.mark.parametrize("option, device, bf16, dtype, scaler", [
    ('bf16', 'cuda', True, torch.bfloat16, False),
    ('bf16', 'cuda', False, torch.float16, True),
    ('fp16', 'cuda', True, torch.float16, True),
    ('bf16', 'cpu', True, None, False),
    ('fp16', 'cpu', True, None, False)])
def test_select(monkeypatch, option, device, bf16, dtype, scaler):
    monkeypatch.setattr(precision, 'cuda_bf16_supported', lambda device=None: bf16)
    chosen = precision.select(option, torch.device(device), 'SAM2Recipe')
    assert (chosen.dtype, chosen.uses_grad_scaler) == (dtype, scaler)
    assert f"mixed_precision = {option!r} from SAM2Recipe" in chosen.description
    expected = {torch.bfloat16: "bf16 autocast, no GradScaler", torch.float16: "fp16 autocast + GradScaler",
                None: "none, float32 on cpu"}[dtype]
    assert chosen.description.startswith(f"mixed precision: {expected}")
    if option == 'bf16' and device == 'cuda':
        assert ("the device supports bf16" if bf16 else "the device has no native bf16") in chosen.description


def test_an_unknown_value_is_a_user_error():
    with pytest.raises(UserValueError, match=r"option mixed_precision='fp32' is none of \['bf16', 'fp16'\]"):
        precision.select('fp32', torch.device('cpu'), 'class attribute of T')


def test_default_dtype_makes_nnunets_autocast_use_it():
    """nnU-Net's train_step / validation_step / predictor call ``autocast(device, enabled=True)`` without a
    dtype: it takes the thread's default, which ``MixedPrecision.default_dtype`` sets for the block."""
    chosen = precision.MixedPrecision('cpu', torch.float16, '')
    before = torch.get_autocast_dtype('cpu')
    with chosen.default_dtype():
        with torch.autocast('cpu', enabled=True):  # as nnU-Net writes it
            product = torch.randn(4, 4) @ torch.randn(4, 4)
    assert product.dtype == torch.float16 and torch.get_autocast_dtype('cpu') == before
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # no CUDA here: torch.autocast('cuda') warns and disables itself
        with precision.MixedPrecision('cuda', torch.bfloat16, '').default_dtype():
            assert torch.autocast('cuda', enabled=True).fast_dtype == torch.bfloat16
    assert torch.get_autocast_dtype('cuda') == torch.float16
    with precision.MixedPrecision('cpu', None, '').default_dtype(), chosen.autocast():
        assert torch.is_autocast_enabled('cpu') and torch.get_autocast_dtype('cpu') == torch.float16


@pytest.fixture
def cuda_autocast_state():
    """CUDA autocast switched on in this thread's state (possible without a GPU), switched off afterwards."""
    torch.set_autocast_enabled('cuda', True)
    try:
        yield
    finally:
        torch.set_autocast_enabled('cuda', False)


@pytest.mark.parametrize("option, bf16, caller, expected", [
    ('bf16', True, torch.float16, torch.bfloat16),   # nnU-Net's predictor: fp16 -> the network's bf16
    ('bf16', True, torch.bfloat16, None),            # the trainer already autocasts to bf16
    ('bf16', False, torch.float16, None),            # no native bf16: the caller's fp16
    ('fp16', True, torch.bfloat16, torch.float16),
    (None, True, torch.float16, None)])
def test_the_network_reenters_autocast_with_its_dtype(monkeypatch, cuda_autocast_state, option, bf16, caller,
                                                      expected):
    monkeypatch.setattr(precision, 'cuda_bf16_supported', lambda device=None: bf16)
    with precision.default_autocast_dtype('cuda', caller):
        context = precision.network_autocast(option)
    if expected is None:
        assert isinstance(context, contextlib.nullcontext)
    else:
        assert isinstance(context, torch.autocast) and (context.device, context.fast_dtype) == ('cuda', expected)


def test_without_cuda_autocast_the_network_keeps_the_callers_precision():
    assert not torch.is_autocast_enabled('cuda')
    assert isinstance(precision.network_autocast('bf16'), contextlib.nullcontext)


def test_every_pass_runs_in_the_networks_precision(monkeypatch):
    """``NetworkPasses.forward`` enters ``network_autocast(mixed_precision)`` for every pass."""
    from nnunetv2_sss.networks import passes
    seen = []

    def spy(option):
        seen.append(option)
        return contextlib.nullcontext()
    monkeypatch.setattr(passes, 'network_autocast', spy)
    network = NetworkPasses(torch.nn.Identity())
    x = torch.zeros(1)
    network(x)
    network.mixed_precision = 'bf16'
    network(x)
    network([x], pass_='fuse')
    assert seen == [None, 'bf16', 'bf16']


def test_build_network_architecture_gives_the_network_its_precision():
    """What ``nnUNetv2_predict`` builds (``build_network_architecture``) carries the recipe's precision (the
    plain recipe's: test_one_bf16_step_of_every_plugin_trainer)."""
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager
    from nnunetv2_sss.networks.sam2_config import PLANS_KEY, SAM2NetworkSpec
    from tiny_sam2 import TINY_IMAGE_ENCODER
    manager = ConfigurationManager({"patch_size": [32, 32], "spacing": [1.0, 1.0], "architecture": {},
                                    PLANS_KEY: SAM2NetworkSpec("tiny", TINY_IMAGE_ENCODER).to_plans()})
    assert nnUNetTrainerSAM2.build_network_architecture(None, manager, 1, 3, False).mixed_precision == 'bf16'
    assert nnUNetTrainerSAM2_fp16.build_network_architecture(None, manager, 1, 3, False).mixed_precision == 'fp16'


# ---- DFE: S, w and 1 - S in float32 under autocast -------------------------------------------------------
def _nearly_identical_views(one_minus_s: float, dtype: torch.dtype, shape=(2, 32, 8, 8)):
    """``F_a``, ``F_b`` (B, C, H, W) of ``dtype`` whose pooled vectors have ``1 - S`` close to ``one_minus_s``."""
    generator = torch.Generator().manual_seed(0)
    f_a = torch.randn(shape, generator=generator, dtype=torch.float64) + 1
    noise = torch.randn(shape, generator=generator, dtype=torch.float64)
    gap = lambda f: f.flatten(2).mean(2)  # noqa: E731
    distance = 1 - F.cosine_similarity(gap(f_a), gap(f_a + noise), dim=1)
    scale = math.sqrt(one_minus_s / float(distance.mean()))  # 1 - S grows with the square of the step
    return f_a.to(dtype), (f_a + scale * noise).to(dtype)


def _reference_one_minus_s(f_a, f_b) -> torch.Tensor:
    gap = lambda f: f.double().flatten(2).mean(2)  # noqa: E731
    return 1 - F.cosine_similarity(gap(f_a), gap(f_b), dim=1)


LOW_PRECISION_STEP = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}  # spacing of the dtype just below 1


@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("feature_dtype", ["float32", "autocast"])
def test_dfe_one_minus_s_in_float32_under_autocast(autocast_dtype, feature_dtype):
    """``1 - S`` of two nearly identical views (about 1e-5) to float32 precision under CPU autocast (relative:
    it is taken without cancellation), where ``S`` cast to the half dtype (what DFE did) gives 0 or a
    multiple of 2^-8 (bf16) / 2^-11 (fp16), and ``1 - S`` of a float32 ``S`` a multiple of 2^-24."""
    features = torch.float32 if feature_dtype == "float32" else autocast_dtype
    f_a, f_b = _nearly_identical_views(1e-5, features)
    reference = _reference_one_minus_s(f_a, f_b)
    assert float(reference.min()) > 1e-6 and float(reference.max()) < 1e-4
    with torch.autocast('cpu', dtype=autocast_dtype):
        w, one_minus_s = similarity_factors(f_a, f_b)
    assert w.dtype == one_minus_s.dtype == torch.float32
    error = (one_minus_s.double() - reference).abs()
    # the pooled vectors' float32 rounding (2^-24 relative) seen through a distance of about 4e-3
    assert float((error / reference).max()) < 1e-4, (error, reference)
    assert torch.allclose(w.double(), torch.sigmoid(1 - reference), rtol=0, atol=1e-6)
    # the old computation: S cast back to the autocast dtype
    quantised = 1 - (1 - one_minus_s).to(autocast_dtype).double()
    step = LOW_PRECISION_STEP[autocast_dtype]
    assert torch.all(torch.remainder(quantised / step, 1) == 0) and float((quantised - reference).abs().min()) > 5e-6
    print(f"\n1 - S under {autocast_dtype} autocast ({feature_dtype} features): reference {reference.tolist()}, "
          f"float32 error {error.tolist()}, cast to {autocast_dtype}: {quantised.tolist()}", file=sys.stderr)


def test_dfe_one_minus_s_is_one_minus_the_cosine():
    """Away from ``S = 1`` and for all-zero pooled vectors (``S = 0``) the factors are ``1 - S``, ``sigmoid(S)``."""
    from nnunetv2_sss.sss.dfe import view_similarity
    generator = torch.Generator().manual_seed(1)
    f_a, f_b = torch.randn(4, 8, 5, 5, generator=generator), torch.randn(4, 8, 5, 5, generator=generator)
    f_b[0] = f_a[0] * 2 + 0.1  # S near 1 among them
    zeros = torch.zeros(1, 8, 5, 5)
    for a, b in ((f_a, f_b), (zeros, zeros)):
        w, one_minus_s = similarity_factors(a, b)
        s = view_similarity(a, b)
        assert torch.allclose(one_minus_s, 1 - s, atol=1e-6) and torch.equal(w, torch.sigmoid(s))


@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_dfe_under_autocast_keeps_the_features_dtype_and_the_delta(autocast_dtype):
    """The factors reach ``delta F`` with the half dtype's relative precision (not 0), DFE's outputs are
    in the autocast dtype (what the decoder's convolutions take), and gradients reach both views."""
    torch.manual_seed(0)
    dfe = ScaleDFE(32, 2)
    f_a, f_b = _nearly_identical_views(1e-5, autocast_dtype)
    f_a.requires_grad_(True)
    f_b.requires_grad_(True)
    reference = _reference_one_minus_s(f_a.detach(), f_b.detach()).view(-1, 1, 1, 1)
    with torch.autocast('cpu', dtype=autocast_dtype):
        mlp_a, _, w, one_minus_w, one_minus_s = dfe._shared(f_a, f_b)
        out_a, out_b = dfe.pair(f_a, f_b)
    assert one_minus_s.dtype == w.dtype == one_minus_w.dtype == mlp_a.dtype == autocast_dtype
    assert float(((one_minus_s.detach().double() - reference) / reference).abs().max()) <= 2.0 ** -8  # rounding
    assert out_a.dtype == out_b.dtype == autocast_dtype
    (out_a.float().sum() + out_b.float().sum()).backward()
    assert torch.isfinite(f_a.grad).all() and torch.isfinite(f_b.grad).all() and f_a.grad.abs().sum() > 0


# ---- trainers --------------------------------------------------------------------------------------------
def _environment(dataset, monkeypatch, tmp_path, **overrides):
    for key, value in dataset.env(nnUNet_results=tmp_path / "results", nnUNet_sss_sam2_checkpoint="random",
                                  nnUNet_sss_sam2_config=write_tiny_config(tmp_path), nnUNet_sss_seed="0",
                                  nnUNet_sss_save_every="1", **overrides).items():
        monkeypatch.setenv(key, value)


def _make(cls, dataset, device):
    import json
    folder = dataset.preprocessed / dataset.dataset_name
    plans = dict(json.loads((folder / "nnUNetPlans.json").read_text()), continue_training=False)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # a CUDA device without CUDA: nnU-Net's GradScaler warns
        return cls(plans, "2d", 0, json.loads((folder / "dataset.json").read_text()), device)


def _log(trainer) -> str:
    with open(trainer.log_file) as f:
        return f.read()


@pytest.mark.parametrize("cls, bf16, dtype", [
    (nnUNetTrainerSAM2, True, torch.bfloat16), (nnUNetTrainerSSS, True, torch.bfloat16),
    (nnUNetTrainerUniMatchV2SAM2, True, torch.bfloat16), (nnUNetTrainerSAM2, False, torch.float16),
    (nnUNetTrainerSAM2_fp16, True, torch.float16), (nnUNetTrainerPlugin, True, torch.float16),
    (nnUNetTrainerUniMatchV2, True, torch.float16)],
    ids=["SAM2", "SSS", "UniMatchV2SAM2", "SAM2-no-bf16", "SAM2_fp16", "Plugin", "UniMatchV2"])
def test_trainer_precision_on_cuda(nnunet_dataset, monkeypatch, tmp_path, cls, bf16, dtype):
    """A trainer made for a CUDA device (not initialised, so no GPU is needed): its precision, its
    GradScaler (none for bf16) and the log line; the semi-supervised step's autocast has the dtype."""
    _environment(nnunet_dataset, monkeypatch, tmp_path)
    monkeypatch.setattr(precision, 'cuda_bf16_supported', lambda device=None: bf16)
    trainer = _make(cls, nnunet_dataset, torch.device('cuda'))
    assert trainer.precision.dtype == dtype
    assert (trainer.grad_scaler is None) == (dtype == torch.bfloat16)
    line = [line for line in _log(trainer).splitlines() if "mixed precision:" in line]
    assert len(line) == 1 and ("bf16 autocast, no GradScaler" if dtype == torch.bfloat16
                               else "fp16 autocast + GradScaler") in line[0]
    source = "class attribute of nnUNetTrainerSAM2_fp16" if cls is nnUNetTrainerSAM2_fp16 else \
        "SAM2Recipe" if issubclass(cls.recipe, SAM2Recipe) else "PlainRecipe"
    assert f"from {source}" in line[0]
    if hasattr(trainer, 'autocast'):
        assert trainer.autocast().fast_dtype == dtype


def test_trainer_on_the_cpu_does_not_autocast(nnunet_dataset, monkeypatch, tmp_path):
    _environment(nnunet_dataset, monkeypatch, tmp_path)
    trainer = _make(nnUNetTrainerSSS, nnunet_dataset, torch.device('cpu'))
    assert trainer.precision.dtype is None and trainer.grad_scaler is None
    assert "mixed precision: none, float32 on cpu (nnU-Net autocasts on CUDA only; mixed_precision = 'bf16' from " \
           "SAM2Recipe applies there)" in _log(trainer)
    assert isinstance(trainer.autocast(), contextlib.nullcontext)


def _first_tensor(value):
    if torch.is_tensor(value):
        return value
    if isinstance(value, (list, tuple)):
        for item in value:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


@pytest.mark.parametrize("name", stepped_trainer_names())
def test_one_bf16_step_of_every_plugin_trainer(nnunet_dataset, monkeypatch, tmp_path, name):
    """One training step under CPU bf16 autocast with finite losses and weights: the semi-supervised trainers
    through their own ``autocast()`` (the trainer's precision set to CPU bf16), the supervised ones (nnU-Net's
    train_step, which autocasts on CUDA only) inside ``torch.autocast('cpu', dtype=torch.bfloat16)``. The
    network's outputs are bf16, its weights stay float32."""
    from nnunetv2.run.run_training import get_trainer_from_args
    from plugin_trainers import trainer_models
    _environment(nnunet_dataset, monkeypatch, tmp_path, nnUNet_sss_iterations_per_epoch="1", OMP_NUM_THREADS="1")
    if name == "nnUNetTrainerCPS4":
        prepare_cps4_stage1(str(nnunet_dataset.dataset_id), "2d", 0, 0)
    torch.manual_seed(0)
    trainer = get_trainer_from_args(str(nnunet_dataset.dataset_id), "2d", 0, name, device=torch.device("cpu"))
    try:
        trainer.on_train_start()
        trainer.on_epoch_start()
        trainer.on_train_epoch_start()
        semi_supervised = hasattr(trainer, "compute_gradients")
        trainer.precision = precision.MixedPrecision('cpu', torch.bfloat16, 'test: CPU bf16 autocast')
        output_dtypes = []
        hook = unwrap(trainer.network).register_forward_hook(
            lambda module, inputs, output: output_dtypes.append(getattr(_first_tensor(output), 'dtype', None)))
        batch = next(trainer.dataloader_train)
        with contextlib.nullcontext() if semi_supervised else torch.autocast('cpu', dtype=torch.bfloat16):
            outputs = trainer.train_step(batch)
        hook.remove()
    finally:
        _finish_loaders(trainer)
    losses = {key: float(outputs[key]) for key in ("loss", "ssl_unlabeled_loss") if key in outputs}
    assert losses and all(math.isfinite(v) for v in losses.values()), losses
    assert torch.bfloat16 in output_dtypes, output_dtypes
    assert unwrap(trainer.network).mixed_precision == type(trainer).recipe_options()['mixed_precision']
    for model_name, model in trainer_models(trainer).items():
        parameters = list(model.parameters())
        assert all(p.dtype == torch.float32 for p in parameters), model_name
        assert all(torch.isfinite(p).all() for p in parameters), model_name


def test_a_skipped_gradscaler_step_leaves_the_teacher_and_is_logged(nnunet_dataset, monkeypatch, tmp_path):
    """nnU-Net's loop over one epoch of 2 steps, with a CPU GradScaler (``torch.amp.GradScaler('cpu')``): a
    normal step advances the EMA teacher; a step with an inf gradient is skipped by the GradScaler (student
    and teacher unchanged, scale halved), counted, and named in the epoch's log by ``on_epoch_end``."""
    from nnunetv2.run.run_training import get_trainer_from_args
    _environment(nnunet_dataset, monkeypatch, tmp_path, nnUNet_sss_iterations_per_epoch="2", OMP_NUM_THREADS="1")
    torch.manual_seed(0)
    trainer = get_trainer_from_args(str(nnunet_dataset.dataset_id), "2d", 0, "nnUNetTrainerMeanTeacher",
                                    device=torch.device("cpu"))

    def snapshot(module):
        return [t.detach().clone() for t in (*module.parameters(), *module.buffers())]

    def same(module, before):
        return all(torch.equal(a, b) for a, b in zip(before, (*module.parameters(), *module.buffers())))
    try:
        trainer.on_train_start()
        trainer.grad_scaler = torch.amp.GradScaler('cpu')
        trainer.on_epoch_start()
        trainer.on_train_epoch_start()
        train_outputs = []
        teacher = snapshot(trainer.teacher)
        train_outputs.append(trainer.train_step(next(trainer.dataloader_train)))
        assert not same(trainer.teacher, teacher) and trainer.skipped_steps == 0 and trainer.ssl_iteration == 1

        teacher, student, scale = snapshot(trainer.teacher), snapshot(unwrap(trainer.network)), \
            trainer.grad_scaler.get_scale()
        outputs = trainer.compute_gradients(next(trainer.dataloader_train))
        parameter = next(p for p in unwrap(trainer.network).parameters() if p.grad is not None)
        parameter.grad.view(-1)[0] = float('inf')
        trainer.optimizer_step()
        train_outputs.append(outputs)
        assert same(trainer.teacher, teacher) and same(unwrap(trainer.network), student)
        assert trainer.grad_scaler.get_scale() == scale / 2  # the GradScaler skipped the step
        assert (trainer.skipped_steps, trainer.ssl_iteration) == (1, 2)

        trainer.on_train_epoch_end(train_outputs)
        trainer.on_validation_epoch_start()
        with torch.no_grad():
            validation = [trainer.validation_step(next(trainer.dataloader_val))]
        trainer.on_validation_epoch_end(validation)
        trainer.on_epoch_end()
    finally:
        _finish_loaders(trainer)
    assert "WARNING: 1 of 2 steps of this epoch skipped (the GradScaler found inf/NaN gradients" in _log(trainer)
    assert trainer.skipped_steps == 0  # counted per epoch
