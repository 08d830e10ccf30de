"""CPS4 vision–text model, ViT and stage-1 save/load."""
import math

import pytest
import torch
import torch.nn.functional as F

from nnunetv2_sss.cps4.model import ClassPromptConfig, ClassPromptModel
from nnunetv2_sss.cps4.stage1_io import load_stage1, read_stage1_metadata, save_stage1, stage1_output_folder
from nnunetv2_sss.cps4.vision import PatchViT, ViTConfig, load_vision_weights


def small_model(k=3, text_dim=10, channels=2):
    torch.manual_seed(0)
    cfg = ClassPromptConfig(vit=ViTConfig(in_channels=channels, patch_size=4, grid_size=(2, 3), dim=16, depth=2,
                                          heads=2), text_dim=text_dim, embed_dim=8, init_temperature=0.2)
    return ClassPromptModel(cfg, torch.randn(k, text_dim))


def test_attention_is_sigmoid_of_scaled_cosine():
    model = small_model().eval()
    x = torch.randn(2, 2, 8, 12)
    attention = model(x)
    assert attention.shape == (2, 3, 2, 3)
    assert model.logit_scale.exp().item() == pytest.approx(1 / 0.2)
    tokens = model.vision_proj(model.vision(x))          # [B, h, w, E], not normalised
    texts = model.text_proj(model.text_embeddings)        # [K, E]
    for b in range(2):
        for k in range(3):
            for i in range(2):
                for j in range(3):
                    cos = F.cosine_similarity(tokens[b, i, j], texts[k], dim=0)
                    assert attention[b, k, i, j].item() == pytest.approx(1 / (1 + math.exp(-5 * cos.item())), abs=1e-6)


def test_vit_token_grid_and_size_check():
    vit = PatchViT(ViTConfig(in_channels=1, patch_size=4, grid_size=(2, 2), dim=8, depth=1, heads=2))
    assert vit(torch.randn(1, 1, 8, 8)).shape == (1, 2, 2, 8)
    assert vit(torch.randn(1, 1, 16, 12)).shape == (1, 4, 3, 8)  # position embedding resized
    with pytest.raises(ValueError, match="multiple of the ViT patch size 4"):
        vit(torch.randn(1, 1, 10, 8))


def test_load_vision_weights(tmp_path):
    source, target = small_model().vision, small_model().vision
    with torch.no_grad():
        source.patch_embed.weight.add_(1.0)
    torch.save({"state_dict": source.state_dict()}, tmp_path / "vit.pt")
    load_vision_weights(target, tmp_path / "vit.pt")
    assert torch.equal(target.patch_embed.weight, source.patch_embed.weight)
    other = PatchViT(ViTConfig(in_channels=1, patch_size=4, grid_size=(2, 2), dim=8, depth=1, heads=2))
    torch.save(other.state_dict(), tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt do not fit"):
        load_vision_weights(target, tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_vision_weights(target, tmp_path / "missing.pt")


def test_save_and_load_stage1_roundtrip(tmp_path):
    model = small_model()
    with torch.no_grad():
        model.logit_scale.fill_(1.7)
    folder = stage1_output_folder("Dataset901_Tiny", "nnUNetPlans", 0, results_root=tmp_path)
    assert folder == tmp_path / "Dataset901_Tiny" / "cps4_pretraining__nnUNetPlans__2d" / "fold_0"
    save_stage1(folder, model, {"label_names": ["background", "a", "b"]})
    loaded = load_stage1(folder, "cpu")
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    x = torch.randn(1, 2, 8, 12)
    with torch.no_grad():  # (the frozen model may take the fused transformer path: float rounding only)
        assert torch.allclose(loaded(x), model.eval()(x), atol=1e-6)
    assert loaded.num_classes == 3
    assert read_stage1_metadata(folder)["label_names"] == ["background", "a", "b"]
    assert not list(folder.glob(".*tmp"))
    assert load_stage1(folder, num_input_channels=2, num_classes=3).num_classes == 3
    with pytest.raises(ValueError, match="trained with 3 classes, this training has 4: re-run "
                                         "`nnUNetv2_sss_pretrain_cps4 -d Dataset901_Tiny -c 2d -f 0"):
        load_stage1(folder, num_classes=4)
    with pytest.raises(ValueError, match="trained with 2 input channels, this training has 1"):
        load_stage1(folder, num_input_channels=1)


def test_load_stage1_missing_names_the_command(tmp_path):
    folder = stage1_output_folder("Dataset901_Tiny", "nnUNetPlans", 2, results_root=tmp_path)
    with pytest.raises(FileNotFoundError,
                       match="nnUNetv2_sss_pretrain_cps4 -d Dataset901_Tiny -c 2d -f 2 -p nnUNetPlans"):
        load_stage1(folder)


def test_stage1_output_folder_follows_nnunet_results(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    assert stage1_output_folder("Dataset901_Tiny", "nnUNetResEncUNetMPlans", 3) == \
        tmp_path / "Dataset901_Tiny" / "cps4_pretraining__nnUNetResEncUNetMPlans__2d" / "fold_3"
    monkeypatch.delenv("nnUNet_results")
    with pytest.raises(RuntimeError, match="nnUNet_results is not defined"):
        stage1_output_folder("Dataset901_Tiny", "nnUNetPlans", 0)
