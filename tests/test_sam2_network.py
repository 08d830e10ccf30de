"""Unit tests of the SAM-2 network: real ``sam2`` modules, tiny Hiera, random weights."""
from __future__ import annotations

import hashlib
import math

import pytest
import torch
import torch.nn.functional as F
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

from nnunetv2_sss import settings
from nnunetv2_sss.networks.sam2_checkpoint import load_image_encoder_weights
from nnunetv2_sss.networks.sam2_config import (
    PLANS_KEY, SAM2NetworkSpec, available_config_names, build_image_encoder, load_image_encoder_node)
from nnunetv2_sss.networks.sam2_encoder import SAM2SliceEncoder, hiera_total_stride
from nnunetv2_sss.networks.sam2_unet import SAM2UNet, configuration_level_strides, deep_supervision_scales
from nnunetv2_sss.training.lr_schedule import warmup_cosine_factor
from nnunetv2_sss.training.trainers import nnUNetTrainerSAM2
from tiny_sam2 import TINY_IMAGE_ENCODER, random_encoder_state, write_sam2_checkpoint, write_tiny_config

torch.set_num_threads(1)

SIZES = ["t", "s", "b+", "l"]


def tiny_net(in_channels=1, conv_dim=2, **kwargs) -> SAM2UNet:
    torch.manual_seed(0)
    return SAM2UNet(TINY_IMAGE_ENCODER, in_channels, 3, conv_dim, **kwargs).eval()


def configuration(patch_size, spacing) -> ConfigurationManager:
    return ConfigurationManager({"patch_size": list(patch_size), "spacing": list(spacing), "architecture": {},
                                 PLANS_KEY: SAM2NetworkSpec("tiny", TINY_IMAGE_ENCODER).to_plans()})


def brute_force_slice_features(encoder: SAM2SliceEncoder, image: torch.Tensor) -> list[torch.Tensor]:
    """One 2-D slice (N, C, H, W): adapter, zero-pad to 32, trunk + neck, crop to ceil(n / stride)."""
    height, width = image.shape[-2:]
    padded = F.pad(encoder.adapter(image), (0, (-width) % 32, 0, (-height) % 32))
    features, _ = encoder.image_encoder.neck(encoder.image_encoder.trunk(padded))
    return [f[..., : math.ceil(height / s), : math.ceil(width / s)] for f, s in zip(features, (4, 8, 16, 32))]


# ---- configs -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", SIZES)
def test_real_configs_construct(size):
    """Construction only (random init); SAM-2.0 and SAM-2.1 share the image-encoder node."""
    names = [f"sam2.1_hiera_{size}", f"sam2_hiera_{size}"]
    assert set(names) <= set(available_config_names())
    node = load_image_encoder_node(names[0])
    assert load_image_encoder_node(names[1]) == node
    network = SAM2UNet(node, 1, 3, 3)
    assert type(network.pretrained_encoder.trunk).__name__ == "Hiera"
    assert hiera_total_stride(network.pretrained_encoder.trunk) == 32
    assert network.encoder.output_channels == [32, 64, 256, 256, 256, 256]


def test_yaml_config_and_errors(tmp_path):
    assert load_image_encoder_node(str(write_tiny_config(tmp_path))) == TINY_IMAGE_ENCODER
    with pytest.raises(ValueError, match="nnUNet_sss_sam2_config.*unknown SAM-2 config"):
        load_image_encoder_node("sam2.1_hiera_xl")
    with pytest.raises(FileNotFoundError, match="nnUNet_sss_sam2_config"):
        load_image_encoder_node(str(tmp_path / "absent.yaml"))
    (tmp_path / "other.yaml").write_text("model:\n  memory_attention: {}\n")
    with pytest.raises(ValueError, match="no 'model.image_encoder' node"):
        load_image_encoder_node(str(tmp_path / "other.yaml"))
    (tmp_path / "evil.yaml").write_text("model:\n  image_encoder:\n    _target_: os.system\n")
    with pytest.raises(ValueError, match="not a class of sam2.modeling"):
        load_image_encoder_node(str(tmp_path / "evil.yaml"))
    with pytest.raises(KeyError, match="sam2_network"):
        SAM2NetworkSpec.from_configuration({"patch_size": [48, 48]})


def test_encoder_input_size_must_be_multiple_of_total_stride():
    with pytest.raises(ValueError, match="multiple of Hiera's total stride 32"):
        tiny_net(encoder_input_size=50)


# ---- shapes, deep supervision, contract ------------------------------------------------------------
@pytest.mark.parametrize("conv_dim, shape", [
    (2, (2, 1, 48, 48)), (2, (2, 2, 45, 37)), (3, (2, 1, 14, 48, 48)), (3, (1, 2, 5, 33, 50))])
def test_shapes_deep_supervision_and_contract(conv_dim, shape):
    network = tiny_net(shape[1], conv_dim)
    x = torch.randn(shape)
    spatial = shape[2:]
    features = network.encoder(x)
    assert features[0].shape[2:] == spatial
    for feature, stride, channels in zip(features, network.encoder.strides, network.encoder.output_channels):
        assert feature.shape[:2] == (shape[0], channels)
        assert list(feature.shape[2:]) == [math.ceil(n / s) for n, s in zip(spatial, stride)]

    outputs = network.decoder(features)
    # the targets nnU-Net's own transform makes for these scales must fit the outputs exactly
    scales = network.deep_supervision_scales
    expected_scale_1 = [1.0] + [0.5] * (conv_dim - 1) if conv_dim == 3 else [0.5, 0.5]
    assert scales[1] == expected_scale_1 and len(scales) == len(outputs) == 5
    targets = DownsampleSegForDSTransform(scales)(segmentation=torch.zeros((1, *spatial)))["segmentation"]
    assert [o.shape[2:] for o in outputs] == [t.shape[1:] for t in targets]
    assert all(o.shape[:2] == (shape[0], 3) for o in outputs)

    with torch.no_grad():
        forward = network(x)
    assert all(torch.equal(a, b) for a, b in zip(forward, outputs))
    network.decoder.deep_supervision = False
    with torch.no_grad():
        single = network(x)
    assert torch.is_tensor(single) and torch.equal(single, outputs[0])


@pytest.mark.parametrize("patch_size, spacing, scale_1", [
    ((48, 48), (1.0, 1.0), [0.5, 0.5]),
    ((14, 48, 48), (3.0, 1.0, 1.0), [1.0, 0.5, 0.5]),
    ((40, 36, 7), (1.0, 1.0, 4.0), [0.5, 0.5, 1.0])])
def test_build_network_architecture_matches_trainer_scales(patch_size, spacing, scale_1):
    manager = configuration(patch_size, spacing)
    torch.manual_seed(0)
    network = nnUNetTrainerSAM2.build_network_architecture(None, manager, 1, 3, True).eval()
    scales = deep_supervision_scales(configuration_level_strides(SAM2NetworkSpec("tiny", TINY_IMAGE_ENCODER),
                                                                 manager))
    assert scales == network.deep_supervision_scales and scales[1] == scale_1
    with torch.no_grad():
        outputs = network(torch.randn(1, 1, *patch_size))
    targets = DownsampleSegForDSTransform(scales)(segmentation=torch.zeros((1, *patch_size)))["segmentation"]
    assert [o.shape[2:] for o in outputs] == [t.shape[1:] for t in targets]
    predict_network = nnUNetTrainerSAM2.build_network_architecture(None, manager, 1, 3, False)
    assert predict_network.state_dict().keys() == network.state_dict().keys()


@pytest.mark.parametrize("conv_dim, shape", [(2, (2, 2, 40, 35)), (3, (1, 1, 4, 33, 40))])
def test_every_parameter_gets_a_gradient(conv_dim, shape):
    """No unused parameters (DDP without find_unused_parameters) with deep supervision on."""
    network = tiny_net(shape[1], conv_dim).train()
    sum(o.mean() for o in network(torch.randn(shape))).backward()
    assert [n for n, p in network.named_parameters() if p.grad is None] == []


# ---- SAM-2 slice encoder -----------------------------------------------------------------------------
@pytest.mark.parametrize("in_channels", [1, 2])
def test_channel_adapter_starts_as_repeat_or_mean(in_channels):
    network = tiny_net(in_channels)
    x = torch.randn(2, in_channels, 9, 7)
    expected = x.mean(1, keepdim=True).expand(-1, 3, -1, -1)
    assert torch.allclose(network.encoder.sam2.adapter(x), expected, atol=1e-6)
    if in_channels == 1:
        assert torch.allclose(network.encoder.sam2.adapter(x), x.repeat(1, 3, 1, 1), atol=1e-6)


@pytest.mark.parametrize("slice_axis, shape", [(0, (2, 2, 3, 45, 37)), (2, (1, 1, 40, 33, 3))])
def test_3d_features_are_stacked_per_slice_features(slice_axis, shape):
    torch.manual_seed(0)
    encoder = SAM2SliceEncoder(build_image_encoder(TINY_IMAGE_ENCODER), shape[1], 3, slice_axis).eval()
    torch.nn.init.normal_(encoder.adapter.weight)
    x = torch.randn(shape)
    with torch.no_grad():
        stacked = encoder(x)
        for index in range(shape[2 + slice_axis]):
            expected = brute_force_slice_features(encoder, x.select(2 + slice_axis, index))
            for level, reference in zip(stacked, expected):
                assert torch.allclose(level.select(2 + slice_axis, index), reference, atol=1e-5)


def test_2d_padding_and_resampling_against_direct_computation():
    torch.manual_seed(0)
    encoder = SAM2SliceEncoder(build_image_encoder(TINY_IMAGE_ENCODER), 1, 2).eval()
    x = torch.randn(2, 1, 45, 37)
    with torch.no_grad():
        for level, reference in zip(encoder(x), brute_force_slice_features(encoder, x)):
            assert torch.allclose(level, reference, atol=1e-5)
        encoder.input_size = 64
        resized = F.interpolate(encoder.adapter(x), size=(64, 64), mode="bilinear", align_corners=False)
        reference, _ = encoder.image_encoder.neck(encoder.image_encoder.trunk(resized))
        for level, ref, stride in zip(encoder(x), reference, (4, 8, 16, 32)):
            size = (math.ceil(45 / stride), math.ceil(37 / stride))
            assert torch.allclose(level, F.interpolate(ref, size=size, mode="bilinear", align_corners=False),
                                  atol=1e-5)


def test_image_encoder_output_per_slice():
    network = tiny_net(1, 3)
    with torch.no_grad():
        out = network.encoder.sam2.image_encoder_output(torch.randn(2, 1, 3, 40, 33))
    assert len(out["backbone_fpn"]) == 3  # scalp 1 drops the stride-32 level, as in SAM-2
    assert out["vision_features"].shape == (6, 16, 4, 4)  # 2 cases x 3 slices, 64 / 16
    assert out["backbone_fpn"][0].shape == (6, 16, 16, 16)


# ---- checkpoint ------------------------------------------------------------------------------------------
def test_checkpoint_loads_exactly_its_tensors(tmp_path):
    network = tiny_net()
    encoder = network.pretrained_encoder
    state = random_encoder_state(encoder)
    removed = "neck.convs.0.conv.bias"
    written = {k: v for k, v in state.items() if k != removed}
    path = tmp_path / "sam2_tiny.pt"
    write_sam2_checkpoint(path, written, extra={"image_encoder.extra.weight": torch.zeros(2),
                                                "sam_mask_decoder.iou_token.weight": torch.ones(1, 16)})
    before_removed = encoder.state_dict()[removed].clone()
    before_decoder = {k: v.clone() for k, v in network.decoder.state_dict().items()}

    report = load_image_encoder_weights(encoder, path)

    after = encoder.state_dict()
    assert all(torch.equal(after[k], v) for k, v in written.items())
    assert torch.equal(after[removed], before_removed)
    assert all(torch.equal(network.decoder.state_dict()[k], v) for k, v in before_decoder.items())
    assert report.loaded == sorted(written) and report.missing == [removed]
    assert report.unexpected == ["extra.weight"] and report.ignored == 1
    assert report.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_checkpoint_errors(tmp_path):
    encoder = tiny_net().pretrained_encoder
    with pytest.raises(FileNotFoundError, match="nnUNet_sss_sam2_checkpoint"):
        load_image_encoder_weights(encoder, tmp_path / "absent.pt")
    torch.save(encoder.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="'model' state dict"):
        load_image_encoder_weights(encoder, tmp_path / "plain.pt")
    wrong = dict(random_encoder_state(encoder), **{"trunk.pos_embed": torch.zeros(1, 8, 7, 7)})
    write_sam2_checkpoint(tmp_path / "wrong.pt", wrong)
    with pytest.raises(ValueError, match="trunk.pos_embed: checkpoint \\(1, 8, 7, 7\\) vs encoder \\(1, 8, 4, 4\\)"):
        load_image_encoder_weights(encoder, tmp_path / "wrong.pt")


def test_checkpoint_variable(monkeypatch, tmp_path):
    monkeypatch.delenv(settings.SAM2_CHECKPOINT, raising=False)
    with pytest.raises(RuntimeError, match="nnUNet_sss_sam2_checkpoint is not set.*'random'"):
        settings.require_sam2_checkpoint()
    monkeypatch.setenv(settings.SAM2_CHECKPOINT, str(tmp_path / "absent.pt"))
    with pytest.raises(FileNotFoundError, match="nnUNet_sss_sam2_checkpoint="):
        settings.require_sam2_checkpoint()
    monkeypatch.setenv(settings.SAM2_CHECKPOINT, "random")
    assert settings.require_sam2_checkpoint() == "random"


# ---- learning-rate schedule -----------------------------------------------------------------------------
def test_warmup_cosine_factor_by_hand():
    # 10 epochs, 2 of warm-up: 1/3, 2/3, then cos over the remaining 8
    expected = {0: 1 / 3, 1: 2 / 3, 2: 1.0, 4: (1 + math.cos(math.pi / 4)) / 2, 6: 0.5,
                9: (1 + math.cos(7 * math.pi / 8)) / 2}
    for step, value in expected.items():
        assert warmup_cosine_factor(step, 2, 10) == pytest.approx(value)
    assert warmup_cosine_factor(0, 0, 1) == 1.0
