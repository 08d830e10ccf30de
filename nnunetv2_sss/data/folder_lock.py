"""An exclusive lock on an output folder, so that two runs never write into it at the same time.

``fcntl.flock`` on ``<folder>/.preprocess_unlabeled.lock`` (or the file a command names, e.g. the
study's ``.study.lock``); the holder writes ``<pid> <host>`` into the file. The lock is the kernel's: it
goes away when the holding process ends, however it ends (a killed run leaves no stale lock; the file
itself stays and is harmless). A second run does not wait: it raises
:class:`FolderLockedError` naming the holder.
"""
from __future__ import annotations

import fcntl
import os
import socket
import time
from contextlib import ExitStack
from typing import Iterable

from nnunetv2_sss.errors import UserRuntimeError

LOCK_FILE = ".preprocess_unlabeled.lock"


class FolderLockedError(UserRuntimeError):
    """Another process holds the lock of the folder; the message names it (pid, host)."""


class FolderLock:
    """``with FolderLock(folder):`` holds the folder's lock (creating the folder) or raises
    :class:`FolderLockedError` at once."""

    def __init__(self, folder: str, command: str = "nnUNetv2_sss_preprocess_unlabeled", file: str = LOCK_FILE):
        self.folder = folder
        self.path = os.path.join(folder, file)
        self.command = command
        self._fd = None

    def acquire(self) -> None:
        os.makedirs(self.folder, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise FolderLockedError(
                f"{self.folder}: another {self.command} run ({holder}) is writing into this folder; wait until it "
                f"has finished (or stop it), then run this command again.") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)  # empty while nobody holds it (before unlocking: never erases a new holder)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "FolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(fd: int) -> str:
    """``pid N on host H`` from the lock file; the holder writes it right after locking, so wait a moment
    when it is still empty."""
    deadline = time.monotonic() + 2.0
    while True:
        text = os.pread(fd, 256, 0).decode(errors="replace").split()
        if text or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if not text:
        return "pid unknown"
    return f"pid {text[0]}" + (f" on host {text[1]}" if len(text) > 1 else "")


def lock_folders(folders: Iterable[str], stack: ExitStack) -> None:
    """Lock every folder (sorted, all or none) for the lifetime of ``stack``."""
    for folder in sorted(set(folders)):
        stack.enter_context(FolderLock(folder))
