"""The whole model against the original implementation's outputs (golden_mini_ade / golden_mini_city).

Every intermediate recorded in expected.pt is compared: Swin block outputs, stage outputs after the
semantic layer, backbone features, semantic maps, semantic head, pixel decoder outputs, final and
auxiliary predictions, and the final per-class scores.
"""

from __future__ import annotations

import pytest
import torch

TOL = 1e-4


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


def test_golden_all_intermediates(golden):
    e = golden.expected
    model = golden.model()
    blocks_out, stage_out = {}, {}
    hooks = []
    for i, stage in enumerate(model.backbone.layers):
        name = f"res{i + 2}"
        hooks.append(stage.blocks[-1].register_forward_hook(
            lambda m, inp, out, name=name: blocks_out.__setitem__(name, out)))
        hooks.append(stage.semantic_layer.register_forward_hook(
            lambda m, inp, out, name=name: stage_out.__setitem__(name, out[1])))
    with torch.no_grad():
        x, sizes = model.preprocess([e["image"]])
        assert _max_diff(x, e["normalized_padded_input"]) == 0.0
        features, sem_maps = model.backbone(x)
        out = model(e["image"][None], with_semantic=True)
        scores = model.scores_from_outputs(out, [(e["height"], e["width"])])[0]
    for h in hooks:
        h.remove()
    diffs = {}
    for k in e["features"]:
        diffs[f"swin_blocks_out.{k}"] = _max_diff(blocks_out[k], e["swin_blocks_out"][k])
        diffs[f"stage_out_prenorm.{k}"] = _max_diff(stage_out[k], e["stage_out_prenorm"][k])
        diffs[f"features.{k}"] = _max_diff(features[k], e["features"][k])
        diffs[f"cls_features.{k}"] = _max_diff(sem_maps[k], e["cls_features"][k])
    diffs["sem_head_pred"] = _max_diff(out["sem_seg_logits"], e["sem_head_pred"])
    names = sorted(features, key=lambda k: int(k[3:]))
    mask_features, multi_scale = model.sem_seg_head.pixel_decoder([features[k] for k in names])
    diffs["mask_features"] = _max_diff(mask_features, e["mask_features"])
    for i, (a, b) in enumerate(zip(multi_scale, e["multi_scale_features"], strict=True)):
        diffs[f"multi_scale_features.{i}"] = _max_diff(a, b)
    diffs["pred_logits"] = _max_diff(out["pred_logits"], e["pred_logits"])
    diffs["pred_masks"] = _max_diff(out["pred_masks"], e["pred_masks"])
    assert len(out["aux_outputs"]) == len(e["aux_pred_logits"])
    for i, aux in enumerate(out["aux_outputs"]):
        diffs[f"aux_pred_logits.{i}"] = _max_diff(aux["pred_logits"], e["aux_pred_logits"][i])
        diffs[f"aux_pred_masks.{i}"] = _max_diff(aux["pred_masks"], e["aux_pred_masks"][i])
    diffs["sem_seg"] = _max_diff(scores, e["sem_seg"])
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] <= TOL, f"{golden.name}: {worst} differs by {diffs[worst]:.3g}"
    # the label map (argmax) must agree everywhere
    assert torch.equal(scores.argmax(0), e["sem_seg"].argmax(0))


def test_predict_matches_golden_scores(golden):
    e = golden.expected
    scores = golden.model().predict([e["image"]])[0]
    assert scores.shape == e["sem_seg"].shape
    assert _max_diff(scores, e["sem_seg"]) <= TOL


def test_batch_of_different_sizes_equals_padded_singles(golden_ade):
    """A batch pads every image to the largest (as detectron2's ImageList): each image's scores equal those
    of the same image padded alone to that size, and have the image's own size."""
    model = golden_ade.model()
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 61, 97, generator=g) * 255
    b = torch.rand(3, 90, 70, generator=g) * 255
    with torch.no_grad():
        batch = model.predict([a, b])
        assert batch[0].shape[-2:] == (61, 97) and batch[1].shape[-2:] == (90, 70)
        # alone, each image is padded to 96 x 128 too when placed on a canvas of the batch's padded size
        for img, res in ((a, batch[0]), (b, batch[1])):
            out = model([img, torch.zeros(3, 96, 128)])
            single = model.scores_from_outputs(out)[0]
            assert _max_diff(single, res) < 1e-5


def test_output_size_resizes_scores(golden_ade):
    model = golden_ade.model()
    img = golden_ade.expected["image"]
    with torch.no_grad():
        scores = model.predict([img], output_sizes=[(45, 200)])[0]
    assert scores.shape == (150, 45, 200)
    assert torch.isfinite(scores).all()


def test_training_mode_outputs_semantic_logits(golden_ade):
    model = golden_ade.model().train()
    x = torch.rand(2, 3, 64, 96) * 255
    out = model(x)
    assert out["sem_seg_fused"].shape == (2, 150, 16, 24)  # stride 4: the loss upsamples it in bands
    assert "sem_seg_logits" not in out
    assert out["pred_masks"].shape[-2:] == (16, 24)
    torch.manual_seed(0)  # the same drop-path draws
    out = model(x)
    torch.manual_seed(0)
    full = model(x, with_semantic=True)
    assert torch.equal(full["sem_seg_fused"], out["sem_seg_fused"])
    assert full["sem_seg_logits"].shape == (2, 150, 64, 96)
    assert torch.equal(full["sem_seg_logits"], model.semantic_head.upsample(out["sem_seg_fused"]))
    model.eval()
    with torch.no_grad():
        assert "sem_seg_fused" not in model(x) and "sem_seg_logits" not in model(x)


def test_bad_image_shape_is_a_clear_error(golden_ade):
    model = golden_ade.model()
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        model.predict([torch.zeros(4, 10, 10)])


def test_banded_scores_and_labels_equal_the_whole_map_computation():
    """scores_from_outputs / labels_from_outputs work band by band; compare with the one-shot formula."""
    import torch.nn.functional as F

    from semask import build_model

    from conftest import tiny_config

    torch.manual_seed(5)
    model = build_model(tiny_config(num_classes=6)).eval()
    images = [torch.rand(3, 70, 45) * 255, torch.rand(3, 64, 64) * 255]
    with torch.no_grad():
        out = model(images)
        scores = model.scores_from_outputs(out)
        labels = model.labels_from_outputs(out)
        resized = model.labels_from_outputs(out, [(30, 20), (64, 64)])
        resized_scores = model.scores_from_outputs(out, [(30, 20), (64, 64)])
        fast = model.predict_labels(images)
    for i, (h, w) in enumerate([(70, 45), (64, 64)]):
        masks = F.interpolate(out["pred_masks"][i:i + 1], size=out["padded_size"], mode="bilinear",
                              align_corners=False)[0]
        ref = model.semantic_inference(out["pred_logits"][i], masks)[:, :h, :w]
        assert scores[i].shape == (6, h, w) and torch.allclose(scores[i], ref, atol=1e-6)
        assert torch.equal(labels[i], scores[i].argmax(0)) and torch.equal(fast[i], labels[i])
        assert torch.equal(resized[i], resized_scores[i].argmax(0))
    assert resized[0].shape == (30, 20)


def test_autocast_scores_are_float32_and_labels_are_their_argmax(golden_ade):
    """Under bf16 autocast the decoder outputs bf16; the scores are still combined in float32 outside
    autocast (CUDA autocast would otherwise write a bf16 product into the float32 score buffer)."""
    e = golden_ade.expected
    model = golden_ade.model()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(e["image"][None], with_semantic=False, with_aux=False)
        assert out["pred_masks"].dtype == torch.bfloat16
        scores = model.scores_from_outputs(out)[0]
        labels = model.labels_from_outputs(out)[0]
    assert scores.dtype == torch.float32
    assert torch.equal(labels, scores.argmax(0))
    assert (scores - e["sem_seg"]).abs().max().item() < 0.1  # bf16 error, measured ~0.04
