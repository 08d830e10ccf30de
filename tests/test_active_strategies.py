"""Active learning's arithmetic against hand computations on small probability maps (no model): the voxel
maps (entropy, mutual information), the aggregations, the strategies' choices (the foreground weighting,
the seeded draws, the diversity step), a scan's record, the voxel volume, the split update of the
labelling step, and the nnU-Net predictor internals ``active/members.py`` relies on."""
from __future__ import annotations

import inspect
import json
import math

import numpy as np
import pytest

from nnunetv2_sss.active import strategies
from nnunetv2_sss.active.members import CasePrediction, flip_combinations
from nnunetv2_sss.active.records import CaseRecord, done_cases, read_record, write_record
from nnunetv2_sss.active.scoring import score_case, voxel_volume_ml
from nnunetv2_sss.active.strategies.diverse_entropy import kmeans
from nnunetv2_sss.active.voxels import aggregate, entropy, mutual_information

LN2_OVER_LN3 = math.log(2) / math.log(3)


def record(case, uncertainty=0.0, volume_ml=0.0, features=None):
    """A record with one foreground class of ``volume_ml`` (1 mL voxels)."""
    empty = np.zeros((1, 1, 1), np.uint8)
    return CaseRecord(case, uncertainty, np.array([int(volume_ml)], np.int64), 1.0, 0.0, np.zeros(1, np.int64),
                      empty, empty, empty, None if features is None else np.asarray(features, np.float32))


# ---- voxel maps and aggregation -------------------------------------------------------------------------
def test_entropy_by_hand():
    p = np.array([[0.5, 1.0, 1 / 3], [0.5, 0.0, 1 / 3], [0.0, 0.0, 1 / 3]])  # (C=3, 3 voxels)
    # -sum p ln p / ln 3: (ln 2) / ln 3, 0 (0 ln 0 = 0), 1
    assert entropy(p) == pytest.approx([LN2_OVER_LN3, 0.0, 1.0], abs=1e-6)


def test_mutual_information_by_hand():
    sure_0, sure_1, half = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0]
    # two members per voxel: voxel 0 disagrees (one sure of class 0, one of class 1), voxel 1 agrees on
    # "half and half", voxel 2 agrees on class 0
    members = np.array([[sure_0, half, sure_0], [sure_1, half, sure_0]]).transpose(0, 2, 1)  # (M, C, voxels)
    mean = members.mean(0)
    mean_entropy = np.mean([entropy(m) for m in members], 0)
    # H(mean) - mean H: ln2/ln3 - 0; ln2/ln3 - ln2/ln3 = 0; 0 - 0
    assert mutual_information(mean, mean_entropy) == pytest.approx([LN2_OVER_LN3, 0.0, 0.0], abs=1e-6)
    strategy = strategies.get("mutual-information")
    prediction = CasePrediction(mean, mean_member_probabilities=mean, mean_member_entropy=mean_entropy)
    assert strategy.voxel_map(prediction) == pytest.approx([LN2_OVER_LN3, 0.0, 0.0], abs=1e-6)
    assert strategy.min_predictions == 2 and strategies.get("entropy").min_predictions == 1


def test_aggregations_by_hand():
    values = np.array([0.1, 0.9, 0.5, 0.3, 0.2, 0.0, 0.4, 0.6])
    segmentation = np.array([0, 1, 0, 2, 0, 0, 0, 0])
    assert aggregate(values, segmentation, "top-k", 0.25) == pytest.approx((0.9 + 0.6) / 2)   # ceil(0.25 * 8) = 2
    assert aggregate(values, segmentation, "top-k", 0.01) == pytest.approx(0.9)               # at least one voxel
    assert aggregate(values, segmentation, "foreground-mean", 0.01) == pytest.approx((0.9 + 0.3) / 2)
    assert aggregate(values, np.zeros(8, int), "foreground-mean", 0.01) == 0.0                # no foreground
    assert aggregate(values, segmentation, "mean", 0.01) == pytest.approx(values.mean())


# ---- strategies ----------------------------------------------------------------------------------------
def test_every_strategy_is_found_by_name():
    assert list(strategies.available()) == ["diverse-entropy", "entropy", "foreground-random", "mutual-information",
                                            "random"]
    with pytest.raises(ValueError, match="--strategy nope: not a strategy"):
        strategies.get("nope")


def test_entropy_ranks_by_uncertainty_ties_by_case():
    records = {c: record(c, u) for c, u in (("a", 0.2), ("b", 0.7), ("c", 0.7), ("d", 0.9))}
    assert strategies.get("entropy").rank(sorted(records), records, 3, np.random.default_rng(0)) == \
        [("d", 0.9), ("b", 0.7), ("c", 0.7)]


def test_random_is_seeded_and_uniform():
    cases = [f"case_{i}" for i in range(6)]
    strategy = strategies.get("random")
    first = strategy.rank(cases, {}, 3, np.random.default_rng(7))
    assert first == strategy.rank(cases, {}, 3, np.random.default_rng(7))
    assert [c for c, _ in first] == [cases[i] for i in np.random.default_rng(7).permutation(6)[:3]]
    assert all(score == pytest.approx(1 / 6) for _, score in first)
    assert strategy.scores_pool is False  # chooses before any prediction


def test_foreground_random_weights_and_draw_by_hand():
    records = {"a": record("a", volume_ml=0), "b": record("b", volume_ml=1), "c": record("c", volume_ml=3),
               "d": record("d", volume_ml=0)}
    cases = sorted(records)
    ranked = strategies.get("foreground-random").rank(cases, records, 4, np.random.default_rng(11))
    # by hand: first-draw probabilities 0, 1/4, 3/4, 0; each draw takes u = rng.random() against the cumulative
    # probabilities of the scans left; scans without foreground only once none with foreground is left
    rng, left, expected = np.random.default_rng(11), ["a", "b", "c", "d"], []
    weights = {"a": 0.0, "b": 1.0, "c": 3.0, "d": 0.0}
    for _ in range(4):
        w = np.array([weights[c] for c in left])
        p = w / w.sum() if w.sum() else np.full(len(left), 1 / len(left))
        u = rng.random()
        expected.append(left.pop(min(int(np.sum(np.cumsum(p) <= u)), len(left) - 1)))
    assert [c for c, _ in ranked] == expected
    assert set(expected[:2]) == {"b", "c"}
    assert dict(ranked) == pytest.approx({"a": 0.0, "b": 0.25, "c": 0.75, "d": 0.0})
    assert ranked == strategies.get("foreground-random").rank(cases, records, 4, np.random.default_rng(11))
    draws = [strategies.get("foreground-random").rank(cases, records, 1, np.random.default_rng(s))[0][0]
             for s in range(400)]
    assert draws.count("c") / 400 == pytest.approx(0.75, abs=0.07) and set(draws) == {"b", "c"}


def test_kmeans_by_hand():
    points = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.0, 5.2], [0.0, 0.2]])
    # farthest-first: centre 0, then point 3 (the farthest); Lloyd's assignment: {0, 1, 4} and {2, 3}
    assert kmeans(points, 2).tolist() == [0, 0, 1, 1, 0]


def test_diverse_entropy_spreads_over_feature_clusters():
    records = {"a": record("a", 0.9, features=[1.0, 0.0]), "b": record("b", 0.8, features=[0.99, 0.1]),
               "c": record("c", 0.7, features=[0.0, 1.0]), "d": record("d", 0.1, features=[0.1, 1.0]),
               "e": record("e", 0.05, features=[1.0, 0.05])}
    cases = sorted(records)
    # entropy alone takes the near-duplicates a and b; the diversity step: candidates = the 3k = 6 most
    # uncertain (all five), two clusters {a, b, e} and {c, d}, the most uncertain of each
    assert [c for c, _ in strategies.get("entropy").rank(cases, records, 2, None)] == ["a", "b"]
    assert strategies.get("diverse-entropy").rank(cases, records, 2, None) == [("a", 0.9), ("c", 0.7)]
    # k = 1: the 3 most uncertain (a, b, c), one cluster, its most uncertain
    assert strategies.get("diverse-entropy").rank(cases, records, 1, None) == [("a", 0.9)]


# ---- a scan's record -------------------------------------------------------------------------------------
def test_score_case_by_hand(tmp_path):
    probabilities = np.zeros((3, 4, 2, 2))            # (C, z, y, x)
    probabilities[0] = 1.0                            # background, sure, everywhere ...
    probabilities[:, 1, 0, 0] = [0.0, 1.0, 0.0]       # ... but a sure class-1 voxel on slice 1
    probabilities[:, 2, 0, 0] = [0.2, 0.8, 0.0]       # a class-1 voxel on slice 2
    probabilities[:, 3, 1, 1] = [1 / 3, 1 / 3, 1 / 3]  # the most uncertain voxel, on slice 3
    image = np.arange(16, dtype=np.float32).reshape(1, 4, 2, 2)
    result = score_case("x", CasePrediction(probabilities), image, strategies.get("entropy"), "foreground-mean", 0.01,
                        voxel_ml=0.002, seconds=1.5)
    h = -(0.2 * math.log(0.2) + 0.8 * math.log(0.8)) / math.log(3)
    assert result.uncertainty == pytest.approx((0 + h) / 2)           # mean over the two class-1 voxels
    assert result.foreground_voxels.tolist() == [2, 0] and result.volumes_ml == pytest.approx([0.004, 0.0])
    # the three most uncertain slices, ascending: 3 (mean 1/4), 2 (h/4), then 0 before 1 (both 0: the first)
    assert result.slice_indices.tolist() == [0, 2, 3]
    assert result.uncertainty_map[2, 1, 1] == 255 and result.segmentation[1, 0, 0] == 1
    write_record(str(tmp_path), result)
    assert done_cases(str(tmp_path)) == {"x"} and not list(tmp_path.glob("*.tmp"))
    again = read_record(str(tmp_path), "x")
    assert again.case == "x" and again.seconds == 1.5 and again.features is None
    assert np.array_equal(again.image, result.image) and again.uncertainty == result.uncertainty


def test_voxel_volume_in_the_preprocessed_geometry():
    # 3d: the configuration's spacing; 2d: the case's own spacing between slices (after transpose_forward)
    assert voxel_volume_ml({"spacing": [3.0, 1.0, 1.0]}, [0, 1, 2], [2.0, 1.0, 0.5]) == pytest.approx(1e-3)
    assert voxel_volume_ml({"spacing": [1.0, 1.0, 5.0]}, [2, 0, 1], [0.5, 0.5]) == pytest.approx(5 * 0.25 / 1000)


def test_flip_combinations_are_nnunets():
    assert flip_combinations(None) == [()]
    assert flip_combinations((0, 1)) == [(), (0,), (1,), (0, 1)]
    assert len(flip_combinations((0, 1, 2))) == 8


# ---- the labelling step's split update ------------------------------------------------------------------------
def test_label_cases_keeps_validation_sets(tmp_path):
    from nnunetv2_sss.data.splits import label_cases, make_semi_supervised_splits
    cases = [f"c{i}" for i in range(10)]
    semi = make_semi_supervised_splits(str(tmp_path), cases, num_labeled=2, seed=0)
    final = json.loads((tmp_path / "splits_final.json").read_text())
    # new cases join every fold's training (labeled) cases
    assert label_cases(str(tmp_path), ["new_1", "new_2"]) == [0, 1, 2, 3, 4]
    assert label_cases(str(tmp_path), ["new_1"]) == []  # idempotent
    after = json.loads((tmp_path / "splits_final.json").read_text())
    after_semi = json.loads((tmp_path / "splits_semi_supervised.json").read_text())
    for fold in range(5):
        assert after[fold]["val"] == final[fold]["val"]
        assert after[fold]["train"] == sorted(final[fold]["train"] + ["new_1", "new_2"])
        assert after_semi[fold]["labeled"] == sorted(semi[fold]["labeled"] + ["new_1", "new_2"])
        assert after_semi[fold]["unlabeled"] == semi[fold]["unlabeled"]
    # revealing a hidden case of fold 1 changes fold 1 only
    hidden = semi[1]["unlabeled"][0]
    assert label_cases(str(tmp_path), [hidden], [1]) == [1]
    revealed = json.loads((tmp_path / "splits_semi_supervised.json").read_text())
    assert hidden in revealed[1]["labeled"] and hidden not in revealed[1]["unlabeled"]
    assert [revealed[f] for f in (0, 2, 3, 4)] == [after_semi[f] for f in (0, 2, 3, 4)]
    with pytest.raises(ValueError, match="validation case of fold 1"):
        label_cases(str(tmp_path), [final[1]["val"][0]], [1])
    with pytest.raises(ValueError, match="not a training case of fold 1 whose label is hidden"):
        label_cases(str(tmp_path), ["unknown"], [1])


# ---- nnU-Net internals the scoring relies on -----------------------------------------------------------------
def test_nnunet_predictor_and_preprocessor_internals():
    """``active/members.py`` overrides nnUNetPredictor._internal_maybe_mirror_and_predict and calls its
    sliding window and its prediction of preprocessed data; ``active/add_labels.py`` calls the preprocessor's
    run_case_save. A failure names the internal that changed."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    for cls, name, parameters in (
            (nnUNetPredictor, "_internal_maybe_mirror_and_predict", ["self", "x"]),
            (nnUNetPredictor, "predict_sliding_window_return_logits", ["self", "input_image"]),
            (nnUNetPredictor, "predict_logits_from_preprocessed_data", ["self", "data"]),
            (DefaultPreprocessor, "run_case_save", ["self", "output_filename_truncated", "image_files", "seg_file",
                                                    "plans_manager", "configuration_manager", "dataset_json"])):
        assert list(inspect.signature(getattr(cls, name)).parameters) == parameters, f"{cls.__name__}.{name} changed"
    source = inspect.getsource(nnUNetPredictor.initialize_from_trained_model_folder)
    assert "self.list_of_parameters = parameters" in source and "self.allowed_mirroring_axes =" in source
    assert "self._internal_maybe_mirror_and_predict(workon)" in \
        inspect.getsource(nnUNetPredictor._internal_predict_sliding_window_return_logits)


def test_labeled_cases_leave_the_pseudo_label_pools(tmp_path):
    from nnunetv2_sss.selftraining.pool import Manifest, drop_cases
    from nnunetv2_sss.trained_model import TrainedModel
    teacher = TrainedModel("nnUNetTrainer", "nnUNetPlans", "2d", [0], "checkpoint_final.pth")
    Manifest("Dataset1_X", "nnUNetPlans_2d", 1, teacher, 0.9, 3, True, 0.5, ["a", "b"]).write(str(tmp_path))
    (tmp_path / "preprocessed").mkdir()
    (tmp_path / "segmentations").mkdir()
    for case in ("a", "b"):
        for ending in (".pkl", ".b2nd", "_seg.b2nd", "_confidence.npy"):
            (tmp_path / "preprocessed" / (case + ending)).write_bytes(b"x")
        (tmp_path / "segmentations" / (case + ".nii.gz")).write_bytes(b"x")
    assert drop_cases(str(tmp_path), ["a", "c"], ".nii.gz") == ["a"]
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == \
        ["b.b2nd", "b.nii.gz", "b.pkl", "b_confidence.npy", "b_seg.b2nd", "pseudo_labels.json"]
    assert Manifest.read(str(tmp_path)).cases == ["b"]
