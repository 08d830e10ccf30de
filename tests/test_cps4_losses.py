"""CPS4 stage-1 losses against direct evaluation of docs/method.md 2.1's formulas."""
import math

import pytest
import torch

from nnunetv2_sss.cps4.losses import (patch_grid_masks, pixel_loss, present_classes, stage1_loss,
                                      token_loss)


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def direct_losses(logits: torch.Tensor, masks: torch.Tensor):
    """(L_token, L_pixel) by the formulas, one image, class and patch at a time, in Python floats."""
    token_per_image, pixel_per_image = [], []
    for b in range(logits.shape[0]):
        tokens, pixels = [], []
        for k in range(logits.shape[1]):
            a = [_sigmoid(z) for z in logits[b, k].flatten().tolist()]
            m = masks[b, k].flatten().tolist()
            if sum(m) == 0:
                continue  # class absent from the image: not one of the N classes
            inside = sum(aj for aj, mj in zip(a, m) if mj == 1)
            tokens.append((1 - inside / sum(a)) ** 2)
            pixels.append(-sum(mj * math.log(aj) + (1 - mj) * math.log(1 - aj) for aj, mj in zip(a, m)) / len(a))
        if tokens:
            token_per_image.append(sum(tokens) / len(tokens))
            pixel_per_image.append(sum(pixels) / len(pixels))
    return sum(token_per_image) / len(token_per_image), sum(pixel_per_image) / len(pixel_per_image)


def test_losses_match_direct_formula_with_absent_classes():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 5, 6, generator=g, dtype=torch.float64) * 2
    masks = (torch.rand(3, 4, 5, 6, generator=g) > 0.6).double()
    masks[0, 1] = 0      # absent class in image 0
    masks[1, :3] = 0     # only one class present in image 1
    masks[2, 3] = 0
    present = present_classes(masks)
    assert present.tolist() == [[True, False, True, True], [False, False, False, True], [True, True, True, False]]
    expected_token, expected_pixel = direct_losses(logits, masks)
    assert token_loss(torch.sigmoid(logits), masks, present).item() == pytest.approx(expected_token, rel=1e-10)
    assert pixel_loss(logits, masks, present).item() == pytest.approx(expected_pixel, rel=1e-10)


def test_losses_by_hand():
    # one image, grid 1x2, class 0 on the left patch with A = (0.8, 0.2), class 1 absent
    logits = torch.tensor([[[[math.log(4.0), -math.log(4.0)]], [[0.3, -1.0]]]])
    masks = torch.tensor([[[[1.0, 0.0]], [[0.0, 0.0]]]])
    present = present_classes(masks)
    assert token_loss(torch.sigmoid(logits), masks, present).item() == pytest.approx((1 - 0.8 / 1.0) ** 2)
    assert pixel_loss(logits, masks, present).item() == pytest.approx(-math.log(0.8))


def test_image_without_present_class_is_skipped():
    logits = torch.randn(2, 2, 2, 2, dtype=torch.float64)
    masks = torch.zeros(2, 2, 2, 2, dtype=torch.float64)
    masks[1, 0, 0, 0] = 1
    present = present_classes(masks)
    expected_token, expected_pixel = direct_losses(logits, masks)
    assert token_loss(torch.sigmoid(logits), masks, present).item() == pytest.approx(expected_token)
    assert pixel_loss(logits, masks, present).item() == pytest.approx(expected_pixel)
    empty = torch.zeros_like(present)
    assert token_loss(torch.sigmoid(logits), masks, empty).item() == 0.0


def test_patch_grid_masks_quadrant_and_small_objects():
    seg = torch.zeros(1, 32, 32, dtype=torch.long)
    seg[0, :16, :16] = 1           # exactly the top-left patch of a 2x2 grid of 16-pixel patches
    seg[0, 20, 20] = 2             # one pixel: far below half a patch
    seg[0, 30:, :2] = -1           # nnU-Net padding belongs to no class
    masks = patch_grid_masks(seg, 3, (2, 2))
    assert masks.shape == (1, 3, 2, 2)
    assert masks[0, 1].tolist() == [[1, 0], [0, 0]]
    assert masks[0, 0].tolist() == [[0, 1], [1, 1]]
    assert masks[0, 2].tolist() == [[0, 0], [0, 0]]
    assert present_classes(masks).tolist() == [[True, True, False]]


def tent_resampled(mask, grid):
    """Anti-aliased bilinear down-sampling by brute force: per output cell, tent weights
    w(x) = max(0, 1 - |x + 0.5 - centre| / scale) over the input pixels, normalised."""
    def weights(n_in, n_out):
        scale = n_in / n_out
        rows = []
        for i in range(n_out):
            centre = (i + 0.5) * scale
            w = [max(0.0, 1 - abs(x + 0.5 - centre) / scale) for x in range(n_in)]
            rows.append([v / sum(w) for v in w])
        return rows
    wy, wx = weights(len(mask), grid[0]), weights(len(mask[0]), grid[1])
    return [[sum(wy[i][y] * wx[j][x] * mask[y][x] for y in range(len(mask)) for x in range(len(mask[0])))
             for j in range(grid[1])] for i in range(grid[0])]


def test_patch_grid_masks_match_brute_force_tent_filter():
    g = torch.Generator().manual_seed(3)
    seg = torch.zeros(2, 24, 40, dtype=torch.long)
    for b in range(2):  # a few random rectangles per class
        for k in (1, 2):
            for _ in range(3):
                y, x = torch.randint(0, 20, (1,), generator=g).item(), torch.randint(0, 36, (1,), generator=g).item()
                h, w = torch.randint(6, 16, (2,), generator=g).tolist()
                seg[b, y:y + h, x:x + w] = k
    masks = patch_grid_masks(seg, 3, (3, 5))
    checked = 0
    for b in range(2):
        for k in range(3):
            values = tent_resampled((seg[b] == k).double().tolist(), (3, 5))
            for i in range(3):
                for j in range(5):
                    if abs(values[i][j] - 0.5) > 1e-6:
                        assert masks[b, k, i, j].item() == float(values[i][j] >= 0.5), (b, k, i, j, values[i][j])
                        checked += 1
    assert checked > 80
    assert all(0 < masks[:, k].sum() < masks[:, k].numel() for k in range(3))  # non-trivial targets


def test_stage1_loss_combines_both_halves_and_has_gradients():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 4, 4, generator=g, requires_grad=True)
    seg = torch.randint(0, 3, (2, 16, 16), generator=g)
    seg[:, :8, :8] = 1
    out = stage1_loss(logits, seg)
    masks = patch_grid_masks(seg, 3, (4, 4))
    expected_token, expected_pixel = direct_losses(logits.detach().double(), masks.double())
    assert out["token"].item() == pytest.approx(expected_token, rel=1e-5)
    assert out["pixel"].item() == pytest.approx(expected_pixel, rel=1e-5)
    assert out["loss"].item() == pytest.approx(0.5 * (expected_token + expected_pixel), rel=1e-5)
    out["loss"].backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
