"""The SSS prompt head decodes exactly what SAM-2's own ``SAM2ImagePredictor`` decodes.

Reference: a real ``SAM2Base`` built by ``sam2.build_sam.build_sam2`` from the package's
``configs/sam2.1/sam2.1_hiera_t.yaml`` (random weights, fixed seed, CPU, eval mode), with
``model.image_size`` overridden to 256 so that the test stays fast on CPU (a 1024 image
takes ~15 s there); every class and setting is SAM-2's own. ``SAM2ImagePredictor`` only
hard-codes the backbone feature sizes of a 1024 input (``_bb_feat_sizes``); they are set
to those of the 256 input. The head gets its weights from that model's state dict through
``load_prompt_head_weights`` and the raw FPN levels of the same image (the levels our
SAM-2 encoder hands to it), and must reproduce the predictor's prompt embeddings,
decoder inputs, low-resolution mask logits and upsampled masks for box + positive point
prompts (``predict(box=..., point_coords=..., multimask_output=False)``).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nnunetv2_sss.networks.prompt_head import SAM2PromptHead, head_settings_from_config, load_prompt_head_weights

IMAGE_SIZE = 256
CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
# (x0, y0, x1, y1) boxes and one positive point (x, y) inside each, pixel coordinates of the image
BOXES = np.array([[40., 50., 180., 200.], [10., 10., 60., 90.], [100., 120., 250., 240.], [0., 0., 255., 255.],
                  [130., 20., 170., 70.], [60., 140., 110., 230.]], dtype=np.float32)
POINTS = np.array([[100., 120.], [30., 40.], [180., 200.], [128., 128.], [150., 40.], [85., 190.]], dtype=np.float32)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tensors are small: one thread is faster than several on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, one_thread):
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    torch.manual_seed(0)
    model = build_sam2(CONFIG, ckpt_path=None, device="cpu", mode="eval",
                       hydra_overrides_extra=[f"++model.image_size={IMAGE_SIZE}"])
    predictor = SAM2ImagePredictor(model)
    predictor._bb_feat_sizes = [(IMAGE_SIZE // s, IMAGE_SIZE // s) for s in (4, 8, 16)]
    image = (np.random.RandomState(0).rand(IMAGE_SIZE, IMAGE_SIZE, 3) * 255).astype(np.uint8)
    predictor.set_image(image)

    captured = {}
    hook = model.sam_prompt_encoder.register_forward_hook(lambda m, i, out: captured.update(prompt=out))
    masks, _, low_res = predictor.predict(point_coords=POINTS[:, None], point_labels=np.ones((len(POINTS), 1)),
                                          box=BOXES, multimask_output=False, return_logits=True)
    hook.remove()

    with torch.no_grad():  # the raw FPN levels (strides 4, 8, 16) of the image the predictor encoded
        levels = list(model.image_encoder(predictor._transforms(image)[None])["backbone_fpn"])

    checkpoint = tmp_path_factory.mktemp("sam2") / "sam2.1_random.pt"
    torch.save({"model": model.state_dict()}, checkpoint)
    head = SAM2PromptHead(model.hidden_dim, (IMAGE_SIZE, IMAGE_SIZE))
    missing, unexpected = load_prompt_head_weights(head, checkpoint)
    assert missing == [] and unexpected == []
    return dict(model=model, predictor=predictor, head=head.eval(), levels=levels, masks=torch.from_numpy(masks),
                low_res=torch.from_numpy(low_res), sparse=captured["prompt"][0], dense=captured["prompt"][1])


def _prompts():
    return torch.zeros(len(BOXES), dtype=torch.long), torch.from_numpy(BOXES), torch.from_numpy(POINTS)


def test_head_settings_are_those_of_the_sam2_model(reference):
    model, head = reference["model"], reference["head"]
    model_decoder, head_decoder = model.sam_mask_decoder, head.sam_mask_decoder
    for name in ("dynamic_multimask_via_stability", "dynamic_multimask_stability_delta",
                 "dynamic_multimask_stability_thresh", "pred_obj_scores", "use_multimask_token_for_obj_ptr",
                 "use_high_res_features", "num_mask_tokens"):
        assert getattr(head_decoder, name) == getattr(model_decoder, name), name
    assert head_decoder.iou_prediction_head.sigmoid_output == model_decoder.iou_prediction_head.sigmoid_output
    assert type(head_decoder.pred_obj_score_head) is type(model_decoder.pred_obj_score_head)
    assert head.directly_add_no_mem_embed == model.directly_add_no_mem_embed
    # what the head reads from SAM-2 configs: the model's (build_sam2's) values for the released
    # configs; the same (SAM-2.1) values for the plugin's reduced demo config, which has no SAM heads
    settings = head_settings_from_config("sam2.1_hiera_t")
    for name, value in settings.items():
        assert getattr(model if hasattr(model, name) else model_decoder, name) == value, name
    assert settings == head_settings_from_config("sam2_hiera_demo") == head_settings_from_config("sam2_hiera_t")


def test_decoder_inputs_equal_the_predictor_features(reference):
    rows, _, _ = _prompts()
    image_embed, high_res = reference["head"].image_features(reference["levels"], rows[:1])
    features = reference["predictor"]._features
    assert torch.allclose(image_embed, features["image_embed"], atol=1e-5)
    for ours, theirs in zip(high_res, features["high_res_feats"]):
        assert torch.allclose(ours, theirs, atol=1e-5)


def test_sparse_prompt_embedding_is_sam2s_box_corners_point_and_padding(reference):
    _, boxes, points = _prompts()
    sparse, dense = reference["head"].encode_prompts(boxes, points)
    assert sparse.shape == (len(BOXES), 4, reference["model"].hidden_dim)  # 2 box corners + 1 point + 1 pad
    assert torch.allclose(sparse, reference["sparse"], atol=1e-5)
    assert torch.allclose(dense, reference["dense"], atol=1e-6)


def test_low_res_logits_equal_sam2_image_predictor(reference):
    with torch.no_grad():
        low_res = reference["head"].low_res_logits(reference["levels"], *_prompts())
    assert low_res.shape == (len(BOXES), IMAGE_SIZE // 4, IMAGE_SIZE // 4)
    assert torch.allclose(low_res.clamp(-32, 32), reference["low_res"][:, 0], atol=1e-4)


def test_masks_equal_sam2_image_predictor(reference):
    with torch.no_grad():
        masks = reference["head"](reference["levels"], *_prompts())
    expected = reference["masks"][:, 0]
    assert masks.shape == expected.shape == (len(BOXES), IMAGE_SIZE, IMAGE_SIZE)
    disagreement = ((masks > 0) != (expected > 0)).float().mean().item()
    assert disagreement == 0, f"{100 * disagreement:.2f} % of mask pixels differ from SAM2ImagePredictor"
    assert torch.allclose(masks, expected, atol=1e-4)


def test_reference_exercises_the_stability_fallback(reference):
    """Without SAM-2's dynamic multimask fallback the head would decode other masks for these prompts
    (so the comparison above checks that setting, not only the prompt encoding)."""
    plain = SAM2PromptHead(reference["model"].hidden_dim, (IMAGE_SIZE, IMAGE_SIZE),
                           dynamic_multimask_via_stability=False)
    plain.load_state_dict(reference["head"].state_dict())
    with torch.no_grad():
        low_res = plain.eval().low_res_logits(reference["levels"], *_prompts()).clamp(-32, 32)
    assert not torch.allclose(low_res, reference["low_res"][:, 0], atol=1e-4)
