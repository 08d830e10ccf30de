"""Class prompts of CPS4: one sentence per label of a dataset's ``dataset.json``.

Class ``k`` of every CPS4 tensor is nnU-Net label value ``k`` (background included, the
paper prompts all 20 MRSpineSeg classes incl. background). nnU-Net's ``ignore`` label is
not a class: it gets no prompt. Region-based label definitions are rejected.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Union

from nnunetv2_sss.errors import UserFileNotFoundError, UserValueError

DEFAULT_TEMPLATE = "A magnetic resonance image of a {class name}"
PLACEHOLDER = "{class name}"
IGNORE_LABEL_NAME = "ignore"


def class_label_names(labels: Mapping[str, object], source: str = "dataset.json") -> List[str]:
    """nnU-Net label names ordered by label value ``0 … K-1`` (``ignore`` left out).

    ``labels`` is the ``labels`` entry of ``dataset.json`` (name -> int). ``source`` names
    the file in error messages.
    """
    by_value: Dict[int, str] = {}
    for name, value in labels.items():
        if name == IGNORE_LABEL_NAME:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserValueError(f"{source}: label {name!r} has value {value!r}; CPS4 needs one integer "
                                 f"per label (region-based label definitions are not supported)")
        by_value[value] = name
    if sorted(by_value) != list(range(len(by_value))) or len(by_value) < 2:
        raise UserValueError(f"{source}: label values {sorted(by_value)} must be consecutive 0..K-1 "
                             f"with background 0 and at least one foreground class")
    return [by_value[v] for v in range(len(by_value))]


def load_readable_names(path: Union[str, Path], label_names: List[str]) -> Dict[str, str]:
    """Read a JSON object mapping label names (keys of dataset.json ``labels``) to readable names."""
    path = Path(path)
    if not path.is_file():
        raise UserFileNotFoundError(f"class-names file {path} does not exist")
    try:
        mapping = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserValueError(f"class-names file {path} is not valid JSON: {e}") from None
    if not isinstance(mapping, dict) or not all(isinstance(v, str) and v.strip() for v in mapping.values()):
        raise UserValueError(f"class-names file {path} must be a JSON object of label name -> non-empty string")
    unknown = sorted(set(mapping) - set(label_names))
    if unknown:
        raise UserValueError(f"class-names file {path}: {unknown} are not labels of dataset.json "
                             f"(labels: {label_names})")
    return {k: v.strip() for k, v in mapping.items()}


def readable_class_names(label_names: List[str], readable: Optional[Mapping[str, str]] = None) -> List[str]:
    """Readable name per class: the mapping's entry, else the label name with ``_`` as spaces."""
    readable = readable or {}
    return [readable.get(name, name.replace("_", " ")) for name in label_names]


def class_prompts(class_names: List[str], template: str = DEFAULT_TEMPLATE) -> List[str]:
    """One prompt per class: ``template`` with ``{class name}`` replaced by the readable name."""
    if PLACEHOLDER not in template:
        raise UserValueError(f"prompt template {template!r} must contain {PLACEHOLDER!r}")
    return [template.replace(PLACEHOLDER, name) for name in class_names]
