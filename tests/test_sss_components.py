"""SSS pieces: SAM-2 prompt head, ground-truth prompts, pseudo-label refinement, mask loss."""
import math

import numpy as np
import pytest
import torch

from nnunetv2_sss.sss.ground_truth_prompts import ground_truth_prompts, largest_component
from nnunetv2_sss.networks.prompt_head import SAM2PromptHead, load_prompt_head_weights
from nnunetv2_sss.networks.sss_network import SSSNetwork
from nnunetv2_sss.sss.pcsw import SlicePrompt
from nnunetv2_sss.sss.refinement import prompt_coordinates
from nnunetv2_sss.objectives.sss import mask_loss
from tiny_sam2 import TINY_IMAGE_ENCODER, write_sam2_checkpoint

D_MODEL = TINY_IMAGE_ENCODER["neck"]["d_model"]


def test_prompt_head_shapes_and_gradients():
    torch.manual_seed(0)
    head = SAM2PromptHead(D_MODEL, (40, 36))  # not multiples of 16: features cropped to ceil(n / s)
    levels = [torch.randn(3, D_MODEL, math.ceil(40 / s), math.ceil(36 / s), requires_grad=True) for s in (4, 8, 16)]
    rows, boxes, points = torch.tensor([0, 2]), torch.tensor([[2., 3., 20., 30.], [0., 0., 35., 39.]]), \
        torch.tensor([[10., 12.], [5., 5.]])
    masks = head(levels, rows, boxes, points)
    assert masks.shape == (2, 40, 36)
    masks.sum().backward()
    assert levels[0].grad[1].abs().sum() == 0 and levels[0].grad[0].abs().sum() > 0  # slice 1 has no prompt


def test_prompt_head_loads_exactly_the_sam2_head_tensors(tmp_path):
    head = SAM2PromptHead(D_MODEL, (32, 32))
    generator = torch.Generator().manual_seed(1)
    state = {k: torch.randn(v.shape, generator=generator) for k, v in head.state_dict().items()}
    extra = {"memory_encoder.fuser.weight": torch.ones(2)}
    write_sam2_checkpoint(tmp_path / "sam2.pt", {}, extra={**state, **extra})
    missing, unexpected = load_prompt_head_weights(head, tmp_path / "sam2.pt")
    assert missing == [] and unexpected == []
    loaded = head.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_sss_network_single_view_is_dfe_of_identical_views():
    torch.manual_seed(0)
    network = SSSNetwork(TINY_IMAGE_ENCODER, 1, 3, 2, deep_supervision=False, prompt_slice_size=(32, 32)).eval()
    x = torch.randn(2, 1, 32, 32)
    features = network.encoder(x)
    fused_a, fused_b = network.fuse_pair(features, [f.clone() for f in features])
    assert torch.allclose(network(x), network.decoder(fused_a), atol=1e-5)
    assert torch.allclose(fused_a[-1], fused_b[-1], atol=1e-5)
    assert torch.equal(network.fuse(features)[0], features[0])  # the conv stem is not fused
    assert [t.shape for t in network.prompt_levels(features)] == [(2, D_MODEL, 8, 8), (2, D_MODEL, 4, 4),
                                                                  (2, D_MODEL, 2, 2)]


def test_largest_component_and_ground_truth_prompts():
    labels = np.zeros((2, 10, 10), np.int64)
    labels[0, 1:4, 1:4] = 1            # 9 voxels
    labels[0, 6:8, 6:9] = 1            # 6 voxels, smaller
    labels[1, 2:9, 3:6] = 2
    assert largest_component(labels[0] == 1).sum() == 9
    prompts, targets = ground_truth_prompts(labels, [1, 2], max_prompts=10, rng=np.random.default_rng(0), jitter=0)
    by_class = {p.label: (p, t) for p, t in zip(prompts, targets)}
    prompt, target = by_class[1]
    assert prompt.slice_index == 0 and prompt.positive_point == (2, 2) and target.sum() == 9
    assert abs(prompt.box[0] - 1) <= 1 and abs(prompt.box[2] - 3) <= 1  # jitter is at least one voxel
    assert by_class[2][0].slice_index == 1 and by_class[2][0].positive_point == (3, 4)  # ties: first in C order
    assert len(ground_truth_prompts(labels, [1, 2], 1, np.random.default_rng(0))[0]) == 1
    assert ground_truth_prompts(np.zeros((1, 4, 4), np.int64), [1], 5, np.random.default_rng(0))[1].shape == (0, 4, 4)


def test_prompt_coordinates_swap_to_xy():
    boxes, points = prompt_coordinates([SlicePrompt(3, 1, (1, 2, 5, 7), (4, 6))], "cpu")
    assert boxes.tolist() == [[2, 1, 7, 5]] and points.tolist() == [[6, 4]]


def test_mask_loss_by_hand():
    logits = torch.zeros(1, 1, 2)
    target = torch.tensor([[[True, False]]])
    # BCE of p = 0.5 is log 2; soft Dice = 1 - (2 * 0.5 + 1) / (1 + 1 + 1) = 1/3
    assert mask_loss(logits, target).item() == pytest.approx(math.log(2) + 1 / 3)


def test_refine_changes_only_prompted_slices_and_classes():
    from nnunetv2_sss.sss.predict_refine import refine_segmentation
    torch.manual_seed(0)
    network = SSSNetwork(TINY_IMAGE_ENCODER, 1, 3, 2, deep_supervision=False, prompt_slice_size=(32, 32)).eval()
    image = torch.randn(1, 6, 40, 36)               # a whole case, slices larger than the training patch
    segmentation = np.zeros((6, 40, 36), np.int64)
    segmentation[1:6, 10:20, 10:20] = 1             # class 1: a clean tube over slices 1-5
    segmentation[0, 30:35, 5:9] = 2                 # class 2: one slice only, no consistent window
    refined = refine_segmentation(network, image, segmentation, [1, 2])
    assert refined.shape == segmentation.shape
    unchanged_slices = [z for z in range(6) if np.array_equal(refined[z], segmentation[z])]
    assert 0 in unchanged_slices                    # class 2's slice is never prompted
    changed = refined != segmentation
    assert np.isin(refined[changed], [0, 1]).all()  # only class 1 is rewritten
    empty = np.zeros_like(segmentation)
    assert np.array_equal(refine_segmentation(network, image, empty, [1, 2]), empty)
