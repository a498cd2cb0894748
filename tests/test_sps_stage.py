"""Stage II (SPEC §3): the SPSModel meta-architecture (Eq. 3, Eq. 4, Eq. 22-23), its two optimisers, the budget
loss steering the mean mask towards ρ, and tools/train_stage2.py end to end (SPS checkpoint, resume, eval-only).

References are computed here independently: torch's own ``F.cross_entropy(label_smoothing=...)``, a naive
batch-hard triplet loop, the backbone's patch embedding multiplied by hand."""
import json
import os

import pytest
import torch
import torch.nn.functional as F

import fastreid_dpmpp  # noqa: F401  (fast-reid fixes first)
import fastreid_dpmpp.data.datasets  # noqa: F401  (registers OccludedDuke)
import fastreid_dpmpp.modeling.backbones  # noqa: F401
import fastreid_dpmpp.modeling.heads  # noqa: F401
import fastreid_dpmpp.modeling.meta_arch  # noqa: F401
from fastreid.engine import default_argument_parser
from fastreid.modeling.meta_arch import build_model
from fastreid.utils.events import EventStorage
from fastreid_dpmpp.checkpoint import trusted_torch_load
from fastreid_dpmpp.engine.defaults import load_config
from fastreid_dpmpp.engine.sps_checkpoint import load_frozen_sps_model
from fastreid_dpmpp.engine.stage2 import CompositeOptimizer, Stage2Trainer, build_stage2_optimizer
from _tiny import TINY_SPS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPS_CONFIG = os.path.join(ROOT, "configs", "Synthetic", "sps.yml")

# A very small CLIP-ViT (2 blocks of width 32) on 128x64 images: a 10 x 5 grid of stride-12 patches.
TINY = TINY_SPS


def tiny_cfg(*overrides):
    return load_config(SPS_CONFIG, TINY + ["MODEL.HEADS.NUM_CLASSES", 4, "MODEL.VIT.NUM_CAMERAS", 3]
                       + list(overrides))


def build_sps(*overrides, seed=0):
    torch.manual_seed(seed)
    return build_model(tiny_cfg(*overrides))


def batch(size=8, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return {"images": torch.rand(size, 3, 128, 64, generator=generator) * 255,
            "targets": torch.arange(size) % 4, "camids": torch.arange(size) % 3}


def record_backbone_passes(model):
    """Wrap ``backbone.forward_tokens`` to record (input tokens, outputs) of every pass."""
    passes = []
    original = model.backbone.forward_tokens

    def recording(tokens, camids=None, visible_patches=None):
        outputs = original(tokens, camids, visible_patches)
        passes.append((tokens.detach().clone(), outputs))
        return outputs

    model.backbone.forward_tokens = recording
    return passes


def naive_batch_hard_triplet(features, targets, margin):
    dist = torch.cdist(features, features)
    terms = []
    for a in range(len(targets)):
        positives = [dist[a, p] for p in range(len(targets)) if targets[p] == targets[a]]
        negatives = [dist[a, n] for n in range(len(targets)) if targets[n] != targets[a]]
        terms.append(torch.relu(max(positives) - min(negatives) + margin))
    return torch.stack(terms).mean()


# ----------------------------------------------------------------------------- the model
def test_training_step_is_eq23_over_three_passes():
    model = build_sps().train()
    data = batch()
    passes = record_backbone_passes(model)
    with EventStorage(0) as storage:
        losses = model(data)
    assert set(losses) == {"loss_id_full_cls", "loss_id_full_proj", "loss_id_masked_cls", "loss_id_masked_proj",
                           "loss_triplet_cls", "loss_triplet_proj", "loss_budget", "loss_complement_cls",
                           "loss_complement_proj"}
    assert len(passes) == 3
    images = model.preprocess_image(data)
    camids, targets = data["camids"], data["targets"]
    with torch.no_grad():
        embedded = model.backbone.embed_patches(images)
        saliency = model.saliency(images, camids)
    assert saliency.shape == (8, 50) and bool(((saliency > 0) & (saliency < 1)).all())
    # Eq. 4: full pass, tokens x M, tokens x (1 - M), all before the class token / position embedding.
    torch.testing.assert_close(passes[0][0], embedded)
    torch.testing.assert_close(passes[1][0], embedded * saliency.unsqueeze(-1))
    torch.testing.assert_close(passes[2][0], embedded * (1 - saliency.unsqueeze(-1)))

    cfg = tiny_cfg()
    logits = [model.heads(outputs) for _, outputs in passes]   # BN in train mode: batch statistics, as in forward
    epsilon = cfg.MODEL.LOSSES.ID.EPSILON
    for branch in ("cls", "proj"):
        torch.testing.assert_close(losses[f"loss_id_full_{branch}"],
                                   F.cross_entropy(logits[0][branch], targets, label_smoothing=epsilon))
        torch.testing.assert_close(losses[f"loss_id_masked_{branch}"],
                                   F.cross_entropy(logits[1][branch], targets, label_smoothing=epsilon))
        complement = (logits[0][branch].softmax(1) * logits[2][branch].softmax(1)).sum()
        torch.testing.assert_close(losses[f"loss_complement_{branch}"], cfg.STAGE2.COMPLEMENT_WEIGHT * complement)
        torch.testing.assert_close(losses[f"loss_triplet_{branch}"],
                                   naive_batch_hard_triplet(passes[0][1][branch], targets, cfg.MODEL.LOSSES.TRI.MARGIN))
    budget = cfg.STAGE2.BUDGET_WEIGHT * (saliency.mean() - cfg.STAGE2.RHO) ** 2
    torch.testing.assert_close(losses["loss_budget"], budget)
    assert abs(storage.history("sps_mask_mean").latest() - saliency.mean().item()) < 1e-6


def test_budget_term_trains_only_the_decision_layer():
    model = build_sps().train()
    losses = model(batch())
    losses["loss_budget"].backward()
    assert model.selector.decision.weight.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.backbone.parameters())
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.heads.parameters())


def test_eval_returns_the_normalised_descriptor():
    # CLIP-ReID's descriptor with the camera embedding at test (SPEC §1)
    model = build_sps("MODEL.DPMPP.DESCRIPTOR", "concat", "MODEL.VIT.SIE_AT_TEST", True).eval()
    data = batch(4)
    with torch.no_grad():
        descriptor = model(data)
        outputs = model.backbone.forward_features(model.preprocess_image(data), data["camids"])
    expected = F.normalize(torch.cat([outputs["cls"], outputs["proj"]], dim=1), dim=1)
    torch.testing.assert_close(descriptor, expected)
    assert descriptor.shape == (4, 32 + 16)


def test_bad_rho_is_refused():
    with pytest.raises(ValueError, match="STAGE2.RHO"):
        build_sps("STAGE2.RHO", 1.5)


# ----------------------------------------------------------------------------- optimisers
def test_two_optimisers_split_the_parameters_and_only_main_follows_the_schedule():
    cfg = tiny_cfg("SOLVER.WARMUP_ITERS", 10, "SOLVER.WARMUP_FACTOR", 0.1)
    model = build_sps()
    optimizer, wrapper = build_stage2_optimizer(cfg, model)
    assert wrapper is None and isinstance(optimizer, CompositeOptimizer)
    main, decision = optimizer["main"], optimizer["decision"]
    assert isinstance(main, torch.optim.Adam) and isinstance(decision, torch.optim.SGD)
    ids = lambda opt: [id(p) for g in opt.param_groups for p in g["params"]]  # noqa: E731
    selector = {id(p) for p in model.selector.parameters()}
    assert set(ids(decision)) == selector and len(ids(decision)) == len(selector)
    others = [id(p) for n, p in model.named_parameters() if p.requires_grad and not n.startswith("selector.")]
    assert sorted(ids(main)) == sorted(others)
    assert all(g["lr"] == cfg.STAGE2.DECISION_LR and g["momentum"] == cfg.STAGE2.DECISION_MOMENTUM
               for g in decision.param_groups)
    assert len(optimizer.param_groups) == len(main.param_groups) + len(decision.param_groups)

    schedulers = Stage2Trainer.build_lr_scheduler(cfg, optimizer, iters_per_epoch=5)
    main.step()   # no gradients yet: a no-op that keeps torch from warning about the scheduler's order
    warm = main.param_groups[0]["lr"]
    assert warm == pytest.approx(cfg.SOLVER.BASE_LR * 0.1)           # warm-up starts at WARMUP_FACTOR x BASE_LR
    for _ in range(5):
        schedulers["warmup_sched"].step()
    assert main.param_groups[0]["lr"] > warm
    assert all(g["lr"] == cfg.STAGE2.DECISION_LR for g in decision.param_groups)


def test_composite_state_round_trips():
    cfg = tiny_cfg()
    model = build_sps().train()
    optimizer, _ = build_stage2_optimizer(cfg, model)
    optimizer.zero_grad()
    sum(model(batch()).values()).backward()
    optimizer.step()
    state = optimizer.state_dict()
    assert set(state) == {"main", "decision"}

    fresh, _ = build_stage2_optimizer(cfg, build_sps())
    fresh.load_state_dict(state)
    loaded = fresh.state_dict()
    momentum = [s["momentum_buffer"] for s in loaded["decision"]["state"].values()]
    expected = [s["momentum_buffer"] for s in state["decision"]["state"].values()]
    assert len(momentum) == 2 and all(torch.equal(a, b) for a, b in zip(momentum, expected))
    assert all(torch.equal(a["exp_avg"], b["exp_avg"])
               for a, b in zip(loaded["main"]["state"].values(), state["main"]["state"].values()))
    with pytest.raises(ValueError, match="expected"):
        fresh.load_state_dict({"main": state["main"]})


def test_budget_loss_drives_the_mean_mask_towards_rho():
    """w_b·(mean(M) − ρ)² alone, minimised by the decision layer's own optimiser (SGD, STAGE2.DECISION_LR and
    momentum): the backbone gets no gradient from this term, so its taps are computed once."""
    cfg = tiny_cfg()
    model = build_sps().train()
    decision = build_stage2_optimizer(cfg, model)[0]["decision"]
    data = batch(8, seed=3)
    with torch.no_grad():
        taps = model.backbone.forward_features(model.preprocess_image(data), data["camids"])["taps"]
    rho = cfg.STAGE2.RHO
    gaps = []
    for _ in range(60):
        mean_mask = model.selector(taps).mean()
        gaps.append(abs(mean_mask.item() - rho))
        decision.zero_grad()
        (cfg.STAGE2.BUDGET_WEIGHT * (mean_mask - rho) ** 2).backward()
        decision.step()
    assert gaps[0] > 0.1                    # a random-init layer starts near σ(0) = 0.5
    assert max(gaps[-10:]) < 0.15 * gaps[0]  # and settles near ρ (momentum makes it oscillate on the way)


# ----------------------------------------------------------------------------- tools/train_stage2.py
def tool_args(output_dir, dataset_root, *extra_flags, opts=()):
    argv = ["--config-file", SPS_CONFIG, *extra_flags, *map(str, TINY),
            "DATASETS.ROOT", dataset_root, "OUTPUT_DIR", output_dir, *map(str, opts)]
    return default_argument_parser().parse_args(argv)


def test_stage2_runs_end_to_end_resumes_and_evaluates(dataset_root, tmp_path, load_tool):
    tool = load_tool("train_stage2")
    output = str(tmp_path / "sps")
    path = tool.main(tool_args(output, dataset_root,
                               opts=["SOLVER.MAX_EPOCH", 1, "SOLVER.CHECKPOINT_PERIOD", 1, "TEST.EVAL_PERIOD", 0]))
    assert path == os.path.join(output, "sps_final.pth") and os.path.isfile(path)
    artifact = trusted_torch_load(path)
    assert any(k.startswith("selector.") for k in artifact["model"])
    meta = artifact["sps_meta"]
    assert meta["grid"] == [10, 5] and meta["num_classes"] == 8 and meta["epochs"] == 1
    assert meta["backbone_config"]["MODEL.VIT.WIDTH"] == 32 and meta["backbone_config"]["MODEL.VIT.NUM_CAMERAS"] > 0
    with open(os.path.join(output, "stage2", "metrics.json")) as f:
        metrics = [json.loads(line) for line in f if line.strip()]
    assert {"loss_budget", "loss_complement_cls", "loss_id_masked_cls", "sps_mask_mean"} <= set(metrics[-1])
    frozen = load_frozen_sps_model(load_config(SPS_CONFIG, TINY), path)
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())

    # Resume: a second run to 2 epochs starts at epoch 1 with both optimisers' states and the schedulers restored.
    args = tool_args(output, dataset_root, "--resume",
                     opts=["SOLVER.MAX_EPOCH", 2, "SOLVER.CHECKPOINT_PERIOD", 1, "TEST.EVAL_PERIOD", 2])
    from fastreid_dpmpp.engine import setup
    trainer = Stage2Trainer(setup(args))
    trainer.resume_or_load(resume=True)
    assert trainer.start_epoch == 1
    saved = trusted_torch_load(os.path.join(output, "stage2", "model_final.pth"))
    restored = trainer.optimizer.state_dict()
    for member in ("main", "decision"):
        for key, value in saved["optimizer"][member]["state"].items():
            for name, tensor in value.items():
                assert torch.equal(restored[member]["state"][key][name], tensor), (member, key, name)
    assert trainer.scheduler["warmup_sched"].last_epoch == saved["warmup_sched"]["last_epoch"] > 0
    assert trainer.train() == path
    assert trusted_torch_load(path)["sps_meta"]["epochs"] == 2
    assert set(trainer.last_eval_results) >= {"Rank-1", "mAP"}

    results = tool.main(tool_args(output, dataset_root, "--eval-only"))
    assert set(results) >= {"Rank-1", "Rank-5", "Rank-10", "mAP"}
