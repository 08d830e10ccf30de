"""Linear warm-up then cosine decay, stepped per epoch the way nnU-Net steps its poly schedule."""
from __future__ import annotations

import math

from torch.optim.lr_scheduler import _LRScheduler


def warmup_cosine_factor(step: int, warmup_steps: int, max_steps: int) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based).

    ``(step + 1) / (warmup_steps + 1)`` for ``step < warmup_steps``, then
    ``(1 + cos(pi * (step - warmup_steps) / (max_steps - warmup_steps))) / 2`` (1 at the end
    of the warm-up, 0 at ``max_steps``).
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosineLRScheduler(_LRScheduler):
    """Sets every parameter group's lr to its own initial lr times :func:`warmup_cosine_factor`.

    ``step(current_step)`` as nnU-Net's ``PolyLRScheduler`` (the trainer passes the epoch).
    """

    def __init__(self, optimizer, warmup_steps: int, max_steps: int, current_step: int = None):
        if not 0 <= warmup_steps < max_steps:
            raise ValueError(f"need 0 <= warmup_steps < max_steps, got {warmup_steps}, {max_steps}")
        self.group_lrs = [group["lr"] for group in optimizer.param_groups]
        self.warmup_steps = warmup_steps
        self.max_steps = max_steps
        self.ctr = 0
        super().__init__(optimizer, current_step if current_step is not None else -1)

    def step(self, current_step=None):
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        factor = warmup_cosine_factor(current_step, self.warmup_steps, self.max_steps)
        for group, lr in zip(self.optimizer.param_groups, self.group_lrs):
            group["lr"] = lr * factor
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self):
        return self._last_lr
