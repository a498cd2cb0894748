"""DPM head wiring (SPEC §5): BN-neck, prototypes, HMG mask, Eq. 10 masked prototypes, L_id / L_mask logits,
ablation switches, the tapped ResNet layout and the head inside fast-reid's stock Baseline (the ResNet configs of
projects/DPMHeadCNN)."""
import json
import math
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fastreid_dpmpp  # noqa: F401  (fast-reid import fixes first)
import fastreid_dpmpp.data  # noqa: F401  (registers OccludedDuke)
import fastreid_dpmpp.modeling.heads  # noqa: F401
import fastreid_dpmpp.modeling.meta_arch  # noqa: F401
from fastreid.modeling import build_model
from fastreid.modeling.backbones.resnet import Bottleneck, ResNet, build_resnet_backbone
from fastreid.modeling.heads import build_heads
from fastreid.utils.events import EventStorage
from fastreid_dpmpp.engine import load_config
from fastreid_dpmpp.modeling.backbones.tapped_cnn import TappedResNet, tapped_resnet_layout
from fastreid_dpmpp.modeling.heads.dpm_head import DPMHead, emits_query_masks
from fastreid_dpmpp.modeling.losses import arcface_logits
from fastreid_dpmpp.text_prototypes import save_text_prototypes

from _tiny import load_project_train_net, record_masked_evaluations

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
D, D_T, C, B, GRID = 8, 6, 5, 6, (4, 2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def token_cfg(*opts):
    """A config whose DPMHead runs in token mode (the DPMPP meta-arch's input) with tiny widths."""
    return load_config("", [
        "MODEL.DEVICE", "cpu", "MODEL.BACKBONE.NAME", "build_clip_vit_backbone", "MODEL.BACKBONE.FEAT_DIM", str(D),
        "MODEL.HEADS.NAME", "DPMHead", "MODEL.HEADS.NUM_CLASSES", str(C), "MODEL.HEADS.EMBEDDING_DIM", str(D_T),
        "MODEL.VIT.TAPS", "(1, 2)", "MODEL.DPMPP.HMG_GATES", "(1, 1)", *opts])


def token_outputs(batch=B):
    n = GRID[0] * GRID[1]
    return {"cls": torch.randn(batch, D), "proj": torch.randn(batch, D_T),
            "taps": [torch.randn(batch, n, D) for _ in range(2)], "patch_tokens": torch.randn(batch, n, D),
            "grid": GRID}


def randomise_mask_fc(head):
    nn.init.normal_(head.mask_generator.fc.weight, std=0.5)
    nn.init.normal_(head.mask_generator.fc.bias, std=0.5)


def batch_norm_train(x):
    return (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-5)


def manual_cosines(features, prototypes, mask, side, before_norm):
    """Table IV variants with explicit (B, C, D) tensors: ⟨a(f), b(P_c)⟩ per variant."""
    f_hat = F.normalize(features, dim=1)[:, None, :].expand(-1, prototypes.shape[0], -1)
    p_hat = F.normalize(prototypes, dim=1)[None, :, :].expand(features.shape[0], -1, -1)
    m = mask[:, None, :]
    left = m * f_hat if side in ("feature", "both") else f_hat
    right = m * p_hat if side in ("prototype", "both") else p_hat
    if before_norm:
        left = F.normalize(left, dim=2) if side in ("feature", "both") else left
        right = F.normalize(right, dim=2) if side in ("prototype", "both") else right
    return (left * right).sum(2)


def manual_arcface(cosine, targets, s, m):
    logits = s * cosine.clone()
    for i, y in enumerate(targets.tolist()):
        theta = math.acos(float(cosine[i, y]))
        assert theta + m < math.pi
        logits[i, y] = s * math.cos(theta + m)
    return logits


# ---------------------------------------------------------------------------- token mode (DPMPP)
def test_head_outputs_match_a_manual_computation():
    head = build_heads(token_cfg())
    assert isinstance(head, DPMHead)
    randomise_mask_fc(head)
    outputs, targets = token_outputs(), torch.tensor([0, 1, 2, 3, 4, 0])
    result = head(outputs, targets)

    f = batch_norm_train(outputs["cls"])
    assert torch.allclose(result["features"], f, atol=1e-5)
    assert torch.allclose(result["id_logits"], f @ head.prototypes.t(), atol=1e-5)
    mask = result["mask"]
    assert mask.shape == (B, D) and not torch.allclose(mask, torch.full_like(mask, 0.5))
    cosine = manual_cosines(f, head.prototypes.detach(), mask.detach(), "prototype", True)
    expected = manual_arcface(cosine, targets, s=30.0, m=0.5)
    assert torch.allclose(result["mask_logits"].detach(), expected, atol=1e-4)
    assert result["coarse_logits"] is None  # no MODEL.DPMPP.TEXT_PROTOTYPES


def test_initial_state_bn_bias_frozen_prototypes_xavier_and_mask_one_half():
    head = build_heads(token_cfg())
    assert not head.bottleneck.bias.requires_grad and torch.equal(head.bottleneck.bias, torch.zeros(D))
    bound = math.sqrt(6.0 / (C + D))
    assert head.prototypes.shape == (C, D) and head.prototypes.abs().max() <= bound
    assert head.prototypes.std() > bound / 4  # not a degenerate init
    for train in (True, False):
        mask = head.train(train).mask_from(token_outputs())
        assert torch.equal(mask, torch.full((B, D), 0.5))
    names = {n for n, _ in head.named_parameters()}
    assert "prototypes" in names and any(n.startswith("mask_generator.") for n in names)


@pytest.mark.parametrize("side", ["prototype", "feature", "both"])
@pytest.mark.parametrize("before_norm", [True, False])
def test_table_iv_variants_are_wired(side, before_norm):
    head = build_heads(token_cfg("MODEL.DPMPP.MASK_SIDE", side, "MODEL.DPMPP.MASK_BEFORE_NORM", str(before_norm)))
    randomise_mask_fc(head)
    result = head(token_outputs(), torch.arange(B) % C)
    expected = manual_cosines(result["features"].detach(), head.prototypes.detach(), result["mask"].detach(),
                              side, before_norm)
    cosine = head.mask_cosine(result["features"], None, result["mask"]).detach()
    assert torch.allclose(cosine, expected, atol=1e-5)
    assert torch.allclose(result["mask_logits"].detach(), arcface_logits(expected, torch.arange(B) % C), atol=1e-4)


def test_hmg_off_uses_the_final_tokens_only():
    head = build_heads(token_cfg("MODEL.DPMPP.HMG_ENABLED", "False"))
    assert head.mask_generator.conv1[0].in_channels == D  # a single tap of width D
    randomise_mask_fc(head)
    head.eval()
    outputs = token_outputs()
    mask = head.mask_from(outputs)
    other_taps = dict(outputs, taps=[torch.randn_like(t) for t in outputs["taps"]])
    assert torch.equal(head.mask_from(other_taps), mask)
    other_final = dict(outputs, patch_tokens=torch.randn_like(outputs["patch_tokens"]))
    assert not torch.allclose(head.mask_from(other_final), mask)


def test_hmg_gates_drop_a_tap():
    head = build_heads(token_cfg("MODEL.DPMPP.HMG_GATES", "(0, 1)"))
    assert head.mask_generator.conv1[0].in_channels == D
    randomise_mask_fc(head)
    head.eval()
    outputs = token_outputs()
    changed_first = dict(outputs, taps=[torch.randn_like(outputs["taps"][0]), outputs["taps"][1]])
    assert torch.equal(head.mask_from(changed_first), head.mask_from(outputs))
    with pytest.raises(ValueError, match="HMG_GATES"):
        build_heads(token_cfg("MODEL.DPMPP.HMG_GATES", "(1, 1, 1)"))


def test_dpm_off_is_a_plain_prototype_classifier():
    cfg = token_cfg("MODEL.DPMPP.DPM_ENABLED", "False")
    head = build_heads(cfg)
    assert head.mask_generator is None and not emits_query_masks(cfg)
    result = head(token_outputs(), torch.arange(B) % C)
    assert result["mask"] is None and result["mask_logits"] is None
    assert torch.allclose(result["id_logits"], result["features"] @ head.prototypes.t())


def test_masked_prototype_none_keeps_the_margin_without_a_mask():
    cfg = token_cfg("MODEL.DPMPP.MASKED_PROTOTYPE", "none")
    head = build_heads(cfg)
    assert head.mask_generator is None and not emits_query_masks(cfg)
    targets = torch.arange(B) % C
    result = head(token_outputs(), targets)
    cosine = F.normalize(result["features"], dim=1) @ F.normalize(head.prototypes, dim=1).t()
    assert torch.allclose(result["mask_logits"], manual_arcface(cosine.detach(), targets, 30.0, 0.5), atol=1e-4)


def test_text_prototypes_coarse_logits_and_text_masking(tmp_path):
    text = torch.randn(C, D_T)
    path = str(tmp_path / "text_prototypes.pth")
    save_text_prototypes(path, text, [f"OccludedDuke_{i}" for i in range(C)])
    head = build_heads(token_cfg("MODEL.DPMPP.TEXT_PROTOTYPES", path, "MODEL.DPMPP.MASKED_PROTOTYPE", "text"))
    assert head.mask_generator.out_dim == D_T  # the mask lives in D_t
    assert torch.equal(head.text_prototypes, text)
    assert all(p is not head.text_prototypes for p in head.parameters())  # frozen: a buffer
    assert "text_prototypes" in head.state_dict()
    randomise_mask_fc(head)
    outputs, targets = token_outputs(), torch.arange(B) % C
    result = head(outputs, targets)
    assert torch.allclose(result["coarse_logits"], outputs["proj"] @ text.t(), atol=1e-5)
    cosine = manual_cosines(outputs["proj"], text, result["mask"].detach(), "prototype", True)
    assert torch.allclose(result["mask_logits"].detach(), manual_arcface(cosine, targets, 30.0, 0.5), atol=1e-4)

    with pytest.raises(ValueError, match="NUM_CLASSES"):
        build_heads(token_cfg("MODEL.DPMPP.TEXT_PROTOTYPES", path, "MODEL.HEADS.NUM_CLASSES", str(C + 1)))
    with pytest.raises(ValueError, match="TEXT_PROTOTYPES"):
        build_heads(token_cfg("MODEL.DPMPP.MASKED_PROTOTYPE", "text"))


def test_inference_only_head_without_classes():
    head = build_heads(token_cfg("MODEL.HEADS.NUM_CLASSES", "0")).eval()  # eval-only with the base config
    assert head.prototypes.shape == (0, D)
    assert head.mask_from(token_outputs()).shape == (B, D)


def test_bad_choices_and_inputs_are_refused():
    with pytest.raises(ValueError, match="MASKED_PROTOTYPE"):
        build_heads(token_cfg("MODEL.DPMPP.MASKED_PROTOTYPE", "both"))
    with pytest.raises(ValueError, match="MASK_SIDE"):
        build_heads(token_cfg("MODEL.DPMPP.MASK_SIDE", "query"))
    with pytest.raises(ValueError, match="DPMPP"):
        build_heads(token_cfg())(torch.randn(2, D, 4, 2))


# ---------------------------------------------------------------------------- tapped ResNet (map mode)
def resnet_cfg(*opts):
    return load_config("", [
        "MODEL.DEVICE", "cpu", "MODEL.BACKBONE.NAME", "build_tapped_resnet_backbone", "MODEL.BACKBONE.DEPTH", "18x",
        "MODEL.BACKBONE.FEAT_DIM", "512", "MODEL.BACKBONE.PRETRAIN", "False", "MODEL.HEADS.NAME", "DPMHead",
        "MODEL.HEADS.NUM_CLASSES", "4", "MODEL.HEADS.EMBEDDING_DIM", "16", "MODEL.VIT.SIE_ENABLED", "False",
        "MODEL.LOSSES.NAME", '("CrossEntropyLoss", "TripletLoss")', *opts])


def with_tap_stages(cfg, stages):
    cfg.defrost()
    cfg.MODEL.BACKBONE.TAP_STAGES = stages  # proposed key (config.py); settable on an unfrozen node
    return cfg


def test_tapped_layout_per_stage_choice():
    layout = tapped_resnet_layout(resnet_cfg())
    assert layout.extra_channels == (64, 128, 256) and layout.final_channels == 512 and layout.final_is_tap
    assert layout.tap_channels == (64, 128, 256, 512) and layout.total_channels == 960
    assert tapped_resnet_layout(with_tap_stages(resnet_cfg(), (2, 4))).tap_channels == (128, 512)
    no_final = tapped_resnet_layout(with_tap_stages(resnet_cfg(), (1, 3)))
    assert no_final.tap_channels == (64, 256) and no_final.total_channels == 64 + 256 + 512
    r50 = resnet_cfg("MODEL.BACKBONE.DEPTH", "50x", "MODEL.BACKBONE.FEAT_DIM", "2048")
    assert tapped_resnet_layout(r50).tap_channels == (256, 512, 1024, 2048)
    with pytest.raises(ValueError, match="TAP_STAGES"):
        tapped_resnet_layout(with_tap_stages(resnet_cfg(), (3, 2)))


def test_tapped_resnet_packs_the_stage_outputs():
    cfg = resnet_cfg()
    resnet = build_resnet_backbone(cfg).eval()
    tapped = TappedResNet(resnet, (1, 2, 3, 4)).eval()
    stage_outputs = {}
    for k in (1, 2, 3):
        getattr(resnet, f"layer{k}")[-1].register_forward_hook(
            lambda module, inputs, output, k=k: stage_outputs.__setitem__(k, output))
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        packed = tapped(x)
        final = resnet(x)
    taps, final_part = tapped_resnet_layout(cfg).split(packed)
    assert final.shape == (2, 512, 4, 2) and torch.equal(final_part, final) and taps[-1] is final_part
    s1 = stage_outputs[1]  # 16x8 -> 4x2 by averaging 4x4 blocks
    assert torch.allclose(taps[0], s1.reshape(2, 64, 4, 4, 2, 4).mean(dim=(3, 5)), atol=1e-5)
    assert torch.allclose(taps[1], stage_outputs[2].reshape(2, 128, 4, 2, 2, 2).mean(dim=(3, 5)), atol=1e-5)
    assert torch.equal(taps[2], stage_outputs[3])  # already 4x2


def test_tapped_resnet_keeps_non_local_blocks():
    # one bottleneck block per stage, non-local blocks after stages 2 and 3 (fast-reid's own ResNet class)
    resnet = ResNet(1, "BN", False, False, True, Bottleneck, [1, 1, 1, 1], [0, 1, 1, 0]).eval()
    assert len(resnet.NL_2) == 1 and len(resnet.NL_3) == 1
    for block in (resnet.NL_2[0], resnet.NL_3[0]):  # fast-reid zero-initialises their output BN: randomise
        nn.init.normal_(block.W[1].weight)
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 32)
        packed = TappedResNet(resnet, (2, 4)).eval()(x)
        assert torch.allclose(packed[:, 512:], resnet(x), atol=1e-5)


def test_head_in_stock_baseline_returns_baseline_outputs():
    cfg = resnet_cfg()
    model = build_model(cfg)
    assert type(model).__name__ == "Baseline" and isinstance(model.heads, DPMHead)
    head = model.heads
    randomise_mask_fc(head)
    packed, targets = torch.randn(8, 960, 4, 2), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    out = head(packed, targets)
    assert set(out) == {"cls_outputs", "pred_class_logits", "features"}
    taps, final = tapped_resnet_layout(cfg).split(packed)
    pooled = final.mean(dim=(2, 3))
    assert torch.allclose(out["features"], pooled, atol=1e-6)  # NECK_FEAT before
    f = batch_norm_train(head.embedding(pooled))
    assert torch.allclose(out["pred_class_logits"], f @ head.prototypes.t(), atol=1e-4)
    mask = head.mask_generator(taps)
    cosine = manual_cosines(f.detach(), head.prototypes.detach(), mask.detach(), "prototype", True)
    assert torch.allclose(out["cls_outputs"].detach(), manual_arcface(cosine, targets, 30.0, 0.5), atol=1e-3)

    head.eval()
    assert emits_query_masks(cfg)
    with torch.no_grad():
        packed_eval = head(packed)
        neck = head.bottleneck(head.embedding(pooled))
    assert torch.allclose(packed_eval, torch.cat([neck, head.mask_generator(taps)], 1), atol=1e-5)
    plain = build_heads(resnet_cfg("TEST.MASKED_MATCHING.ENABLED", "False")).eval()
    assert plain(packed).shape == (8, 16)  # descriptor only: fast-reid's stock evaluator

    with EventStorage(0):
        losses = model.train()({"images": torch.rand(8, 3, 64, 32) * 255, "targets": targets})
    assert set(losses) == {"loss_cls", "loss_triplet"}
    sum(losses.values()).backward()
    assert head.mask_generator.fc.weight.grad.abs().sum() > 0  # stock CE on cls_outputs trains HMG


def test_untapped_fastreid_backbone_uses_its_final_map():
    cfg = resnet_cfg("MODEL.BACKBONE.NAME", "build_resnet_backbone")
    model = build_model(cfg)
    assert model.heads.mask_generator.conv1[0].in_channels == 512 and not model.heads.hierarchical
    with EventStorage(0):
        losses = model({"images": torch.rand(8, 3, 64, 32) * 255, "targets": torch.arange(4).repeat(2)})
    assert torch.isfinite(sum(losses.values()))


# ---------------------------------------------------------------------------- the ResNet configs of projects/DPMHeadCNN
@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    """6 training ids x 4 images, 4 queries, 60 gallery images: fast-reid's Python ranking (used when its
    Cython extension is not built) needs >= 50 valid gallery entries per query."""
    from fastreid_dpmpp.data.synthetic import make_synthetic_benchmark
    root = str(tmp_path_factory.mktemp("synthetic"))
    make_synthetic_benchmark(root, seed=0, layout="occluded_duke", image_size=(64, 32), num_train_ids=6,
                             images_per_train_id=4, num_test_ids=4, max_queries_per_id=1,
                             gallery_images_per_id=4, num_distractor_ids=16)
    return root


def test_dpmhead_r50_project_trains_through_stock_baseline(synthetic_root, tmp_path, monkeypatch):
    """projects/DPMHeadCNN/configs/R50-OccludedDuke.yml (a GPU config) on the CPU, small, in fast-reid's unmodified
    Baseline (without the project's "IdLoss", which only CNNBaseline reads)."""
    monkeypatch.setenv("FASTREID_DPMPP_NO_CYTHON", "1")  # Python ranking: no compile step in the test
    train_net = load_project_train_net("DPMHeadCNN")
    from fastreid.engine import default_argument_parser
    calls = record_masked_evaluations(monkeypatch)
    out = str(tmp_path / "out")
    args = default_argument_parser().parse_args([
        "--config-file", os.path.join(ROOT, "projects/DPMHeadCNN/configs/R50-OccludedDuke.yml"),
        "MODEL.META_ARCHITECTURE", "Baseline", "MODEL.LOSSES.NAME", '("CrossEntropyLoss", "TripletLoss")',
        "MODEL.DEVICE", "cpu", "MODEL.BACKBONE.PRETRAIN", "False", "DATALOADER.NUM_WORKERS", "0",
        "SOLVER.AMP.ENABLED", "False", "SOLVER.WARMUP_ITERS", "0", "CUDNN_BENCHMARK", "False",
        "DATASETS.ROOT", synthetic_root, "OUTPUT_DIR", out, "MODEL.BACKBONE.DEPTH", "18x",
        "MODEL.BACKBONE.FEAT_DIM", "512", "MODEL.HEADS.EMBEDDING_DIM", "32", "INPUT.SIZE_TRAIN", "[64, 32]",
        "INPUT.SIZE_TEST", "[64, 32]", "SOLVER.IMS_PER_BATCH", "8", "SOLVER.MAX_EPOCH", "1", "TEST.EVAL_PERIOD", "1",
        "SOLVER.CHECKPOINT_PERIOD", "100"])
    results = train_net.main(args)
    assert calls and set(results) >= {"Rank-1", "mAP", "mINP"}
    records = [json.loads(line) for line in open(os.path.join(out, "metrics.json"))]
    logged = [r for r in records if "loss_cls" in r]
    assert logged and all("loss_triplet" in r and "loss_id" not in r and math.isfinite(r["total_loss"]) for r in logged)
