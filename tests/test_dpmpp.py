"""DPM++ meta-architecture (SPEC §5-§6): every Stage III loss by name and value, SPT candidate-identity ignoring,
eval output for masked matching, gradient paths (L_mask -> HMG, L_hem -> attention), training through
fast-reid's DefaultTrainer (DPMPPTrainer) on a tiny synthetic Occluded-Duke, and DPM's alternating update."""
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

import fastreid_dpmpp  # noqa: F401  (fast-reid import fixes first)
import fastreid_dpmpp.data  # noqa: F401  (registers OccludedDuke)
import fastreid_dpmpp.modeling.heads  # noqa: F401
import fastreid_dpmpp.modeling.meta_arch  # noqa: F401
from fastreid.modeling import build_model
from fastreid.utils.events import EventStorage
from fastreid_dpmpp.engine import DPMPPTrainer, load_config
from fastreid_dpmpp.engine.trainer import AlternatingMaskTrainer, only_these_require_grad
from fastreid_dpmpp.text_prototypes import save_text_prototypes
from _tiny import tiny_vit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs/Synthetic/dpmpp.yml")
D, D_T, C = 32, 16, 4
TINY = tiny_vit(D, 2, 2, D_T)


@pytest.fixture(autouse=True)
def _setup(monkeypatch):
    torch.manual_seed(0)
    monkeypatch.setenv("FASTREID_DPMPP_NO_CYTHON", "1")  # no compile step: fast-reid's Python ranking


def tiny_model(*opts):
    cfg = load_config(CONFIG, TINY + ["MODEL.HEADS.NUM_CLASSES", str(C), "MODEL.VIT.SIE_ENABLED", "False", *opts])
    return build_model(cfg)


def batch(size=8):
    return {"images": torch.rand(size, 3, 64, 32) * 255, "targets": torch.arange(C).repeat_interleave(size // C),
            "camids": torch.zeros(size, dtype=torch.long)}


def record(model):
    """Capture the backbone outputs and the head outputs of the next forward."""
    seen = {}
    forward_features = model.backbone.forward_features

    def recording(*args, **kwargs):
        seen["backbone"] = forward_features(*args, **kwargs)
        return seen["backbone"]

    model.backbone.forward_features = recording
    model.heads.register_forward_hook(lambda module, inputs, output: seen.__setitem__("head", output))
    return seen


# ---------------------------------------------------------------------------- independent formulas
def smoothed_ce(logits, targets, epsilon, ignored=None):
    """Label-smoothed CE; an ignored class is deleted from the sample's logits (SPEC §4.6)."""
    total = 0.0
    for i, y in enumerate(targets.tolist()):
        keep = [c for c in range(logits.shape[1]) if ignored is None or c != int(ignored[i])]
        row = logits.detach()[i, keep].double()
        log_probs = row - torch.logsumexp(row, 0)
        total += -(1 - epsilon) * log_probs[keep.index(y)].item() - epsilon * log_probs.mean().item()
    return total / len(targets)


def hardest_triplet(features, targets, margin, excluded=None):
    features = features.detach()
    total = 0.0
    n = len(targets)
    for a in range(n):
        d = [float((features[a] - features[k]).norm()) for k in range(n)]
        positive = max(d[k] for k in range(n) if targets[k] == targets[a])
        negatives = [d[k] for k in range(n)
                     if targets[k] != targets[a] and not (excluded is not None and excluded[a, k])]
        total += max(0.0, positive - min(negatives) + margin)
    return total / n


def head_orthogonality(attn):
    attn = attn.detach()
    total = 0.0
    for sample in attn:
        rows = [r / r.norm() for r in sample]
        h = len(rows)
        total += sum((float(rows[i] @ rows[j]) - (i == j)) ** 2 for i in range(h) for j in range(h)) / h ** 2
    return total / attn.shape[0]


# ---------------------------------------------------------------------------- losses
@pytest.fixture
def text_file(tmp_path):
    path = str(tmp_path / "text_prototypes.pth")
    save_text_prototypes(path, torch.randn(C, D_T), [f"OccludedDuke_{i}" for i in range(C)])
    return path


def test_every_stage_iii_loss_by_name_and_value(text_file):
    model = tiny_model("MODEL.DPMPP.TEXT_PROTOTYPES", text_file, "MODEL.LOSSES.COARSE.SCALE", "0.5",
                       "MODEL.LOSSES.MASK.SCALE", "0.7", "MODEL.LOSSES.HEM.SCALE", "0.2")
    seen = record(model)
    data = batch()
    with EventStorage(0):
        losses = model(data)
    out, head, y = seen["backbone"], seen["head"], data["targets"]
    assert set(losses) == {"loss_coarse", "loss_id", "loss_mask", "loss_triplet_cls", "loss_triplet_proj", "loss_hem"}
    text = model.heads.text_prototypes
    assert losses["loss_coarse"].item() == pytest.approx(0.5 * smoothed_ce(out["proj"] @ text.t(), y, 0.1), rel=1e-4)
    f = head["features"]
    assert losses["loss_id"].item() == pytest.approx(smoothed_ce(f @ model.heads.prototypes.t(), y, 0.1), rel=1e-4)
    assert losses["loss_mask"].item() == pytest.approx(0.7 * smoothed_ce(head["mask_logits"], y, 0.0), rel=1e-4)
    assert losses["loss_triplet_cls"].item() == pytest.approx(hardest_triplet(out["cls"], y, 0.3), rel=1e-4, abs=1e-6)
    assert losses["loss_triplet_proj"].item() == pytest.approx(hardest_triplet(out["proj"], y, 0.3), rel=1e-4, abs=1e-6)
    assert losses["loss_hem"].item() == pytest.approx(0.2 * head_orthogonality(out["attn_logits"]), rel=1e-4)


def test_ablation_switches_drop_their_losses():
    with EventStorage(0):
        no_dpm = tiny_model("MODEL.DPMPP.DPM_ENABLED", "False", "MODEL.LOSSES.HEM.ENABLED", "False")(batch())
    assert set(no_dpm) == {"loss_id", "loss_triplet_cls", "loss_triplet_proj"}
    vanilla = tiny_model("MODEL.VIT.FAMILY", "vanilla", "MODEL.VIT.ARCH", "vit_small_patch16_224")
    with EventStorage(0):
        assert set(vanilla(batch())) == {"loss_id", "loss_mask", "loss_triplet_cls", "loss_hem"}  # no v_p


class StubSPT:
    """An SPT synthesiser that transfers nothing but declares partners, to check the ignoring wiring."""

    def __init__(self, ignored, excluded):
        self.ignored, self.excluded = ignored, excluded

    def synthesize(self, images, camids, targets):
        return {"patch_transform": lambda tokens: tokens, "ignored_classes": self.ignored,
                "excluded_negatives": self.excluded}


def test_spt_partner_identities_are_ignored_in_every_ce_and_the_triplet(text_file):
    model = tiny_model("MODEL.DPMPP.TEXT_PROTOTYPES", text_file)
    data = batch()
    y = data["targets"]
    ignored = torch.tensor([1, -1, 3, -1, 0, -1, 2, -1])  # samples 0, 2, 4, 6 synthesised with partner class k
    excluded = torch.zeros(8, 8, dtype=torch.bool)
    for a, k in enumerate(ignored.tolist()):
        if k >= 0:
            excluded[a] = y == k
    model.attach_spt(StubSPT(ignored, excluded))
    seen = record(model)
    with EventStorage(0):
        losses = model(data)
    out, head = seen["backbone"], seen["head"]
    text = model.heads.text_prototypes
    assert losses["loss_coarse"].item() == pytest.approx(smoothed_ce(out["proj"] @ text.t(), y, 0.1, ignored), rel=1e-4)
    assert losses["loss_id"].item() == pytest.approx(smoothed_ce(head["id_logits"], y, 0.1, ignored), rel=1e-4)
    assert losses["loss_mask"].item() == pytest.approx(smoothed_ce(head["mask_logits"], y, 0.0, ignored), rel=1e-4)
    for name in ("cls", "proj"):
        expected = hardest_triplet(out[name], y, 0.3, excluded)
        assert losses[f"loss_triplet_{name}"].item() == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert smoothed_ce(head["id_logits"], y, 0.1) != pytest.approx(losses["loss_id"].item(), rel=1e-4)


# ---------------------------------------------------------------------------- eval output
def test_eval_returns_descriptor_and_mask_in_one_tensor(text_file):
    data = batch()
    with torch.no_grad():
        masked = tiny_model().eval()(data)
        assert masked.shape == (8, 2 * (D + D_T))
        descriptor, laid = masked.chunk(2, dim=1)
        assert torch.allclose(descriptor.norm(dim=1), torch.ones(8))
        assert torch.equal(laid[:, :D], torch.full((8, D), 0.5)) and torch.equal(laid[:, D:], torch.ones(8, D_T))
        assert tiny_model("TEST.MASKED_MATCHING.ENABLED", "False").eval()(data).shape == (8, D + D_T)
        assert tiny_model("MODEL.DPMPP.DPM_ENABLED", "False").eval()(data).shape == (8, D + D_T)
        assert tiny_model("MODEL.DPMPP.DESCRIPTOR", "cls").eval()(data).shape == (8, 2 * D)
        text = tiny_model("MODEL.DPMPP.TEXT_PROTOTYPES", text_file, "MODEL.DPMPP.MASKED_PROTOTYPE", "text").eval()(data)
        laid = text[:, D + D_T:]
        assert torch.equal(laid[:, :D], torch.ones(8, D)) and torch.equal(laid[:, D:], torch.full((8, D_T), 0.5))
    with pytest.raises(ValueError, match="DESCRIPTOR"):
        tiny_model("MODEL.DPMPP.TEXT_PROTOTYPES", text_file, "MODEL.DPMPP.MASKED_PROTOTYPE", "text",
                   "MODEL.DPMPP.DESCRIPTOR", "cls")
    with pytest.raises(ValueError, match="DPMHead"):
        tiny_model("MODEL.HEADS.NAME", "CLIPReIDHead")


# ---------------------------------------------------------------------------- gradient paths
def grads(parameters):
    return [p.grad for p in parameters]


def test_l_mask_trains_the_mask_generator_and_l_hem_reaches_the_attention():
    model = tiny_model()
    hmg = list(model.heads.mask_generator.parameters())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = batch()
    with EventStorage(0):
        for _ in range(3):  # the FC starts at zero: the conv layers get gradient once it has moved
            optimizer.zero_grad(set_to_none=True)
            model(data)["loss_mask"].backward()
            optimizer.step()
        assert all(g is not None and g.abs().sum() > 0 for g in grads(hmg))

        optimizer.zero_grad(set_to_none=True)
        model(data)["loss_id"].backward()  # HMG is trained by L_mask alone
        assert all(g is None for g in grads(hmg))

        optimizer.zero_grad(set_to_none=True)
        model(data)["loss_hem"].backward()
    last_block = model.backbone.visual.transformer.resblocks[-1]
    assert last_block.attn.in_proj_weight.grad.abs().sum() > 0
    assert all(g is None for g in grads(hmg)) and model.heads.prototypes.grad is None


# ---------------------------------------------------------------------------- through fast-reid's trainer
@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    """6 training ids x 4 images, 4 queries, 60 gallery images (fast-reid's Python ranking needs >= 50)."""
    from fastreid_dpmpp.data.synthetic import make_synthetic_benchmark
    root = str(tmp_path_factory.mktemp("synthetic"))
    make_synthetic_benchmark(root, seed=0, layout="occluded_duke", image_size=(64, 32), num_train_ids=6,
                             images_per_train_id=4, num_test_ids=4, max_queries_per_id=1,
                             gallery_images_per_id=4, num_distractor_ids=16)
    return root


def trainer_cfg(root, out, *opts):
    cfg = load_config(CONFIG, TINY + [
        "DATASETS.ROOT", root, "OUTPUT_DIR", out, "SOLVER.IMS_PER_BATCH", "8", "SOLVER.WARMUP_ITERS", "0",
        "SOLVER.CHECKPOINT_PERIOD", "100", "TEST.IMS_PER_BATCH", "32", "INPUT.REA.ENABLED", "False", *opts])
    os.makedirs(out, exist_ok=True)
    from fastreid_dpmpp.engine.defaults import apply_dataset_root
    apply_dataset_root(cfg)
    cfg.freeze()
    return cfg


def test_trains_through_default_trainer_and_evaluates_with_masked_matching(synthetic_root, tmp_path, monkeypatch):
    import fastreid.engine.defaults as fastreid_defaults
    from fastreid_dpmpp.evaluation import MaskedReidEvaluator
    calls, printed = [], []
    original = MaskedReidEvaluator.evaluate
    monkeypatch.setattr(MaskedReidEvaluator, "evaluate", lambda self: calls.append(1) or original(self))
    print_table = fastreid_defaults.print_csv_format  # fast-reid's own results table
    monkeypatch.setattr(fastreid_defaults, "print_csv_format", lambda r: printed.append(dict(r)) or print_table(r))
    out = str(tmp_path / "run")
    # seeded (model init and every epoch): unseeded, the per-epoch loss of this 4-epoch run went up in one full run
    torch.manual_seed(0)
    trainer = DPMPPTrainer(trainer_cfg(synthetic_root, out, "SOLVER.MAX_EPOCH", "4", "TEST.EVAL_PERIOD", "4",
                                       "SEED", "0"))
    trainer.resume_or_load(resume=False)
    model = trainer.model
    first_block = [p.detach().clone() for p in model.backbone.visual.transformer.resblocks[0].parameters()]
    results = trainer.train()

    records = [json.loads(line) for line in open(os.path.join(out, "metrics.json"))]
    losses = [r["total_loss"] for r in records if "total_loss" in r]  # fast-reid writes them once per epoch here
    assert len(losses) >= 3 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]  # the loss goes down
    assert {"loss_id", "loss_mask", "loss_triplet_cls", "loss_triplet_proj", "loss_hem"} <= set(records[-1])
    after = model.backbone.visual.transformer.resblocks[0].parameters()
    assert all(not torch.equal(a, b) for a, b in zip(first_block, after))  # the optimiser really updates the backbone

    model.eval()
    with torch.no_grad():
        outputs = model(batch())
    mask = outputs.chunk(2, dim=1)[1][:, :D]
    assert (mask - 0.5).abs().max() > 1e-3  # the mask moved away from 0.5

    assert calls and set(results) >= {"Rank-1", "Rank-5", "mAP", "mINP", "metric"}
    assert printed and printed[-1]["dataset"] == "OccludedDuke" and printed[-1]["mAP"] == results["mAP"]


def test_dpm_alternating_update(synthetic_root, tmp_path):
    cfg = trainer_cfg(synthetic_root, str(tmp_path / "alt"), "MODEL.DPMPP.ALTERNATE_UPDATE", "True",
                      "SOLVER.MAX_EPOCH", "1")
    trainer = DPMPPTrainer(cfg)
    assert isinstance(trainer._trainer, AlternatingMaskTrainer)
    model = trainer.model
    hmg = {id(p) for p in model.heads.mask_generator.parameters()}
    mask_side = {id(p) for group in trainer._trainer.mask_optimizer.param_groups for p in group["params"]}
    # fast-reid packs the main optimiser's parameters into contiguous buffers: compare element counts
    main_numel = sum(p.numel() for group in trainer.optimizer.param_groups for p in group["params"])
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in hmg]
    assert mask_side == hmg and main_numel == sum(p.numel() for p in others)
    assert "mask_optimizer" in trainer.checkpointer.checkpointables

    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with EventStorage(0):
        for _ in range(3):
            trainer._trainer.run_step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(before[name], p)}
    assert "heads.mask_generator.fc.weight" in changed and "heads.prototypes" in changed
    assert any(name.startswith("heads.mask_generator.conv1") for name in changed)

    # pass 2's graph: only the mask generator receives gradient; the flags come back afterwards
    model.zero_grad(set_to_none=True)
    with only_these_require_grad(model, model.heads.mask_generator.parameters()), EventStorage(0):
        sum(model(batch()).values()).backward()
    assert model.heads.mask_generator.fc.weight.grad is not None
    assert all(p.grad is None for name, p in model.named_parameters() if "mask_generator" not in name)
    assert all(p.requires_grad for name, p in model.named_parameters() if name != "heads.bottleneck.bias")

    no_mask = trainer_cfg(synthetic_root, str(tmp_path / "alt2"), "MODEL.DPMPP.ALTERNATE_UPDATE", "True",
                          "MODEL.DPMPP.DPM_ENABLED", "False")
    with pytest.raises(ValueError, match="ALTERNATE_UPDATE"):
        DPMPPTrainer(no_mask)
