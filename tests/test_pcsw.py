"""PCSW prompt generator: constructed volumes with hand-computed answers, and a brute-force
reference (pure-Python 26-connected flood fill, exhaustive window search, exhaustive
farthest-point search) on small random volumes."""
from __future__ import annotations

import math
from collections import deque
from itertools import product

import numpy as np
import pytest

from nnunetv2_sss.sss.pcsw import SlicePrompt, pcsw_prompts, select_windows, window_lengths


def tube_volume(num_slices: int = 9) -> np.ndarray:
    labels = np.zeros((num_slices, 12, 12), np.uint8)
    labels[:, 3:8, 2:6] = 1
    return labels


def test_window_lengths():
    assert list(window_lengths(1)) == [1]
    assert list(window_lengths(2)) == [1]
    assert list(window_lengths(3)) == [1]
    assert list(window_lengths(6)) == [3, 2]
    assert list(window_lengths(9)) == [4, 3]
    assert list(window_lengths(32)) == [16, 15, 14, 13, 12, 11]


def test_clean_tube_accepted_with_box_and_point():
    labels = tube_volume()
    labels[1, 10, 10] = 1          # a speck of the class: not in the largest component
    [window] = select_windows(labels)
    assert (window.label, window.start, window.length) == (1, 0, 4)
    assert window.connectivity == pytest.approx(80 / 81)
    # rows 3..7, cols 2..5: distance to the outside is min(y-2, 8-y, x-1, 6-x) → 2 at (4,3),(4,4),(5,3),…
    expected = [SlicePrompt(z, 1, (3, 2, 7, 5), (4, 3)) for z in range(4)]
    assert pcsw_prompts(labels) == expected


def test_hole_moves_point_and_gives_negative_point():
    labels = np.zeros((3, 11, 11), np.int64)
    labels[:, 2:9, 2:9] = 2
    labels[:, 5, 5] = 0            # without the hole the point would be the centre (5, 5)
    prompts = pcsw_prompts(labels, negative_point=True)
    # one window of length 1 (S = 3); ring at Chebyshev distance 2 from the hole: min(2, |·-(5,5)|) = 2
    assert prompts == [SlicePrompt(0, 2, (2, 2, 8, 8), (3, 3), negative_point=(5, 5))]


def test_image_edge_counts_as_outside():
    labels = np.zeros((2, 10, 10), np.uint8)
    labels[:, 0:5, 0:5] = 1
    [prompt] = pcsw_prompts(labels)
    assert prompt == SlicePrompt(0, 1, (0, 0, 4, 4), (2, 2))


def two_blob_volume() -> np.ndarray:
    labels = np.zeros((6, 12, 12), np.uint8)
    labels[:, 1:4, 1:4] = 1
    labels[:, 7:10, 7:10] = 1
    return labels


def test_two_equal_blobs_rejected_at_08_accepted_at_05():
    labels = two_blob_volume()
    assert select_windows(labels, tau=0.8) == []
    assert pcsw_prompts(labels, tau=0.8) == []
    [window] = select_windows(labels, tau=0.5)
    assert (window.start, window.length, window.connectivity) == (0, 3, 0.5)
    # equal sizes: the component whose first voxel comes first in C order
    assert pcsw_prompts(labels, tau=0.5) == [SlicePrompt(z, 1, (1, 1, 3, 3), (2, 2)) for z in range(3)]


def test_blobs_linked_across_slices_are_one_component():
    labels = two_blob_volume()
    labels[2, 4, 4] = 1            # diagonal bridge (26-connectivity) on slice 2: 3:4 → 4,4 → ...
    labels[3, 5:7, 5:7] = 1        # ... → 5..6 on slice 3 → 7,7 on slice 3
    [window] = select_windows(labels, tau=0.8)
    assert (window.start, window.length) == (1, 3)   # [0, 3) lacks slice 3's half of the bridge
    assert window.connectivity == 1.0


def test_class_missing_on_a_slice_rejected():
    labels = tube_volume(6)
    labels[1, 3:8, 2:6] = 0
    labels[4, 3:8, 2:6] = 0
    # lengths 3, 2: every window containing slice 1 or 4 is invalid → [2, 4) is the first valid
    [window] = select_windows(labels)
    assert (window.start, window.length) == (2, 2)
    labels[3, 3:8, 2:6] = 0        # now every window of length >= 2 misses the class somewhere
    assert select_windows(labels) == []


def test_label_set_change_invalidates_window():
    labels = tube_volume(6)
    labels[2, 0, 0] = 3            # slice 2's label set differs from its neighbours'
    windows = {w.label: w for w in select_windows(labels)}
    assert (windows[1].start, windows[1].length) == (3, 3)
    assert 3 not in windows        # present on one slice only
    assert select_windows(labels, classes=[1, 3, 7])[0].label == 1


def test_empty_and_degenerate_volumes():
    assert pcsw_prompts(np.zeros((8, 16, 16), np.uint8)) == []
    assert pcsw_prompts(np.zeros((0, 16, 16), np.uint8)) == []
    assert pcsw_prompts(np.ones((4, 5, 5), np.uint8)) == [      # no background anywhere
        SlicePrompt(z, 1, (0, 0, 4, 4), (2, 2)) for z in range(2)]


@pytest.mark.parametrize("num_slices", [1, 2])
def test_fewer_than_three_slices(num_slices):
    labels = tube_volume(num_slices)
    assert pcsw_prompts(labels) == [SlicePrompt(0, 1, (3, 2, 7, 5), (4, 3))]


@pytest.mark.parametrize("labels, tau, classes, message", [
    (np.zeros((4, 4)), 0.8, None, "shape"),
    (np.zeros((2, 4, 4), np.float32), 0.8, None, "dtype"),
    (-np.ones((2, 4, 4), np.int16), 0.8, None, "0..65535"),
    (np.full((2, 4, 4), 70000), 0.8, None, "0..65535"),
    (np.zeros((2, 4, 4), np.uint8), 0.0, None, "tau"),
    (np.zeros((2, 4, 4), np.uint8), 0.8, [0, 1], "classes"),
])
def test_bad_input(labels, tau, classes, message):
    with pytest.raises(ValueError, match=message):
        pcsw_prompts(labels, classes=classes, tau=tau)


# ---------------------------------------------------------------- brute-force reference

def brute_components(mask: np.ndarray) -> list:
    """26-connected components as lists of (z, y, x), in the C order of their first voxel."""
    seen, components = np.zeros_like(mask), []
    steps = [d for d in product((-1, 0, 1), repeat=3) if d != (0, 0, 0)]
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start], queue, component = True, deque([start]), []
        while queue:
            voxel = queue.popleft()
            component.append(voxel)
            for d in steps:
                n = tuple(v + s for v, s in zip(voxel, d))
                if all(0 <= c < m for c, m in zip(n, mask.shape)) and mask[n] and not seen[n]:
                    seen[n] = True
                    queue.append(n)
        components.append(component)
    return components


def brute_prompts(labels: np.ndarray, tau: float) -> list:
    num_slices, height, width = labels.shape
    label_sets = [set(np.unique(s).tolist()) for s in labels]
    shortest, longest = math.ceil(num_slices / 3), max(1, num_slices // 2)
    prompts = []
    for k in sorted(v for v in set().union(*label_sets) if v > 0):
        adopted = None
        for n in range(longest, min(shortest, longest) - 1, -1):
            for i in range(num_slices - n + 1):
                if any(label_sets[z] != label_sets[i] for z in range(i, i + n)) or k not in label_sets[i]:
                    continue
                mask = labels[i:i + n] == k
                biggest = max(brute_components(mask), key=len)      # first of the largest
                if len(biggest) >= tau * mask.sum():
                    adopted = (i, biggest)
                    break
            if adopted:
                break
        if not adopted:
            continue
        start, biggest = adopted
        for z in sorted({v[0] for v in biggest}):
            inside = sorted((y, x) for c, y, x in biggest if c == z)
            inside_set = set(inside)
            outside = [(y, x) for y in range(-1, height + 1) for x in range(-1, width + 1)
                       if (y, x) not in inside_set]
            depth = [min(math.hypot(y - oy, x - ox) for oy, ox in outside) for y, x in inside]
            point = inside[int(np.argmax(depth))]                  # first maximum in C order
            ys, xs = [p[0] for p in inside], [p[1] for p in inside]
            prompts.append(SlicePrompt(start + z, k, (min(ys), min(xs), max(ys), max(xs)), point))
    return prompts


def random_volume(rng: np.random.Generator) -> np.ndarray:
    """Up to three classes as random boxes over random slice ranges, plus sparse specks."""
    num_slices, size = int(rng.integers(1, 10)), int(rng.integers(6, 10))
    labels = np.zeros((num_slices, size, size), np.uint8)
    for k in range(1, 4):
        for _ in range(int(rng.integers(1, 3))):
            z0, y0, x0 = rng.integers(0, (num_slices, size - 1, size - 1))
            z1 = rng.integers(z0 + 1, num_slices + 1)
            labels[z0:z1, y0:y0 + rng.integers(1, 5), x0:x0 + rng.integers(1, 5)] = k
    specks = rng.random(labels.shape) < 0.02
    labels[specks] = rng.integers(0, 4, size=int(specks.sum()))
    return labels


def test_matches_brute_force_on_random_volumes():
    rng = np.random.default_rng(1234)
    accepted = rejected = 0
    for trial in range(80):
        labels = random_volume(rng)
        tau = (0.5, 0.8, 0.65)[trial % 3]
        expected = brute_prompts(labels, tau)
        assert pcsw_prompts(labels, tau=tau) == expected, f"trial {trial}"
        found = {p.label for p in expected}
        present = {int(v) for v in np.unique(labels) if v > 0}
        accepted += len(found)
        rejected += len(present - found)
    assert accepted >= 20 and rejected >= 20      # both outcomes exercised
