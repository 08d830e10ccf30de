"""Which cases CPS4 stage 1 trains on."""
import json

import pytest

from nnunetv2_sss.cps4.stage1_data import fold_cases


def test_semi_supervised_labeled_list_replaces_training_cases(tmp_path):
    (tmp_path / "splits_final.json").write_text(json.dumps(
        [{"train": ["a", "b", "c"], "val": ["d"]}, {"train": ["a", "d"], "val": ["b", "c"]}]))
    assert fold_cases(tmp_path, tmp_path / "unused", 1) == (["a", "d"], ["b", "c"])
    (tmp_path / "splits_semi_supervised.json").write_text(json.dumps(
        [{"labeled": ["b"], "unlabeled": ["a", "c"]}, {"labeled": ["d"], "unlabeled": ["a"]}]))
    assert fold_cases(tmp_path, tmp_path / "unused", 0) == (["b"], ["d"])
    assert fold_cases(tmp_path, tmp_path / "unused", 1) == (["d"], ["b", "c"])


def test_bad_split_files_are_named(tmp_path):
    (tmp_path / "splits_final.json").write_text(json.dumps([{"train": ["a"], "val": ["b"]}]))
    with pytest.raises(ValueError, match=r"splits_final.json: fold 3 not there \(the file lists 1 folds\)"):
        fold_cases(tmp_path, tmp_path, 3)
    (tmp_path / "splits_semi_supervised.json").write_text(json.dumps([{"unlabeled": ["a"]}]))
    with pytest.raises(ValueError, match=r"splits_semi_supervised.json: fold 0 has no list \['labeled'\]"):
        fold_cases(tmp_path, tmp_path, 0)
    (tmp_path / "splits_semi_supervised.json").write_text(json.dumps([{"labeled": [], "unlabeled": ["a"]}]))
    with pytest.raises(ValueError, match="fold 0 has no labeled training case"):
        fold_cases(tmp_path, tmp_path, 0)
