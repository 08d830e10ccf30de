"""Checkpoints of the plugin's trainers: ``checkpoint_latest.pth`` after every epoch (``kill -9``
at random moments, then ``--c``), each model stored once, and checkpoints of earlier versions
(``teacher_weights`` next to ``network_weights``) still loadable for ``--c`` and prediction."""
import os
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from helpers import BIN, run_cli

pytestmark = pytest.mark.integration

TRAINER = "nnUNetTrainerMeanTeacher"
EPOCHS, ITERATIONS = 5, 2
EPOCH_STARTED = re.compile(r": Epoch (\d+)$")
LATEST_WRITTEN = re.compile(r"checkpoint_latest\.pth: (\d+) epochs done")
KILL_SEED = 20240613


def _fold_dir(results, dataset):
    return results / dataset.dataset_name / f"{TRAINER}__nnUNetPlans__2d" / "fold_0"


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def _same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _train_command(dataset, resume):
    return [os.path.join(BIN, "nnUNetv2_train"), str(dataset.dataset_id), "2d", "0", "-tr", TRAINER,
            "-device", "cpu"] + (["--c"] if resume else [])


def _train_and_kill(command, env, kill_epoch, fraction, epoch_seconds):
    """Start ``nnUNetv2_train``; once it prints ``Epoch <kill_epoch>`` (or a later one), wait
    ``fraction`` of an epoch (the shortest interval between two ``Epoch`` lines seen so far, this run's
    or ``epoch_seconds``) and ``kill -9`` it. Returns its output lines, the epoch duration used and the delay."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line.rstrip("\n")) for line in process.stdout], daemon=True)
    reader.start()
    seen, deadline, last_start, delay = [], time.time() + 900, None, None
    try:
        while time.time() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                if process.poll() is not None:
                    break
                continue
            seen.append(line)
            started = EPOCH_STARTED.search(line)
            if started:
                now = time.time()
                if last_start is not None:
                    epoch_seconds = min(epoch_seconds, now - last_start)
                last_start = now
                if int(started.group(1)) >= kill_epoch:
                    delay = fraction * epoch_seconds
                    time.sleep(delay)
                    process.send_signal(signal.SIGKILL)
                    break
        else:
            pytest.fail("no kill point within 900 s:\n" + "\n".join(seen[-40:]))
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait()
        reader.join(timeout=10)
    while not lines.empty():
        seen.append(lines.get())
    assert process.returncode == -signal.SIGKILL, "\n".join(seen[-60:])
    return seen, epoch_seconds, delay


def _epochs_started(lines):
    return [int(m.group(1)) for m in map(EPOCH_STARTED.search, lines) if m]


def test_kill_9_at_random_moments_then_resume(nnunet_dataset, tmp_path):
    """Three ``kill -9`` at random moments (seeded), each followed by ``--c``: the latest checkpoint
    holds the last completed epoch, every resume starts there, and the interrupted run ends like
    an uninterrupted one (same SSL iterations and epochs); two resumes from the same checkpoint
    train identically (random generators restored)."""
    results = tmp_path / "results"
    env = nnunet_dataset.env(nnUNet_results=results, nnUNet_sss_num_epochs=EPOCHS,
                             nnUNet_sss_iterations_per_epoch=ITERATIONS)
    fold = _fold_dir(results, nnunet_dataset)
    rng = random.Random(KILL_SEED)
    # kills in epochs 1..EPOCHS-2, each at a random share of an epoch after its start: training,
    # validation or epoch end (progress.png, best and latest writes) of that epoch or the next one
    kill_epochs = sorted(rng.sample(range(1, EPOCHS - 1), 3))
    report, resume_from, epoch_seconds = [], None, float("inf")
    for i, kill_epoch in enumerate(kill_epochs):
        fraction = rng.random()
        lines, epoch_seconds, delay = _train_and_kill(_train_command(nnunet_dataset, resume=i > 0), env, kill_epoch,
                                                      fraction, epoch_seconds)
        started = _epochs_started(lines)
        if resume_from is not None:  # --c started where the checkpoint left off
            assert started[0] == resume_from, (started, resume_from)
        assert (fold / "checkpoint_latest.pth").is_file()
        latest = _load(fold / "checkpoint_latest.pth")
        completed = latest["current_epoch"]
        # the last completed epoch: every epoch before the last one started, plus that one if the
        # kill came after its checkpoint was written (the log line follows the write)
        written = [int(m.group(1)) for m in map(LATEST_WRITTEN.search, lines) if m]
        assert completed in (started[-1], started[-1] + 1), (completed, started)
        if written and written[-1] == started[-1] + 1:
            assert completed == started[-1] + 1
        elif completed == started[-1] + 1:  # written, killed before its log line (microseconds)
            assert any("Epoch time" in line for line in lines[-8:])
        assert latest["ssl_iteration"] == completed * ITERATIONS
        assert len(latest["logging"]["train_losses"]) == completed
        assert "rng_state" in latest and "lr_scheduler_state" in latest
        report.append((kill_epoch, f"{delay:.1f} s ({fraction:.2f} of {epoch_seconds:.1f} s)", started[-1], completed))
        resume_from = completed

    # the rest, twice from the same checkpoint_latest.pth (a copy of the fold folder): --c restores
    # every random generator, so nothing of the new process's own randomness changes the training
    twin = tmp_path / "twin"
    shutil.copytree(results, twin)
    finals = []
    for folder in (results, twin):
        resumed = run_cli(["nnUNetv2_train", nnunet_dataset.dataset_id, "2d", 0, "-tr", TRAINER, "-device", "cpu",
                           "--c"], {**env, "nnUNet_results": str(folder)})
        assert _epochs_started(resumed.stdout.splitlines())[0] == resume_from
        assert not (_fold_dir(folder, nnunet_dataset) / "checkpoint_latest.pth").exists()
        finals.append(_load(_fold_dir(folder, nnunet_dataset) / "checkpoint_final.pth"))
    print("kills (epoch, delay after its start, epoch running, checkpoint_latest epochs done):", report)
    final, twin_final = finals
    # an uninterrupted run: num_epochs x num_iterations_per_epoch SSL iterations, one log entry per epoch
    assert final["ssl_iteration"] == EPOCHS * ITERATIONS
    assert final["current_epoch"] == EPOCHS
    assert len(final["logging"]["train_losses"]) == EPOCHS
    assert len(final["logging"]["epoch_end_timestamps"]) == EPOCHS
    # nnUNet_n_proc_DA=0: every random draw is made in the training process
    assert final["logging"]["train_losses"] == twin_final["logging"]["train_losses"]
    assert _same_state(final["network_weights"], twin_final["network_weights"])
    assert _same_state(final["student_weights"], twin_final["student_weights"])


FORMAT_SCRIPT = """
import sys, torch
from nnunetv2.run.run_training import get_trainer_from_args
new_path, old_path = sys.argv[1], sys.argv[2]

def trainer():
    return get_trainer_from_args('901', '2d', 0, 'nnUNetTrainerMeanTeacher', 'nnUNetPlans', True, torch.device('cpu'))

same = lambda a, b: a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
saved = torch.load(new_path, map_location='cpu', weights_only=False)
assert 'teacher_weights' not in saved, sorted(saved)
assert not same(saved['network_weights'], saved['student_weights'])

t = trainer()
t.load_checkpoint(new_path)  # what --c does
assert same(t.teacher.state_dict(), saved['network_weights']), 'teacher not restored'
assert same(t.network.state_dict(), saved['student_weights']), 'student not restored'
assert t.ssl_iteration == saved['ssl_iteration'] and t.current_epoch == saved['current_epoch']
# saving again stores the teacher as network_weights, the student beside it, nothing else
t.save_checkpoint(new_path + '.again')
again = torch.load(new_path + '.again', map_location='cpu', weights_only=False)
assert same(again['network_weights'], t.teacher.state_dict()) and same(again['student_weights'], t.network.state_dict())
assert 'teacher_weights' not in again

# a checkpoint of an earlier version: teacher_weights (a copy of network_weights), no RNG/LR state
old = {k: v for k, v in saved.items() if k not in ('rng_state', 'lr_scheduler_state')}
old['teacher_weights'] = {k: v.clone() for k, v in saved['network_weights'].items()}
torch.save(old, old_path)
t = trainer()
t.load_checkpoint(old_path)
assert same(t.teacher.state_dict(), saved['network_weights']), 'old format: teacher not restored'
assert same(t.network.state_dict(), saved['student_weights']), 'old format: student not restored'
assert t.ssl_iteration == saved['ssl_iteration']
print('ok')
"""


def test_each_model_stored_once_and_old_checkpoints_load(nnunet_dataset, tmp_path):
    results = tmp_path / "results"
    env = nnunet_dataset.env(nnUNet_results=results)
    run_cli(["nnUNetv2_train", nnunet_dataset.dataset_id, "2d", 0, "-tr", TRAINER, "-device", "cpu"], env)
    fold = _fold_dir(results, nnunet_dataset)
    final = fold / "checkpoint_final.pth"
    saved = _load(final)
    assert "teacher_weights" not in saved
    assert set(saved) >= {"network_weights", "student_weights", "optimizer_state", "ssl_iteration", "rng_state",
                          "lr_scheduler_state"}

    old = tmp_path / "old_format.pth"
    checked = subprocess.run([sys.executable, "-c", FORMAT_SCRIPT, str(final), str(old)], env=env,
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-3000:]

    # the old-format file as the fold's checkpoint: nnUNetv2_predict and --c use it
    os.replace(old, final)
    predictions = tmp_path / "predictions"
    run_cli(["nnUNetv2_predict", "-i", nnunet_dataset.raw / nnunet_dataset.dataset_name / "imagesTs", "-o",
             predictions, "-d", nnunet_dataset.dataset_id, "-c", "2d", "-f", 0, "-tr", TRAINER, "-device", "cpu",
             "--disable_tta", "-npp", 0, "-nps", 0], env)
    assert sorted(p.name for p in predictions.glob("*.nii.gz")) == ["test_012.nii.gz", "test_013.nii.gz"]
    run_cli(["nnUNetv2_train", nnunet_dataset.dataset_id, "2d", 0, "-tr", TRAINER, "-device", "cpu", "--c"],
            nnunet_dataset.env(nnUNet_results=results, nnUNet_sss_num_epochs=2))
    continued = _load(final)
    assert continued["current_epoch"] == 2 and continued["ssl_iteration"] == 4
    assert "teacher_weights" not in continued
    assert continued["logging"]["train_losses"][0] == saved["logging"]["train_losses"][0]
