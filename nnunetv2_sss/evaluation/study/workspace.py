"""The study's folders: per group ``OUT/runs/<group>/`` with its view of the preprocessed dataset (links to
the shared data, its own split files), its ``nnUNet_results``, predictions, logs and done markers; the
cases a run is evaluated on (the dataset's test set, else links to the fold's validation cases)."""
from __future__ import annotations

import json
import os
from typing import List, Sequence, Tuple

from nnunetv2_sss.atomic_files import write_text_atomically
from nnunetv2_sss.evaluation.study.plan import ALL, Run
from nnunetv2_sss.evaluation.study.processes import run_logged

SPLIT_FILES = ("splits_final.json", "splits_semi_supervised.json")
OWN_ENTRIES = SPLIT_FILES + ("pseudo_labels",)  # a group's own (not linked): its splits, its pseudo-labels


class Workspace:
    def __init__(self, out: str, dataset: str, raw: str, shared: str, fold: int, file_ending: str, env: dict):
        """``raw`` / ``shared``: the dataset's raw and preprocessed folders; ``env``: the children's environment."""
        self.out, self.dataset, self.raw, self.shared, self.fold = out, dataset, raw, shared, fold
        self.ending, self.env = file_ending, env
        self.test_images = os.path.join(raw, "imagesTs")
        self.test_labels = os.path.join(raw, "labelsTs")
        self.has_test = os.path.isdir(self.test_images) and os.path.isdir(self.test_labels) and \
            any(f.endswith(file_ending) for f in os.listdir(self.test_labels))

    def group_folder(self, run: Run) -> str:
        return os.path.join(self.out, "runs", run.group)

    # -- done markers ----------------------------------------------------------------------------------
    def marker(self, run: Run) -> str:
        return os.path.join(self.group_folder(run), "done", f"{run.trainer}.json")

    def is_done(self, run: Run) -> bool:
        return os.path.isfile(self.marker(run))

    def write_marker(self, run: Run, row: dict) -> None:
        """The run's row, written atomically: from now on the run counts as complete."""
        os.makedirs(os.path.dirname(self.marker(run)), exist_ok=True)
        write_text_atomically(self.marker(run), json.dumps(row, indent=1))

    def row(self, run: Run) -> dict:
        """The row a done marker holds."""
        with open(self.marker(run)) as f:
            return json.load(f)

    def completed_rows(self, runs: Sequence[Run]) -> List[dict]:
        return [self.row(run) for run in runs if self.is_done(run)]

    # -- a group's preprocessed view ----------------------------------------------------------------------
    def preprocessed_root(self, run: Run) -> str:
        """The nnUNet_preprocessed root of the run's group (its view of the preprocessed dataset)."""
        return os.path.join(self.group_folder(run), "nnUNet_preprocessed")

    def prepare_group(self, run: Run) -> str:
        """The group's preprocessed view (links to the shared data) with its own split files, written
        again now; returns the view's nnUNet_preprocessed root."""
        root = self.preprocessed_root(run)
        view = os.path.join(root, self.dataset)
        os.makedirs(view, exist_ok=True)
        for entry in sorted(os.listdir(self.shared)):
            if entry in OWN_ENTRIES or entry.startswith("."):
                continue
            link = os.path.join(view, entry)
            if not os.path.lexists(link):
                os.symlink(os.path.join(self.shared, entry), link)
        amount = ["--labeled-fraction", "1.0"] if run.num_labeled == ALL else ["--num-labeled", str(run.num_labeled)]
        run_logged(["nnUNetv2_sss_make_splits", "-d", self.dataset, *amount, "--seed", str(run.seed), "--force"],
                   {**self.env, "nnUNet_preprocessed": root}, os.path.join(self.group_folder(run), "make_splits.log"))
        return root

    def split_file(self, preprocessed_root: str) -> str:
        return os.path.join(preprocessed_root, self.dataset, "splits_final.json")

    def split_of(self, preprocessed_root: str) -> dict:
        with open(self.split_file(preprocessed_root)) as f:
            return json.load(f)[self.fold]

    # -- what a run is evaluated on -----------------------------------------------------------------------
    def evaluation_folders(self, run: Run, preprocessed_root: str) -> Tuple[str, str, str]:
        """(images to predict, reference labels, name of the evaluated set)."""
        if self.has_test:
            count = len([f for f in os.listdir(self.test_labels) if f.endswith(self.ending)])
            return self.test_images, self.test_labels, f"test ({count} held-out cases, imagesTs + labelsTs)"
        # no held-out set: the fold's validation cases, linked into the group folder (the links a run of the
        # group running at the same time may be reading are kept: the same split gives the same links)
        validation = self.split_of(preprocessed_root)["val"]
        images = os.path.join(self.group_folder(run), "validation_images")
        labels = os.path.join(self.group_folder(run), "validation_labels")
        for folder in (images, labels):
            os.makedirs(folder, exist_ok=True)
        for case in validation:
            for f in os.listdir(os.path.join(self.raw, "imagesTr")):
                if f.startswith(case + "_") and f.endswith(self.ending) and len(f) == len(case) + 5 + len(self.ending):
                    _link(os.path.join(self.raw, "imagesTr", f), os.path.join(images, f))
            _link(os.path.join(self.raw, "labelsTr", case + self.ending), os.path.join(labels, case + self.ending))
        return images, labels, (f"validation ({len(validation)} validation cases of fold {self.fold}; "
                                "the dataset has no imagesTs + labelsTs)")


def _link(target: str, link: str) -> None:
    """``link`` -> ``target``, unless it exists (made by another run of the group)."""
    try:
        os.symlink(target, link)
    except FileExistsError:
        pass
