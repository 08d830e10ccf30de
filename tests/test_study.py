"""``nnUNetv2_sss_study``: summary statistics, the plan, SAM-2 trainers found by their recipe and the
recorded command (unit), and a tiny study through the real commands (integration: killed with SIGKILL
and started again, it resumes without retraining the finished run, redoes the half-written one, and the
same seed gives the same model and Dice on CPU; user errors, a second study on the same folder)."""
from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from scipy.stats import wilcoxon

from helpers import BIN, run_cli
from conftest import TRAINERS_FOLDER
from nnunetv2_sss.data.folder_lock import FolderLock
from nnunetv2_sss.errors import UserValueError
from nnunetv2_sss.evaluation.statistics import gap_closed, mean_std, paired_comparison
from nnunetv2_sss.evaluation.study.command import recorded_command
from nnunetv2_sss.evaluation.study.plan import ALL, parse_counts, plan_runs
from nnunetv2_sss.evaluation.study.rows import values_by_seed
from nnunetv2_sss.evaluation.study.coordinator import LOCK_FILE
from nnunetv2_sss.evaluation.study.summary import summary_markdown
from nnunetv2_sss.evaluation.study.trainers import trainer_classes, uses_sam2

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


def test_summary_pairs_each_pretrained_row_with_its_trainer_from_scratch():
    pretrained = SEMI + "+pretrained"
    rows = _rows({(SUPERVISED, 2): SUPERVISED_DICE, (SEMI, 2): SEMI_DICE, (pretrained, 2): SUPERVISED_DICE})
    text = summary_markdown(rows, [SUPERVISED, SEMI, pretrained], [2], list(range(5)), SUPERVISED, ["core", "rim"])
    section = text.split("## Paired difference of the pretrained start")[1]
    p = wilcoxon([-5.0, 2.0, -5.0, -10.0, -2.0]).pvalue  # supervised - semi, the reverse of the table above
    assert f"| {pretrained} | 2 | -4.0 ± 4.4 | 1/5 | {p:.3g} |" in section
    assert f"| {SEMI} |" not in section
    assert "## Paired difference of the pretrained start" not in summary_markdown(
        rows, [SUPERVISED, SEMI], [2], list(range(5)), SUPERVISED, ["core", "rim"])


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


EXTRA_TRAINERS = """
from nnunetv2_sss.networks.recipes import SAM2Recipe
from nnunetv2_sss.training.trainers import nnUNetTrainerUniMatchV2


class nnUNetTrainerUniMatchV2SAM2(nnUNetTrainerUniMatchV2):
    recipe = SAM2Recipe()


class nnUNetTrainerRecipeClass(nnUNetTrainerUniMatchV2):
    recipe = SAM2Recipe  # a class instead of an instance
"""


def test_sam2_trainers_are_found_by_their_recipe_not_their_name(tmp_path):
    """Names resolved as nnUNetv2_train resolves them (nnU-Net's trainers, then nnUNet_extTrainer's folders);
    SAM-2 = a SAM2Recipe (or subclass: SSS) as the recipe, also in a subclass defined elsewhere."""
    (tmp_path / "extra_trainers.py").write_text(EXTRA_TRAINERS)
    names = ["nnUNetTrainer", "nnUNetTrainerPlugin", "nnUNetTrainerUniMatchV2", "nnUNetTrainerSSS",
             "nnUNetTrainerSSS_noDFE", "nnUNetTrainerSAM2", "nnUNetTrainerUniMatchV2SAM2", "nnUNetTrainerRecipeClass"]
    classes = trainer_classes(names, os.pathsep.join([TRAINERS_FOLDER, str(tmp_path)]))
    assert [n for n in names if uses_sam2(classes[n])] == [
        "nnUNetTrainerSSS", "nnUNetTrainerSSS_noDFE", "nnUNetTrainerSAM2", "nnUNetTrainerUniMatchV2SAM2",
        "nnUNetTrainerRecipeClass"]
    with pytest.raises(UserValueError, match=r"^-tr nnUNetTrainerNoSuch: no such trainer in nnU-Net or "
                                             r"nnUNet_extTrainer"):
        trainer_classes(["nnUNetTrainerPlugin", "nnUNetTrainerNoSuch"], TRAINERS_FOLDER)


def test_recorded_command_names_the_output_folder_relative_to_the_current_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert recorded_command(["-d", "991", "-tr", "A", "B", "-o", str(tmp_path / "studies" / "x")]) == \
        "nnUNetv2_sss_study -d 991 -tr A B -o studies/x"
    assert recorded_command([f"-o{tmp_path}/y", "--seeds", "3"]) == "nnUNetv2_sss_study -oy --seeds 3"
    assert recorded_command([f"-o={tmp_path}/z/"]) == "nnUNetv2_sss_study -o=z"
    assert recorded_command(["-o", "study lesion"]) == "nnUNetv2_sss_study -o 'study lesion'"


# ---- the real commands ------------------------------------------------------------------------------
def _study(dataset, out, trainers, seeds, *extra):
    return ["nnUNetv2_sss_study", "-d", dataset.dataset_id, "-c", "2d", "--num-labeled", 2, "--seeds", seeds,
            "-tr", *trainers, "--epochs", 1, "--iterations", 2, "--val-iterations", 1, "-device", "cpu",
            "--no-ceiling", "--disable-tta", "-o", out, *extra]


def _read_rows(out) -> list:
    with open(out / "runs.csv") as f:
        return list(csv.DictReader(f))


def _wait_for(condition, process, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the study exited ({process.returncode}) before {what}")
        if time.time() > deadline:
            pytest.fail(f"no {what} after {timeout:.0f} s")
        time.sleep(0.05)


def _processes_naming(text: str) -> list:
    """Command lines of the running processes that contain ``text``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in command and int(pid) != os.getpid():
            found.append(f"{pid}: {command}")
    return found


def _state(checkpoint) -> dict:
    import torch
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    return {k: v for k, v in saved.items() if k.endswith("_weights")}  # network_weights (+ student_weights)


@pytest.mark.integration
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and PR_SET_PDEATHSIG")
def test_study_killed_resumes_without_retraining_and_same_seed_same_model(nnunet_dataset, tmp_path):
    """SIGKILL the study once its first run is done and its second run has trained (the second run has
    a complete model but no marker), start it again: the first run is not retrained, the second is redone
    from scratch, and, trained again with the same seed on CPU, gives bit-identical weights and
    validation Dice (so the same test Dice); the outputs are complete."""
    env = nnunet_dataset.env()
    out = tmp_path / "study"
    trainers = [SUPERVISED, SEMI]
    command = [str(c) for c in _study(nnunet_dataset, out, trainers, 1)]
    group = out / "runs" / "n2_s0"
    folds = {t: group / "nnUNet_results" / nnunet_dataset.dataset_name / f"{t}__nnUNetPlans__2d" / "fold_0"
             for t in trainers}
    markers = {t: group / "done" / f"{t}.json" for t in trainers}
    second_trained = group / "logs" / f"{SEMI}_predict.log"  # written when SEMI's nnUNetv2_train has exited 0

    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen([os.path.join(BIN, command[0])] + command[1:], env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
        try:
            _wait_for(lambda: markers[SUPERVISED].exists(), process, 600, f"done marker of {SUPERVISED}")
            first_done = {"checkpoint": os.stat(folds[SUPERVISED] / "checkpoint_final.pth").st_mtime_ns,
                          "files": {p.name: p.stat().st_mtime_ns for p in folds[SUPERVISED].iterdir()},
                          "marker": markers[SUPERVISED].read_text()}
            _wait_for(second_trained.exists, process, 600, f"end of {SEMI}'s training")
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
    assert process.returncode == -signal.SIGKILL
    killed_output = (tmp_path / "killed.log").read_text()
    assert f"{SUPERVISED}, 2 labeled, seed 0: mean Dice" in killed_output
    assert not markers[SEMI].exists(), "the second run finished before the kill: nothing half-written to test"
    deadline = time.time() + 20  # the killed study's children (its nnUNetv2_predict) die with it
    while _processes_naming(str(out)) and time.time() < deadline:
        time.sleep(0.2)
    assert not _processes_naming(str(out)), _processes_naming(str(out))
    killed_model = _state(folds[SEMI] / "checkpoint_final.pth")
    killed_validation = json.loads((folds[SEMI] / "validation" / "summary.json").read_text())["mean"]
    stale = group / "predictions" / SEMI / "stale_case.nii.gz"  # leftovers of the half-written run
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"not an image")

    second = run_cli(command, env)
    assert "2 runs (2 trainers x 1 labeled counts x 1 seeds), 1 already done" in second.stdout, second.stdout
    assert f"{SUPERVISED}, 2 labeled, seed 0: training" not in second.stdout  # not retrained
    assert f"[2/2] {SEMI}, 2 labeled, seed 0: training" in second.stdout
    assert markers[SUPERVISED].read_text() == first_done["marker"]
    assert os.stat(folds[SUPERVISED] / "checkpoint_final.pth").st_mtime_ns == first_done["checkpoint"]
    assert {p.name: p.stat().st_mtime_ns for p in folds[SUPERVISED].iterdir()} == first_done["files"]
    assert not stale.exists()

    # redone from scratch with the same seed (CPU, nnUNet_n_proc_DA=0): the same model, the same Dice
    redone_model = _state(folds[SEMI] / "checkpoint_final.pth")
    assert redone_model.keys() == killed_model.keys()
    for name in killed_model:
        assert killed_model[name].keys() == redone_model[name].keys()
        for key, tensor in killed_model[name].items():
            assert (tensor == redone_model[name][key]).all(), f"{name}.{key} differs"
    redone_validation = json.loads((folds[SEMI] / "validation" / "summary.json").read_text())["mean"]
    for label, metrics in killed_validation.items():
        assert metrics["Dice"] == pytest.approx(redone_validation[label]["Dice"], abs=1e-9, nan_ok=True), label

    rows = _read_rows(out)
    assert sorted(r["trainer"] for r in rows) == sorted(trainers)
    assert all(r["evaluated_on"] == "test" and r["iterations"] == "2" and r["seed"] == "0" for r in rows)
    assert all(0 <= float(r["dice_mean"]) <= 100 for r in rows)
    for name in ("summary.md", "learning_curve.png"):
        assert (out / name).stat().st_size > 0
    summary = (out / "summary.md").read_text()
    assert "runs completed: 2 of 2" in summary
    assert f"| {SEMI} | 2 |" in summary and "wins" in summary


def test_seeds_draw_different_labeled_cases(tmp_path):
    """The study's groups differ in their labeled cases from seed to seed (make_splits --seed S)."""
    from nnunetv2_sss.data.splits import make_semi_supervised_splits
    labeled = set()
    for seed in range(3):
        folder = tmp_path / str(seed)
        folder.mkdir()
        labeled.add(tuple(sorted(make_semi_supervised_splits(str(folder), [f"c{i}" for i in range(10)],
                                                             num_labeled=2, seed=seed)[0]["labeled"])))
    assert len(labeled) == 3


@pytest.mark.integration
def test_study_user_errors(nnunet_dataset, tmp_path):
    env = nnunet_dataset.env()
    base = ["nnUNetv2_sss_study", "-d", nnunet_dataset.dataset_id, "-c", "2d", "-device", "cpu", "-o", tmp_path / "x"]
    for extra, message in ((["-tr", "nnUNetTrainer", "--num-labeled", 2], "not a trainer of the plugin"),
                           (["-tr", SUPERVISED, "nnUNetTrainerNoSuch", "--num-labeled", 2],
                            "-tr nnUNetTrainerNoSuch: no such trainer"),
                           (["-tr", SUPERVISED, "--num-labeled", 7], "fold 0 has 6 training cases")):
        result = run_cli(base + extra, env, expect_failure=True)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert lines[-1].startswith("ERROR: ") and message in lines[-1], result.stderr
    assert not (tmp_path / "x").exists()  # stopped before the first run
    with FolderLock(str(tmp_path / "x"), "nnUNetv2_sss_study", LOCK_FILE):  # a study running in this folder
        result = run_cli(base + ["-tr", SUPERVISED, "--num-labeled", 2], env, expect_failure=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"ERROR: {tmp_path / 'x'}: another nnUNetv2_sss_study run (pid {os.getpid()} on host {socket.gethostname()}) "
        "is writing into this folder; wait until it has finished (or stop it), then run this command again.")
    assert os.listdir(tmp_path / "x") == [LOCK_FILE]  # nothing written
