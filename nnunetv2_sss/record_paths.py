"""Paths in the records the plugin writes (JSON): a folder inside one of nnU-Net's folders is named relative to
it, ``$nnUNet_preprocessed/Dataset991_DemoLesion/nnUNetPlans_2d``, so that a record holds no path of the machine
it was made on and still names the right folder where the same dataset lives elsewhere (``$...`` reads as the
variable in a shell)."""
from __future__ import annotations

import os


def record_path(path: str) -> str:
    """``path`` relative to the innermost of ``nnUNet_preprocessed`` / ``nnUNet_results`` / ``nnUNet_raw`` that
    holds it, as ``$<variable>/<relative path>``; other paths (and names such as ``random``) unchanged."""
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw, nnUNet_results
    if not os.path.isabs(path):
        return path
    path = os.path.normpath(path)
    roots = [(os.path.normpath(os.path.abspath(v.get())), v.env_var_name)
             for v in (nnUNet_preprocessed, nnUNet_results, nnUNet_raw) if v.is_set()]
    inside = [(root, name) for root, name in roots if os.path.commonpath([root, path]) == root]
    if not inside:
        return path
    root, name = max(inside, key=lambda r: len(r[0]))
    relative = os.path.relpath(path, root)
    return f"${name}" if relative == "." else f"${name}/{relative}"
