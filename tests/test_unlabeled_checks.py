"""``nnUNetv2_sss_preprocess_unlabeled`` on bad unlabeled scans (issue 13, items 2, 3, 6), on the session's
tiny planned dataset: another orientation than the training images (refused, or ``--reorient``), unreadable
files, implausible spacings / a target shape with a zero axis (refused before any work: one ``ERROR:`` line,
exit code 2), and two concurrent runs on one output folder (the second stops, naming the first's pid).

The command's entry point runs in this process (its ``sys.argv``, nnU-Net's path variables set; seconds
instead of a fresh interpreter per run); the concurrency test runs the real console script twice."""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time

import blosc2
import numpy as np
import pytest
import SimpleITK as sitk

from helpers import BIN, run_cli
from nnunetv2_sss.cli import preprocess_unlabeled_entry

COMMAND = "nnUNetv2_sss_preprocess_unlabeled"


class Workspace:
    """The session's tiny dataset (8 labeled, 4 unlabeled cases): a private copy of its raw folder and of its
    plans (nothing preprocessed); ``unlabeled`` is the copy's imagesUnlabeled folder."""

    def __init__(self, dataset, tmp_path, monkeypatch, capsys):
        shutil.copytree(dataset.raw, tmp_path / "raw")
        self.preprocessed = tmp_path / "preprocessed" / dataset.dataset_name
        self.preprocessed.mkdir(parents=True)
        for name in ("nnUNetPlans.json", "dataset.json", "dataset_fingerprint.json"):
            shutil.copy(dataset.preprocessed / dataset.dataset_name / name, self.preprocessed / name)
        self.unlabeled = tmp_path / "raw" / dataset.dataset_name / "imagesUnlabeled"
        self.dataset_id = dataset.dataset_id
        self.env = dataset.env(nnUNet_raw=tmp_path / "raw", nnUNet_preprocessed=tmp_path / "preprocessed",
                               nnUNet_results=tmp_path / "results", OMP_NUM_THREADS=1)
        for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            monkeypatch.setenv(variable, self.env[variable])
        self.monkeypatch, self.capsys = monkeypatch, capsys

    def command(self, *configurations):
        return [COMMAND, "-d", str(self.dataset_id), "-c", *configurations, "-np", "1"]

    def run(self, *extra, configurations=("3d_fullres",), expect_failure=False):
        """The command's entry point with these arguments: ``(returncode, stdout, stderr)``."""
        self.capsys.readouterr()
        self.monkeypatch.setattr(sys, "argv", self.command(*configurations) + list(extra))
        try:
            preprocess_unlabeled_entry()
            code = 0
        except SystemExit as exit:
            code = exit.code
        out, err = self.capsys.readouterr()
        result = subprocess.CompletedProcess(sys.argv, code, out, err)
        assert (code != 0) == expect_failure, f"exit code {code}\n--- stdout ---\n{out}\n--- stderr ---\n{err}"
        return result

    def output(self, configuration="3d_fullres"):
        return self.preprocessed / f"nnUNetPlans_{configuration}_unlabeled"

    def written(self):
        """Cases written by any configuration (a ``.pkl`` marks a complete case)."""
        return sorted(p.name for p in self.preprocessed.glob("*_unlabeled/*.pkl"))

    def template(self):
        return sitk.ReadImage(str(self.unlabeled / "unl_008_0000.nii.gz"))


@pytest.fixture
def workspace(nnunet_dataset, tmp_path, monkeypatch, capsys):
    return Workspace(nnunet_dataset, tmp_path, monkeypatch, capsys)


def _assert_refused(result, *fragments, before_any_work=True):
    """Exit code 2, one ``ERROR: ...`` line naming everything in ``fragments``, no traceback; refused before
    any work: that line is all of stderr (no progress bar either)."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    if before_any_work:
        assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_other_orientation_refused_then_reoriented(workspace):
    image = workspace.template()
    sitk.WriteImage(image, str(workspace.unlabeled / "same_0000.nii.gz"))
    # the same scan stored with its x and z axes swapped and x flipped: same anatomy, other voxel order
    odd = sitk.Flip(sitk.PermuteAxes(image, [2, 1, 0]), [True, False, False])
    odd_path = workspace.unlabeled / "odd_0000.nii.gz"
    sitk.WriteImage(odd, str(odd_path))
    before = _digest(odd_path)

    failed = workspace.run(expect_failure=True)
    _assert_refused(failed, f"{odd_path}: orientation 'IPL'", "training images are 'LPS'", "--reorient")
    assert workspace.written() == []  # refused before any case was written

    workspace.run("--reorient")
    assert _digest(odd_path) == before  # the user's file is untouched
    out = workspace.output()
    assert len(workspace.written()) == 6 and not list(out.glob(".tmp_*"))
    reoriented, same = (np.asarray(blosc2.open(str(out / f"{c}.b2nd"), mode="r")[:]) for c in ("odd", "same"))
    np.testing.assert_array_equal(reoriented, same)  # the reoriented scan is what was preprocessed


def test_unreadable_file_refused(workspace):
    garbage = workspace.unlabeled / "broken_0000.nii.gz"
    garbage.write_bytes(b"this is not an image" * 20)
    failed = workspace.run(configurations=("2d", "3d_fullres"), expect_failure=True)
    _assert_refused(failed, f"{garbage}: cannot be read")
    assert workspace.written() == []

    # a readable header but truncated voxel data: named when the case is read, the others are kept
    data = (workspace.unlabeled / "unl_008_0000.nii.gz").read_bytes()
    garbage.write_bytes(data[: len(data) // 2])
    failed = workspace.run(expect_failure=True)
    _assert_refused(failed, f"{garbage}: cannot be read", before_any_work=False)
    assert "broken.pkl" not in workspace.written()


def test_implausible_spacing_refused(workspace):
    image = workspace.template()
    image.SetSpacing((0.01, 0.01, 0.01))
    tiny = workspace.unlabeled / "micro_0000.nii.gz"
    sitk.WriteImage(image, str(tiny))
    failed = workspace.run(configurations=("2d", "3d_fullres"), expect_failure=True)
    _assert_refused(failed, f"{tiny}: spacing 0.01 mm", "more than 10x", "median spacing")
    assert workspace.written() == []


def test_zero_axis_target_shape_refused(workspace):
    # one slice 1 mm thick where the dataset's slices are 3 mm: 3d_fullres would resample it to 0 slices
    image = sitk.GetImageFromArray(sitk.GetArrayFromImage(workspace.template())[5:6])
    image.SetSpacing((1.0, 1.0, 1.0))
    single = workspace.unlabeled / "slice_0000.nii.gz"
    sitk.WriteImage(image, str(single))
    failed = workspace.run(configurations=("2d", "3d_fullres"), expect_failure=True)
    _assert_refused(failed, f"{single}: ", "3d_fullres", "zero")
    assert workspace.written() == []
    workspace.run(configurations=("2d",))  # the 2-D configuration keeps the slice
    assert "slice.pkl" in workspace.written()


def test_second_concurrent_run_stops_naming_the_first(workspace):
    for i in range(4):  # a little more work, so the first run holds its lock for a while
        shutil.copy(workspace.unlabeled / "unl_008_0000.nii.gz", workspace.unlabeled / f"more_{i}_0000.nii.gz")
    command = workspace.command("2d", "3d_fullres")
    lock_file = workspace.output("2d") / ".preprocess_unlabeled.lock"
    first = subprocess.Popen([os.path.join(BIN, COMMAND)] + command[1:], env=workspace.env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (lock_file.exists() and lock_file.read_text().split()[:1] == [str(first.pid)]):
            assert first.poll() is None and time.time() < deadline, first.communicate()
            time.sleep(0.01)
        os.kill(first.pid, signal.SIGSTOP)  # the first run holds the lock, frozen mid-work
        try:
            second = run_cli(command, workspace.env, expect_failure=True)
        finally:
            os.kill(first.pid, signal.SIGCONT)
        _assert_refused(second, str(workspace.output("2d")), f"pid {first.pid}")
        out, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, err
    assert len(workspace.written()) == 2 * 8
    again = workspace.run(configurations=("2d", "3d_fullres"))  # the lock is released at the end
    assert "8 already done, 0 to preprocess" in again.stdout
