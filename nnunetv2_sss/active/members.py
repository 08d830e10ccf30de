"""Several predictions of one scan from what nnU-Net computes anyway, with nnU-Net's own predictor.

The scan's *prediction* is nnU-Net's: ``predict_logits_from_preprocessed_data`` (the folds' exported
weights, ``network_weights``, each with nnU-Net's mirroring, logits averaged), the same numbers
``nnUNetv2_predict`` gives. Strategies that measure disagreement also need the *members* one by one: a
member is one model in one pass, the model a fold's exported weights or, for an EMA trainer, the other
model its checkpoint keeps beside them (``student_weights`` / ``teacher_weights``), the pass one flip
combination of the checkpoint's mirror axes (with mirroring on; the plain pass only without). Each
member runs once through nnU-Net's sliding window (``predict_sliding_window_return_logits``; its
mean is nnU-Net's prediction up to nnU-Net's half-precision accumulation, which is why the prediction
is not taken from it): those strategies cost the prediction plus one pass per member.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

from nnunetv2_sss.active.voxels import entropy
from nnunetv2_sss.errors import UserValueError
from nnunetv2_sss.trained_model import TrainedModel, make_predictor

EXPORTED = "network_weights"
PARTNER_KEYS = ("student_weights", "teacher_weights")  # the EMA trainers' other model (training/semi_supervised.py)


@dataclass(frozen=True)
class Member:
    fold: str
    weights: str              # the checkpoint entry: EXPORTED or one of PARTNER_KEYS
    flip: Tuple[int, ...]     # spatial axes flipped before the network and back after (empty: the plain pass)


@dataclass
class CasePrediction:
    """What the strategies read of one scan (preprocessed geometry, ``C`` classes)."""
    probabilities: np.ndarray                          # (C, *spatial) nnU-Net's prediction (softmax of the mean logits)
    mean_member_probabilities: Optional[np.ndarray] = None  # (C, *spatial) mean of the members' softmax
    mean_member_entropy: Optional[np.ndarray] = None   # (*spatial) mean of the members' voxels.entropy
    features: Optional[np.ndarray] = None              # (F,) deepest encoder output, mean over space and calls


class MemberPredictor(nnUNetPredictor):
    """nnU-Net's predictor whose network pass is one flip combination (:attr:`flip`) instead of nnU-Net's
    mean over all of them (``None``: nnU-Net's own); everything else (tiles, Gaussian weighting) is nnU-Net's."""
    flip: Optional[Tuple[int, ...]] = None

    @torch.inference_mode()
    def _internal_maybe_mirror_and_predict(self, x: torch.Tensor) -> torch.Tensor:
        if self.flip is None:
            return super()._internal_maybe_mirror_and_predict(x)
        if not self.flip:
            return self.network(x)
        axes = [axis + 2 for axis in self.flip]
        return torch.flip(self.network(torch.flip(x, axes)), axes)


def flip_combinations(mirror_axes: Optional[Sequence[int]]) -> List[Tuple[int, ...]]:
    """The plain pass and every combination of ``mirror_axes`` (nnU-Net's order); ``None``: the plain one."""
    axes = list(mirror_axes or ())
    return [()] + [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]


class ModelMembers:
    """The members of a trained model; :meth:`predict` runs them on one scan."""

    def __init__(self, model: TrainedModel, results_base: str, device: str, use_mirroring: bool,
                 tile_step_size: float = 0.5):
        self.predictor = make_predictor(model, results_base, device, use_mirroring, tile_step_size, MemberPredictor)
        self.weights: Dict[Tuple[str, str], dict] = {}
        for (fold, path), exported in zip(model.checkpoint_files(results_base).items(),
                                          self.predictor.list_of_parameters):
            self.weights[(fold, EXPORTED)] = exported
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
            trained = checkpoint["init_args"]["configuration"]
            if trained != model.configuration:
                raise UserValueError(f"{path}: a model of configuration {trained!r}, not {model.configuration!r} "
                                     f"(a copied or renamed model folder?); give -c {trained} or another model")
            self.weights.update({(fold, key): checkpoint[key] for key in PARTNER_KEYS if key in checkpoint})
        self.flips = flip_combinations(self.predictor.allowed_mirroring_axes if use_mirroring else None)
        self.members = [Member(fold, key, flip) for fold, key in self.weights for flip in self.flips]

    @property
    def network(self) -> torch.nn.Module:
        return getattr(self.predictor.network, "_orig_mod", self.predictor.network)

    def description(self) -> str:
        """E.g. ``2 models (fold 0 network_weights, fold 0 student_weights) x 4 mirrored passes = 8 predictions``."""
        models = ", ".join(f"fold {fold} {key}" for fold, key in self.weights)
        passes = f"{len(self.flips)} mirrored passes" if len(self.flips) > 1 else "1 pass"
        count = lambda n, word: f"{n} {word}" + ("s" if n != 1 else "")
        return f"{count(len(self.weights), 'model')} ({models}) x {passes} = {count(len(self.members), 'prediction')}"

    def predict(self, data: np.ndarray, with_members: bool, with_features: bool) -> CasePrediction:
        """``data`` ``(C_in, *spatial)`` preprocessed -> :class:`CasePrediction`; the member statistics
        only ``with_members``, the encoder features (of nnU-Net's prediction's network calls) only
        ``with_features``."""
        image = torch.from_numpy(np.ascontiguousarray(data))
        features: List[torch.Tensor] = []

        def keep_features(module, inputs, output):
            deepest = output[-1] if isinstance(output, (list, tuple)) else output
            features.append(deepest.float().mean(dim=tuple(range(2, deepest.ndim))).mean(0).cpu())

        hook = self.network.encoder.register_forward_hook(keep_features) if with_features else None
        try:
            logits = self.predictor.predict_logits_from_preprocessed_data(image).float()
        finally:
            if hook is not None:
                hook.remove()
        result = CasePrediction(torch.softmax(logits, 0).numpy())
        if with_features:
            result.features = torch.stack(features).mean(0).numpy()
        if with_members:
            result.mean_member_probabilities, result.mean_member_entropy = self.member_statistics(image)
        return result

    def member_statistics(self, image: torch.Tensor) -> Tuple[np.ndarray, np.ndarray]:
        """Mean over the members of their softmax ``(C, *spatial)`` and of its entropy ``(*spatial)``."""
        from nnunetv2.configuration import default_num_processes
        probabilities_sum = entropy_sum = None
        threads = torch.get_num_threads()
        torch.set_num_threads(min(default_num_processes, threads))  # as nnU-Net's prediction of preprocessed data
        try:
            for member in self.members:
                self.network.load_state_dict(self.weights[(member.fold, member.weights)])
                self.predictor.flip = member.flip
                logits = self.predictor.predict_sliding_window_return_logits(image).to("cpu").float()
                probabilities = torch.softmax(logits, 0).numpy()
                probabilities_sum = probabilities if probabilities_sum is None else probabilities_sum + probabilities
                member_entropy = entropy(probabilities)
                entropy_sum = member_entropy if entropy_sum is None else entropy_sum + member_entropy
        finally:
            self.predictor.flip = None  # nnU-Net's own pass again
            torch.set_num_threads(threads)
        return probabilities_sum / len(self.members), entropy_sum / len(self.members)
