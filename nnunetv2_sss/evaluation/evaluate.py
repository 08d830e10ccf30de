"""``nnUNetv2_sss_evaluate``: Dice %, Jaccard %, HD95, ASD and ASSD (voxels and mm) of a folder
of predictions against a folder of references, per case and per class, mean ± std over cases.

Images are read with the reader/writer nnU-Net picks for the dataset (its ``dataset.json``),
so the spacing comes from the image headers in the array's axis order. Metric definitions
and the handling of empty masks: :mod:`nnunetv2_sss.evaluation.metrics`.

Summary rules: a class's mean and std (numpy ``nanmean`` / ``nanstd``, ddof 0) are taken
over the cases where the metric is defined (see ``n``, the number of those cases).
``foreground_mean`` averages, per case, the classes where the metric is defined, then takes
mean ± std over cases; with no undefined values that equals nnU-Net's mean of class means.
``--merge-foreground`` adds the class "all labels > 0 as one" (key ``"(1, 2, ...)"``, the way
nnU-Net names a region) and makes it the headline result (the BHSD Table 2 setting).

Every reference needs a prediction of the same file name: missing ones are named and the
command fails (exit 2) unless ``--allow-missing`` is given (then they are listed in the
output json, ``references_without_prediction``). User errors (missing folders or files, a bad
``-d``, an unreadable or truncated file, predictions that do not fit their reference) print one
``ERROR: ...`` line, exit 2; every file is checked before the metrics are computed.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
import warnings
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import load_json, save_json

from nnunetv2_sss.data.image_checks import check_complete
from nnunetv2_sss.errors import UserFileNotFoundError, UserValueError, dataset_json_of, user_errors
from nnunetv2_sss.evaluation.metrics import METRIC_NAMES, binary_metrics
from nnunetv2_sss.version import command_parser

LabelOrRegion = Union[int, Tuple[int, ...]]
DEFAULT_OUTPUT_NAME = "summary_sss.json"
FOREGROUND_MEAN = "foreground_mean"


def label_key(label_or_region: LabelOrRegion) -> str:
    """nnU-Net's key for a label (``"2"``) or a region (``"(1, 2)"``) in summary files."""
    return str(label_or_region)


def evaluation_targets(dataset_json: dict, merge_foreground: bool) -> List[LabelOrRegion]:
    """The foreground labels (or regions) of the dataset, plus the merged foreground if asked."""
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    manager = LabelManager(dataset_json["labels"], dataset_json.get("regions_class_order"))
    if manager.has_ignore_label:
        raise UserValueError(f"dataset.json: declares an ignore label ({manager.ignore_label}); "
                             "nnUNetv2_sss_evaluate does not define surface distances around ignored voxels")
    as_python = lambda t: tuple(int(v) for v in t) if isinstance(t, (tuple, list)) else int(t)  # noqa: E731
    targets = [as_python(t) for t in (manager.foreground_regions if manager.has_regions
                                      else manager.foreground_labels)]
    if merge_foreground:
        targets.append(as_python(manager.foreground_labels))
    return targets


def target_mask(segmentation: np.ndarray, target: LabelOrRegion) -> np.ndarray:
    """Boolean mask of one label, or of the union of a region's labels."""
    if isinstance(target, tuple):
        return np.isin(segmentation, target)
    return segmentation == target


def read_segmentation(reader, path: str) -> Tuple[np.ndarray, np.ndarray]:
    """(segmentation array without the channel axis, spacing in mm per array axis)."""
    segmentation, properties = reader.read_seg(path)
    return segmentation[0].astype(np.int32, copy=False), np.asarray(properties["spacing"], dtype=float)


def evaluate_case(reference_file: str, prediction_file: str, reader,
                  targets: Sequence[LabelOrRegion], known_labels: Sequence[int]) -> dict:
    """Metrics of every target of one case, in nnU-Net's ``metric_per_case`` entry format."""
    reference, spacing = read_segmentation(reader, reference_file)
    prediction, prediction_spacing = read_segmentation(reader, prediction_file)
    if reference.shape != prediction.shape:
        raise UserValueError(f"{prediction_file}: shape {prediction.shape} differs from reference "
                             f"{reference_file} {reference.shape}")
    if not np.allclose(spacing, prediction_spacing, rtol=1e-3):
        raise UserValueError(f"{prediction_file}: spacing {tuple(prediction_spacing)} differs from reference "
                             f"{reference_file} {tuple(spacing)}")
    for path, array in ((reference_file, reference), (prediction_file, prediction)):
        unknown = sorted(set(np.unique(array).tolist()) - set(known_labels))
        if unknown:
            raise UserValueError(f"{path}: labels {unknown} are not in dataset.json (labels {list(known_labels)})")
    metrics = {label_key(t): binary_metrics(target_mask(reference, t), target_mask(prediction, t), spacing)
               for t in targets}
    return {"reference_file": reference_file, "prediction_file": prediction_file,
            "spacing_mm": spacing.tolist(), "metrics": metrics}


def summarize(values: np.ndarray) -> Dict[str, float]:
    """mean, std (ddof 0) and count of the finite entries of a 1-D array."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": float(finite.mean()), "std": float(finite.std()), "n": int(finite.size)}


def summarize_cases(per_case: List[dict], class_keys: Sequence[str], merged_key: Optional[str]) -> dict:
    """mean/std/n per class and metric, the foreground mean and the headline key."""
    summary = {"mean": {}, "std": {}, "n": {}}
    for key in list(class_keys) + ([merged_key] if merged_key else []):
        for statistic in summary:
            summary[statistic][key] = {}
        for name in METRIC_NAMES:
            stats = summarize(np.array([case["metrics"][key][name] for case in per_case], dtype=float))
            for statistic in summary:
                summary[statistic][key][name] = stats[statistic]
    summary[FOREGROUND_MEAN] = {}
    for name in METRIC_NAMES:
        table = np.array([[case["metrics"][k][name] for k in class_keys] for case in per_case], dtype=float)
        with warnings.catch_warnings():  # a case where no class defines the metric gives NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            summary[FOREGROUND_MEAN][name] = summarize(np.nanmean(table, axis=1))
    summary["headline"] = merged_key or FOREGROUND_MEAN
    return summary


def matched_files(reference_folder: str, prediction_folder: str, file_ending: str
                  ) -> Tuple[List[str], List[str], List[str]]:
    """(reference files, prediction files, sorted file names of the references without a
    prediction); every prediction must have a reference of the same name."""
    for option, folder in (("-ref", reference_folder), ("-pred", prediction_folder)):
        if not os.path.isdir(folder):
            raise UserFileNotFoundError(f"{option} {folder}: folder does not exist")
    predictions = sorted(f for f in os.listdir(prediction_folder) if f.endswith(file_ending))
    if not predictions:
        raise UserFileNotFoundError(f"-pred {prediction_folder}: no '*{file_ending}' files (the file ending of "
                                    "dataset.json); predict into this folder first")
    references = {f for f in os.listdir(reference_folder) if f.endswith(file_ending)}
    orphans = [f for f in predictions if f not in references]
    if orphans:
        raise UserFileNotFoundError(f"-ref {reference_folder}: no reference for {len(orphans)} predictions: "
                                    f"{', '.join(orphans)}; remove them from {prediction_folder} or give the "
                                    "right reference folder")
    return ([os.path.join(reference_folder, f) for f in predictions],
            [os.path.join(prediction_folder, f) for f in predictions],
            sorted(references - set(predictions)))


def evaluate_folders(reference_folder: str, prediction_folder: str, dataset_json: dict,
                     merge_foreground: bool = False, num_processes: int = 1, allow_missing: bool = False) -> dict:
    """Evaluate every prediction of ``prediction_folder``; returns the summary dictionary
    (``metric_per_case``, ``mean``, ``std``, ``n``, ``foreground_mean``, ``headline``, ...).
    References without a prediction raise :class:`UserFileNotFoundError` naming them, unless
    ``allow_missing`` (then they are listed in ``references_without_prediction``)."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    targets = evaluation_targets(dataset_json, merge_foreground)
    references, predictions, unpredicted = matched_files(reference_folder, prediction_folder,
                                                         dataset_json["file_ending"])
    if unpredicted and not allow_missing:
        raise UserFileNotFoundError(
            f"-pred {prediction_folder}: no prediction for {len(unpredicted)} of "
            f"{len(unpredicted) + len(references)} reference cases of {reference_folder}: {', '.join(unpredicted)}; "
            "predict them, or pass --allow-missing to evaluate only the predicted cases")
    reader = determine_reader_writer_from_dataset_json(dataset_json, references[0], verbose=False)()
    for path in references + predictions:  # before the metrics: a truncated file would be read zero-filled
        check_complete(path, reader)
    known_labels = sorted({int(v) for v in _flat_label_values(dataset_json["labels"])})
    jobs = [(r, p, reader, targets, known_labels) for r, p in zip(references, predictions)]
    if num_processes > 1:
        with multiprocessing.get_context("spawn").Pool(min(num_processes, len(jobs))) as pool:
            per_case = pool.starmap(evaluate_case, jobs)
    else:
        per_case = [evaluate_case(*job) for job in jobs]
    class_keys = [label_key(t) for t in (targets[:-1] if merge_foreground else targets)]
    merged_key = label_key(targets[-1]) if merge_foreground else None
    return {"metric_per_case": per_case,
            **summarize_cases(per_case, class_keys, merged_key),
            "class_keys": class_keys,
            "label_names": _label_names(dataset_json, class_keys, merged_key),
            "reference_folder": os.path.abspath(reference_folder),
            "prediction_folder": os.path.abspath(prediction_folder),
            "num_references_without_prediction": len(unpredicted),
            "references_without_prediction": unpredicted,
            "definitions": DEFINITIONS}


def _flat_label_values(labels: dict) -> List[int]:
    values = []
    for value in labels.values():
        values.extend(value if isinstance(value, (list, tuple)) else [value])
    return values


def _label_names(dataset_json: dict, class_keys: Sequence[str], merged_key: Optional[str]) -> Dict[str, str]:
    """Readable name of each key: the dataset.json label name (first one for regions)."""
    by_value = {}
    for name, value in dataset_json["labels"].items():
        by_value.setdefault(label_key(tuple(value) if isinstance(value, list) else value), name)
    names = {key: by_value.get(key, key) for key in class_keys}
    if merged_key:
        names[merged_key] = "foreground (all labels > 0)"
    names[FOREGROUND_MEAN] = "mean over classes"
    return names


DEFINITIONS = {
    "Dice_pct": "100 * 2|A∩B| / (|A|+|B|); NaN when reference and prediction are both empty",
    "Jaccard_pct": "100 * |A∩B| / |A∪B|; NaN when both are empty",
    "HD95": "95th percentile (numpy linear interpolation) of the pooled surface distances of both "
            "directions (MedPy hd95); NaN when either mask is empty",
    "ASD": "mean distance from the prediction's surface voxels to the reference surface, one direction "
           "(MedPy asd(pred, gt), as SSL4MIS and the papers); NaN when either mask is empty",
    "ASSD": "mean of the pooled surface distances of both directions (average symmetric surface distance, "
            "MedPy >= 0.5 assd); NaN when either mask is empty",
    "surface": "voxels with a face neighbour outside the mask; image border counts as outside",
    "units": "_vox: spacing 1 per axis; _mm: spacing of the reference image header",
    "summary": "mean/std (ddof 0) over cases where the metric is defined; n = number of those cases",
}


def load_summary(path: str) -> dict:
    """An ``nnUNetv2_sss_evaluate`` output json; refuses one written before ASD became MedPy's
    directed ``asd`` (its "ASD" is the symmetric mean and it has no ASSD)."""
    result = load_json(path)
    if "ASSD" not in result.get("definitions", {}):
        raise UserValueError(f"{path}: written by an older nnUNetv2_sss_evaluate whose ASD was the symmetric mean "
                             "(no ASSD); run nnUNetv2_sss_evaluate again to rewrite it")
    return result


def stats_of(result: dict, key: str) -> Dict[str, Dict[str, float]]:
    """{metric: {"mean", "std", "n"}} of one key of a summary (a class, the merged
    foreground or ``foreground_mean``)."""
    if key == FOREGROUND_MEAN:
        return result[FOREGROUND_MEAN]
    return {name: {s: result[s][key][name] for s in ("mean", "std", "n")} for name in METRIC_NAMES}


def format_table(result: dict) -> str:
    """A readable table of the summary: one row per class (and merged foreground / mean)."""
    keys = list(result["class_keys"]) + [k for k in result["mean"] if k not in result["class_keys"]]
    keys.append(FOREGROUND_MEAN)
    header = f"{'class':<32}" + "".join(f"{name:>18}" for name in METRIC_NAMES) + f"{'n':>5}"
    lines = [header, "-" * len(header)]
    for key in keys:
        stats = stats_of(result, key)
        cells = "".join(f"{stats[n]['mean']:>10.2f} ± {stats[n]['std']:<5.2f}" for n in METRIC_NAMES)
        marker = " *" if key == result["headline"] else ""
        lines.append(f"{(result['label_names'][key] + marker)[:32]:<32}{cells}{stats['Dice_pct']['n']:>5}")
    lines.append(f"({len(result['metric_per_case'])} cases; * = headline; n = cases with a defined Dice)")
    return "\n".join(lines)


@user_errors
def main(argv: Optional[List[str]] = None) -> None:
    from nnunetv2.configuration import default_num_processes

    parser = command_parser(prog="nnUNetv2_sss_evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("-ref", required=True, help="folder of reference segmentations")
    parser.add_argument("-pred", required=True, help="folder of predicted segmentations (same file names)")
    parser.add_argument("-d", required=True, help="dataset name or id (its dataset.json gives labels and reader)")
    parser.add_argument("--merge-foreground", action="store_true",
                        help="also evaluate all labels > 0 as one class and report it as the headline")
    parser.add_argument("--allow-missing", action="store_true",
                        help="evaluate only the predicted cases when some references have no prediction "
                             "(they are named in the output json); default: fail")
    parser.add_argument("-o", default=None, help=f"output json (default: PRED/{DEFAULT_OUTPUT_NAME})")
    parser.add_argument("-np", type=int, default=default_num_processes, help="worker processes")
    args = parser.parse_args(argv)
    if args.np < 1:
        raise UserValueError(f"-np {args.np}: must be >= 1")
    output = args.o or os.path.join(args.pred, DEFAULT_OUTPUT_NAME)
    if not output.endswith(".json"):
        raise UserValueError(f"-o {output}: must end with .json")
    if args.o and not os.path.isdir(os.path.dirname(os.path.abspath(args.o))):
        raise UserFileNotFoundError(f"-o {args.o}: its folder does not exist; create it first")
    result = evaluate_folders(args.ref, args.pred, dataset_json_of(args.d), args.merge_foreground, args.np,
                              args.allow_missing)
    save_json(result, output, sort_keys=False)
    print(format_table(result))
    missing = result["references_without_prediction"]
    if missing:
        print(f"WARNING: not evaluated (--allow-missing): {len(missing)} reference cases of {args.ref} have no "
              f"prediction: {', '.join(missing)} (listed in {output} as references_without_prediction)",
              file=sys.stderr)
    print(f"written {output}")
