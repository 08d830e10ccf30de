"""CPS4 stage 1: class-specific vision–language pretraining on the fold's labeled cases.

``nnUNetv2_sss_pretrain_cps4 -d ID -c 2d -f FOLD [-p nnUNetPlans] [--device cpu|cuda] ...``

Trains the ViT, the two projection heads and the temperature with
``½ (L_token + L_pixel)`` (``losses.py``), Adam (lr 1e-5 by default) and the paper's
ReduceLR scheduler (``ReduceLROnPlateau`` on the validation loss, torch's defaults:
factor 0.1, patience 10 epochs). The text encoder is frozen: the prompt embeddings are
computed once at the start. Length: ``num_epochs`` x ``iterations_per_epoch``, overridden by
``nnUNet_sss_num_epochs`` / ``nnUNet_sss_iterations_per_epoch``. Output: see ``stage1_io``.
"""
from __future__ import annotations

import csv
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Optional

import torch
from tqdm import tqdm

from nnunetv2_sss import settings
from nnunetv2_sss.cps4.attention_png import save_attention_pngs
from nnunetv2_sss.cps4.losses import stage1_loss
from nnunetv2_sss.cps4.model import ClassPromptConfig, ClassPromptModel
from nnunetv2_sss.cps4.prompts import (DEFAULT_TEMPLATE, class_label_names, class_prompts, load_readable_names,
                                       readable_class_names)
from nnunetv2_sss.cps4.stage1_data import check_cases_exist, fixed_slices, fold_cases, training_batches
from nnunetv2_sss.cps4.stage1_io import save_stage1, stage1_output_folder
from nnunetv2_sss.cps4.text_encoder import encode_prompts, text_encoder_folder
from nnunetv2_sss.cps4.vision import ViTConfig, load_vision_weights
from nnunetv2_sss.devices import torch_device
from nnunetv2_sss.errors import (UserFileNotFoundError, UserValueError, dataset_name as user_dataset_name,
                                 nnunet_path, user_errors)
from nnunetv2_sss.version import command_parser

LOG_FILE = "training_log.csv"
ATTENTION_FOLDER = "attention_maps"
LOG_FIELDS = ["epoch", "train_loss", "train_token", "train_pixel", "val_loss", "val_token", "val_pixel", "lr",
              "seconds_per_iteration"]


@dataclass
class Stage1Options:
    """Stage-1 hyper-parameters (defaults = the command's defaults)."""
    lr: float = 1e-5
    num_epochs: int = 50
    iterations_per_epoch: int = 250
    batch_size: Optional[int] = None        # None: the configuration's batch size from the plans
    template: str = DEFAULT_TEMPLATE
    class_names_file: Optional[str] = None
    vit_patch_size: int = 16
    vit_dim: int = 192
    vit_depth: int = 6
    vit_heads: int = 3
    embed_dim: int = 128
    vision_weights: Optional[str] = None
    num_visualised: int = 4                 # validation slices in the attention PNGs and the val loss


@dataclass
class Stage1Setup:
    """Everything checked and resolved before the long work starts."""
    dataset_name: str
    data_folder: Path
    output_folder: Path
    label_manager: object
    configuration_manager: object
    label_names: list
    prompts: list
    in_channels: int
    patch_size: tuple
    batch_size: int
    train_cases: list
    val_cases: list


def prepare_stage1(dataset: str, configuration: str, fold: int, plans: str, options: Stage1Options) -> Stage1Setup:
    """Resolve and validate dataset, plans, configuration, split, labels and prompts (no heavy work)."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    preprocessed = nnunet_path(nnUNet_preprocessed)
    dataset_name = user_dataset_name(dataset)
    base = Path(preprocessed) / dataset_name
    plans_file = base / f"{plans}.json"
    if not plans_file.is_file():
        raise UserFileNotFoundError(f"plans file {plans_file} does not exist (run nnUNetv2_plan_and_preprocess "
                                    f"-d {dataset} -c {configuration})")
    plans_manager = PlansManager(str(plans_file))
    if configuration not in plans_manager.available_configurations:
        raise UserValueError(f"configuration {configuration!r} not in {plans_file} "
                             f"(available: {plans_manager.available_configurations})")
    cm = plans_manager.get_configuration(configuration)
    patch_size = tuple(int(p) for p in cm.patch_size)
    if len(patch_size) != 2:
        raise UserValueError(f"CPS4 is 2-D: configuration {configuration!r} has a {len(patch_size)}-D patch size "
                             f"(use -c 2d)")
    if any(p % options.vit_patch_size for p in patch_size):
        raise UserValueError(f"patch size {patch_size} of configuration {configuration!r} is not a multiple of "
                             f"the ViT patch size {options.vit_patch_size} (choose another --vit-patch-size)")
    dataset_json_file = base / "dataset.json"
    dataset_json = load_json(str(dataset_json_file))
    label_names = class_label_names(dataset_json["labels"], source=str(dataset_json_file))
    readable = load_readable_names(options.class_names_file, label_names) if options.class_names_file else None
    prompts = class_prompts(readable_class_names(label_names, readable), options.template)
    data_folder = base / cm.data_identifier
    if not data_folder.is_dir():
        raise UserFileNotFoundError(f"preprocessed data {data_folder} does not exist (run "
                                    f"nnUNetv2_plan_and_preprocess -d {dataset} -c {configuration})")
    train_cases, val_cases = fold_cases(base, data_folder, fold)
    check_cases_exist(data_folder, train_cases + val_cases, infer_dataset_class(str(data_folder)))
    channels = dataset_json.get("channel_names", dataset_json.get("modality"))
    return Stage1Setup(dataset_name, data_folder, stage1_output_folder(dataset_name, plans, fold, configuration),
                       plans_manager.get_label_manager(dataset_json), cm, label_names, prompts, len(channels),
                       patch_size, options.batch_size or cm.batch_size, list(train_cases), list(val_cases))


def build_model(setup: Stage1Setup, options: Stage1Options, text_embeddings: torch.Tensor) -> ClassPromptModel:
    p = options.vit_patch_size
    vit = ViTConfig(in_channels=setup.in_channels, patch_size=p,
                    grid_size=(setup.patch_size[0] // p, setup.patch_size[1] // p),
                    dim=options.vit_dim, depth=options.vit_depth, heads=options.vit_heads)
    model = ClassPromptModel(ClassPromptConfig(vit=vit, text_dim=text_embeddings.shape[1],
                                               embed_dim=options.embed_dim), text_embeddings)
    if options.vision_weights:
        load_vision_weights(model.vision, options.vision_weights)
    return model


@torch.no_grad()
def evaluate(model: ClassPromptModel, images: torch.Tensor, segs: torch.Tensor) -> Dict[str, float]:
    model.eval()
    losses = stage1_loss(model.attention_logits(images), segs)
    return {k: float(v) for k, v in losses.items()}


def train_epoch(model: ClassPromptModel, optimizer: torch.optim.Optimizer, batches, iterations: int,
                device: torch.device, description: str) -> Dict[str, float]:
    """``iterations`` optimisation steps; mean ``loss``/``token``/``pixel`` and ``seconds_per_iteration``."""
    model.train()
    sums = {"loss": 0.0, "token": 0.0, "pixel": 0.0}
    start = time.perf_counter()
    bar = tqdm(range(iterations), desc=description, dynamic_ncols=True)
    for _ in bar:
        batch = next(batches)
        images = batch["data"].to(device, non_blocking=True)
        segs = batch["target"][:, 0].to(device, non_blocking=True)
        losses = stage1_loss(model.attention_logits(images), segs)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        values = {k: v.item() for k, v in losses.items()}
        if not math.isfinite(values["loss"]):
            raise FloatingPointError(f"stage-1 loss is {values['loss']} ({description})")
        for k in sums:
            sums[k] += values[k]
        bar.set_postfix(loss=f"{values['loss']:.4f}")
    means = {k: v / iterations for k, v in sums.items()}
    return {**means, "seconds_per_iteration": (time.perf_counter() - start) / iterations}


def run_stage1(dataset: str, configuration: str, fold: int, plans: str = "nnUNetPlans",
               device: str = "cuda", options: Optional[Stage1Options] = None) -> Path:
    """Run stage 1 and return its output folder."""
    options = options or Stage1Options()
    device = torch_device(device, "--device")
    num_epochs = settings.num_epochs() or options.num_epochs
    iterations = settings.iterations_per_epoch() or options.iterations_per_epoch
    setup = prepare_stage1(dataset, configuration, fold, plans, options)
    dev = torch.device(device)
    encoder_folder = text_encoder_folder()
    print(f"CPS4 stage 1: {setup.dataset_name} fold {fold}, {len(setup.train_cases)} labeled cases, "
          f"{len(setup.label_names)} class prompts, text encoder {encoder_folder}")
    text_embeddings = encode_prompts(setup.prompts, encoder_folder)
    model = build_model(setup, options, text_embeddings).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=options.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
    val = fixed_slices(setup.data_folder, setup.val_cases or setup.train_cases, setup.patch_size,
                       options.num_visualised)
    val_images, val_segs = val.images.to(dev), val.segs.to(dev)
    batches = training_batches(setup.data_folder, setup.train_cases, setup.batch_size, setup.patch_size,
                               setup.label_manager, setup.configuration_manager, pin_memory=dev.type == "cuda")
    out = setup.output_folder
    out.mkdir(parents=True, exist_ok=True)
    try:
        with open(out / LOG_FILE, "w", newline="") as log_file:
            log = csv.DictWriter(log_file, LOG_FIELDS)
            log.writeheader()
            for epoch in range(1, num_epochs + 1):
                train = train_epoch(model, optimizer, batches, iterations, dev, f"epoch {epoch}/{num_epochs}")
                val_losses = evaluate(model, val_images, val_segs)
                scheduler.step(val_losses["loss"])
                log.writerow({"epoch": epoch, **{f"train_{k}": train[k] for k in ("loss", "token", "pixel")},
                              **{f"val_{k}": v for k, v in val_losses.items()},
                              "lr": optimizer.param_groups[0]["lr"],
                              "seconds_per_iteration": train["seconds_per_iteration"]})
                log_file.flush()
                print(f"epoch {epoch}: train loss {train['loss']:.4f}, val loss {val_losses['loss']:.4f}, "
                      f"{train['seconds_per_iteration']:.3f} s/iteration")
    finally:
        if hasattr(batches, "_finish"):
            batches._finish()
    model.eval()
    with torch.no_grad():
        attention = model(val_images)
    save_attention_pngs(out / ATTENTION_FOLDER, val.images, val.segs, attention, val.names, setup.label_names)
    metadata = {"dataset_name": setup.dataset_name, "plans": plans, "configuration": configuration, "fold": fold,
                "label_names": setup.label_names, "prompts": setup.prompts, "text_encoder": str(encoder_folder),
                "labeled_cases": setup.train_cases, "visualised_slices": val.names,
                "num_epochs": num_epochs, "iterations_per_epoch": iterations, "batch_size": setup.batch_size,
                "options": asdict(options), "final_val_loss": val_losses["loss"]}
    save_stage1(out, model, metadata)
    print(f"CPS4 stage 1 written to {out}")
    return out


@user_errors
def main(argv=None) -> None:
    defaults = Stage1Options()
    parser = command_parser(description="CPS4 stage 1: class-prompt vision–language pretraining on the "
                                        "labeled cases of one fold (2-D).")
    parser.add_argument("-d", dest="dataset", required=True, help="dataset name or id")
    parser.add_argument("-c", dest="configuration", default="2d", help="a 2-D configuration (default 2d)")
    parser.add_argument("-f", dest="fold", type=int, required=True, help="fold")
    parser.add_argument("-p", dest="plans", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda", help="default cuda")
    parser.add_argument("--template", default=defaults.template,
                        help=f"class prompt, must contain '{{class name}}' (default {defaults.template!r})")
    parser.add_argument("--class-names", dest="class_names_file", default=None,
                        help="JSON file mapping dataset.json label names to readable class names")
    parser.add_argument("--lr", type=float, default=defaults.lr, help=f"Adam learning rate (default {defaults.lr})")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the configuration's batch size")
    parser.add_argument("--vit-patch-size", type=int, default=defaults.vit_patch_size)
    parser.add_argument("--vit-dim", type=int, default=defaults.vit_dim)
    parser.add_argument("--vit-depth", type=int, default=defaults.vit_depth)
    parser.add_argument("--vit-heads", type=int, default=defaults.vit_heads)
    parser.add_argument("--embed-dim", type=int, default=defaults.embed_dim, help="shared embedding size")
    parser.add_argument("--vision-weights", default=None, help="local state-dict file for the ViT (default: random)")
    args = vars(parser.parse_args(argv))
    head = {k: args.pop(k) for k in ("dataset", "configuration", "fold", "plans", "device")}
    run_stage1(**head, options=Stage1Options(**args))
