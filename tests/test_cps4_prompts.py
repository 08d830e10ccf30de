"""CPS4 class prompts and the offline text encoder."""
import json

import pytest
import torch

from nnunetv2_sss.cps4.prompts import (class_label_names, class_prompts, load_readable_names,
                                       readable_class_names)
from nnunetv2_sss.cps4.text_encoder import encode_prompts, text_encoder_folder


def test_prompts_from_labels_in_label_order(tmp_path):
    labels = {"tissue_b": 2, "background": 0, "tissue_a": 1, "ignore": 3}
    names = class_label_names(labels)
    assert names == ["background", "tissue_a", "tissue_b"]
    (tmp_path / "names.json").write_text(json.dumps({"tissue_a": "left kidney"}))
    readable = readable_class_names(names, load_readable_names(tmp_path / "names.json", names))
    assert readable == ["background", "left kidney", "tissue b"]
    assert class_prompts(readable) == ["A magnetic resonance image of a background",
                                       "A magnetic resonance image of a left kidney",
                                       "A magnetic resonance image of a tissue b"]
    assert class_prompts(readable, "A CT scan showing {class name}.")[1] == "A CT scan showing left kidney."


def test_bad_labels_templates_and_name_files(tmp_path):
    with pytest.raises(ValueError, match="my.json.*region"):
        class_label_names({"background": 0, "whole": [1, 2]}, source="my.json")
    with pytest.raises(ValueError, match="consecutive"):
        class_label_names({"background": 0, "a": 2})
    with pytest.raises(ValueError, match="must contain"):
        class_prompts(["a"], "An image of a {name}")
    (tmp_path / "names.json").write_text(json.dumps({"tissue_c": "x"}))
    with pytest.raises(ValueError, match=r"names.json: \['tissue_c'\] are not labels"):
        load_readable_names(tmp_path / "names.json", ["background", "tissue_a"])
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="broken.json is not valid JSON"):
        load_readable_names(tmp_path / "broken.json", ["background"])


def test_text_encoder_folder_from_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_sss_text_encoder", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="nnUNet_sss_text_encoder=.*config.json"):
        text_encoder_folder()
    monkeypatch.delenv("nnUNet_sss_text_encoder")
    assert (text_encoder_folder() / "config.json").is_file()  # the offline default package


def test_offline_text_encoder_mean_pooling_ignores_padding(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    prompts = ["A magnetic resonance image of a background",
               "A magnetic resonance image of a left intervertebral disc between two lumbar vertebrae"]
    together = encode_prompts(prompts)
    assert together.shape == (2, 384) and together.dtype == torch.float32
    alone = encode_prompts(prompts[:1])  # no padding tokens when encoded alone
    assert torch.allclose(together[0], alone[0], atol=1e-5)
    assert not torch.allclose(together[0], together[1], atol=1e-2)
