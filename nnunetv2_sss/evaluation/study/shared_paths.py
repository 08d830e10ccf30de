"""Paths a job on another node must find: nnU-Net's folders and the study's output folder, absolute and not
on storage of the submitting node only."""
from __future__ import annotations

import os
from typing import Mapping, Optional

NODE_LOCAL_FOLDERS = ("/tmp", "/var/tmp", "/dev/shm", "/run")
NODE_LOCAL_FILE_SYSTEMS = ("tmpfs", "ramfs")
NNUNET_PATHS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


def node_local(path: str, env: Mapping[str, str]) -> Optional[str]:
    """Why ``path`` (absolute) is on the submitting node's own storage, or ``None``: under ``/tmp``, ``/var/tmp``,
    ``/dev/shm``, ``/run`` or ``$TMPDIR``, or on a tmpfs / ramfs."""
    real = os.path.realpath(path)
    folders = NODE_LOCAL_FOLDERS + ((os.path.realpath(env["TMPDIR"]),) if env.get("TMPDIR") else ())
    for folder in folders:
        if real == folder or real.startswith(folder.rstrip("/") + "/"):
            return f"under {folder}"
    kind = file_system(real)
    return f"on a {kind}" if kind in NODE_LOCAL_FILE_SYSTEMS else None


def file_system(path: str) -> Optional[str]:
    """The type of the file system ``path`` is on (the longest mount point of /proc/mounts above it)."""
    try:
        with open("/proc/mounts") as f:
            mounts = [line.split()[1:3] for line in f]
    except OSError:
        return None
    above = [(point, kind) for point, kind in mounts if path == point or path.startswith(point.rstrip("/") + "/")]
    return max(above, key=lambda m: len(m[0]))[1] if above else None


def unshared_path(given: Mapping[str, Optional[str]], env: Mapping[str, str], one_node: bool) -> Optional[str]:
    """The first problem with the paths ``given`` (name -> path as the user gave it): a relative path (a job's
    working folder is not the user's), else, on a cluster of more than one node, a node-local path."""
    for name, path in given.items():
        if path is not None and not os.path.isabs(path):
            return f"{name} {path}: a relative path; jobs run elsewhere, give an absolute path on shared storage"
    if not one_node:
        for name, path in given.items():
            reason = node_local(path, env) if path is not None else None
            if reason:
                return (f"{name} {path}: {reason}, storage of this node only; jobs run on other nodes, use a folder "
                        "on shared storage")
    return None
