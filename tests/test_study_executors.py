"""``nnUNetv2_sss_study``'s executors (issue 27): the study as a graph of jobs, run on this machine
(``--executor local``) or on a real one-node SLURM cluster (``--executor slurm``, ``tests/slurm_cluster.py``;
skipped with the reason where its Debian packages are missing).

One small study for all of it (tiny dataset, fold 0, 2 labeled, seed 0, 2 epochs x 2 iterations on CPU):
``nnUNetTrainerPlugin``, its pretrained row (a pretraining job first) and the self-training student (after its
teacher's run).

- local: ``--jobs 1`` for the first run (``--max-runs 1``), then ``--jobs 2`` for the rest: the student and
  the pretraining run at once, and every row equals the SLURM study's;
- SLURM (the jobs get the study's environment from the study only: ``--export`` of SLURM's own variables):
  ``--no-wait`` twice (nothing submitted twice), the student's job requeued (``scontrol requeue``) once
  its first epoch's checkpoint exists (its training continues from it: the second training log starts at
  epoch 1), the pretrained row's job cancelled (``scancel``) while it trains, then the same command, waiting:
  it submits that job only and ends with the rows, splits and predictions of the local study (the student's
  Dice aside: its training was interrupted);
- active learning (issue 28) from the local study's supervised row: ``random`` and ``entropy``, 2 rounds of 1
  scan, ``--jobs 2``, killed and resumed: only unfinished rounds redone, the same queries, no hidden label in
  any round's training; refused options with one ``ERROR:`` line each;
- bad input (unknown partition, a relative ``-o``, a missing submitit, an ``#SBATCH`` line SLURM rejects):
  one ``ERROR:`` line each, nothing submitted;
- the graph, the option parsing and the path checks (unit).
"""
from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import subprocess
import time
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import TRAINERS_FOLDER
from helpers import BIN, run_cli
from slurm_cluster import OneNodeCluster, missing
from nnunetv2_sss.errors import UserValueError
from nnunetv2_sss.evaluation.study.command import build_parser
from nnunetv2_sss.evaluation.study.jobs import jobs_to_do, study_jobs
from nnunetv2_sss.evaluation.study.plan import plan_runs
from nnunetv2_sss.evaluation.study.shared_paths import node_local, unshared_path
from nnunetv2_sss.evaluation.study.slurm_options import sbatch_lines, time_minutes

TEACHER, STUDENT = "nnUNetTrainerPlugin", "nnUNetTrainerSelfTraining"
PRETRAINED = TEACHER + "+pretrained"
TIMING = ("train_seconds", "seconds", "finished", "pretrain_seconds", "teacher_seconds", "pseudo_label_seconds")
DOCS = os.path.join(os.path.dirname(__file__), "..", "docs", "cluster.md")


def study_command(dataset, out, *extra, rows=(TEACHER, STUDENT, "--pretrained", TEACHER)):
    return ["nnUNetv2_sss_study", "-d", dataset.dataset_id, "-c", "2d", "--num-labeled", 2, "--seeds", 1,
            "-tr", *rows, "--epochs", 2, "--iterations", 2, "--val-iterations", 1,
            "-device", "cpu", "--no-ceiling", "--disable-tta", "-o", out, *extra]


def rows_of(out) -> dict:
    with open(out / "runs.csv") as f:
        return {row["trainer"]: {k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)}


def fold_of(out, row):
    results = "nnUNet_results+pretrained" if row.endswith("+pretrained") else "nnUNet_results"
    trainer = row.removesuffix("+pretrained")
    return out / "runs" / "n2_s0" / results / "Dataset901_Tiny" / f"{trainer}__nnUNetPlans__2d" / "fold_0"


def lines_with(text: str, pattern: str) -> list:
    return [i for i, line in enumerate(text.splitlines()) if re.search(pattern, line)]


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            pytest.fail(f"no {what} after {timeout:.0f} s")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def local_study(nnunet_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "study"
    # nnUNet_sss_cpu_threads of the tests' environment: the SLURM study's jobs get it from theirs, and their
    # rows must equal these bit for bit
    env = nnunet_dataset.env()
    first = run_cli(study_command(nnunet_dataset, out, "--max-runs", 1), env).stdout
    second = run_cli(study_command(nnunet_dataset, out, "--jobs", 2), env).stdout
    return out, first, second


def test_local_jobs_2_runs_two_jobs_at_once(local_study):
    out, first, second = local_study
    assert "[1/3] nnUNetTrainerPlugin, 2 labeled, seed 0: training ..." in first
    assert "stopped after 1 runs (--max-runs)" in first, first
    assert "3 runs (3 trainers x 1 labeled counts x 1 seeds), 1 already done" in second, second
    # the student (its teacher is done) and the pretraining start before either has finished
    started = lines_with(second, rf"\[pretraining\] {TEACHER}: started|{STUDENT}, 2 labeled, seed 0: training \.\.\.")
    ended = lines_with(second, r": finished|mean Dice")
    assert len(started) == 2 and max(started) < min(ended), second
    assert set(rows_of(out)) == {TEACHER, PRETRAINED, STUDENT}
    assert not (out / "jobs").exists()  # the local executor leaves no job files


ACTIVE = ("--active-learning", "random", "entropy", "--budget", 1, "--al-rounds", 2, "--jobs", 2)


def test_active_learning_rounds_resume_and_no_label_before_its_query(nnunet_dataset, local_study, tmp_path):
    """The simulation (issue 28) on the local study's supervised row as round 0 (copied: not trained again):
    ``random`` and ``entropy``, 2 rounds of 1 scan, both strategies at once (``--jobs 2``). Killed once both
    first rounds are done and a second round trains, then run again: only the unfinished rounds are redone,
    and their queries again give the same scans. Each round's revealed case is its query's suggestion, drawn
    from the cases the split hides; the training of round R read the split file its log names, whose training
    cases are the initial ones plus the scans queried in rounds 1 .. R: no hidden label reaches a training
    before its scan is queried."""
    name = nnunet_dataset.dataset_name
    out = tmp_path / "study"
    (out / "runs").mkdir(parents=True)
    shutil.copy(local_study[0] / "study.json", out)
    shutil.copytree(local_study[0] / "runs" / "n2_s0", out / "runs" / "n2_s0", symlinks=True)
    env = nnunet_dataset.env()
    command = [str(c) for c in study_command(nnunet_dataset, out, *ACTIVE, rows=(TEACHER,))]
    groups = {(s, r): out / "runs" / f"n2_s0_{s}_b1_r{r}_{TEACHER}" for s in ("random", "entropy") for r in (1, 2)}
    marker = {key: group / "done" / f"{TEACHER}.json" for key, group in groups.items()}
    labels = {key: f"{TEACHER} + {key[0]}, round {key[1]} ({2 + key[1]} labeled), seed 0" for key in groups}

    def second_round_trains() -> bool:
        if process.poll() is not None:
            pytest.fail(f"the study exited ({process.returncode}) before a second round trained")
        return all(marker[(s, 1)].exists() for s in ("random", "entropy")) and \
            any((groups[(s, 2)] / "logs" / f"{TEACHER}_train.log").exists() for s in ("random", "entropy"))

    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen([os.path.join(BIN, command[0])] + command[1:], env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
        try:
            wait_for(second_round_trains, 900, "training of a second round")
        finally:
            process.kill()
            process.wait()
    unfinished = sorted(key for key in groups if not marker[key].exists())
    assert unfinished and all(round_ == 2 for _, round_ in unfinished), unfinished
    queried = {key: (groups[key] / "suggestions" / "suggestions.csv").read_text() for key in unfinished
               if (groups[key] / "suggestions" / "suggestions.csv").exists()}
    assert queried  # the round that trained had made its query
    finished = {key: marker[key].stat().st_mtime_ns for key in groups if key not in unfinished}

    again = run_cli(command, env).stdout
    assert "5 runs (1 trainers x 1 labeled counts x 1 seeds + 4 active-learning runs: 2 strategies x 2 rounds of 1 " \
           f"scans from 2 labeled), {5 - len(unfinished)} already done" in again, again
    trained = [again.splitlines()[i].split("] ", 1)[1] for i in lines_with(again, r"training \.\.\.")]
    assert sorted(trained) == sorted(f"{labels[key]}: training ..." for key in unfinished), again
    assert {key: marker[key].stat().st_mtime_ns for key in finished} == finished
    for key, query in queried.items():  # queried again from scratch: the same scans
        assert (groups[key] / "suggestions" / "suggestions.csv").read_text() == query, key

    with open(out / "runs.csv") as f:
        rows = {(row["strategy"], row["round"]): row for row in csv.DictReader(f)}
    assert set(rows) == {("", "")} | {(s, str(r)) for s, r in groups}
    initial = json.loads((out / "runs" / "n2_s0" / "nnUNet_preprocessed" / name /
                          "splits_semi_supervised.json").read_text())[0]
    for strategy in ("random", "entropy"):
        labeled = set(initial["labeled"])
        for round_ in (1, 2):
            group, row = groups[(strategy, round_)], rows[(strategy, str(round_))]
            with open(group / "suggestions" / "suggestions.csv") as f:
                query = [line["case"] for line in csv.DictReader(f)]
            assert row["revealed_cases"].split() == query and len(query) == 1
            assert set(query) <= set(initial["unlabeled"]) - labeled
            labeled |= set(query)
            split_file = group / "nnUNet_preprocessed" / name / "splits_final.json"
            fold = group / "nnUNet_results" / name / f"{TEACHER}__nnUNetPlans__2d" / "fold_0"
            training_log = next(fold.glob("training_log_*.txt")).read_text()
            assert f"Using splits from existing split file: {split_file}" in training_log
            assert f"This split has {2 + round_} training" in training_log
            assert set(json.loads(split_file.read_text())[0]["train"]) == labeled, (strategy, round_)
            assert set(row["labeled_cases"].split()) == labeled and row["num_labeled"] == str(2 + round_)
            assert int(row["revealed_voxels"]) == 14 * 48 * 48 and int(row["revealed_foreground_voxels"]) > 0
    # random's first query: the seeded draw (seed 1000 x 0 + 1) from the cases the initial split hides
    draw = np.random.default_rng(1).permutation(len(initial["unlabeled"]))[0]
    assert rows[("random", "1")]["revealed_cases"] == sorted(initial["unlabeled"])[draw]
    assert rows[("", "")]["dice_mean"] == rows_of(local_study[0])[TEACHER]["dice_mean"]  # round 0: the copied row
    summary = (out / "summary.md").read_text()
    assert "# Active learning (simulated)" in summary and f"| {TEACHER} | entropy | " in summary
    assert (out / "active_learning.png").stat().st_size > 0


def test_active_learning_refused_before_any_run(nnunet_dataset, tmp_path, monkeypatch, capsys):
    """Fold 0 has 6 training cases: 2 labeled hide 4 (2 rounds of 3 are too many), 6 labeled hide none; a
    self-training student has no split of its own to query with."""
    from nnunetv2_sss.evaluation.study.command import main
    for key, value in nnunet_dataset.env().items():
        monkeypatch.setenv(key, value)
    base = ["-d", nnunet_dataset.dataset_id, "-c", "2d", "-device", "cpu", "-o", tmp_path / "x", "--seeds", 1,
            "--active-learning", "random"]
    for extra, message in (
            (["-tr", TEACHER, "--num-labeled", 2, "--budget", 3, "--al-rounds", 2],
             "--budget 3 --al-rounds 2: reveal 6 scans, and with --num-labeled 2 fold 0 hides 4 of its 6 training "
             "cases; choose"),
            (["-tr", TEACHER, "--num-labeled", 6, "--budget", 1, "--al-rounds", 1],
             "fold 0 hides 0 of its 6 training cases (none to query)"),
            (["-tr", TEACHER, STUDENT, "--num-labeled", 2, "--budget", 1, "--al-rounds", 1],
             f"--active-learning with -tr {STUDENT}: a self-training student")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as stop:
            main([str(a) for a in base + extra])
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ERROR: ")]
        assert stop.value.code == 2 and len(errors) == 1 and message in errors[0], errors
    assert not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def cluster():
    reason = missing()
    if reason:
        pytest.skip(reason)
    one_node = OneNodeCluster()
    one_node.start()
    yield one_node
    one_node.stop()


def job_id(out, name: str) -> str:
    return json.loads((out / "jobs" / f"{name}.json").read_text())["job_id"]


def test_study_on_slurm_resumes_and_resubmits_only_what_was_lost(cluster, nnunet_dataset, local_study, tmp_path):
    local_out = local_study[0]
    out = tmp_path / "study"
    env = nnunet_dataset.env(**cluster.env)
    # the jobs get nothing of this environment from SLURM, only through the study (and SLURM's own variables)
    command = study_command(nnunet_dataset, out, "--executor", "slurm", "--time-limit", 15, "--poll-seconds", 1,
                            "--sbatch", "export=SLURM_CONF,SUBMITIT_EXECUTOR")
    names = [f"n2_s0_{row}" for row in (TEACHER, PRETRAINED, STUDENT)] + [f"pretrain_{TEACHER}"]

    first = run_cli(command + ["--no-wait"], env).stdout
    assert len(lines_with(first, r": submitted \(job \d+")) == 4, first
    ids = {name: job_id(out, name) for name in names}
    assert set(ids.values()) <= set(cluster.jobs())
    second = run_cli(command + ["--no-wait"], env).stdout
    assert "submitted" not in second and {name: job_id(out, name) for name in names} == ids, second
    assert len(cluster.jobs()) == 4

    # cancel the pretrained row's job while it trains: lost, submitted again by the next command
    train_log = out / "runs" / "n2_s0" / "logs" / f"{PRETRAINED}_train.log"
    wait_for(train_log.exists, 600, "training of the pretrained row")
    cluster.command(["scancel", ids[f"n2_s0_{PRETRAINED}"]])
    # requeue the student once its first epoch's checkpoint is written: its training continues from it
    student_fold = fold_of(out, STUDENT)
    wait_for(lambda: (student_fold / "checkpoint_latest.pth").exists(), 600, "first epoch of the student")
    cluster.command(["scontrol", "requeue", ids[f"n2_s0_{STUDENT}"]])
    wait_for(lambda: cluster.jobs().get(ids[f"n2_s0_{PRETRAINED}"]) in (None, "CANCELLED"), 60, "cancelled job")

    third = run_cli(command, env).stdout
    assert re.search(rf"{re.escape(PRETRAINED)}, 2 labeled, seed 0: lost \(job {ids[f'n2_s0_{PRETRAINED}']}: "
                     r"CANCELLED", third), third
    resubmitted = lines_with(third, "submitted")
    assert len(resubmitted) == 1 and PRETRAINED in third.splitlines()[resubmitted[0]], third
    assert {n: job_id(out, n) for n in names if n != f"n2_s0_{PRETRAINED}"} == \
        {n: i for n, i in ids.items() if n != f"n2_s0_{PRETRAINED}"}
    assert "runs: 3 finished" in third, third

    logs = sorted(student_fold.glob("training_log_*.txt"))
    assert len(logs) == 2, logs
    assert "Epoch 0 " in logs[0].read_text() and "Epoch 0 " not in logs[1].read_text()
    assert json.loads((out / "jobs" / f"n2_s0_{STUDENT}.state.json").read_text())["restarts"] == 1

    slurm_rows, local_rows = rows_of(out), rows_of(local_out)
    assert slurm_rows.keys() == local_rows.keys()
    for row in (TEACHER, PRETRAINED):
        assert slurm_rows[row] == local_rows[row], row
    assert 0 <= float(slurm_rows[STUDENT]["dice_mean"]) <= 100
    view = os.path.join("runs", "n2_s0", "nnUNet_preprocessed", "Dataset901_Tiny")
    for split in ("splits_final.json", "splits_semi_supervised.json"):
        assert (out / view / split).read_bytes() == (local_out / view / split).read_bytes()
    for row in (TEACHER, PRETRAINED):
        predictions = sorted((local_out / "runs" / "n2_s0" / "predictions" / row).glob("*.nii.gz"))
        assert predictions
        for local in predictions:
            slurm = out / "runs" / "n2_s0" / "predictions" / row / local.name
            assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(slurm))),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(local)))), local


def test_bad_input_for_slurm_one_error_and_nothing_submitted(cluster, nnunet_dataset, tmp_path):
    env = nnunet_dataset.env(**cluster.env)
    shadow = tmp_path / "no_submitit" / "submitit"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'submitit'\", name='submitit')\n")
    before = set(cluster.jobs())
    for out, extra, overrides, message in (
            (tmp_path / "study", ["--partition", "nosuch"], {}, "--partition nosuch: no such partition (sinfo lists: "
                                                                "debug)"),
            ("relative/study", [], {}, "-o relative/study: a relative path"),
            (tmp_path / "study", [], {"PYTHONPATH": shadow.parent}, "--executor slurm needs submitit"),
            (tmp_path / "study", ["--sbatch", "constraint=nosuchfeature"], {}, "sbatch rejects the study's jobs")):
        result = run_cli(study_command(nnunet_dataset, out, "--executor", "slurm", *extra),
                         {**env, **{k: str(v) for k, v in overrides.items()}}, expect_failure=True, cwd=str(tmp_path))
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and lines[-1].startswith("ERROR: ") and message in lines[-1], result.stderr
        assert "Traceback" not in result.stderr
    assert set(cluster.jobs()) == before
    assert not (tmp_path / "study").exists() and not (tmp_path / "relative").exists()


FAILING_TRAINER = """
from nnunetv2_sss.training.base import nnUNetTrainerPlugin


class nnUNetTrainerFailsOnPurpose(nnUNetTrainerPlugin):
    def initialize(self):
        raise SystemExit("ERROR: nnUNetTrainerFailsOnPurpose: this training fails on purpose")
"""


def test_a_failed_slurm_job_is_reported_with_its_error_and_logs_and_resubmitted(cluster, nnunet_dataset, tmp_path):
    (tmp_path / "trainers").mkdir()
    (tmp_path / "trainers" / "nnUNetTrainerFailsOnPurpose.py").write_text(FAILING_TRAINER)
    env = nnunet_dataset.env(**cluster.env, nnUNet_extTrainer=f"{TRAINERS_FOLDER}:{tmp_path / 'trainers'}")
    command = ["nnUNetv2_sss_study", "-d", nnunet_dataset.dataset_id, "-c", "2d", "--num-labeled", 2, "--seeds", 1,
               "-tr", "nnUNetTrainerFailsOnPurpose", "-device", "cpu", "--no-ceiling", "-o", tmp_path / "study",
               "--executor", "slurm", "--time-limit", 15, "--poll-seconds", 1]
    failed = rf"failed \(job (\d+): nnUNetv2_train exited with code 1 \(ERROR: nnUNetTrainerFailsOnPurpose: this " \
             rf"training fails on purpose\); full output: {tmp_path}/study/runs/n2_s0/logs/nnUNetTrainerFailsOnPurpose" \
             rf"_train.log; job log {tmp_path}/study/jobs/slurm/\1_0_log.out\)"
    first = run_cli(command, env, expect_failure=True)
    assert re.search(failed, first.stdout), first.stdout
    assert first.stderr.strip().splitlines()[-1].startswith(
        "ERROR: nnUNetTrainerFailsOnPurpose, 2 labeled, seed 0: job "), first.stderr
    again = run_cli(command + ["--no-wait"], env).stdout  # reported, then submitted again
    assert re.search(failed, again) and len(lines_with(again, r": submitted \(job \d+\)")) == 1, again
    cluster.command(["scancel", job_id(tmp_path / "study", "n2_s0_nnUNetTrainerFailsOnPurpose")])


# ---- unit -------------------------------------------------------------------------------------------------
def test_jobs_pretraining_before_its_rows_teacher_before_student_and_max_runs():
    runs = plan_runs([TEACHER, PRETRAINED, STUDENT], [2], [0, 1], TEACHER, ceiling=False)
    study = SimpleNamespace(runs=runs, teachers={STUDENT: TEACHER})
    jobs = study_jobs(study)
    assert [(j.name, j.after) for j in jobs[:4]] == [
        (f"n2_s0_{TEACHER}", ()), (f"pretrain_{TEACHER}", ()), (f"n2_s0_{PRETRAINED}", (f"pretrain_{TEACHER}",)),
        (f"n2_s0_{STUDENT}", (f"n2_s0_{TEACHER}",))]
    assert len(jobs) == 7 and jobs[1].pretraining and jobs[1].trainer == TEACHER and jobs[1].run.group == "n2_s0"
    todo, stopped = jobs_to_do(jobs, {f"n2_s0_{TEACHER}"}, max_runs=1)
    assert [j.name for j in todo] == [f"pretrain_{TEACHER}", f"n2_s0_{PRETRAINED}"] and stopped
    todo, stopped = jobs_to_do(jobs, {j.name for j in jobs[:4]}, max_runs=None)
    assert [j.name for j in todo] == [f"n2_s1_{TEACHER}", f"n2_s1_{PRETRAINED}", f"n2_s1_{STUDENT}"] and not stopped


def test_slurm_option_values():
    assert [time_minutes(t) for t in ("90", "10:30", "2:00:00", "1-12", "1-0:01", "0-0:5:1")] == \
        [90, 11, 120, 2160, 1441, 6]
    for bad in ("", "1h", "0", "1-", "4:59"):
        with pytest.raises(UserValueError, match="--time-limit"):
            time_minutes(bad)
    assert sbatch_lines(["constraint=a100", "--exclusive", "mail-type=END,FAIL"]) == \
        {"constraint": "a100", "exclusive": True, "mail-type": "END,FAIL"}
    with pytest.raises(UserValueError, match="--sbatch constraint="):
        sbatch_lines(["constraint="])


def test_local_jobs_share_the_cores_unless_the_study_sets_the_threads():
    """--jobs N > 1: each job's CPU training gets the cores divided by N as torch threads (at least 1);
    --jobs 1 keeps nnU-Net's; a value in the study's environment is kept."""
    from nnunetv2_sss.evaluation.study.executor import LocalExecutor
    cores = os.cpu_count()
    assert LocalExecutor(SimpleNamespace(env={}), jobs=2).study.env == {"nnUNet_sss_cpu_threads": str(max(1, cores // 2))}
    assert LocalExecutor(SimpleNamespace(env={}), jobs=cores + 1).study.env["nnUNet_sss_cpu_threads"] == "1"
    assert LocalExecutor(SimpleNamespace(env={}), jobs=1).study.env == {}
    preset = {"nnUNet_sss_cpu_threads": "3"}
    assert LocalExecutor(SimpleNamespace(env=dict(preset)), jobs=2).study.env == preset


def test_paths_jobs_on_other_nodes_cannot_use(tmp_path):
    assert node_local("/tmp/x", {}) == "under /tmp"
    assert node_local(str(tmp_path / "a"), {"TMPDIR": str(tmp_path)}).startswith("under ")
    assert node_local("/dev/shm/x", {}) == "under /dev/shm"
    assert unshared_path({"nnUNet_raw": "raw"}, {}, one_node=True).startswith("nnUNet_raw raw: a relative path")
    assert unshared_path({"-o": "/tmp/s", "nnUNet_raw": None}, {}, one_node=True) is None  # one node: all is shared
    assert "storage of this node only" in unshared_path({"-o": "/tmp/s"}, {}, one_node=False)


def test_the_cluster_page_commands_parse():
    """Every ``nnUNetv2_sss_study`` command of docs/cluster.md is one the command's parser accepts."""
    with open(DOCS) as f:
        blocks = re.findall(r"```(?:bash|sh|shell)\n(.*?)```", f.read(), re.S)
    commands = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()
                if line.strip().startswith("nnUNetv2_sss_study")]
    assert len(commands) >= 3
    for line in commands:
        words = shlex.split(re.sub(r"\$\{?\w+\}?", "0", line.split("#")[0]))[1:]  # a shell variable: 0
        build_parser().parse_args(words)  # exits (fails the test) on an unknown option
