"""``nnUNetv2_sss_study``: summary statistics (unit) and a tiny study through the real commands
(integration: finishes, writes its outputs, resumes without retraining, same seed -> same Dice)."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from scipy.stats import wilcoxon

from helpers import run_cli
from nnunetv2_sss.evaluation.study import (ALL, gap_closed, mean_std, paired_comparison, parse_counts, plan_runs,
                                           summary_markdown, values_by_seed)

SUPERVISED, SEMI = "nnUNetTrainerPlugin", "nnUNetTrainerMeanTeacher"


def _rows(values: dict) -> list:
    """Runs-table rows from ``{(trainer, num_labeled): {seed: mean Dice}}``."""
    rows = []
    for (trainer, count), by_seed in values.items():
        for seed, dice in by_seed.items():
            labeled = 8 if count == ALL else count
            rows.append({"trainer": trainer, "num_labeled": count, "seed": seed,
                         "labeled_cases": " ".join(f"c{i}" for i in range(labeled)), "dice_mean": dice,
                         "hd95_mean": 10.0, "asd_mean": 2.0, "dice_core": dice - 1, "dice_rim": dice + 1})
    return rows


SUPERVISED_DICE = {0: 50.0, 1: 60.0, 2: 55.0, 3: 40.0, 4: 45.0}
SEMI_DICE = {0: 55.0, 1: 58.0, 2: 60.0, 3: 50.0, 4: 47.0}      # differences 5, -2, 5, 10, 2
CEILING_DICE = {0: 80.0, 1: 80.0, 2: 70.0, 3: 75.0, 4: 70.0}


def test_paired_comparison_against_hand_values_and_scipy():
    result = paired_comparison(SEMI_DICE, SUPERVISED_DICE)
    assert result["differences"] == [5.0, -2.0, 5.0, 10.0, 2.0]
    assert result["mean"] == pytest.approx(4.0)
    assert result["std"] == pytest.approx(np.sqrt(78 / 4))  # squared deviations 1, 36, 1, 36, 4; ddof 1
    assert (result["wins"], result["n"]) == (4, 5)
    assert result["p_wilcoxon"] == pytest.approx(wilcoxon([5.0, -2.0, 5.0, 10.0, 2.0]).pvalue)
    assert 0 < result["p_wilcoxon"] < 1


def test_paired_comparison_uses_common_seeds_and_needs_five_for_the_test():
    result = paired_comparison({0: 1.0, 1: 3.0, 7: 100.0}, {0: 2.0, 1: 1.0, 2: 5.0})
    assert result["seeds"] == [0, 1] and result["differences"] == [-1.0, 2.0]
    assert (result["wins"], result["n"]) == (1, 2)
    assert np.isnan(result["p_wilcoxon"])
    assert np.isnan(paired_comparison({s: 1.0 for s in range(5)}, {s: 1.0 for s in range(5)})["p_wilcoxon"])


def test_gap_closed_and_no_gap():
    result = gap_closed(SEMI_DICE, SUPERVISED_DICE, CEILING_DICE)
    # means: trainer 54, supervised 50, ceiling 75 -> 4 / 25
    assert (result["trainer"], result["supervised"], result["ceiling"]) == pytest.approx((54.0, 50.0, 75.0))
    assert result["share"] == pytest.approx(0.16)
    assert np.isnan(gap_closed({0: 60.0}, {0: 50.0}, {0: 50.0})["share"])


def test_mean_std_is_over_seeds_with_ddof_1():
    assert mean_std([1.0, 2.0, 3.0, float("nan")]) == {"mean": 2.0, "std": 1.0, "n": 3}
    single = mean_std([4.0])
    assert single["mean"] == 4.0 and np.isnan(single["std"])


def test_summary_markdown_tables():
    rows = _rows({(SUPERVISED, 2): SUPERVISED_DICE, (SEMI, 2): SEMI_DICE, (SUPERVISED, ALL): CEILING_DICE,
                  (SUPERVISED, 4): {0: 70.0, 1: 72.0, 2: 71.0}, (SEMI, 4): {0: 69.0, 1: 75.0, 2: 73.0}})
    assert values_by_seed(rows, SEMI, 2) == SEMI_DICE
    text = summary_markdown(rows, [SUPERVISED, SEMI], [2, 4], list(range(5)), SUPERVISED, ["core", "rim"])
    p = wilcoxon([5.0, -2.0, 5.0, 10.0, 2.0]).pvalue
    assert f"| {SEMI} | 2 | +4.0 ± 4.4 | 4/5 | {p:.3g} |" in text
    assert f"| {SEMI} | 4 | +1.3 ± 2.1 | 2/3 | – (< 5 seeds) |" in text
    assert f"| {SEMI} | 2 | 50.0 | 54.0 | 75.0 | 16 % |" in text
    assert f"| {SUPERVISED} | 50.0 ± 7.9 | 71.0 ± 1.0 (3 of 5 seeds) |" in text
    assert "ceiling: nnUNetTrainerPlugin, all 8 training cases labeled" in text
    assert f"| {SEMI} | 2 | 53.0 ± 5.4 | 55.0 ± 5.4 |" in text  # per-class Dice


def test_plan_and_counts():
    assert parse_counts(["2", "all", "4"]) == [2, ALL, 4]
    runs = plan_runs(["A", "B"], [2, 4], [0, 1], "A", ceiling=True)
    assert [(r.trainer, r.num_labeled, r.seed) for r in runs[:5]] == [
        ("A", 2, 0), ("B", 2, 0), ("A", 4, 0), ("B", 4, 0), ("A", ALL, 0)]
    assert len(runs) == 10 and runs[4].group == "nall_s0"


def test_ceiling_split_labels_every_training_case(tmp_path):
    from nnunetv2_sss.data.splits import make_semi_supervised_splits
    splits = make_semi_supervised_splits(str(tmp_path), [f"c{i}" for i in range(10)], labeled_fraction=1.0, seed=3)
    final = json.load(open(tmp_path / "splits_final.json"))
    assert not splits[0]["unlabeled"] and len(final[0]["train"]) == 8 and not set(final[0]["train"]) & set(final[0]["val"])


# ---- the real commands ------------------------------------------------------------------------------
def _study(dataset, out, trainers, seeds, *extra):
    return ["nnUNetv2_sss_study", "-d", dataset.dataset_id, "-c", "2d", "--num-labeled", 2, "--seeds", seeds,
            "-tr", *trainers, "--epochs", 1, "--iterations", 2, "--val-iterations", 1, "-device", "cpu",
            "--no-ceiling", "--disable-tta", "-o", out, *extra]


def _read_rows(out) -> list:
    with open(out / "runs.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.integration
def test_study_resumes_without_retraining_and_same_seed_same_dice(nnunet_dataset, tmp_path):
    env = nnunet_dataset.env()
    out = tmp_path / "study"
    trainers = [SUPERVISED, SEMI]
    first = run_cli(_study(nnunet_dataset, out, trainers, 2, "--max-runs", 1), env)
    assert "stopped after 1 runs" in first.stdout
    assert len(_read_rows(out)) == 1
    group = out / "runs" / "n2_s0"
    checkpoint = group / "nnUNet_results" / nnunet_dataset.dataset_name / \
        f"{SUPERVISED}__nnUNetPlans__2d" / "fold_0" / "checkpoint_final.pth"
    trained_at = os.stat(checkpoint).st_mtime_ns
    # a half-written second run (killed before its marker): must be redone, its leftovers removed
    stale = group / "predictions" / SEMI / "stale_case.nii.gz"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"not an image")

    second = run_cli(_study(nnunet_dataset, out, trainers, 2), env)
    assert "1 already done" in second.stdout
    assert f"{SUPERVISED}, 2 labeled, seed 0: training" not in second.stdout
    assert os.stat(checkpoint).st_mtime_ns == trained_at  # not trained again
    assert not stale.exists()
    rows = _read_rows(out)
    assert sorted((r["trainer"], r["seed"]) for r in rows) == sorted((t, s) for t in trainers for s in ("0", "1"))
    for name in ("summary.md", "learning_curve.png"):
        assert (out / name).stat().st_size > 0
    summary = (out / "summary.md").read_text()
    assert f"| {SEMI} | 2 |" in summary and "wins" in summary
    assert all(r["evaluated_on"] == "test" and r["iterations"] == "2" for r in rows)
    # different seeds draw different labeled cases
    labeled = {r["seed"]: r["labeled_cases"] for r in rows if r["trainer"] == SUPERVISED}
    assert labeled["0"] != labeled["1"]

    # the same seed again, in another output folder: the same test Dice (CPU, nnUNet_n_proc_DA=0)
    again = tmp_path / "again"
    run_cli(_study(nnunet_dataset, again, [SUPERVISED], 1), env)
    before = next(r for r in rows if r["trainer"] == SUPERVISED and r["seed"] == "0")
    after = _read_rows(again)[0]
    assert after["labeled_cases"] == before["labeled_cases"]
    for column in ("dice_mean", "dice_tissue_a", "dice_tissue_b"):
        assert abs(float(after[column]) - float(before[column])) < 1e-6, column


@pytest.mark.integration
def test_study_user_errors(nnunet_dataset, tmp_path):
    env = nnunet_dataset.env()
    base = ["nnUNetv2_sss_study", "-d", nnunet_dataset.dataset_id, "-c", "2d", "-device", "cpu", "-o", tmp_path / "x"]
    for extra, message in ((["-tr", "nnUNetTrainer", "--num-labeled", 2], "not a trainer of the plugin"),
                           (["-tr", SUPERVISED, "--num-labeled", 7], "fold 0 has 6 training cases")):
        result = run_cli(base + extra, env, expect_failure=True)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert lines[-1].startswith("ERROR: ") and message in lines[-1], result.stderr
