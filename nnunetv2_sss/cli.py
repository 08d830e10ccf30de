"""The ``nnUNetv2_sss_*`` commands of the foundation (argument parsing only)."""
from __future__ import annotations

import os

from nnunetv2_sss.errors import UserFileNotFoundError, dataset_json_of, dataset_name, nnunet_path, user_errors
from nnunetv2_sss.version import command_parser


def trainers_path_entry() -> None:
    """Print the folder to put into ``nnUNet_extTrainer``."""
    command_parser(description="Print the folder of the plugin's trainers, for "
                               "export nnUNet_extTrainer=$(nnUNetv2_sss_trainers_path).").parse_args()
    import nnunetv2_sss.trainers
    print(os.path.dirname(os.path.abspath(nnunetv2_sss.trainers.__file__)))


@user_errors
def preprocess_unlabeled_entry() -> None:
    parser = command_parser(
        description="Preprocess nnUNet_raw/DatasetXXX/imagesUnlabeled with the dataset's plans into "
                    "nnUNet_preprocessed/DatasetXXX/<data_identifier>_unlabeled.")
    parser.add_argument("-d", required=True, help="dataset name or id")
    parser.add_argument("-c", nargs="+", default=["2d", "3d_fullres"], help="configurations (default: 2d 3d_fullres)")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    parser.add_argument("-np", type=int, default=None, help="processes (default: nnU-Net's default_num_processes)")
    parser.add_argument("--clean", action="store_true", help="redo cases that are already preprocessed")
    parser.add_argument("--reorient", action="store_true",
                        help="preprocess scans whose orientation differs from the training images' reoriented to "
                             "it (default: refuse them); the raw files are not changed")
    args = parser.parse_args()

    from nnunetv2.configuration import default_num_processes
    from nnunetv2_sss.data.unlabeled_preprocessing import preprocess_unlabeled
    preprocess_unlabeled(args.d, args.c, args.p, args.np if args.np is not None else default_num_processes,
                         args.clean, args.reorient)


@user_errors
def check_images_entry() -> None:
    parser = command_parser(
        description="Check a folder of images before nnUNetv2_predict (or any other use): nnU-Net file names and "
                    "channels of the dataset's dataset.json, readable headers, channels of a case sharing their "
                    "geometry, complete voxel data (a truncated .nii.gz), no NaN/inf, no constant image. Prints "
                    "'N cases OK', or one ERROR line naming the first bad file (exit code 2).")
    parser.add_argument("-i", required=True, help="folder of images (CASE_0000<file ending>, ...)")
    parser.add_argument("-d", required=True, help="dataset name or id (its dataset.json gives channels and reader)")
    args = parser.parse_args()

    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2_sss.data.image_checks import check_cases, find_cases

    if not os.path.isdir(args.i):
        raise UserFileNotFoundError(f"-i {args.i}: folder does not exist")
    dataset_json = dataset_json_of(args.d)
    cases = find_cases(args.i, dataset_json)
    first_file = next(iter(cases.values()))[0]
    check_cases(cases, determine_reader_writer_from_dataset_json(dataset_json, first_file, verbose=False)())
    print(f"{len(cases)} cases OK")


@user_errors
def make_splits_entry() -> None:
    parser = command_parser(
        description="Five-fold splits with only some training cases labeled: writes splits_final.json "
                    "(train = labeled cases) and splits_semi_supervised.json (labeled / unlabeled per fold).")
    parser.add_argument("-d", required=True, help="dataset name or id")
    amount = parser.add_mutually_exclusive_group(required=True)
    amount.add_argument("--num-labeled", type=int, help="labeled cases (or groups) per fold")
    amount.add_argument("--labeled-fraction", type=float, help="share of each fold's training cases that is labeled")
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--group-regex", default=None,
                        help="keep cases whose ids share this regex match together, e.g. 'patient\\d+' for ACDC")
    parser.add_argument("--force", action="store_true", help="replace an existing splits_final.json")
    args = parser.parse_args()

    from batchgenerators.utilities.file_and_folder_operations import join, load_json
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets
    from nnunetv2_sss.data.splits import group_by_regex, make_semi_supervised_splits

    raw, preprocessed = nnunet_path(nnUNet_raw), nnunet_path(nnUNet_preprocessed)
    name = dataset_name(args.d)
    raw_folder = join(raw, name)
    if not os.path.isfile(join(raw_folder, "dataset.json")):
        raise UserFileNotFoundError(f"{join(raw_folder, 'dataset.json')} not found: make_splits reads the training "
                                    f"cases of the raw dataset")
    training_cases = get_filenames_of_train_images_and_targets(raw_folder, load_json(join(raw_folder, "dataset.json")))
    identifiers = [str(case) for case in training_cases]  # nnU-Net's are numpy strings
    splits = make_semi_supervised_splits(join(preprocessed, name), identifiers, args.num_labeled,
                                         args.labeled_fraction, args.seed, args.folds,
                                         group_by_regex(args.group_regex), args.force)
    for fold, split in enumerate(splits):
        print(f"fold {fold}: {len(split['labeled'])} labeled, {len(split['unlabeled'])} unlabeled")


@user_errors
def make_demo_dataset_entry() -> None:
    parser = command_parser(
        description="Build a built-in dataset (pseudo-subjects deformed from the MNI152 template shipped with "
                    "nilearn) in nnUNet_raw: --task brain = grey/white matter (Dataset990_DemoBrain, the pipeline "
                    "demo), --task lesion = CT-like haemorrhage cores with oedema rims (Dataset991_DemoLesion, "
                    "the semi-supervised benchmark; nnunetv2_sss/data/lesion_dataset.py).")
    parser.add_argument("--task", choices=("brain", "lesion"), default="brain", help="which dataset (default brain)")
    parser.add_argument("-d", type=int, default=None, help="dataset id (default 990 brain, 991 lesion)")
    parser.add_argument("--labeled", type=int, default=None, help="imagesTr cases (default 8 brain, 20 lesion)")
    parser.add_argument("--unlabeled", type=int, default=None, help="imagesUnlabeled (default 12 brain, 20 lesion)")
    parser.add_argument("--test", type=int, default=None, help="imagesTs cases (default 4 brain, 10 lesion)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from nnunetv2.paths import nnUNet_raw
    from nnunetv2_sss.data.demo_dataset import build_demo_dataset
    from nnunetv2_sss.data.lesion_dataset import build_lesion_dataset
    build, defaults = {"brain": (build_demo_dataset, (990, 8, 12, 4)),
                       "lesion": (build_lesion_dataset, (991, 20, 20, 10))}[args.task]
    values = [default if given is None else given
              for given, default in zip((args.d, args.labeled, args.unlabeled, args.test), defaults)]
    folder = build(nnunet_path(nnUNet_raw), *values, seed=args.seed)
    print(folder)
