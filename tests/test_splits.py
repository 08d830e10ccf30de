"""Label-scarcity splits: structure, determinism, grouping, no hidden label exposed."""
import json

import pytest

from nnunetv2_sss.data.splits import group_by_regex, hidden_label_cases, make_semi_supervised_splits


def test_splits_partition_and_hide(tmp_path):
    cases = [f"case_{i:02d}" for i in range(20)]
    semi = make_semi_supervised_splits(str(tmp_path), cases, num_labeled=3, seed=1)
    final = json.loads((tmp_path / "splits_final.json").read_text())
    assert len(final) == len(semi) == 5
    validation = [c for fold in final for c in fold["val"]]
    assert sorted(validation) == cases  # every case validated exactly once
    for fold, (nnunet_split, split) in enumerate(zip(final, semi)):
        assert nnunet_split["train"] == split["labeled"] and len(split["labeled"]) == 3
        assert not set(split["unlabeled"]) & set(nnunet_split["train"])
        assert not set(split["unlabeled"]) & set(nnunet_split["val"])
        assert sorted(split["labeled"] + split["unlabeled"] + nnunet_split["val"]) == cases
        assert hidden_label_cases(str(tmp_path), fold) == split["unlabeled"]
    with pytest.raises(ValueError, match="labels"):
        hidden_label_cases(str(tmp_path), "all")
    with pytest.raises(FileExistsError):
        make_semi_supervised_splits(str(tmp_path), cases, num_labeled=3)
    again = make_semi_supervised_splits(str(tmp_path), cases, num_labeled=3, seed=1, overwrite=True)
    assert again == semi


def test_grouped_fraction_keeps_patients_together(tmp_path):
    cases = [f"patient{p:03d}_frame{f:02d}" for p in range(1, 11) for f in (1, 12)]
    semi = make_semi_supervised_splits(str(tmp_path), cases, labeled_fraction=0.25,
                                       group_of=group_by_regex(r"patient\d+"))
    for split in semi:
        patients = {c[:10] for c in split["labeled"]}
        assert len(split["labeled"]) == 2 * len(patients) == 4  # round(0.25 * 8 patients) = 2
        assert not patients & {c[:10] for c in split["unlabeled"]}


def test_no_split_file_means_no_hidden_cases(tmp_path):
    assert hidden_label_cases(str(tmp_path), 0) == []
