"""CPS4 text pseudo-labels: Otsu maps, stacking rule and the enhanced-label merge."""
import pytest
import torch

from nnunetv2_sss.cps4.text_labels import attention_to_label_map, otsu_thresholds


def _two_level_map(size, region, high, low):
    m = torch.full(size, low)
    m[region] = high
    return m


def test_stacking_rule_on_constructed_maps():
    size = (6, 6)
    bg = _two_level_map(size, (slice(0, 2), slice(None)), 0.6, 0.05)
    bg[2, 0] = 0.95                                                    # background beats class 1 here
    c1 = _two_level_map(size, (slice(2, 5), slice(0, 3)), 0.9, 0.1)
    c2 = _two_level_map(size, (slice(3, 6), slice(1, 5)), 0.8, 0.2)   # overlaps class 1, which is higher
    constant = torch.full(size, 0.7)                                   # a constant map fires nowhere
    attention = torch.stack([bg, c1, c2, constant])[None]
    expected = [[0, 0, 0, 0, 0, 0],
                [0, 0, 0, 0, 0, 0],
                [0, 1, 1, 0, 0, 0],
                [1, 1, 1, 2, 2, 0],
                [1, 1, 1, 2, 2, 0],
                [0, 2, 2, 2, 2, 0]]
    labels = attention_to_label_map(attention, size)
    assert labels.dtype == torch.int64 and labels.shape == (1, 6, 6)
    assert labels[0].tolist() == expected


def exhaustive_otsu_foreground(values):
    """Pixels above the threshold that maximises the between-class variance, by trying every split."""
    flat = sorted(set(values))
    best, best_t = -1.0, None
    for lo, hi in zip(flat[:-1], flat[1:]):
        t = (lo + hi) / 2
        below = [v for v in values if v <= t]
        above = [v for v in values if v > t]
        w0, w1 = len(below) / len(values), len(above) / len(values)
        var = w0 * w1 * (sum(below) / len(below) - sum(above) / len(above)) ** 2
        if var > best:
            best, best_t = var, t
    return [v > best_t for v in values]


def test_upsampling_and_otsu_against_hand_bilinear_and_exhaustive_otsu():
    # 2x2 grid, class 1 hot on patch (0, 0); image 8x8 (factor 4). Bilinear (align_corners=False)
    # weights of the hot patch along one axis: source coordinate (x + 0.5) / 4 - 0.5, clamped.
    w = [1, 1, 0.875, 0.625, 0.375, 0.125, 0, 0]
    hand = [[0.1 + 0.8 * w[y] * w[x] for x in range(8)] for y in range(8)]
    attention = torch.tensor([[[[0.5, 0.5], [0.5, 0.5]], [[0.9, 0.1], [0.1, 0.1]]]], dtype=torch.float64)
    up = torch.nn.functional.interpolate(attention, size=(8, 8), mode="bilinear", align_corners=False)
    assert up[0, 1].flatten().tolist() == pytest.approx([v for row in hand for v in row])
    fired = exhaustive_otsu_foreground([v for row in hand for v in row])
    expected = [[int(fired[8 * y + x]) for x in range(8)] for y in range(8)]
    assert 4 < sum(map(sum, expected)) < 60
    assert attention_to_label_map(attention, (8, 8))[0].tolist() == expected


def test_thresholds_are_per_image_and_class():
    low = _two_level_map((4, 4), (slice(0, 2), slice(None)), 0.35, 0.3)   # dim map: its own Otsu still splits
    high = _two_level_map((4, 4), (slice(2, 4), slice(None)), 0.9, 0.1)
    attention = torch.stack([torch.stack([torch.zeros(4, 4), low]), torch.stack([torch.zeros(4, 4), high])])
    thresholds = otsu_thresholds(attention)
    assert 0.3 <= thresholds[0, 1] < 0.35 and 0.1 <= thresholds[1, 1] < 0.9
    labels = attention_to_label_map(attention, (4, 4))
    assert labels[0].tolist() == [[1] * 4, [1] * 4, [0] * 4, [0] * 4]
    assert labels[1].tolist() == [[0] * 4, [0] * 4, [1] * 4, [1] * 4]
