"""``torch.compile`` for the plugin's trainers: the network's parts, compiled in place.

nnU-Net 2.8.1 compiles the network in ``nnUNetTrainer.initialize``
(``if self._do_i_compile(): self.network = torch.compile(self.network)``: on CUDA unless
``nnUNet_compile`` says otherwise). For the plugin's trainers ``self.network`` is
:class:`~nnunetv2_sss.networks.passes.NetworkPasses`, so that would compile the whole wrapper:
dynamo makes one version per pass (the ``pass_`` string) and per input shape, and SSS's ``prompt``
pass has a different prompt count nearly every step, so the wrapper soon reaches dynamo's
recompile limit, each version a compile of SAM-2's encoder forward and backward.

Instead, where nnU-Net decides to compile (its decision is kept: ``_do_i_compile()``, i.e.
``nnUNet_compile`` and the device):

- :func:`deferring_nnunet_compile` (around nnU-Net's ``initialize``) takes nnU-Net's
  ``torch.compile(self.network)`` and returns the network unchanged, noting the request; nnU-Net's
  other ``torch.compile`` call, of its Dice loss (``loss.dc``, in ``_build_loss``), goes through, with
  the trainer's ``compile_backend``. nnU-Net's own log line ``Using torch.compile...`` stays.
- :func:`compile_network_parts` (when training starts, ``on_train_start``: after the EMA teacher and
  the objective's extra networks exist, so no copy is made of a compiled module) compiles in place,
  with ``dynamic=False`` (one compile per part and input shape; no shape-generic kernels), the
  trained networks' parts: ``encoder``, ``decoder`` and SSS's ``fusion`` (DFE: its ``forward`` and its
  two-view ``pair``), of the student and of the objective's extra trained modules (CPS's
  ``network_b``). In place means ``nn.Module.compile``: the module objects, parameters and
  ``state_dict`` keys stay as they are, so checkpoints, ``--c`` and ``nnUNetv2_predict`` are unchanged,
  and DDP (which wraps the network before) keeps the same parameters.
- Not compiled: SAM-2's prompt head (a different number of prompts nearly every step would be a
  compile each), the glue between the parts (``NetworkPasses``' dispatch, ``prompt_levels``), the
  EMA teacher (a no-grad forward on a deep copy of the student: compiling it would add a compile of
  each part per shape for a forward-only pass; and it must never run the student's compiled
  callable, see :class:`CompiledCall`) and frozen no-grad models of an objective (CPS4's stage-1
  text model). One log line per training names what is compiled and what is not.
- One compile per shape, not two: before compiling, one eager forward at batch 1 (:func:`warm_up`) fills
  SAM-2's position-encoding cache, and a part's tensor inputs are made contiguous (:class:`CompiledCall`;
  a static-shape compile is specialised on strides too).

A compiled part's version is also specialised on what dynamo guards on besides the shapes: grad
mode (FixMatch's and CPS's no-grad pseudo-label passes of a trained network), train/eval mode
(validation) and deep supervision on/off (nnU-Net's final validation): at most one compile per part
for each such combination that occurs with an input shape.

nnU-Net's predictor (``nnUNetv2_predict``, and the final validation in ``perform_actual_validation``)
still compiles the whole network when ``nnUNet_compile`` is set to true (its own rule): one pass
(``predict``), one tile shape.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import types
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from nnunetv2_sss.networks.passes import NetworkPasses, unwrap

# the parts of a network that are compiled (in place), each with the methods compiled besides forward
COMPILED_PARTS: Dict[str, Tuple[str, ...]] = {'encoder': (), 'decoder': (), 'fusion': ('pair',)}
# parts that are not compiled, and why
NOT_COMPILED: Dict[str, str] = {'prompt_head': 'variable prompt count'}


def _contiguous(value):
    """Tensors (also in lists and tuples) made contiguous: a static-shape compile is specialised on strides
    too, and the same shapes arrive as views and as fresh tensors (SAM-2's levels cropped from a map padded
    to Hiera's stride vs. the same levels after complementary dropout): one compile instead of two, for a
    copy of the views (none where the tensors are contiguous already)."""
    if torch.is_tensor(value):
        return value.contiguous()
    if isinstance(value, (list, tuple)):
        return type(value)(_contiguous(v) for v in value)
    return value


class CompiledCall:
    """The compiled callable a part runs: installed as the module's ``_compiled_call_impl`` (where
    ``nn.Module.compile`` puts it and ``Module.__call__`` looks for it) for its ``forward``, or as an
    instance attribute shadowing a method (``fusion.pair``). ``compiled`` is what is called.

    A copy of the module (``copy.deepcopy``, pickling) never gets it: the copy's forward and methods are
    its own, uncompiled (torch's ``Module.__getstate__`` drops ``_compiled_call_impl`` too, in the
    versions that have it). Without this, a deep copy (an EMA teacher) would hold a compiled callable
    bound to the original module and run the student's weights."""

    def __init__(self, compiled: Callable, module: nn.Module, method: Optional[str] = None):
        self.compiled = compiled
        self.module = module
        self.method = method  # None: the module's forward (its _compiled_call_impl)

    def __call__(self, *args, **kwargs):
        return self.compiled(*_contiguous(args), **{k: _contiguous(v) for k, v in kwargs.items()})

    def _eager(self, module: nn.Module):
        """What the copy of the module gets instead: nothing (forward), its own method."""
        return None if self.method is None else types.MethodType(getattr(type(module), self.method), module)

    def __deepcopy__(self, memo):
        return self._eager(copy.deepcopy(self.module, memo))

    def __reduce__(self):
        if self.method is None:
            return type(None), ()
        return getattr, (self.module, self.method)  # the class's method, bound to the unpickled module


def compile_options(backend=None) -> Dict[str, Any]:
    """``torch.compile`` arguments of a part: static shapes, the backend (None: torch's default), and where
    torch has it, a recompile cache of the part's own (``isolate_recompiles``: otherwise every module
    compiled with ``nn.Module.compile`` shares one, whose limit counts all parts' versions together)."""
    options: Dict[str, Any] = {'dynamic': False}
    if backend is not None:
        options['backend'] = backend
    if 'isolate_recompiles' in inspect.signature(torch.compile).parameters:
        options['isolate_recompiles'] = True
    return options


def compile_in_place(module: nn.Module, backend=None, methods: Tuple[str, ...] = ()) -> Dict[str, CompiledCall]:
    """Compile ``module``'s forward (as ``nn.Module.compile`` does) and the given methods in place;
    returns ``{'' (forward) or method name: CompiledCall}``."""
    options = compile_options(backend)
    module.compile(**options)
    calls = {'': CompiledCall(module._compiled_call_impl, module)}
    module._compiled_call_impl = calls['']
    for method in methods:
        calls[method] = CompiledCall(torch.compile(getattr(module, method), **options), module, method)
        module.__dict__[method] = calls[method]  # shadows the class's method; no state_dict entry
    return calls


def strip_compiled(module: nn.Module) -> nn.Module:
    """Remove every compiled callable from ``module`` and its submodules (they run eagerly again)."""
    for submodule in module.modules():
        if submodule.__dict__.get('_compiled_call_impl') is not None:
            submodule._compiled_call_impl = None
        for name, value in list(submodule.__dict__.items()):
            if isinstance(value, CompiledCall) or (isinstance(value, types.MethodType) and value.__self__ is submodule
                                                   and getattr(type(submodule), name, None) is value.__func__):
                del submodule.__dict__[name]
    return module


def is_compiled(module: nn.Module) -> bool:
    """Whether ``module`` or a submodule holds a compiled callable."""
    return any(m.__dict__.get('_compiled_call_impl') is not None or
               any(isinstance(v, CompiledCall) for v in m.__dict__.values()) for m in module.modules())


def _inner(network: nn.Module) -> nn.Module:
    network = unwrap(network)
    return network.network if isinstance(network, NetworkPasses) else network


def network_parts(network: nn.Module) -> Tuple[Dict[str, Tuple[nn.Module, Tuple[str, ...]]], Dict[str, str]]:
    """``({part: (module, methods)}, {part not compiled: reason})`` of a network (behind DDP /
    :class:`NetworkPasses`): its ``encoder``, ``decoder`` and ``fusion`` where it has them (a network
    without encoder and decoder is compiled whole), every other child with parameters not."""
    inner = _inner(network)
    parts = {}
    for name, methods in COMPILED_PARTS.items():
        module = getattr(inner, name, None)
        if isinstance(module, nn.Module):
            parts[name] = (module, tuple(m for m in methods if callable(getattr(module, m, None))))
    if not parts:
        return {'network': (inner, ())}, {}
    # a module reachable as several names (nnU-Net's decoder.encoder is the encoder) is one part
    covered = {id(m) for module, _ in parts.values() for m in module.modules()}
    skipped = {name: NOT_COMPILED.get(name, 'not an encoder/decoder part')
               for name, child in inner.named_children()
               if name not in parts and id(child) not in covered and any(True for _ in child.parameters())}
    return parts, skipped


@torch.no_grad()
def warm_up(network: nn.Module, input_shape: Tuple[int, ...], device: torch.device) -> None:
    """One eager forward of ``network`` (eval mode, no gradients, zeros of ``input_shape``) before its parts
    are compiled, so that what it caches on a first call is there when dynamo traces: SAM-2's sine
    position encoding keeps its tensor per feature size in a dict (SAM-2 fills it for 1024-pixel inputs
    on CUDA "to help with compilation"); traced while empty, the first call of a shape would store into
    the cache and the next one recompile to read it: two compiles per shape instead of one. No random
    numbers are drawn and no state but such caches changes (eval mode: no running statistics)."""
    inner = _inner(network)
    training = inner.training
    inner.eval()
    try:
        inner(torch.zeros(input_shape, device=device))
    finally:
        inner.train(training)


def _backend_name(backend) -> str:
    if backend is None:
        return "torch's default (inductor)"
    return backend if isinstance(backend, str) else type(backend).__name__


class _TorchForNnunet:
    """nnU-Net's module global ``torch`` while its ``initialize`` runs: ``torch`` with ``compile`` taken
    over (the network: noted, returned as it is; anything else, nnU-Net's ``loss.dc``: compiled with
    the trainer's ``compile_backend``)."""

    def __init__(self, trainer, original):
        self._trainer = trainer
        self._original = original

    def __getattr__(self, name):
        return getattr(self._original, name)

    def compile(self, model=None, **kwargs):
        trainer = self._trainer
        if model is not None and model is getattr(trainer, 'network', None):
            trainer.network_compile_requested = True
            return model
        backend = getattr(trainer, 'compile_backend', None)
        if backend is not None:
            kwargs.setdefault('backend', backend)
        if model is not None:
            trainer.nnunet_compiled.append(type(model).__name__)
        return self._original.compile(model, **kwargs)


@contextlib.contextmanager
def deferring_nnunet_compile(trainer):
    """While nnU-Net's ``initialize`` runs: its ``torch.compile(self.network)`` is noted
    (``trainer.network_compile_requested``) instead of done, :func:`compile_network_parts` does it
    when training starts; its other ``torch.compile`` calls (``loss.dc``) get ``compile_backend``."""
    from nnunetv2.training.nnUNetTrainer import nnUNetTrainer as trainer_module
    original = trainer_module.torch
    trainer.network_compile_requested = False
    trainer.nnunet_compiled = []
    trainer_module.torch = _TorchForNnunet(trainer, original)
    try:
        yield
    finally:
        trainer_module.torch = original


def _objective_modules(trainer) -> Tuple[Dict[str, nn.Module], Dict[str, nn.Module]]:
    """The objective's extra trained modules and its other (frozen) modules, by name."""
    objective = getattr(trainer, 'ssl_objective', None)
    if objective is None:
        return {}, {}
    trained = dict(objective.trained_modules)
    frozen = {name: value for name, value in vars(objective).items()
              if isinstance(value, nn.Module) and all(value is not m for m in trained.values())}
    return trained, frozen


def compile_network_parts(trainer) -> Optional[Dict[str, CompiledCall]]:
    """If nnU-Net asked to compile the network (:func:`deferring_nnunet_compile`): compile the parts of the
    student and of the objective's extra trained modules in place (once), make sure the EMA teacher holds
    nothing compiled, and log what is compiled and what is not. Returns ``trainer.compiled_parts``
    (``{'encoder': CompiledCall, 'fusion.pair': ..., 'network_b.decoder': ...}``), None if not compiling."""
    if not getattr(trainer, 'network_compile_requested', False):
        return None
    if getattr(trainer, 'compiled_parts', None) is not None:
        return trainer.compiled_parts
    if not hasattr(nn.Module, 'compile'):  # torch < 2.2: no in-place compile
        trainer.print_to_log_file(f"WARNING: torch {torch.__version__} cannot compile modules in place "
                                  f"(nn.Module.compile, torch >= 2.2): the network is not compiled")
        return None
    backend = getattr(trainer, 'compile_backend', None)
    trained, frozen = _objective_modules(trainer)
    compiled: Dict[str, CompiledCall] = {}
    not_compiled: List[str] = []
    input_shape = (1, trainer.num_input_channels, *trainer.configuration_manager.patch_size)
    for prefix, network in [('', trainer.network)] + [(f'{name}.', module) for name, module in trained.items()]:
        warm_up(network, input_shape, trainer.device)
        parts, skipped = network_parts(network)
        for name, (module, methods) in parts.items():
            for method, call in compile_in_place(module, backend, methods).items():
                compiled[prefix + name + (f'.{method}' if method else '')] = call
        not_compiled += [f"{prefix}{name} ({reason})" for name, reason in skipped.items()]
    teacher = getattr(trainer, 'teacher', None)
    if teacher is not None:
        strip_compiled(teacher)
        not_compiled.append("EMA teacher (no-grad forward on a copy of the student)")
    not_compiled += [f"{name} (frozen, no-grad)" for name in frozen]
    not_compiled.append("the passes' glue between the parts (NetworkPasses)")
    trainer.compiled_parts = compiled
    nnunet = f"; nnU-Net's {', '.join(trainer.nnunet_compiled)} (loss.dc)" if trainer.nnunet_compiled else ""
    trainer.print_to_log_file(
        f"torch.compile (nnU-Net's choice: nnUNet_compile / device), backend {_backend_name(backend)}, static shapes "
        f"(one compile per part and input shape): compiled in place: {', '.join(compiled)}{nnunet}; "
        f"not compiled: {', '.join(not_compiled)}")
    return compiled
