"""One atomic write for every file that must not be left half-written (``nnunetv2_sss/atomic_files.py``):
whatever fails, the previous file stays and no temporary file is left; a full disk is one error line.
Through the real ``nnUNetv2_train`` (``--c`` of a finished run, and a run that fills the disk as it
goes): on a real, small tmpfs where this machine lets a user mount one in a namespace of its own
(``unshare``), and with ``ENOSPC`` injected into ``torch.save`` of the trainer process (``sitecustomize``
on its ``PYTHONPATH``) everywhere."""
from __future__ import annotations

import errno
import functools
import os
import pathlib
import shutil
import subprocess
import tempfile
import textwrap

import pytest
import torch

from helpers import BIN, run_cli
from nnunetv2_sss.atomic_files import write_atomically, write_text_atomically
from nnunetv2_sss.errors import UserRuntimeError
from nnunetv2_sss.training.checkpoint_io import save_atomically

TRAINER = "nnUNetTrainerPlugin"


def _fills_the_disk(file) -> None:
    file.write(b"x" * 5000)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _reports_it_as_torch_does(file) -> None:
    """``torch.save`` on a full disk: its zip writer fails on the ENOSPC of a write (RuntimeError, two tracebacks)."""
    try:
        _fills_the_disk(file)
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")


# ---- the helper ------------------------------------------------------------------------------------------
def test_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "summary.md"
    write_text_atomically(target, "first ±\n")
    write_atomically(target, lambda f: f.write("second ±\n".encode()))
    assert target.read_text() == "second ±\n"
    save_atomically({"a": torch.ones(2)}, str(tmp_path / "checkpoint.pth"))
    assert torch.equal(torch.load(tmp_path / "checkpoint.pth")["a"], torch.ones(2))
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pth", "summary.md"]


@pytest.mark.parametrize("write", [_fills_the_disk, _reports_it_as_torch_does])
def test_disk_full_keeps_the_previous_file_removes_the_partial_one_and_says_what_to_do(tmp_path, write):
    target = tmp_path / "checkpoint_latest.pth"
    target.write_bytes(b"previous")
    with pytest.raises(UserRuntimeError) as raised:
        write_atomically(target, write, then="resume with --c")
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{target}: no space left on device (") and " free)" in message
    assert "the previous checkpoint_latest.pth is kept: free space, then resume with --c" in message
    assert raised.value.__cause__ is None and raised.value.__suppress_context__  # no second traceback
    assert target.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["checkpoint_latest.pth"]


def test_quota_exceeded_and_a_new_file(tmp_path):
    def over_quota(file):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    with pytest.raises(UserRuntimeError, match=r"new\.json: disk quota exceeded while writing it; the partial file "
                                               r"was removed: free space, then run the same command again$"):
        write_atomically(tmp_path / "new.json", over_quota)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("error", [ValueError("a bug"), KeyboardInterrupt(), OSError(errno.EACCES, "denied")])
def test_other_errors_are_raised_as_they_are_and_the_partial_file_removed(tmp_path, error):
    target = tmp_path / "runs.csv"
    target.write_text("previous")

    def fails(file):
        file.write(b"partial")
        raise error

    with pytest.raises(type(error)) as raised:
        write_atomically(target, fails)
    assert raised.value is error
    assert target.read_text() == "previous" and os.listdir(tmp_path) == ["runs.csv"]


# ---- through nnUNetv2_train --------------------------------------------------------------------------------
INJECTION = textwrap.dedent('''\
    """Test fault injection: torch.save of checkpoint_* files hits a full disk after SSS_TEST_DISK_FULL_AFTER bytes."""
    import os
    if os.environ.get("SSS_TEST_DISK_FULL_AFTER"):
        import errno
        import torch

        _save, _limit = torch.save, int(os.environ["SSS_TEST_DISK_FULL_AFTER"])

        class _FullDisk:
            def __init__(self, file):
                self.file, self.written = file, 0

            def write(self, data):
                if self.written + len(data) > _limit:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                self.written += len(data)
                return self.file.write(data)

            def flush(self):
                self.file.flush()

        def save(obj, f, *args, **kwargs):
            full = hasattr(f, "write") and os.path.basename(getattr(f, "name", "")).startswith("checkpoint_")
            return _save(obj, _FullDisk(f) if full else f, *args, **kwargs)

        torch.save = save
    ''')
NAMESPACE_SCRIPT = textwrap.dedent('''\
    mount -t tmpfs -o size="$SIZE" tmpfs "$MOUNT" && cp -a "$SOURCE/." "$MOUNT/" || exit 97
    "$@" > "$OUT/stdout.txt" 2> "$OUT/stderr.txt"
    echo $? > "$OUT/returncode"
    df -B1 --output=avail "$MOUNT" | tail -1 > "$OUT/free"
    cp -a "$MOUNT" "$OUT/after"
    ''')


def _fold(results: pathlib.Path, dataset) -> pathlib.Path:
    return results / dataset.dataset_name / f"{TRAINER}__nnUNetPlans__2d" / "fold_0"


def _train(dataset, resume: bool) -> list:
    return [os.path.join(BIN, "nnUNetv2_train"), str(dataset.dataset_id), "2d", "0", "-tr", TRAINER, "-device", "cpu"
            ] + (["--c"] if resume else [])


def _one_disk_full_error(result: subprocess.CompletedProcess, file: str) -> str:
    """Exit 1 (nnUNetv2_train's user errors), no traceback, exactly one ``ERROR:`` line, naming ``file``."""
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert f"/fold_0/{file}" in errors[0] and "no space left on device" in errors[0], errors[0]
    assert "free space, then continue the training with nnU-Net's --c" in errors[0], errors[0]
    return errors[0]


@functools.lru_cache(maxsize=None)
def _can_mount_tmpfs() -> bool:
    """Whether a user namespace of this process may mount a tmpfs (``unshare -rm``; not where user
    namespaces are off, e.g. some CI runners)."""
    if shutil.which("unshare") is None:
        return False
    with tempfile.TemporaryDirectory() as folder:
        probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                                f"mount -t tmpfs -o size=1m tmpfs '{folder}'"], capture_output=True)
    return probe.returncode == 0


def _in_small_filesystem(tmp_path: pathlib.Path, size: int, source: pathlib.Path, command: list, env: dict):
    """``command`` with ``nnUNet_results`` on a tmpfs of ``size`` bytes holding a copy of ``source``; the
    result, the tmpfs's free bytes afterwards and a copy of what it held (``tmp_path/after``)."""
    if not _can_mount_tmpfs():
        pytest.skip("no user namespace with mount rights here (unshare -rm): the injected ENOSPC test covers this")
    mount, out = tmp_path / "mount", tmp_path
    mount.mkdir()
    environment = {**env, "nnUNet_results": str(mount), "SIZE": str(size), "MOUNT": str(mount),
                   "SOURCE": str(source), "OUT": str(out)}
    completed = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "bash", "-c", NAMESPACE_SCRIPT,
                                "namespace"] + command, env=environment, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr
    result = subprocess.CompletedProcess(command, int((out / "returncode").read_text()),
                                         (out / "stdout.txt").read_text(), (out / "stderr.txt").read_text())
    return result, int((out / "free").read_text()), out / "after"


@pytest.fixture(scope="module")
def finished_run(nnunet_dataset, tmp_path_factory) -> pathlib.Path:
    """``nnUNet_results`` of a finished one-epoch run (checkpoint_final.pth, checkpoint_best.pth)."""
    results = tmp_path_factory.mktemp("finished") / "results"
    run_cli(_train(nnunet_dataset, False), nnunet_dataset.env(nnUNet_results=results))
    return results


def _resume_on_a_full_disk(dataset, before: pathlib.Path, after: pathlib.Path, result) -> None:
    """``--c`` for a second epoch failed writing its first checkpoint: one error line, every checkpoint of
    the finished run unchanged, no temporary file left."""
    line = _one_disk_full_error(result, "checkpoint_")
    assert "is kept" in line
    checkpoints = sorted(p.name for p in _fold(before, dataset).glob("checkpoint_*"))
    assert checkpoints == ["checkpoint_best.pth", "checkpoint_final.pth"]
    assert sorted(p.name for p in _fold(after, dataset).glob("checkpoint_*")) == checkpoints
    for name in checkpoints:
        assert (_fold(after, dataset) / name).read_bytes() == (_fold(before, dataset) / name).read_bytes(), name
    assert not [p for p in after.rglob("*") if ".tmp" in p.name]


@pytest.mark.integration
def test_resume_with_injected_disk_full(nnunet_dataset, finished_run, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(finished_run, results)
    injection = tmp_path / "injection"
    injection.mkdir()
    (injection / "sitecustomize.py").write_text(INJECTION)
    env = nnunet_dataset.env(nnUNet_results=results, nnUNet_sss_num_epochs=2, PYTHONPATH=injection,
                             SSS_TEST_DISK_FULL_AFTER=1 << 20)
    result = run_cli(_train(nnunet_dataset, True), env, expect_failure=True)
    _resume_on_a_full_disk(nnunet_dataset, finished_run, results, result)


@pytest.mark.integration
def test_resume_on_a_full_tmpfs(nnunet_dataset, finished_run, tmp_path):
    files = [p for p in finished_run.rglob("*") if p.is_file()]
    checkpoint = (_fold(finished_run, nnunet_dataset) / "checkpoint_final.pth").stat().st_size
    size = sum(p.stat().st_size for p in files) + checkpoint // 2  # room for logs and plots, not a checkpoint
    env = nnunet_dataset.env(nnUNet_sss_num_epochs=2)
    result, free, after = _in_small_filesystem(tmp_path, size, finished_run, _train(nnunet_dataset, True), env)
    _resume_on_a_full_disk(nnunet_dataset, finished_run, after, result)
    assert free > checkpoint // 4  # the partial checkpoint is gone: the disk is not kept full


@pytest.mark.integration
def test_training_that_fills_a_tmpfs(nnunet_dataset, finished_run, tmp_path):
    """A fresh run of three epochs on a tmpfs with room for two checkpoints: epoch 1 writes checkpoint_best and
    checkpoint_latest, epoch 2's first checkpoint does not fit. One error line; the disk is freed of the
    partial file; checkpoint_latest.pth of epoch 1 stays for ``--c``."""
    checkpoint = (_fold(finished_run, nnunet_dataset) / "checkpoint_final.pth").stat().st_size
    empty = tmp_path / "empty"
    empty.mkdir()
    env = nnunet_dataset.env(nnUNet_sss_num_epochs=3)
    result, free, after = _in_small_filesystem(tmp_path, int(2.5 * checkpoint), empty, _train(nnunet_dataset, False),
                                               env)
    _one_disk_full_error(result, "checkpoint_")
    assert "checkpoint_latest.pth: 1 epochs done" in result.stdout
    assert free > checkpoint // 4
    assert not [p for p in after.rglob("*") if ".tmp" in p.name]
    fold = _fold(after, nnunet_dataset)  # created by this run, kept: it holds the checkpoint of epoch 1
    saved = torch.load(fold / "checkpoint_latest.pth", map_location="cpu", weights_only=False)
    assert saved["current_epoch"] == 1
