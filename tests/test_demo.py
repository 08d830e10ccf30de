"""``nnUNetv2_sss_demo`` without training (the commands are recorded, not run): the demo builds and
prepares the dataset once, runs a one-seed, one-labeled-count ``nnUNetv2_sss_study`` of the supervised
trainer and the ``-tr`` trainers, and prints their rows side by side with the caveats. The real commands
it calls are covered by the integration tests (the study in test_study.py)."""
from __future__ import annotations

import csv
import json
import os

import pytest

from nnunetv2_sss import demo
from nnunetv2_sss.errors import UserValueError

ROWS = [
    {"trainer": "nnUNetTrainerPlugin", "num_labeled": 4, "seed": 0, "labeled_cases": "brain_003 brain_011",
     "evaluated_on": "test", "evaluated_cases": 10, "dice_mean": 41.25, "dice_grey_matter": 50.5,
     "dice_white_matter": 32.0, "seconds": 201.4, "train_seconds": 170.2},
    {"trainer": "nnUNetTrainerSSS", "num_labeled": 4, "seed": 0, "labeled_cases": "brain_003 brain_011",
     "evaluated_on": "test", "evaluated_cases": 10, "dice_mean": 43.5, "dice_grey_matter": 55.0,
     "dice_white_matter": 32.0, "seconds": 480.6, "train_seconds": 450.0},
]


@pytest.fixture
def recorded(monkeypatch, tmp_path):
    """``demo._run`` records the commands; the study writes the rows above."""
    commands = []

    def fake_run(command, env):
        command = [str(c) for c in command]
        commands.append(command)
        name = {str(v[0]): v[1] for v in demo.TASKS.values()}.get(command[command.index("-d") + 1]) \
            if "-d" in command else None
        if command[0] == "nnUNetv2_sss_make_demo_dataset":
            folder = os.path.join(env["nnUNet_raw"], name)
            os.makedirs(folder)
            open(os.path.join(folder, "dataset.json"), "w").write("{}")
        elif command[0] == "nnUNetv2_plan_and_preprocess":
            assert "nnUNet_n_proc_DA" not in env  # 0 would break nnU-Net's planner
            folder = os.path.join(env["nnUNet_preprocessed"], name)
            os.makedirs(os.path.join(folder, "nnUNetPlans_2d"))
            open(os.path.join(folder, "nnUNetPlans.json"), "w").write("{}")
        elif command[0] == "nnUNetv2_sss_study":
            out = command[command.index("-o") + 1]
            os.makedirs(out, exist_ok=True)
            trainers = command[command.index("-tr") + 1:command.index("--supervised")]
            with open(os.path.join(out, "runs.csv"), "w") as f:
                writer = csv.DictWriter(f, fieldnames=list(ROWS[0]))
                writer.writeheader()
                writer.writerows(r for r in ROWS[::-1] if r["trainer"] in trainers)
            json.dump({"sam2_config": "sam2_hiera_demo", "sam2_checkpoint": env["nnUNet_sss_sam2_checkpoint"]},
                      open(os.path.join(out, "study.json"), "w"))

    monkeypatch.setattr(demo, "_run", fake_run)
    monkeypatch.delenv("nnUNet_n_proc_DA", raising=False)
    monkeypatch.delenv("nnUNet_sss_sam2_checkpoint", raising=False)
    return commands


def test_demo_runs_one_seed_study_of_supervised_and_sss_and_prints_both_rows(recorded, tmp_path, capsys):
    demo.main(["--workdir", str(tmp_path / "work")])
    assert [c[0] for c in recorded] == ["nnUNetv2_sss_make_demo_dataset", "nnUNetv2_plan_and_preprocess",
                                        "nnUNetv2_sss_preprocess_unlabeled", "nnUNetv2_sss_study"]
    assert recorded[0][1:] == ["--task", "brain", "-d", "990"]
    study = recorded[-1]
    for option, value in (("-d", "990"), ("-c", "2d"), ("--num-labeled", "2"), ("--seeds", "1"), ("--first-seed", "0"),
                          ("--epochs", "12"), ("--iterations", "20"), ("-device", "cpu")):
        assert study[study.index(option) + 1] == value, option
    assert study[study.index("-tr") + 1:study.index("--supervised")] == ["nnUNetTrainerPlugin", "nnUNetTrainerSSS"]
    assert "--no-ceiling" in study
    printed = capsys.readouterr().out
    assert "| nnUNetTrainerPlugin (supervised) | 50.50 | 32.00 | 41.25 | 201 (170) |" in printed
    assert "| nnUNetTrainerSSS | 55.00 | 32.00 | 43.50 | 481 (450) |" in printed
    assert printed.index("nnUNetTrainerPlugin (supervised) |") < printed.index("| nnUNetTrainerSSS |")
    assert "RANDOM weights" in printed and "nothing conclusive" in printed and "nnUNetv2_sss_study -d 990 " in printed

    # again: dataset and preprocessing are reused (the study resumes its finished runs itself)
    recorded.clear()
    demo.main(["--workdir", str(tmp_path / "work"), "-tr", "nnUNetTrainerSSS", "--epochs", "3"])
    assert [c[0] for c in recorded] == ["nnUNetv2_sss_preprocess_unlabeled", "nnUNetv2_sss_study"]
    assert recorded[-1][recorded[-1].index("-o") + 1].endswith("study_brain_2d_n2_seed0_3x20v2")

    # the lesion benchmark in the same folder: its own dataset and study folder, 4 labeled by default
    recorded.clear()
    demo.main(["--workdir", str(tmp_path / "work"), "--task", "lesion", "--seed", "3"])
    assert [c[0] for c in recorded] == ["nnUNetv2_sss_make_demo_dataset", "nnUNetv2_plan_and_preprocess",
                                        "nnUNetv2_sss_preprocess_unlabeled", "nnUNetv2_sss_study"]
    study = recorded[-1]
    assert [study[study.index(o) + 1] for o in ("-d", "--num-labeled", "--first-seed")] == ["991", "4", "3"]
    assert study[study.index("-o") + 1].endswith("study_lesion_2d_n4_seed3_12x20v2")


def test_demo_options_and_errors(recorded, tmp_path):
    with pytest.raises(UserValueError, match="at least one trainer"):
        demo.run_demo(str(tmp_path), ["nnUNetTrainerPlugin"])
    with pytest.raises(UserValueError, match="listed twice"):
        demo.run_demo(str(tmp_path), ["nnUNetTrainerSSS", "nnUNetTrainerSSS"])
    with pytest.raises(UserValueError, match="--epochs 0"):
        demo.run_demo(str(tmp_path), epochs=0)
    assert not recorded
    args = demo.build_parser().parse_args(["-tr", "nnUNetTrainerMeanTeacher", "nnUNetTrainerSSS", "--task", "brain",
                                           "-device", "cuda", "--num-labeled", "2", "--seed", "3"])
    assert (args.tr, args.task, args.device, args.num_labeled, args.seed) == (
        ["nnUNetTrainerMeanTeacher", "nnUNetTrainerSSS"], "brain", "cuda", 2, 3)
    help_text = demo.build_parser().format_help()
    for option in ("-tr", "--task", "-c", "--num-labeled", "--seed", "--epochs", "--iterations", "--val-iterations",
                   "-device", "--workdir"):
        assert option in help_text
