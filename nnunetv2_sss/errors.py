"""One error style for known user errors.

A known user error (a bad ``nnUNet_sss_*`` value, a missing file, a dataset that lacks what a
command needs, ...) is raised as :class:`UserError` whose message is one line naming the file
or variable and what to do. The commands and the trainers turn it into ``ERROR: <message>`` on
stderr and a non-zero exit, without a traceback; any other exception is a bug and keeps its
traceback.

- commands: decorate the entry point with :func:`user_errors` (exit code 2);
- trainers (inside nnU-Net's ``nnUNetv2_train``): ``nnUNetTrainerPlugin`` catches
  :class:`UserError` at its seams and raises :func:`trainer_exit` (exit code 1).

The look-ups every command shares raise it too: nnU-Net's path variables (:func:`nnunet_path`) and
the dataset of ``-d`` (:func:`dataset_name`, :func:`dataset_json_of`).

The subclasses also derive from the matching built-in exception, so ``except ValueError`` /
``except FileNotFoundError`` callers keep working.
"""
from __future__ import annotations

import functools
import sys
from typing import Callable, NoReturn, TypeVar

F = TypeVar("F", bound=Callable)

EXIT_CODE = 2


class UserError(Exception):
    """A known user error; ``str(error)`` is the one-line message shown as ``ERROR: ...``."""


class UserValueError(UserError, ValueError):
    """A bad value (variable, argument, file content)."""


class UserFileNotFoundError(UserError, FileNotFoundError):
    """A file or folder the user must provide is missing."""


class UserFileExistsError(UserError, FileExistsError):
    """A file would be overwritten without ``--force``."""


class UserRuntimeError(UserError, RuntimeError):
    """A required setting or earlier step is missing."""


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line."""
    return " ".join(str(error).split())


def fail(message: str, code: int = EXIT_CODE) -> NoReturn:
    """Print ``ERROR: message`` to stderr and exit with ``code``."""
    print(f"ERROR: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    sys.exit(code)


def user_errors(entry: F) -> F:
    """Decorator for a command's entry point: :class:`UserError` -> ``ERROR: ...``, exit 2."""
    @functools.wraps(entry)
    def wrapper(*args, **kwargs):
        try:
            return entry(*args, **kwargs)
        except UserError as error:
            fail(one_line(error))
    return wrapper  # type: ignore[return-value]


def nnunet_path(variable) -> str:
    """The value of one of nnU-Net's path variables (an ``nnunetv2.paths`` object such as
    ``nnUNet_raw``); :class:`UserError` naming it when it is unset."""
    value = variable.get()
    if value is None:
        raise UserRuntimeError(f"{variable.env_var_name} is not defined: set it to the folder nnU-Net uses for "
                               f"it (nnU-Net's documentation/setting_up_paths.md)")
    return value


def dataset_name(dataset) -> str:
    """nnU-Net's ``DatasetXXX_Name`` (a plain ``str``) for a name or id given on a command line (``-d``);
    :class:`UserError` when nnU-Net cannot find it. Every command that takes ``-d`` resolves it here."""
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw, nnUNet_results
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    try:
        return str(maybe_convert_to_dataset_name(dataset))
    except (RuntimeError, ValueError) as error:
        if isinstance(error, ValueError):
            problem = "not a dataset id or name: give a dataset id (e.g. 27) or a name DatasetXXX_Name"
        else:
            folders = ", ".join(f"{v.env_var_name}={v!r}" for v in (nnUNet_raw, nnUNet_preprocessed, nnUNet_results))
            problem = (f"more than one DatasetXXX_* folder with this id in {folders}: rename one"
                       if "More than one" in str(error) else
                       f"no DatasetXXX_* folder with this id in {folders}: check the id and these variables")
        raise UserValueError(f"dataset '{dataset}': {problem}") from None


def dataset_json_of(dataset) -> dict:
    """The ``dataset.json`` of a dataset name or id, from nnUNet_raw, else nnUNet_preprocessed."""
    from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw

    name = dataset_name(dataset)
    for root in (nnUNet_raw, nnUNet_preprocessed):
        if root.is_set() and isfile(join(root.get(), name, "dataset.json")):
            return load_json(join(root.get(), name, "dataset.json"))
    raise UserFileNotFoundError(f"dataset '{dataset}': no {name}/dataset.json in nnUNet_raw={nnUNet_raw!r} or "
                                f"nnUNet_preprocessed={nnUNet_preprocessed!r}; set these variables or give another "
                                f"dataset")


def trainer_exit(error: UserError) -> SystemExit:
    """``SystemExit`` that prints ``ERROR: ...`` without traceback (exit 1): ``raise trainer_exit(e) from None``."""
    return SystemExit(f"ERROR: {one_line(error)}")
