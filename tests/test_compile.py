"""``torch.compile`` with nnU-Net's compile on (``training/compilation.py``): the network's parts are compiled
in place, each at most once per input shape (and grad / train mode), the prompt head and the EMA teacher are
not, and what is compiled is logged once.

The trainer runs are on the CPU, in this process, with compile forced on (a subclass whose ``_do_i_compile``
returns True; nnU-Net itself never compiles on the CPU) and a counting backend that runs the captured graphs
as they are (like torch's "eager" backend). Few steps keep the file fast: 3 per trainer, 6 for the SSS
trainers, whose prompt count changes from step to step (a GPU check would run 20).
"""
from __future__ import annotations

import collections
import copy
import json
import logging
from typing import Dict, List

import pytest
import torch
import torch._dynamo
from torch import nn

from nnunetv2_sss.networks.passes import NetworkPasses, unwrap
from nnunetv2_sss.ssl.ema import make_teacher
from nnunetv2_sss.training.compilation import (CompiledCall, compile_in_place, deferring_nnunet_compile, is_compiled,
                                               network_parts, strip_compiled)
from plugin_trainers import stepped_trainer_names
from tiny_sam2 import write_tiny_config
from trainer_harness import _finish_loaders, harness_environment, prepare_cps4_stage1

SSS_STEPS, STEPS = 6, 3


# ---- a small network with the parts of the plugin's networks -----------------------------------------
class _Fusion(nn.Module):
    def __init__(self):
        super().__init__()
        self.mix = nn.Conv2d(4, 4, 1)

    def forward(self, features):
        return [self.mix(f) for f in features]

    def pair(self, features_a, features_b):
        return [self.mix(a + b) for a, b in zip(features_a, features_b)], \
            [self.mix(b - a) for a, b in zip(features_a, features_b)]


class _Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x):
        return [self.conv(x)]


class _Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, features):
        return self.head(features[0])


class _Network(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder, self.decoder, self.fusion = _Encoder(), _Decoder(), _Fusion()
        self.prompt_head = nn.Linear(4, 4)

    def forward(self, x):
        return self.decoder(self.fusion(self.encoder(x)))

    def fuse_pair(self, features_a, features_b):
        return self.fusion.pair(features_a, features_b)


def _outputs(network, x):
    features = network(x, pass_='encode')
    fused = network(features, features, pass_='fuse_pair')
    return [network(x), *fused[0], *fused[1]]


def _compile_parts(network):
    parts, skipped = network_parts(network)
    calls = {name: compile_in_place(module, 'eager', methods) for name, (module, methods) in parts.items()}
    return parts, skipped, calls


def test_torch_module_compile_is_what_compile_in_place_builds_on():
    """torch internals: ``nn.Module.compile`` stores its callable as ``_compiled_call_impl``, which
    ``Module.__call__`` runs and ``Module.__getstate__`` (so deepcopy and pickle) leaves out."""
    import inspect
    module = nn.Linear(2, 2)
    module.compile(backend='eager')
    assert module._compiled_call_impl is not None
    assert '_compiled_call_impl' in inspect.getsource(nn.Module._wrapped_call_impl)
    assert copy.deepcopy(module).__dict__.get('_compiled_call_impl') is None


def test_parts_compile_in_place_keys_and_outputs_unchanged():
    torch.manual_seed(0)
    network = NetworkPasses(_Network())
    x = torch.randn(2, 1, 8, 8)
    keys, eager = list(network.state_dict()), _outputs(network, x)
    parts, skipped, calls = _compile_parts(network)
    assert {name: methods for name, (_, methods) in parts.items()} == \
        {'encoder': (), 'decoder': (), 'fusion': ('pair',)}
    assert skipped == {'prompt_head': 'variable prompt count'}
    assert list(network.state_dict()) == keys  # checkpoints and nnUNetv2_predict unchanged
    assert isinstance(network.network.encoder._compiled_call_impl, CompiledCall)
    assert isinstance(network.network.fusion.__dict__['pair'], CompiledCall)
    assert not is_compiled(network.network.prompt_head)
    for a, b in zip(eager, _outputs(network, x)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("order", ["copy, then compile", "compile, then copy"])
def test_a_teacher_never_runs_the_students_compiled_parts(order):
    """The EMA teacher is a deep copy of the student. Copied after the student's parts are compiled, the
    copy holds nothing compiled (no callable bound to the student); with other weights its outputs are its
    own: they differ from the student's and equal an uncompiled network with the teacher's weights."""
    torch.manual_seed(0)
    student = NetworkPasses(_Network())
    if order == "copy, then compile":
        teacher = make_teacher(student)
        _compile_parts(student)
    else:
        _compile_parts(student)
        teacher = make_teacher(student)
    assert is_compiled(student) and not is_compiled(teacher)
    with torch.no_grad():
        for p in teacher.parameters():
            p.mul_(0.5).add_(0.1)
    reference = NetworkPasses(_Network())
    reference.load_state_dict(teacher.state_dict())
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        for s, t, r in zip(_outputs(student, x), _outputs(teacher, x), _outputs(reference, x)):
            assert not torch.allclose(s, t)
            torch.testing.assert_close(t, r)


def test_strip_compiled_and_pickling_leave_an_uncompiled_module():
    import pickle
    network = NetworkPasses(_Network())
    _compile_parts(network)
    restored = pickle.loads(pickle.dumps(network))
    assert not is_compiled(restored) and restored.network.fusion.pair.__self__ is restored.network.fusion
    assert not is_compiled(strip_compiled(network)) and 'pair' not in network.network.fusion.__dict__


def test_nnunets_network_compile_is_deferred_and_its_loss_compile_gets_the_backend():
    from torch._dynamo.testing import CompileCounter
    from nnunetv2.training.nnUNetTrainer import nnUNetTrainer as trainer_module

    class Trainer:
        network = nn.Linear(2, 2)
        compile_backend = CompileCounter()

    trainer, loss = Trainer(), nn.Linear(2, 2)
    torch._dynamo.reset()
    with deferring_nnunet_compile(trainer):
        assert trainer_module.torch.compile(trainer.network) is trainer.network  # nnU-Net's line, deferred
        compiled_loss = trainer_module.torch.compile(loss)                      # nnU-Net's loss.dc
        assert trainer_module.torch.nn is torch.nn
    assert trainer_module.torch is torch
    assert trainer.network_compile_requested and trainer.nnunet_compiled == ['Linear']
    x = torch.randn(3, 2)
    torch.testing.assert_close(compiled_loss(x), loss(x))
    assert trainer.compile_backend.frame_count == 1  # compiled, with the trainer's backend
    torch._dynamo.reset()


# ---- every plugin trainer, compiled, on the CPU ------------------------------------------------------------
class PartCompileCounter:
    """A ``compile_backend``: runs each captured graph as it is (like "eager") and counts the graphs by the
    compiled part being called when dynamo compiles (``None``: outside the parts, nnU-Net's ``loss.dc``)."""

    def __init__(self):
        self.current = None
        self.compiles = collections.Counter()

    def __call__(self, graph_module, example_inputs):
        self.compiles[self.current] += 1
        return graph_module.forward


def _signature(value):
    if torch.is_tensor(value):
        return tuple(value.shape), value.dtype
    if isinstance(value, (list, tuple)):
        return tuple(_signature(v) for v in value)
    return type(value).__name__


def _observe(trainer, counter: PartCompileCounter, calls: Dict[str, set]) -> None:
    """Record per compiled part the distinct (input shapes, grad mode, train mode) it is called with, and
    name the part for the counter while it runs (outside the compiled code: dynamo never sees this)."""
    for name, call in trainer.compiled_parts.items():
        def observed(*args, _compiled=call.compiled, _name=name, _module=call.module, **kwargs):
            calls[_name].add((_signature(args), torch.is_grad_enabled(), _module.training))
            outer, counter.current = counter.current, _name
            try:
                return _compiled(*args, **kwargs)
            finally:
                counter.current = outer
        call.compiled = observed


def _trainer_class(name: str):
    from nnunetv2_sss.training import trainers
    return getattr(trainers, name)


def _environment(dataset, tmp_path, steps: int) -> dict:
    return {**dataset.env(nnUNet_results=tmp_path / "results"), **harness_environment(steps=steps),
            "nnUNet_sss_sam2_checkpoint": "random", "nnUNet_sss_sam2_config": str(write_tiny_config(tmp_path))}


def _run(cls, dataset, steps: int, observe=None) -> dict:
    """``steps`` training steps of ``cls`` (nnU-Net's order: on_train_start, on_epoch_start,
    on_train_epoch_start, train_step); the losses, and the trainer."""
    folder = dataset.preprocessed / dataset.dataset_name
    plans = dict(json.loads((folder / "nnUNetPlans.json").read_text()), continue_training=False)
    trainer = cls(plans, "2d", 0, json.loads((folder / "dataset.json").read_text()), torch.device("cpu"))
    record = {"trainer": trainer, "losses": [], "compiles_after_step": []}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as tests/trainer_harness.py: repeatable, and no busy-waiting threads on 2 cores
    try:
        trainer.on_train_start()
        trainer.on_epoch_start()
        trainer.on_train_epoch_start()
        if observe is not None:
            observe(trainer, record)
        for _ in range(steps):
            record["losses"].append(float(trainer.train_step(next(trainer.dataloader_train))["loss"]))
            if "counter" in record:
                record["compiles_after_step"].append(dict(record["counter"].compiles))
    finally:
        torch.set_num_threads(threads)
        _finish_loaders(trainer)
    return record


_COMPILED_RUNS: Dict[str, dict] = {}


def compiled_run(name: str, dataset, tmp_path) -> dict:
    """The compiled run of trainer ``name`` (made once per test session, shared by the tests below)."""
    if name in _COMPILED_RUNS:
        return _COMPILED_RUNS[name]
    steps = SSS_STEPS if name.startswith("nnUNetTrainerSSS") else STEPS
    counter = PartCompileCounter()
    compiled = type(f"{name}_compiled", (_trainer_class(name),),
                    {"_do_i_compile": lambda self: True, "compile_backend": counter,
                     "split_backward": True})  # as on CUDA, where nnU-Net compiles
    calls: Dict[str, set] = collections.defaultdict(set)
    prompt_counts: List[int] = []

    def observe(trainer, record):
        record["counter"] = counter
        _observe(trainer, counter, calls)
        head = getattr(unwrap(trainer.network), "prompt_head", None)
        if head is not None:
            head.register_forward_pre_hook(lambda module, args: prompt_counts.append(int(args[1].shape[0])))

    torch._dynamo.reset()
    # reaching dynamo's recompile limit raises instead of falling back to eager with a warning
    with pytest.MonkeyPatch.context() as patch, torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        for key, value in _environment(dataset, tmp_path, steps).items():
            patch.setenv(key, str(value))
        if name == "nnUNetTrainerCPS4":
            prepare_cps4_stage1(str(dataset.dataset_id), "2d", 0, 0)
        record = _run(compiled, dataset, steps, observe)
    record.update(calls=calls, prompt_counts=prompt_counts, steps=steps)
    _COMPILED_RUNS[name] = record
    return record


@pytest.mark.parametrize("name", stepped_trainer_names())
def test_each_part_compiles_once_per_input_shape(name, nnunet_dataset, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="torch._dynamo")
    record = compiled_run(name, nnunet_dataset, tmp_path)
    trainer, counter, calls = record["trainer"], record["counter"], record["calls"]
    compiles = {part: counter.compiles.get(part, 0) for part in trainer.compiled_parts}
    distinct = {part: len(calls[part]) for part in trainer.compiled_parts}
    print(f"{name}: compiles {compiles}, distinct (shapes, grad, train) {distinct}, nnU-Net's loss.dc "
          f"{counter.compiles.get(None, 0)}, prompt counts {record['prompt_counts']}")
    assert {'encoder', 'decoder'} <= set(compiles), compiles
    for part, count in compiles.items():
        assert count <= distinct[part], f"{part}: {count} compiles for {distinct[part]} input signatures"
    assert sum(compiles.values()) <= 8
    # all of it in the first step: the count does not grow with the steps
    assert record["compiles_after_step"][0] == record["compiles_after_step"][-1]
    assert not [r for r in caplog.records if "recompile" in r.getMessage()]
    network = unwrap(trainer.network).network
    if getattr(network, "prompt_head", None) is not None:
        assert not is_compiled(network.prompt_head)
        assert len(set(record["prompt_counts"])) >= 2, record["prompt_counts"]  # the shapes that vary
    if getattr(network, "fusion", None) is not None:
        assert {'fusion', 'fusion.pair'} <= set(compiles)
    if name == "nnUNetTrainerCPS":
        assert {'network_b.encoder', 'network_b.decoder'} <= set(compiles)
    log = open(trainer.log_file).read()
    lines = [line for line in log.splitlines() if "compiled in place:" in line]
    assert len(lines) == 1 and "not compiled:" in lines[0], lines
    assert counter.compiles.get(None, 0) >= 1 and "(loss.dc)" in lines[0]  # nnU-Net's compile of its Dice loss
    if getattr(trainer, "teacher", None) is not None:
        assert "EMA teacher" in lines[0]
        teacher = trainer.teacher
        student = copy.deepcopy(unwrap(trainer.network)).eval()  # a copy of a compiled network: nothing compiled
        assert is_compiled(unwrap(trainer.network)) and not is_compiled(teacher) and not is_compiled(student)
        x = torch.randn(2, trainer.num_input_channels, *trainer.configuration_manager.patch_size)
        with torch.no_grad():
            # after 2+ steps the EMA teacher's weights differ from the student's: so do its outputs (it does not
            # run the student's compiled parts)
            assert not torch.allclose(teacher(x)[0], student(x)[0])


@pytest.mark.parametrize("name", ["nnUNetTrainerSSS"])
def test_compiled_losses_equal_the_uncompiled_ones(name, nnunet_dataset, tmp_path, monkeypatch):
    compiled = compiled_run(name, nnunet_dataset, tmp_path)
    for key, value in _environment(nnunet_dataset, tmp_path, compiled["steps"]).items():
        monkeypatch.setenv(key, str(value))
    plain = _run(_trainer_class(name), nnunet_dataset, compiled["steps"])
    assert plain["trainer"].__dict__.get("compiled_parts") is None
    # the first step from the same weights; later ones after optimiser steps whose float32 rounding differs (the
    # compiled parts get contiguous inputs, the convolutions other memory layouts) and grows a little per step
    torch.testing.assert_close(compiled["losses"][0], plain["losses"][0], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(compiled["losses"], plain["losses"], rtol=1e-4, atol=1e-5)
