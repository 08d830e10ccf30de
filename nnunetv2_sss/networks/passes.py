"""``NetworkPasses``: every pass an objective runs, through the module's own ``forward``.

DistributedDataParallel all-reduces the gradients of a step only if the step's computation
entered the wrapped module's ``forward``; a call such as ``ddp.module.encoder(x)`` bypasses it.
So the trainers hold their networks as ``NetworkPasses(network)`` and an objective asks for a
pass by name, ``network(x, pass_='encode')``, whether ``network`` is wrapped in DDP or not:

==============  =============================================  ======================================
pass            arguments                                      result
==============  =============================================  ======================================
``predict``     ``x`` ``(B, C, *spatial)``                     logits (deep-supervision list in training)
``encode``      ``x``                                          encoder features, one tensor per level
``decode``      features (a list)                              the decoder's logits
``segment``     features                                       ``decode(fuse(features))`` (one view)
``fuse_pair``   features of view 1, of view 2                  decoder inputs of both views (identity
                                                               without a fusion module; SSS: DFE)
``prompt``      features, prompt rows ``(P,)``, boxes          mask logits ``(P, H, W)`` of the SAM-2
                ``(P, 4)``, points ``(P, 2)``                  prompt head
==============  =============================================  ======================================

The wrapper is transparent otherwise: ``state_dict`` / ``load_state_dict`` are the network's
own (checkpoints keep nnU-Net's keys) and attributes it does not have are the network's
(``passes.decoder`` is ``network.decoder``, which nnU-Net's ``set_deep_supervision_enabled``
relies on).
"""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn

from nnunetv2_sss.training.precision import network_autocast


def unwrap(module: nn.Module) -> nn.Module:
    """The module behind DDP and ``torch.compile`` wrappers (a :class:`NetworkPasses` stays)."""
    from torch._dynamo import OptimizedModule
    if isinstance(module, torch.nn.parallel.DistributedDataParallel):
        module = module.module
    if isinstance(module, OptimizedModule):
        module = module._orig_mod
    return module


def innermost(module: nn.Module) -> nn.Module:
    """The network itself, behind DDP, ``torch.compile`` and :class:`NetworkPasses`."""
    module = unwrap(module)
    return module.network if isinstance(module, NetworkPasses) else module


class NetworkPasses(nn.Module):
    # the network's own autocast dtype on CUDA ('fp16' / 'bf16', the recipe's option, set by the trainer's
    # build_network_architecture): re-entered when a caller autocasts on CUDA with another dtype (nnU-Net's
    # predictor: fp16); None: the caller's (training/precision.py)
    mixed_precision = None

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__('network'), name)

    def forward(self, *args, pass_: str = 'predict'):
        method = self.network if pass_ == 'predict' else getattr(self, f'_{pass_}', None)
        if method is None:
            raise ValueError(f"unknown network pass {pass_!r}")
        with network_autocast(self.mixed_precision):
            return method(*args)

    # ---- the passes -------------------------------------------------------------------------
    def _encode(self, x: torch.Tensor) -> List[torch.Tensor]:
        return self.network.encoder(x)

    def _decode(self, features: Sequence[torch.Tensor]):
        return self.network.decoder(features)

    def _segment(self, features: Sequence[torch.Tensor]):
        return self.network.decoder(self._fuse(features))

    def _fuse(self, features: Sequence[torch.Tensor]):
        fuse = getattr(self.network, 'fuse', None)
        return features if fuse is None else fuse(features)

    def _fuse_pair(self, features_1: Sequence[torch.Tensor], features_2: Sequence[torch.Tensor]):
        fuse_pair = getattr(self.network, 'fuse_pair', None)
        return (features_1, features_2) if fuse_pair is None else fuse_pair(features_1, features_2)

    def _prompt(self, features: Sequence[torch.Tensor], rows: torch.Tensor, boxes: torch.Tensor,
                points: torch.Tensor) -> torch.Tensor:
        return self.network.prompt_head(self.network.prompt_levels(features), rows, boxes, points)

    # ---- the network's own weights, unprefixed -------------------------------------------------
    def state_dict(self, *args, **kwargs):
        return self.network.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.network.load_state_dict(state_dict, strict=strict, assign=assign)
