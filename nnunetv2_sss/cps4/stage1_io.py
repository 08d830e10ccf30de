"""Where CPS4 stage 1 keeps its result, and how stage 2 loads it.

``nnUNet_results/DatasetXXX_Name/cps4_pretraining__PLANS__CONFIGURATION/fold_K/`` holds
``cps4_stage1.pt`` (model config, weights incl. the class-prompt embeddings, metadata),
``cps4_stage1.json`` (the same metadata, readable), ``training_log.csv`` and
``attention_maps/``. Weights and metadata are written atomically
(:func:`nnunetv2_sss.atomic_files.write_atomically`), so a reader never sees a half-written file.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional, Union

import torch

from nnunetv2_sss.atomic_files import write_atomically, write_text_atomically
from nnunetv2_sss.cps4.model import ClassPromptConfig, ClassPromptModel
from nnunetv2_sss.errors import UserFileNotFoundError, UserValueError, nnunet_path

FOLDER_PREFIX = "cps4_pretraining"
WEIGHTS_FILE = "cps4_stage1.pt"
METADATA_FILE = "cps4_stage1.json"
FORMAT_VERSION = 1


def stage1_output_folder(dataset_name: str, plans: str, fold: int, configuration: str = "2d",
                         results_root: Optional[Union[str, Path]] = None) -> Path:
    """Stage-1 folder of a dataset/plans/fold; ``results_root`` defaults to ``nnUNet_results``."""
    if results_root is None:
        from nnunetv2.paths import nnUNet_results
        results_root = nnunet_path(nnUNet_results)
    return Path(results_root) / dataset_name / f"{FOLDER_PREFIX}__{plans}__{configuration}" / f"fold_{fold}"


def save_stage1(folder: Path, model: ClassPromptModel, metadata: dict) -> None:
    """Write weights + config + metadata (JSON-serialisable dict) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = {"format_version": FORMAT_VERSION, "config": model.cfg.to_dict(),
                  "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                  "metadata": metadata}
    rerun = f"run `{_command_hint(folder)}` again"
    write_atomically(folder / WEIGHTS_FILE, lambda f: torch.save(checkpoint, f), then=rerun)
    write_text_atomically(folder / METADATA_FILE, json.dumps({"config": model.cfg.to_dict(), **metadata}, indent=2),
                          then=rerun)


def _command_hint(folder: Path) -> str:
    """The stage-1 command that writes ``folder`` (read from the folder's name where possible)."""
    match = re.fullmatch(rf"{FOLDER_PREFIX}__(.+)__(.+)", folder.parent.name)
    fold = folder.name.removeprefix("fold_")
    if match is None:
        return "nnUNetv2_sss_pretrain_cps4 -d DATASET -c 2d -f FOLD"
    return f"nnUNetv2_sss_pretrain_cps4 -d {folder.parent.parent.name} -c {match[2]} -f {fold} -p {match[1]}"


def read_stage1_metadata(folder: Union[str, Path]) -> dict:
    """The metadata dict saved with the stage-1 weights (class names, prompts, cases, ...)."""
    return _read_checkpoint(Path(folder))["metadata"]


def _read_checkpoint(folder: Path) -> dict:
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise UserFileNotFoundError(f"CPS4 stage-1 weights {path} not found: run `{_command_hint(folder)}` first")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if checkpoint.get("format_version") != FORMAT_VERSION:
        raise UserValueError(f"{path}: unknown format version {checkpoint.get('format_version')!r}: re-run "
                             f"`{_command_hint(folder)}`")
    return checkpoint


def load_stage1(folder: Union[str, Path], device: Union[str, torch.device] = "cpu", *,
                num_input_channels: Optional[int] = None, num_classes: Optional[int] = None) -> ClassPromptModel:
    """The frozen (eval mode, no gradients) stage-1 model of ``folder`` on ``device``.

    When given, ``num_input_channels`` / ``num_classes`` (labels incl. background) are checked
    against what stage 1 was trained with.
    """
    folder = Path(folder)
    checkpoint = _read_checkpoint(folder)
    state = checkpoint["state_dict"]
    model = ClassPromptModel(ClassPromptConfig.from_dict(checkpoint["config"]), state["text_embeddings"])
    trained = {"input channels": (model.cfg.vit.in_channels, num_input_channels),
               "classes": (model.num_classes, num_classes)}
    for what, (have, want) in trained.items():
        if want is not None and have != want:
            raise UserValueError(f"CPS4 stage 1 in {folder} was trained with {have} {what}, this training has {want}: "
                             f"re-run `{_command_hint(folder)}`")
    model.load_state_dict(state)
    model.requires_grad_(False)
    return model.to(device).eval()
