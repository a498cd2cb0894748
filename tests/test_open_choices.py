"""The choices SPEC §9 leaves open, each a config key (issue 13 a-g), and the fine-tuning controls and arms of the
evaluation protocol (issue 12): test descriptor spaces, SIE at test, HEM batch reduction, HMG pooling, masked
matching placement at test, the SPT partner guard, the alternating update replaying SPT's partners, the mask
supervision [ours], layer-wise LR decay and frozen blocks, and CLIP-ReID's image-to-text loss.
References are computed here independently of the code under test."""
import os

import pytest
import torch
import torch.nn.functional as F

import fastreid_dpmpp  # noqa: F401  (fast-reid import fixes first)
from fastreid.modeling import build_model
from fastreid.utils.events import EventStorage
from fastreid_dpmpp.engine import load_config
from fastreid_dpmpp.engine.trainer import AlternatingMaskTrainer, layer_decay_scales, layer_decayed_lrs
from fastreid_dpmpp.evaluation.masked_matching import masked_similarity
from fastreid_dpmpp.modeling.hmg import HierarchicalMaskGenerator
from fastreid_dpmpp.modeling.losses.hem import head_orthogonality_loss
from fastreid_dpmpp.modeling.mask_supervision import agreement_target, mask_supervision_loss
from fastreid_dpmpp.modeling.stage3_patch_transfer import select_partners
from fastreid_dpmpp.text_prototypes import save_text_prototypes
from _tiny import tiny_vit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DPMPP = os.path.join(REPO, "configs", "Synthetic", "dpmpp.yml")
BASELINE = os.path.join(REPO, "configs", "Synthetic", "clip_baseline.yml")
D, D_T, C = 32, 16, 4
TINY = tiny_vit(D, 2, 2, D_T, (1, 2), (1, 1), (64, 32), "MODEL.HEADS.NUM_CLASSES", C)


def tiny(config=DPMPP, *opts, seed=0):
    torch.manual_seed(seed)
    return build_model(load_config(config, TINY + list(opts)))


def batch(size=8, cameras=True):
    data = {"images": torch.rand(size, 3, 64, 32) * 255, "targets": torch.arange(C).repeat_interleave(size // C)}
    if cameras:
        data["camids"] = torch.arange(size) % 3
    return data


# ---------------------------------------------------------------------------------------------- (a) spaces
def test_test_descriptors_and_the_part_the_mask_acts_on():
    data = batch()
    for name in ("bn_cls", "concat_bn", "proj"):
        model = tiny(BASELINE, "MODEL.DPMPP.DESCRIPTOR", name, "MODEL.VIT.SIE_ENABLED", False).eval()
        features = model.named_features(data)
        out = model(data)
        if name == "bn_cls":
            expected = F.normalize(features["bn_v"], dim=1)
        elif name == "proj":
            expected = F.normalize(features["vp"], dim=1)
        else:
            expected = torch.cat([F.normalize(features["bn_v"], dim=1), F.normalize(features["vp"], dim=1)], 1) / 2 ** 0.5
        assert torch.allclose(out, expected, atol=1e-6), name
    model = tiny(DPMPP, "MODEL.DPMPP.DESCRIPTOR", "concat_bn", "MODEL.VIT.SIE_ENABLED", False).eval()
    packed = model(data)
    mask = packed[:, D + D_T:]
    assert model.mask_span == [0, D] and torch.equal(mask[:, D:], torch.ones(8, D_T))
    assert torch.allclose(mask[:, :D], model.named_features(data)["mask"])
    with pytest.raises(ValueError, match="DESCRIPTOR 'proj' does not contain"):
        tiny(DPMPP, "MODEL.DPMPP.DESCRIPTOR", "proj")


# ---------------------------------------------------------------------------------------------- (c) SIE at test
def test_sie_at_test_off_ignores_the_camera_ids():
    on = tiny(BASELINE, "MODEL.VIT.NUM_CAMERAS", 3, "MODEL.VIT.SIE_AT_TEST", True).eval()
    off = tiny(BASELINE, "MODEL.VIT.NUM_CAMERAS", 3, "MODEL.VIT.SIE_AT_TEST", False).eval()
    off.load_state_dict(on.state_dict())
    data = batch()
    assert torch.allclose(off(data), off(batch_without_cameras(data)))
    assert torch.allclose(off(data), on(batch_without_cameras(data)))
    assert not torch.allclose(on(data), off(data))
    off.train()
    assert off.camera_ids(data) is not None       # training keeps the camera embedding


def batch_without_cameras(data):
    return {k: v for k, v in data.items() if k != "camids"}


# ---------------------------------------------------------------------------------------------- (d) HEM
def test_hem_sum_is_the_batch_sum_of_the_per_image_loss():
    logits = torch.randn(5, 3, 7)
    per_image = []
    for image in logits:
        unit = image / image.norm(dim=1, keepdim=True)
        per_image.append(((unit @ unit.t() - torch.eye(3)) ** 2).sum() / 9)
    assert head_orthogonality_loss(logits, "sum") == pytest.approx(float(sum(per_image)), rel=1e-5)
    assert head_orthogonality_loss(logits, "mean") == pytest.approx(float(sum(per_image)) / 5, rel=1e-5)
    with pytest.raises(ValueError, match="REDUCTION"):
        head_orthogonality_loss(logits, "max")


# ---------------------------------------------------------------------------------------------- (g) HMG pool
def test_hmg_average_pooling():
    torch.manual_seed(0)
    generator = HierarchicalMaskGenerator([4, 4], num_taps=2, out_dim=6, pool="avg").eval()
    torch.nn.init.normal_(generator.fc.weight)
    taps = [torch.randn(2, 4, 8, 4), torch.randn(2, 4, 8, 4)]
    x = torch.cat(taps, 1)
    x = F.max_pool2d(generator.conv1(x), 2)
    x = F.max_pool2d(generator.conv2(x), (2, 2))
    expected = torch.sigmoid(generator.fc(generator.conv3(x).mean(dim=(2, 3))))
    assert torch.allclose(generator(taps), expected, atol=1e-6)


# ---------------------------------------------------------------------------------------------- (e) placement
def test_placement_at_test_applies_the_training_side():
    torch.manual_seed(1)
    query, gallery, masks = torch.randn(3, 5), torch.randn(4, 5), torch.rand(3, 5)
    q_hat, g_hat = F.normalize(query, dim=1), F.normalize(gallery, dim=1)
    feature_side = torch.stack([torch.stack([F.normalize(masks[i] * q_hat[i], dim=0) @ g_hat[j] for j in range(4)])
                                for i in range(3)])
    assert torch.allclose(masked_similarity(query, gallery, masks, side="feature"), feature_side, atol=1e-6)
    gallery_side = torch.stack([torch.stack([q_hat[i] @ F.normalize(masks[i] * g_hat[j], dim=0) for j in range(4)])
                                for i in range(3)])
    assert torch.allclose(masked_similarity(query, gallery, masks), gallery_side, atol=1e-6)


# ---------------------------------------------------------------------------------------------- (b) SPT guard
def test_partner_guard_refuses_tiny_partner_masks():
    masks = torch.zeros(2, 4, 2, dtype=torch.bool)
    masks[0] = True                       # the anchor: every patch salient
    masks[1, 0, 0] = True                 # a partner whose salient area is one patch inside the anchor's
    labels = torch.tensor([0, 1])
    args = dict(alpha=0.7, beta=0.7, top_fraction=1.0, prob=1.0, generator=torch.Generator().manual_seed(0))
    assert select_partners(masks, labels, **args)[0] == 1              # OIoU = 1: SPEC accepts it
    args["generator"] = torch.Generator().manual_seed(0)
    assert select_partners(masks, labels, min_partner_area=0.5, **args)[0] == -1


# ---------------------------------------------------------------------------------------------- (f) replay
class RecordingSynthesizer:
    """Draws partners from its own generator, as SPTSynthesizer does, and records them."""

    def __init__(self):
        self.generator = torch.Generator().manual_seed(0)
        self.seen = []

    def rng_state(self):
        return self.generator.get_state()

    def set_rng_state(self, state):
        self.generator.set_state(state)

    def synthesize(self, images, camids, targets):
        partners = torch.randperm(len(targets), generator=self.generator)
        self.seen.append(partners)
        size = len(targets)
        return {"patch_transform": None, "partners": partners, "ignored_classes": torch.full((size,), -1),
                "excluded_negatives": torch.zeros(size, size, dtype=torch.bool)}


def test_alternating_update_trains_both_passes_on_the_same_spt_partners():
    model = tiny(DPMPP, "MODEL.VIT.SIE_ENABLED", False)
    synthesizer = RecordingSynthesizer()
    model.attach_spt(synthesizer)
    trainer = AlternatingMaskTrainer.__new__(AlternatingMaskTrainer)
    mask_parameters = list(model.heads.mask_generator.parameters())
    others = [p for p in model.parameters() if all(p is not q for q in mask_parameters)]
    trainer.__dict__.update(model=model.train(), optimizer=torch.optim.SGD(others, lr=0.01), param_wrapper=None,
                            mask_optimizer=torch.optim.SGD(mask_parameters, lr=0.01), mask_parameters=mask_parameters,
                            _data_loader_iter=iter([batch(cameras=False)] * 2), iter=0)
    trainer._write_metrics = lambda *args, **kwargs: None
    with EventStorage(0):
        trainer.run_step()
    assert len(synthesizer.seen) == 2 and torch.equal(synthesizer.seen[0], synthesizer.seen[1])


# ---------------------------------------------------------------------------------------------- mask supervision
def test_agreement_target_and_supervision_loss():
    features = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    reference = torch.tensor([[1.0, 1.0, 0.0, 2.0]])
    target = agreement_target(features, reference, keep=0.5)
    change = (F.normalize(features, dim=1) - F.normalize(reference, dim=1)).abs()[0]
    kept = set(change.argsort()[:2].tolist())
    assert set(target[0].nonzero().flatten().tolist()) == kept
    masks = torch.tensor([[0.9, 0.2, 0.7, 0.4], [0.5, 0.5, 0.5, 0.5]], requires_grad=True)
    targets = torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    rows = torch.tensor([True, False])
    loss = mask_supervision_loss(masks, targets, rows)
    expected = -(torch.log(torch.tensor([0.9, 0.8, 0.7, 0.6]))).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert masks.grad[1].abs().sum() == 0 and masks.grad[0].abs().sum() > 0


def test_mask_supervision_reaches_the_mask_generator():
    model = tiny(DPMPP, "MODEL.VIT.SIE_ENABLED", False, "MODEL.LOSSES.MASK_SUPERVISION.ENABLED", True,
                 "MODEL.LOSSES.MASK_SUPERVISION.SOURCE", "prototype", "MODEL.LOSSES.MASK.SCALE", 0.0)
    with EventStorage(0):
        losses = model(batch(cameras=False))
    assert "loss_mask_supervision" in losses
    losses["loss_mask_supervision"].backward()
    assert model.heads.mask_generator.fc.weight.grad.abs().sum() > 0
    spt_pairs = tiny(DPMPP, "MODEL.VIT.SIE_ENABLED", False, "MODEL.LOSSES.MASK_SUPERVISION.ENABLED", True)
    with EventStorage(0), pytest.raises(ValueError, match="needs SPT"):
        spt_pairs(batch(cameras=False))


# ---------------------------------------------------------------------------------------------- fine-tuning controls
def test_layer_decay_scales_the_backbone_lrs_and_frozen_blocks_do_not_train():
    model = tiny(BASELINE, "MODEL.VIT.FREEZE_BLOCKS", 1, "MODEL.VIT.NUM_CAMERAS", 3)
    backbone = model.backbone
    frozen = {n for n, p in backbone.named_parameters() if not p.requires_grad}
    assert any(n.startswith("visual.transformer.resblocks.0.") for n in frozen) and "visual.conv1.weight" in frozen
    assert not any(n.startswith("visual.transformer.resblocks.1.") for n in frozen) and "sie_embed" not in frozen
    scales = layer_decay_scales(model, 0.5)
    by_name = {n: scales[id(p)] for n, p in backbone.named_parameters()}
    assert by_name["visual.transformer.resblocks.1.attn.in_proj_weight"] == 0.5      # block 2 of 2: 0.5^(3-2)
    assert by_name["visual.proj"] == 1.0 and by_name["visual.conv1.weight"] == 0.125
    from fastreid.solver import build as solver_build
    with layer_decayed_lrs(model, 0.5):
        groups = solver_build.get_default_optimizer_params(model, base_lr=1.0, heads_lr_factor=10.0)
    lrs = {id(g["params"][0]): g["lr"] for g in groups}
    block = backbone.visual.transformer.resblocks[1].attn.in_proj_weight
    assert lrs[id(block)] == 0.5 and lrs[id(model.heads.classifier.weight)] == 10.0
    assert solver_build.get_default_optimizer_params is not None and "decayed" not in \
        solver_build.get_default_optimizer_params.__name__


# ---------------------------------------------------------------------------------------------- CLIP-ReID proper
def test_clip_reid_adds_the_image_to_text_loss(tmp_path):
    text = torch.randn(C, D_T)
    path = str(tmp_path / "T.pth")
    save_text_prototypes(path, text, [f"a_{i}" for i in range(C)])
    model = tiny(BASELINE, "MODEL.DPMPP.TEXT_PROTOTYPES", path, "MODEL.VIT.SIE_ENABLED", False,
                 "MODEL.LOSSES.COARSE.EPSILON", 0.0)
    data = batch(cameras=False)
    with EventStorage(0):
        losses = model(data)
    model.eval()
    v_p = model.named_features(data)["vp"]
    expected = F.cross_entropy(v_p @ text.t(), data["targets"])
    assert losses["loss_i2t"].item() == pytest.approx(expected.item(), rel=1e-4)
    assert torch.equal(model.heads.text_prototypes, text) and not model.heads.text_prototypes.requires_grad
