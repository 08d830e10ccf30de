"""``nnUNetv2_sss_suggest``: which scans of the unlabeled pool to label next.

    nnUNetv2_sss_suggest -d D -c C -tr TRAINER -f FOLDS [-p PLANS] [-chk CHECKPOINT] -n K --strategy S
        [--aggregate top-k|foreground-mean|mean] [--top-fraction 0.01] [--seed 0] [--hidden-only] [-o OUT]
        [-device cuda|cpu] [--disable-tta] [--clean]

Scores every scan of the fold's unlabeled pool (``data/unlabeled_pool.py``: ``imagesUnlabeled`` preprocessed
with ``nnUNetv2_sss_preprocess_unlabeled``, and the training cases ``splits_semi_supervised.json`` hides in
every given fold; only the latter with ``--hidden-only``) with a trained model of any nnU-Net or plugin
trainer, through nnU-Net's predictor (``members.py``), and writes the K the strategy chooses
(``strategies/``) into OUT (default ``<model folder>/suggestions/<strategy>__folds<F>``):

- ``suggestions.csv``: rank, case, score, uncertainty, predicted foreground volume per class (mL),
  strategy, model, folds;
- ``montages/<rank>_<case>.png``: the image, the prediction and the uncertainty map on the scan's most
  uncertain slices;
- ``command.json``: the command, the model (SHA-256 of each checkpoint), its predictions, the settings,
  the pool, the scoring time per scan, the suggestions;
- ``cases/<case>.npz``: each scored scan (``records.py``), written whole when it is done: a killed run
  continues where it stopped (``scoring.json`` holds the settings it must keep; ``--clean`` starts over).

Refused before any prediction, with one ``ERROR:`` line: a model that is missing or of another dataset,
plans, configuration or labels; an empty pool; K below 1 or larger than the pool; a strategy that needs
several predictions of a model that makes one (one fold, ``--disable-tta``, no EMA partner); a folder
holding scores of other settings or of an older checkpoint.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import join

from nnunetv2_sss.active import strategies
from nnunetv2_sss.active.outputs import CASES, Pool, Suggestion, prepare_output, write_outputs
from nnunetv2_sss.active.records import done_cases, read_record, write_record
from nnunetv2_sss.active.strategies.base import Strategy
from nnunetv2_sss.active.voxels import AGGREGATIONS
from nnunetv2_sss.data.splits import SEMI_SUPERVISED_SPLITS_FILE
from nnunetv2_sss.errors import UserRuntimeError, UserValueError, user_errors
from nnunetv2_sss.trained_model import (DatasetPlans, TrainedModel, add_model_arguments, check_model, dataset_plans,
                                        load_preprocessed_case)
from nnunetv2_sss.version import command_parser


@dataclass
class Options:
    """How scans are scored and drawn (``--aggregate``, ``--top-fraction``, ``--seed``, ``-device``,
    ``--disable-tta``)."""
    aggregate: str = "top-k"
    top_fraction: float = 0.01
    seed: int = 0
    device: str = "cpu"
    use_mirroring: bool = True
    tile_step_size: float = 0.5


def default_output(dataset: DatasetPlans, model: TrainedModel, strategy: str) -> str:
    folds = "-".join(map(str, model.folds))
    return join(model.folder(dataset.results_base), "suggestions", f"{strategy}__folds{folds}")


def check_request(pool: Pool, k: int, options: Options) -> int:
    """The pool's size; a user error for an empty pool, K out of range or a bad option."""
    size = sum(len(cases) for _, cases in pool)
    if size == 0:
        raise UserRuntimeError("the unlabeled pool is empty: nothing to suggest")
    if not 1 <= k <= size:
        raise UserValueError(f"-n {k}: choose between 1 and the {size} scans of the unlabeled pool "
                             f"({', '.join(f'{folder}: {len(cases)}' for folder, cases in pool)})")
    if options.aggregate not in AGGREGATIONS:
        raise UserValueError(f"--aggregate {options.aggregate}: one of {', '.join(AGGREGATIONS)}")
    if not 0 < options.top_fraction <= 1:
        raise UserValueError(f"--top-fraction {options.top_fraction}: give a fraction in (0, 1]")
    return size


def check_strategy(strategy: Strategy, members, folder: str) -> None:
    """A user error when the model cannot give what the strategy needs."""
    if members.predictor.label_manager.has_regions:
        raise UserValueError(f"{folder}: the model predicts regions (sigmoid outputs); nnUNetv2_sss_suggest scores "
                             f"softmax predictions of labels only")
    if len(members.members) < strategy.min_predictions:
        raise UserValueError(f"--strategy {strategy.name} needs at least {strategy.min_predictions} predictions of "
                             f"each scan; {folder} gives {members.description()}: give several folds (-f 0 1 2 3 4), "
                             f"leave out --disable-tta, or use a trainer with an EMA teacher")
    if strategy.needs_features and not hasattr(members.network, "encoder"):
        raise UserValueError(f"--strategy {strategy.name} needs the encoder features of the network, and "
                             f"{type(members.network).__name__} ({folder}) has no 'encoder' module: choose another "
                             f"strategy")


def score_cases(todo: Sequence[str], locations: Dict[str, str], members, strategy: Strategy, options: Options,
                folder: str) -> None:
    """Predict and score each case of ``todo``; each record written as soon as it is done."""
    from nnunetv2_sss.active.scoring import score_case, voxel_volume_ml
    predictor = members.predictor
    for index, case in enumerate(todo, 1):
        started = time.perf_counter()
        data, properties = load_preprocessed_case(locations[case], case)
        prediction = members.predict(data, strategy.needs_members, strategy.needs_features)
        voxel_ml = voxel_volume_ml(properties, predictor.plans_manager.transpose_forward,
                                   predictor.configuration_manager.spacing)
        record = score_case(case, prediction, data, strategy, options.aggregate, options.top_fraction, voxel_ml,
                            time.perf_counter() - started)
        write_record(folder, record)
        print(f"[{index}/{len(todo)}] {case}: uncertainty {record.uncertainty:.4f}, predicted foreground "
              f"{record.volumes_ml.sum():.2f} mL; {record.seconds:.1f} s", flush=True)


def suggest(dataset: DatasetPlans, model: TrainedModel, pool: Pool, strategy: Strategy, k: int, output: str,
            options: Optional[Options] = None, clean: bool = False, command: str = "") -> List[Suggestion]:
    """The ``k`` scans of ``pool`` that ``strategy`` chooses with ``model``'s predictions, first to label
    first; writes OUT (the module's docstring). The simulation's entry point: any pool, any model folder
    (``dataset``: e.g. ``trained_model.plans_in`` of a study group's folders)."""
    from nnunetv2_sss.active.members import ModelMembers
    options = options or Options()
    size = check_request(pool, k, options)
    check_model(model, dataset)
    model = model.with_checksums(dataset.results_base)
    members = ModelMembers(model, dataset.results_base, options.device, options.use_mirroring, options.tile_step_size)
    check_strategy(strategy, members, model.folder(dataset.results_base))
    settings = {"dataset": dataset.name, "data_identifier": dataset.data_identifier, "model": asdict(model),
                "strategy": strategy.name, "members": members.description(), "tile_step_size": options.tile_step_size,
                "aggregate": options.aggregate, "top_fraction": options.top_fraction}
    prepare_output(output, settings, clean)
    cases_folder = join(output, CASES)
    locations = {case: folder for folder, cases in pool for case in cases}
    cases, done = sorted(locations), done_cases(cases_folder)
    rng = np.random.default_rng(options.seed)
    ranked = None if strategy.scores_pool else strategy.rank(cases, {}, k, rng)
    needed = cases if ranked is None else [case for case, _ in ranked]
    todo = [case for case in needed if case not in done]
    print(f"nnUNetv2_sss_suggest: {strategy.name}, {k} of {size} scans of {dataset.name} {model.configuration}; "
          f"{model.trainer} folds {' '.join(map(str, model.folds))} ({model.checkpoint}): {members.description()}; "
          f"{len(needed)} to score ({len(needed) - len(todo)} already done); {output}", flush=True)
    score_cases(todo, locations, members, strategy, options, cases_folder)
    records = {case: read_record(cases_folder, case) for case in needed}
    if ranked is None:
        ranked = strategy.rank(cases, records, k, rng)
    suggestions = [Suggestion(rank, case, score, records[case]) for rank, (case, score) in enumerate(ranked, 1)]
    write_outputs(output, suggestions, members, dataset, model, strategy, options, command, pool, records)
    return suggestions


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(prog="nnUNetv2_sss_suggest", description=__doc__.split("\n\n")[0])
    add_model_arguments(parser, "the model's", trainer_help="trainer of the model (any nnU-Net or plugin trainer)",
                        folds_help="folds of the model (several: the fold ensemble)")
    parser.add_argument("-n", type=int, required=True, help="how many scans to suggest")
    chosen = strategies.available()
    parser.add_argument("--strategy", required=True, choices=list(chosen),
                        help="; ".join(f"{name}: {cls.summary}" for name, cls in chosen.items()))
    parser.add_argument("--aggregate", default="top-k", choices=AGGREGATIONS,
                        help="how a scan's score aggregates its voxels: top-k (mean of the --top-fraction most "
                             "uncertain voxels, default), foreground-mean (mean over the predicted foreground), mean")
    parser.add_argument("--top-fraction", type=float, default=0.01,
                        help="share of voxels top-k averages (default 0.01)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random strategies (default 0)")
    parser.add_argument("--hidden-only", action="store_true",
                        help="the pool without imagesUnlabeled: only the training cases splits_semi_supervised.json "
                             "hides in the folds (a simulation on a fully labeled pool: their labels can be revealed)")
    parser.add_argument("-o", default=None,
                        help="output folder (default <model folder>/suggestions/<strategy>__folds<F>)")
    parser.add_argument("-device", default=None, choices=("cpu", "cuda", "mps"),
                        help="default: cuda if available, else cpu")
    parser.add_argument("--disable-tta", action="store_true", help="predict without mirroring (one pass per model)")
    parser.add_argument("--clean", action="store_true", help="discard the scores already in the output folder")
    return parser


@user_errors
def main(argv: Optional[List[str]] = None) -> None:
    from nnunetv2_sss.data.unlabeled_pool import require_unlabeled_sources
    from nnunetv2_sss.devices import torch_device
    args = build_parser().parse_args(argv)
    folds = [f if f == "all" else int(f) for f in args.f]
    dataset = dataset_plans(args.d, args.c, args.p)
    model = TrainedModel(args.tr, args.p, args.c, folds, args.chk)
    pool = require_unlabeled_sources(dataset.preprocessed_base, dataset.data_identifier, folds, "nnUNetv2_sss_suggest",
                                     args.c, args.p)
    if args.hidden_only:
        pool = [(folder, cases) for folder, cases in pool if folder == join(dataset.preprocessed_base,
                                                                            dataset.data_identifier)]
        if not pool:
            raise UserRuntimeError(f"--hidden-only: {join(dataset.preprocessed_base, SEMI_SUPERVISED_SPLITS_FILE)} "
                                   f"hides no training case in fold(s) {' '.join(args.f)}; make label-scarcity "
                                   f"splits with nnUNetv2_sss_make_splits")
    options = Options(args.aggregate, args.top_fraction, args.seed, torch_device(args.device), not args.disable_tta)
    command = " ".join(["nnUNetv2_sss_suggest"] + [shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)])
    suggestions = suggest(dataset, model, pool, strategies.get(args.strategy), args.n,
                          args.o or default_output(dataset, model, args.strategy), options, args.clean, command)
    for s in suggestions:
        print(f"{s.rank:3d}. {s.case}  score {s.score:.4g}", flush=True)


if __name__ == "__main__":
    main()
