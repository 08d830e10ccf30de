"""SSS / UniMatch V2 as published: the order of DFE and complementary dropout, UniMatch V2's
unlabeled-loss normalisation (against a transcription of the upstream lines), the PCSW
refinement's labels and confidences, and the ablations' identical unlabeled batches."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnunetv2_sss.networks.sss_network import SSSNetwork
from nnunetv2_sss.ssl.complementary_dropout import dropped_decoder_inputs
from nnunetv2_sss.ssl.losses import masked_cross_entropy
from nnunetv2_sss.sss.dfe import view_similarity
from nnunetv2_sss.sss.pcsw import SlicePrompt
from nnunetv2_sss.sss.refinement import apply_prompt_masks, refine_slices
from tiny_sam2 import TINY_IMAGE_ENCODER


# ---- 1. DFE sees the undropped features; dropout acts on DFE's outputs -------------------------
def test_dfe_sees_undropped_features_and_dropout_acts_on_its_outputs():
    torch.manual_seed(0)
    network = SSSNetwork(TINY_IMAGE_ENCODER, 1, 3, 2, deep_supervision=False).eval()
    with torch.no_grad():
        features = network.encoder(torch.randn(6, 1, 32, 32))
    features_1, features_2 = [f[:3] for f in features], [f[3:] for f in features]
    seen = {}

    def spying_fuse(a, b):
        seen["inputs"] = (a, b)
        # S of every pair at every DFE scale, from what DFE is given
        seen["S"] = {i: view_similarity(a[i], b[i]) for i in map(int, network.fusion.per_scale)}
        return network.fuse_pair(a, b)

    with torch.no_grad():
        inputs_1, inputs_2 = dropped_decoder_inputs(spying_fuse, features_1, features_2, drop_probability=1.0)
        undropped_1, undropped_2 = network.fuse_pair(features_1, features_2)
    for i, s in seen["S"].items():
        expected = F.cosine_similarity(features_1[i].flatten(2).mean(2), features_2[i].flatten(2).mean(2), dim=1)
        assert torch.allclose(s, expected, atol=1e-6)
        assert (s.abs() > 1e-3).all()  # dropping first would make S exactly 0 for each dropped pair
    for level, (d1, d2, u1, u2) in enumerate(zip(inputs_1, inputs_2, undropped_1, undropped_2)):
        # per (pair, channel): view 1 scaled by m in {0, 2}, view 2 by 2 - m
        pooled_1 = (d1 / u1.where(u1.abs() > 1e-6, torch.ones_like(u1))).flatten(2)
        pooled_2 = (d2 / u2.where(u2.abs() > 1e-6, torch.ones_like(u2))).flatten(2)
        m1 = pooled_1.median(2).values
        m2 = pooled_2.median(2).values
        assert set(m1.unique().tolist()) <= {0.0, 2.0}, level
        assert torch.equal(m1 + m2, torch.full_like(m1, 2.0)), level
        zero_1 = m1 == 0
        assert (d1[zero_1] == 0).all() and torch.allclose(d2[zero_1], 2 * u2[zero_1], atol=1e-6)
        assert (d2[~zero_1] == 0).all() and torch.allclose(d1[~zero_1], 2 * u1[~zero_1], atol=1e-6)


def test_without_dfe_dropout_acts_on_the_encoder_features():
    features_1 = [torch.randn(4, 5, 3, 3), torch.randn(4, 7, 2, 2)]
    features_2 = [torch.randn(4, 5, 3, 3), torch.randn(4, 7, 2, 2)]
    out_1, out_2 = dropped_decoder_inputs(lambda a, b: (a, b), features_1, features_2, drop_probability=0.5,
                                          generator=torch.Generator().manual_seed(3))
    kept = 0
    for f1, f2, o1, o2 in zip(features_1, features_2, out_1, out_2):
        scale_1 = (o1 / f1).flatten(2)[..., 0]
        scale_2 = (o2 / f2).flatten(2)[..., 0]
        assert torch.allclose(scale_1 + scale_2, torch.full_like(scale_1, 2.0))
        kept = (scale_1 == 1).all(1).sum().item()
    assert kept == 2  # UniMatch V2: int(pairs * (1 - p)) pairs stay undropped


# ---- 5. UniMatch V2's normalisation, against the upstream lines ----------------------------------
def upstream_unlabeled_loss(pred_u_s, mask_u_w_cutmixed, conf_u_w_cutmixed, conf_thresh):
    """Transcription of LiheYoung/UniMatch-V2, unimatch_v2.py (one strong view), with
    ``criterion_u = nn.CrossEntropyLoss(reduction='none')`` and no ignored voxel
    (``ignore_mask == 0`` everywhere: nnU-Net patches have no ignore label)."""
    criterion_u = nn.CrossEntropyLoss(reduction='none')
    ignore_mask_cutmixed = torch.zeros_like(mask_u_w_cutmixed)
    loss_u_s1 = criterion_u(pred_u_s, mask_u_w_cutmixed)
    loss_u_s1 = loss_u_s1 * ((conf_u_w_cutmixed >= conf_thresh) & (ignore_mask_cutmixed != 255))
    loss_u_s1 = loss_u_s1.sum() / (ignore_mask_cutmixed != 255).sum().item()
    return loss_u_s1


@pytest.mark.parametrize("spatial", [(9, 11), (4, 6, 5)])
def test_masked_cross_entropy_matches_unimatch_v2(spatial):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, *spatial, generator=generator) * 3
    label = torch.randint(0, 4, (3, *spatial), generator=generator)
    confidence = torch.rand(3, *spatial, generator=generator)
    for threshold in (0.95, 0.5, 0.0, 1.01):
        ours = masked_cross_entropy(logits, label, confidence >= threshold)
        assert ours.item() == pytest.approx(upstream_unlabeled_loss(logits, label, confidence, threshold).item(),
                                            rel=1e-6, abs=1e-9)


# ---- 3. PCSW refinement: labels and confidences from the prompt head -----------------------------
def test_refined_voxels_get_the_prompt_heads_confidence():
    labels = torch.tensor([[[1, 1, 0], [1, 2, 0], [0, 0, 0]]])          # (1, 3, 3)
    confidence = torch.full((1, 3, 3), 0.99)
    logits = torch.tensor([[[3.0, -4.0, 0.5], [-0.2, 2.0, -1.0], [-3.0, -3.0, -3.0]]])  # one prompt, class 1
    prompt = SlicePrompt(0, 1, (0, 0, 1, 1), (0, 0))
    new_labels, new_confidence, from_head = apply_prompt_masks(labels, confidence, [prompt], [0], logits)
    p = torch.sigmoid(logits[0])
    expected_labels = torch.tensor([[1, 0, 1], [0, 1, 0], [0, 0, 0]])
    assert torch.equal(new_labels[0], expected_labels)
    # inside the mask: p; removed from class 1: 1 - p; all else: the teacher's
    expected_confidence = torch.tensor([[p[0, 0], 1 - p[0, 1], p[0, 2]], [1 - p[1, 0], p[1, 1], 0.99],
                                        [0.99, 0.99, 0.99]])
    assert torch.allclose(new_confidence[0], expected_confidence)
    assert torch.equal(from_head[0], torch.tensor([[True, True, True], [True, True, False], [False] * 3]))
    assert torch.equal(labels[0, 0], torch.tensor([1, 1, 0]))  # inputs untouched


def test_a_prompt_head_that_knows_nothing_adds_no_confident_voxel():
    class Uncertain(nn.Module):
        def forward(self, levels, rows, boxes, points):
            return torch.full((len(rows), 16, 16), 0.3)              # p = 0.57 everywhere

    labels = torch.zeros(6, 16, 16, dtype=torch.long)
    labels[1:5, 4:10, 4:10] = 1                                      # a tube PCSW accepts
    confidence = torch.full(labels.shape, 0.99)
    refined = refine_slices(Uncertain(), lambda rows: [torch.zeros(len(rows), 1, 1, 1)], labels, confidence,
                            slices_per_volume=6, classes=[1], tau=0.8)
    assert refined.num_prompts > 0 and refined.accepted_volumes == 1
    confident = refined.confidence >= 0.95
    assert not (confident & refined.from_head).any()
    assert refined.from_head.any()
    off = refine_slices(Uncertain(), None, labels, confidence, 6, [1], 0.8, decode=False)
    assert off.num_prompts == refined.num_prompts and torch.equal(off.labels, labels) and not off.from_head.any()


# ---- 4. the four SSS trainers draw the same unlabeled batches -------------------------------------
def test_sss_ablations_share_the_unlabeled_batches():
    from nnunetv2_sss.training.trainers import (nnUNetTrainerSSS, nnUNetTrainerSSS_baseline, nnUNetTrainerSSS_noDFE,
                                                nnUNetTrainerSSS_noPCSW)
    from nnunetv2_sss.training.options import declared_defaults
    trainers = (nnUNetTrainerSSS, nnUNetTrainerSSS_noDFE, nnUNetTrainerSSS_noPCSW, nnUNetTrainerSSS_baseline)
    # the objective and every option of it are the same (the ablations differ in the recipe's options only)
    assert {cls.objective for cls in trainers} == {nnUNetTrainerSSS.objective}
    objective_options = declared_defaults(nnUNetTrainerSSS.objective)
    assert not any(name in cls.__dict__ for cls in trainers for name in objective_options)
    assert objective_options["unlabeled_slabs_in_2d"][0] is True
    assert [(cls.recipe_options()["use_dfe"], cls.recipe_options()["use_pcsw"]) for cls in trainers] == \
        [(True, True), (False, True), (True, False), (False, False)]
