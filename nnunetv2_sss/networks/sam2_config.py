"""Which SAM-2 image encoder to build: config names, YAML files, and the spec stored in the plans.

A SAM-2 config is a YAML file with a ``model.image_encoder`` node (``_target_`` classes of
the ``sam2`` package: ``ImageEncoder`` with a ``Hiera`` trunk and an ``FpnNeck``), as in the
package's own ``configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml`` and
``configs/sam2/sam2_hiera_{t,s,b+,l}.yaml``. ``nnUNet_sss_sam2_config`` names one of those
or is the path of a YAML file of the same schema (tests use a tiny Hiera this way).

The resolved node is written into the nnU-Net plans of the training output folder
(configuration key :data:`PLANS_KEY`), so ``nnUNetv2_predict`` rebuilds the same network
from the results folder alone, without the environment variable or the YAML file.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Optional

from nnunetv2_sss import settings
from nnunetv2_sss.errors import UserFileNotFoundError, UserValueError

PLANS_KEY = "sam2_network"
_CONFIG_FOLDERS = ("configs/sam2.1", "configs/sam2")
_ALLOWED_TARGET_PREFIX = "sam2.modeling."


def _package_config_files() -> dict[str, Path]:
    """Config name (file stem, e.g. ``sam2.1_hiera_s``) -> YAML file inside the ``sam2`` package, plus
    this plugin's reduced ``sam2_hiera_demo`` (random weights only; CPU demo and benchmarks)."""
    found = {}
    for package, folder in [("sam2", f) for f in _CONFIG_FOLDERS] + [("nnunetv2_sss.networks", "configs")]:
        for entry in (resources.files(package) / folder).iterdir():
            if entry.name.endswith(".yaml"):
                found[entry.name[: -len(".yaml")]] = Path(str(entry))
    return found


def available_config_names() -> list[str]:
    """Names accepted by ``nnUNet_sss_sam2_config`` besides YAML paths."""
    return sorted(_package_config_files())


def _is_path(name_or_path: str) -> bool:
    return name_or_path.endswith((".yaml", ".yml")) or "/" in name_or_path or "\\" in name_or_path


def _check_targets(node: Any, where: str) -> None:
    """Refuse ``_target_`` classes outside ``sam2.modeling`` (the plans file is instantiated)."""
    if isinstance(node, dict):
        target = node.get("_target_")
        if target is not None and not str(target).startswith(_ALLOWED_TARGET_PREFIX):
            raise UserValueError(f"{where}: _target_ {target!r} is not a class of {_ALLOWED_TARGET_PREFIX}*")
        for value in node.values():
            _check_targets(value, where)
    elif isinstance(node, list):
        for value in node:
            _check_targets(value, where)


def config_file(name_or_path: str) -> Path:
    """The YAML file of a SAM-2 config name or path (as for ``nnUNet_sss_sam2_config``); a missing file or
    an unknown name raises :class:`UserError` naming the variable."""
    where = f"{settings.SAM2_CONFIG}={name_or_path!r}"
    if _is_path(name_or_path):
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise UserFileNotFoundError(f"{where}: YAML file not found: {path}")
        return path
    files = _package_config_files()
    if name_or_path not in files:
        raise UserValueError(f"{where}: unknown SAM-2 config; use a path to a YAML file or one of "
                             f"{', '.join(sorted(files))}")
    return files[name_or_path]


def read_config(name_or_path: str):
    """The SAM-2 config (an OmegaConf ``DictConfig``) of a name or YAML path; a file that is no YAML mapping
    raises :class:`UserError` naming it and, for invalid YAML, the parser's line and column."""
    import yaml
    from omegaconf import DictConfig, OmegaConf  # comes with sam2 (hydra); kept out of import time

    path = config_file(name_or_path)
    where = f"{settings.SAM2_CONFIG}={name_or_path!r}"
    try:
        cfg = OmegaConf.load(path)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise UserValueError(f"{where}: {path} is not valid YAML ({at}{problem}); fix the file or use one of the "
                             f"SAM-2 config names") from None
    if not isinstance(cfg, DictConfig):
        raise UserValueError(f"{where}: {path} is not a YAML mapping with a 'model.image_encoder' node "
                             f"(SAM-2 config schema)")
    return cfg


def load_image_encoder_node(name_or_path: str) -> dict:
    """The ``model.image_encoder`` node of a SAM-2 config name or YAML file, as a plain dict.

    Raises ``ValueError``/``FileNotFoundError`` naming ``nnUNet_sss_sam2_config`` and the
    problem (unknown name, missing file, invalid YAML, no ``model.image_encoder`` node, foreign classes).
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    where = f"{settings.SAM2_CONFIG}={name_or_path!r}"
    node = OmegaConf.select(read_config(name_or_path), "model.image_encoder")
    try:
        node = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    except OmegaConfBaseException as error:
        raise UserValueError(f"{where}: model.image_encoder cannot be resolved ({str(error).splitlines()[0]})") \
            from None
    if not isinstance(node, dict):
        raise UserValueError(f"{where}: {config_file(name_or_path)} has no 'model.image_encoder' node "
                             f"(SAM-2 config schema: model: image_encoder: {{trunk: ..., neck: ...}})")
    _check_targets(node, where)
    for part in ("trunk", "neck"):
        if not isinstance(node.get(part), dict):
            raise UserValueError(f"{where}: model.image_encoder has no '{part}' node")
    return node


@dataclass(frozen=True)
class SAM2NetworkSpec:
    """Everything besides the plans that fixes the SAM-2 network's architecture.

    config: the config name or YAML path it came from (for the record only).
    image_encoder: the ``model.image_encoder`` node (hydra ``_target_`` dict).
    encoder_input_size: side length (pixels) slices are resampled to before Hiera, or
        ``None`` to feed slices at their own size (padded to Hiera's total stride).
    """

    config: str
    image_encoder: dict
    encoder_input_size: Optional[int] = None

    @classmethod
    def from_settings(cls, encoder_input_size: Optional[int] = None) -> "SAM2NetworkSpec":
        name = settings.sam2_config()
        return cls(name, load_image_encoder_node(name), encoder_input_size)

    @property
    def num_hiera_levels(self) -> int:
        """Number of feature levels the trunk/neck produce (strides 4, 8, ...)."""
        return len(self.image_encoder["neck"]["backbone_channel_list"])

    def to_plans(self) -> dict:
        return asdict(self)

    @classmethod
    def from_configuration(cls, configuration: dict, configuration_name: str = "") -> "SAM2NetworkSpec":
        """Read the spec a SAM-2 trainer wrote into a plans configuration."""
        if PLANS_KEY not in configuration:
            raise KeyError(f"plans configuration {configuration_name!r} has no {PLANS_KEY!r} entry; it is "
                           "written by the SAM-2 trainers (nnUNetTrainerSAM2 and subclasses) when they start, "
                           "use the plans.json of their results folder")
        entry = configuration[PLANS_KEY]
        _check_targets(entry["image_encoder"], f"plans entry {PLANS_KEY}")
        return cls(entry["config"], entry["image_encoder"], entry.get("encoder_input_size"))


def build_image_encoder(node: dict):
    """Instantiate SAM-2's ``ImageEncoder`` (trunk + neck) from a ``model.image_encoder`` node."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    _check_targets(node, "image_encoder node")
    return instantiate(OmegaConf.create(node), _recursive_=True)
