"""Files written whole or not at all: :func:`write_atomically` (and :func:`write_text_atomically`).

The content goes to ``<path>.tmp`` in the target's folder, is flushed and ``fsync``-ed, then
``os.replace``-d onto ``<path>``: a crash (or ``kill -9``) at any moment leaves the previous file or
the new one, never a truncated one. A write that fails removes the temporary file again (a full disk
is not kept full by a partial file) and keeps the previous file. A full disk or quota (``ENOSPC`` /
``EDQUOT``, also when a writer such as ``torch.save`` reports it as another error raised while
handling it) becomes one :class:`~nnunetv2_sss.errors.UserRuntimeError` line naming the file, the
free space and what to do; any other error is re-raised as it is.
"""
from __future__ import annotations

import errno
import math
import os
import shutil
from typing import BinaryIO, Callable, Optional, Union

from nnunetv2_sss.errors import UserRuntimeError

PathLike = Union[str, "os.PathLike[str]"]
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
UNITS = ("bytes", "KiB", "MiB", "GiB", "TiB")


def write_atomically(path: PathLike, write: Callable[[BinaryIO], object],
                     then: str = "run the same command again") -> None:
    """``write(file)`` into ``<path>.tmp`` (opened ``'wb'``), flush, ``fsync``, ``os.replace`` onto
    ``path``. ``then``: what to do once space is freed, for the disk-full message."""
    path = os.fspath(path)
    temporary = path + ".tmp"
    try:
        with open(temporary, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        try:
            os.remove(temporary)
        except OSError:  # never created, or already gone: the original error is what matters
            pass
        code = _disk_full(error)
        if code is None:
            raise
        kept = f", the previous {os.path.basename(path)} is kept" if os.path.exists(path) else ""
        raise UserRuntimeError(f"{path}: {_problem(code, path)} while writing it; the partial file was removed{kept}: "
                               f"free space, then {then}") from None


def write_text_atomically(path: PathLike, text: str, then: str = "run the same command again") -> None:
    """:func:`write_atomically` of ``text`` (UTF-8)."""
    write_atomically(path, lambda file: file.write(text.encode()), then)


def _disk_full(error: Optional[BaseException]) -> Optional[int]:
    """``ENOSPC`` / ``EDQUOT`` if ``error`` or an error it was raised from or while handling is one."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno in DISK_FULL:
            return error.errno
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _problem(code: int, path: str) -> str:
    if code == errno.EDQUOT:
        return "disk quota exceeded"
    try:
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
    except OSError:
        return "no space left on device"
    return f"no space left on device ({_size(free)} free)"


def _size(count: int) -> str:
    power = min(int(math.log(max(count, 1), 1024)), len(UNITS) - 1)
    return f"{count} bytes" if power == 0 else f"{count / 1024 ** power:.1f} {UNITS[power]}"
