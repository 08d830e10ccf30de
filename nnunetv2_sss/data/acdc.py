"""``nnUNetv2_sss_convert_acdc``: the ACDC release -> an nnU-Net v2 raw dataset laid out for
the semi-supervised protocol of the SSS paper's Table 1, plus its split files.

Table 1 follows SSL4MIS (Luo et al.; also used by BCP, AD-MT and the other rows of the
table): the 100 patients of ACDC's ``training`` folder are split into 70 training,
10 validation and 20 test patients (SSL4MIS ``data/ACDC/{train,val,test}.list``); "3 / 7
labeled" are the first 3 / 7 patients of the training list (SSL4MIS takes the first 68 / 136
slices of ``train_slices.list``, which are exactly those patients' ED and ES frames); the
other 67 / 63 training patients are used without labels. The lists are copied below.

Output ``nnUNet_raw/DatasetXXX_ACDC``: ``imagesTr``/``labelsTr`` = the 80 training +
validation patients, ``imagesTs``/``labelsTs`` = the 20 test patients; two frames (ED, ES)
per patient, named as nnU-Net's own ``Dataset027_ACDC`` conversion names them
(``patient001_frame01_0000.nii.gz``), labels as there (1 RV, 2 myocardium, 3 LV cavity).
ACDC's own ``testing`` folder (patients 101-150) is not part of the protocol and not copied.
nnU-Net's ``Dataset027_ACDC.copy_files`` is not reused because it puts all 100 training
patients into imagesTr and drops the test labels.

Split files in ``nnUNet_preprocessed/DatasetXXX_ACDC`` (the format of
:mod:`nnunetv2_sss.data.splits`): fold 0 = 3 labeled patients, fold 1 = 7 labeled patients;
both validate on the 10 validation patients. So ``nnUNetv2_train XXX 2d 0 -tr ...`` is the
"3 labeled" column of Table 1 and fold 1 the "7 labeled" column.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from batchgenerators.utilities.file_and_folder_operations import save_json

from nnunetv2_sss.errors import UserFileExistsError, UserFileNotFoundError, UserValueError, nnunet_path, user_errors

from nnunetv2_sss.data.conversion import (copy_image, copy_label, new_raw_dataset_folder, removed_on_error,
                                          require_files)
from nnunetv2_sss.data.splits import SEMI_SUPERVISED_SPLITS_FILE, group_by_regex
from nnunetv2_sss.version import command_parser

FILE_ENDING = ".nii.gz"
LABELS = {"background": 0, "RV": 1, "MLV": 2, "LVC": 3}  # as nnU-Net's Dataset027_ACDC
patient_of = group_by_regex(r"patient\d{3}")


def _patients(numbers: str) -> Tuple[str, ...]:
    return tuple(f"patient{n}" for n in numbers.split())


# SSL4MIS data/ACDC/train.list, in its order (the first 3 / 7 are the labeled patients).
TRAIN_PATIENTS = _patients(
    "099 038 050 100 058 021 049 020 072 040 060 089 004 056 098 096 031 018 094 047 048 055 097 074 043 "
    "041 063 037 095 054 026 088 032 069 006 071 012 073 061 017 025 010 057 029 051 005 036 046 062 034 "
    "076 092 070 077 067 003 091 016 014 044 042 090 053 027 035 086 023 009 079 015")
VAL_PATIENTS = _patients("028 085 082 087 019 030 078 045 002 039")  # SSL4MIS val.list
TEST_PATIENTS = _patients("011 013 084 033 093 022 068 024 083 081 080 001 007 066 008 065 075 064 059 052")
LABELED_PER_FOLD = (3, 7)  # fold 0, fold 1


def release_training_folder(acdc_folder: Path) -> Path:
    """``training/`` of the release (``ACDC/training`` or ``ACDC/database/training``)."""
    for candidate in (acdc_folder / "training", acdc_folder / "database" / "training"):
        if candidate.is_dir():
            return candidate
    raise UserFileNotFoundError(f"{acdc_folder}: neither training/ nor database/training/ exists "
                                "(expected the extracted ACDC release)")


def patient_frames(training_folder: Path, patient: str) -> List[Tuple[str, Path, Path]]:
    """[(case id, image, label)] of a patient's two annotated frames (ED and ES)."""
    folder = training_folder / patient
    if not folder.is_dir():
        raise UserFileNotFoundError(f"patient folder {folder} is missing")
    images = sorted(p for p in folder.glob(f"{patient}_frame[0-9][0-9]{FILE_ENDING}"))
    if len(images) != 2:
        raise UserValueError(f"{folder}: expected 2 annotated frames {patient}_frameXX{FILE_ENDING}, "
                             f"found {[p.name for p in images]}")
    frames = []
    for image in images:
        case = image.name[: -len(FILE_ENDING)]
        frames.append((case, image, folder / f"{case}_gt{FILE_ENDING}"))
    return frames


def table1_splits(cases: Sequence[str]) -> Tuple[List[dict], List[dict]]:
    """(``splits_final.json`` content, ``splits_semi_supervised.json`` content) of the
    protocol: one fold per entry of ``LABELED_PER_FOLD``. ``cases`` = imagesTr case ids."""
    by_patient: Dict[str, List[str]] = {}
    for case in sorted(cases):
        by_patient.setdefault(patient_of(case), []).append(case)
    expand = lambda patients: sorted(c for p in patients for c in by_patient[p])  # noqa: E731
    nnunet, semi = [], []
    for num_labeled in LABELED_PER_FOLD:
        labeled = expand(TRAIN_PATIENTS[:num_labeled])
        nnunet.append({"train": labeled, "val": expand(VAL_PATIENTS)})
        semi.append({"labeled": labeled, "unlabeled": expand(TRAIN_PATIENTS[num_labeled:])})
    return nnunet, semi


def write_table1_splits(preprocessed_dataset_folder: Path, cases: Sequence[str]) -> None:
    """Write both split files (see module docstring) into the preprocessed dataset folder."""
    nnunet, semi = table1_splits(cases)
    preprocessed_dataset_folder.mkdir(parents=True, exist_ok=True)
    save_json(nnunet, str(preprocessed_dataset_folder / "splits_final.json"), sort_keys=False)
    save_json(semi, str(preprocessed_dataset_folder / SEMI_SUPERVISED_SPLITS_FILE), sort_keys=False)


def convert_acdc(acdc_folder: str, dataset_id: int, dataset_name: str = "ACDC",
                 overwrite_splits: bool = False) -> Path:
    """Write the raw dataset and the split files; returns the raw dataset folder. All input
    files are checked before anything is written; a failure while writing removes the folder."""
    from nnunetv2.paths import nnUNet_preprocessed

    preprocessed = Path(nnunet_path(nnUNet_preprocessed))
    splits_file = preprocessed / f"Dataset{dataset_id:03d}_{dataset_name}" / "splits_final.json"
    if splits_file.exists() and not overwrite_splits:
        raise UserFileExistsError(f"{splits_file} exists; pass --overwrite-splits to replace it (models trained "
                                  "on the old splits no longer match)")
    training_folder = release_training_folder(Path(acdc_folder))
    frames = {split: [f for p in patients for f in patient_frames(training_folder, p)]
              for split, patients in (("Tr", TRAIN_PATIENTS + VAL_PATIENTS), ("Ts", TEST_PATIENTS))}
    require_files([label for split in frames.values() for _, _, label in split], "ACDC ground-truth files (_gt)")
    output = new_raw_dataset_folder(dataset_id, dataset_name)
    with removed_on_error(output):
        for split, split_frames in frames.items():
            for case, image, label in split_frames:
                copy_image(image, output / f"images{split}" / f"{case}_0000{FILE_ENDING}")
                copy_label(label, output / f"labels{split}" / f"{case}{FILE_ENDING}", list(LABELS.values()), False)
        from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
        generate_dataset_json(str(output), {0: "cineMRI"}, dict(LABELS), len(frames["Tr"]), FILE_ENDING,
                              dataset_name=output.name, numTest=len(frames["Ts"]),
                              description="ACDC, SSL4MIS protocol of the SSS paper's Table 1: 70 training / "
                                          "10 validation patients in imagesTr, 20 test patients in imagesTs",
                              reference="https://www.creatis.insa-lyon.fr/Challenge/acdc/",
                              license="see the ACDC release", converted_by="nnUNetv2_sss_convert_acdc")
        write_table1_splits(splits_file.parent, [c for c, _, _ in frames["Tr"]])
    return output


@user_errors
def main(argv: Optional[List[str]] = None) -> None:
    parser = command_parser(prog="nnUNetv2_sss_convert_acdc", description=__doc__.split("\n\n")[0])
    parser.add_argument("-i", required=True, help="extracted ACDC release (containing training/ or database/training/)")
    parser.add_argument("-d", type=int, required=True, help="nnU-Net dataset id of the output")
    parser.add_argument("--name", default="ACDC", help="dataset name (default ACDC)")
    parser.add_argument("--overwrite-splits", action="store_true",
                        help="replace existing split files in nnUNet_preprocessed")
    args = parser.parse_args(argv)
    output = convert_acdc(args.i, args.d, args.name, args.overwrite_splits)
    print(f"written {output}; splits: fold 0 = {LABELED_PER_FOLD[0]} labeled patients, "
          f"fold 1 = {LABELED_PER_FOLD[1]} labeled patients")
