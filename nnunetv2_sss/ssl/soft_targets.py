"""Cross-entropy against probability targets, and CPS4's enhanced target (docs/method.md 2.2)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_cross_entropy(logits: torch.Tensor, target_probabilities: torch.Tensor) -> torch.Tensor:
    """Mean over batch and voxels of ``-sum_k q_k log softmax(logits)_k``.

    ``logits``, ``target_probabilities``: ``(B, K, *spatial)``; the target carries no gradient.
    """
    if logits.shape != target_probabilities.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target_probabilities.shape)} differ in shape")
    log_p = torch.log_softmax(logits.float(), 1)
    return -(target_probabilities.detach().float() * log_p).sum(1).mean()


def enhanced_soft_target(teacher_probabilities: torch.Tensor, text_labels: torch.Tensor) -> torch.Tensor:
    """CPS4's enhanced target ``(p_t + onehot(y_text)) / 2``: ``(B, K, *spatial)``, ``(B, *spatial)``
    -> ``(B, K, *spatial)``, a probability distribution per voxel.

    The paper writes ``l_ce(y_s, y_t + y_text)``; as a hard label ``argmax(p_t + onehot(y_text))``
    is ``y_text`` wherever ``p_t`` are probabilities, so the teacher would do nothing. As the soft
    target, ``CE(y_s, (p_t + onehot(y_text)) / 2) = (CE(y_s, p_t) + CE(y_s, y_text)) / 2``
    (CE is linear in its target).
    """
    num_classes = teacher_probabilities.shape[1]
    if text_labels.shape != teacher_probabilities.shape[:1] + teacher_probabilities.shape[2:]:
        raise ValueError(f"text labels {tuple(text_labels.shape)} do not match teacher probabilities "
                         f"{tuple(teacher_probabilities.shape)} (expected [B, ...] for [B, K, ...])")
    if ((text_labels < 0) | (text_labels >= num_classes)).any():  # one host round-trip
        raise ValueError(f"text labels must lie in 0..{num_classes - 1}, got "
                         f"{int(text_labels.min())}..{int(text_labels.max())}")
    one_hot = F.one_hot(text_labels.long(), num_classes).movedim(-1, 1).to(teacher_probabilities.dtype)
    return 0.5 * (teacher_probabilities + one_hot)
