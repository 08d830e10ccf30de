"""``nnUNetv2_sss_demo`` end to end through the real commands, on a small brain dataset and a tiny
schedule: planning, unlabeled preprocessing, the one-seed study of the supervised and a semi-supervised
trainer, the side-by-side table and the files it names."""
from __future__ import annotations

import csv
import json
import os
import re

import pytest

from helpers import CPU_SHARE, run_cli

SEMI = "nnUNetTrainerMeanTeacher"


@pytest.mark.integration
def test_demo_end_to_end(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("nnUNet_", "nnunet_"))}
    env.update({"OMP_NUM_THREADS": CPU_SHARE, "nnUNet_sss_cpu_threads": CPU_SHARE, "nnUNet_compile": "false"})
    workdir = tmp_path / "work"
    # the demo builds the dataset only when it is missing: a smaller brain dataset, made by the same command
    run_cli(["nnUNetv2_sss_make_demo_dataset", "--task", "brain", "--labeled", 5, "--unlabeled", 2, "--test", 1],
            {**env, "nnUNet_raw": str(workdir / "nnUNet_raw")})
    result = run_cli(["nnUNetv2_sss_demo", "--workdir", "work", "--task", "brain", "-tr", SEMI, "-c", "2d",
                      "--epochs", 1, "--iterations", 2, "--val-iterations", 1], env, cwd=tmp_path)

    out = workdir / "study_brain_2d_n2_seed0_1x2v1"
    for name in ("runs.csv", "summary.md", "learning_curve.png", "study.json"):
        assert (out / name).stat().st_size > 0, name
    rows = {r["trainer"]: r for r in csv.DictReader(open(out / "runs.csv"))}
    assert sorted(rows) == sorted(["nnUNetTrainerPlugin", SEMI])
    labeled = rows["nnUNetTrainerPlugin"]["labeled_cases"]
    for row in rows.values():
        assert (row["num_labeled"], row["seed"], row["iterations"], row["evaluated_on"], row["evaluated_cases"]) == \
            ("2", "0", "2", "test", "1")
        assert row["labeled_cases"] == labeled and len(labeled.split()) == 2  # the same split for both
    assert json.loads((out / "study.json").read_text())["epochs"] == "1"
    summary = (out / "summary.md").read_text()
    assert "runs completed: 2 of 2" in summary
    assert f"-o work/{out.name}`" in summary  # the output folder as seen from where the demo ran, no machine path
    assert "SAM-2" not in summary

    # the side-by-side table: one row per trainer, the supervised one first, with the numbers of runs.csv
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert table[0] == "| trainer | Dice grey_matter % | Dice white_matter % | mean Dice % | seconds (training) |"
    for line, trainer in zip(table[1:], ("nnUNetTrainerPlugin (supervised)", SEMI)):
        row = rows[trainer.split()[0]]
        expected = [f"{float(row[c]):.2f}" for c in ("dice_grey_matter", "dice_white_matter", "dice_mean")]
        assert re.fullmatch(rf"\| {re.escape(trainer)} \| {re.escape(' | '.join(expected))} \| \d+ \(\d+\) \|",
                            line), line
    assert len(table) == 3
    assert f"Label scarcity: 2 labeled training cases (split seed 0: {labeled})" in result.stdout
    assert "RANDOM weights" not in result.stdout  # no SAM-2 trainer
    assert "One short run per trainer" in result.stdout and "nnUNetv2_sss_study -d 990" in result.stdout
    assert f"runs, logs, runs.csv, summary.md: {out}" in result.stdout
