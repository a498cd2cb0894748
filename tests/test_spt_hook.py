"""Stage III SPT as fast-reid picks it up from the config (SPEC §4): the synthesiser driven by a frozen SPS model
(Eq. 7 on the tokens that reach the transformer, mask resizing between grids, candidate-identity ignoring in the
softmax and in triplet mining, reproducible draws), the SPS checkpoint errors, and a tools/train_net.py run with
SPT.ENABLED (statistics in metrics.json, a picture of synthesised samples, no SPS weights in the ReID checkpoint).

References are computed here independently: per-sample loops over the patch embeddings, F.cross_entropy on the
logits with the partner's column deleted, a naive triplet loop, nearest-neighbour indices by hand."""
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
from fastreid_dpmpp.engine.sps_checkpoint import SPSWeightsError, load_frozen_sps_model
from fastreid_dpmpp.engine.stage3_spt_hook import SPTHook
from fastreid_dpmpp.modeling.module_utils import freeze_model
from fastreid_dpmpp.modeling.stage3_synthesizer import SPTSynthesizer
from _tiny import TINY_SPS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASELINE_CONFIG = os.path.join(ROOT, "configs", "Synthetic", "clip_baseline.yml")

# A very small CLIP-ViT (2 blocks of width 32) on 128x64 images: a 10 x 5 grid of stride-12 patches.
# Permissive pairing: every sample considered, every candidate in the ranking, no α / β rejection.
PERMISSIVE = ["SPT.PROB", 1.0, "SPT.ALPHA", 0.0, "SPT.BETA", 0.0, "SPT.TOP_FRACTION", 1.0]
NUM_CLASSES = 4
TINY = TINY_SPS + ["MODEL.VIT.NUM_CAMERAS", "8"]


def tiny_cfg(*overrides):
    return load_config(BASELINE_CONFIG, TINY + PERMISSIVE + ["MODEL.HEADS.NUM_CLASSES", NUM_CLASSES]
                       + list(overrides))


def build(meta_arch, *overrides, seed=0):
    torch.manual_seed(seed)
    return build_model(tiny_cfg("MODEL.META_ARCHITECTURE", meta_arch, *overrides))


def batch(size=8, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return {"images": torch.rand(size, 3, 128, 64, generator=generator) * 255,
            "targets": torch.arange(size) % NUM_CLASSES, "camids": torch.arange(size) % 3}


def reid_with_spt(*sps_overrides, cfg_overrides=()):
    reid = build("CLIPBaseline", *cfg_overrides).train()
    sps = freeze_model(build("SPSModel", *sps_overrides, seed=1))
    synthesizer = SPTSynthesizer.from_config(tiny_cfg(*cfg_overrides), sps, reid.backbone.grid_size, seed=0)
    reid.attach_spt(synthesizer)
    return reid, sps, synthesizer


def record_transformer_inputs(model):
    """Wrap ``backbone.forward_tokens``: record the patch tokens that reach the transformer and its outputs."""
    records = []
    original = model.backbone.forward_tokens

    def recording(tokens, camids=None, visible_patches=None):
        outputs = original(tokens, camids, visible_patches)
        records.append((tokens.detach().clone(), outputs))
        return outputs

    model.backbone.forward_tokens = recording
    return records


def hand_binary_masks(sps, images, camids, threshold=0.5):
    with torch.no_grad():
        return sps.saliency(images, camids) >= threshold        # (B, N) on the SPS grid


# ----------------------------------------------------------------------------- Eq. 7 through the model
@pytest.mark.parametrize("sps_stride,keep", [(12, "partner"), (16, "partner"), (12, "union")])
def test_synthesised_tokens_are_eq7_of_the_two_patch_embeddings(sps_stride, keep):
    reid, sps, synthesizer = reid_with_spt("MODEL.BACKBONE.STRIDE_SIZE", (sps_stride, sps_stride),
                                           cfg_overrides=("SPT.KEEP", keep))
    data = batch()
    records = record_transformer_inputs(reid)
    with EventStorage(0):
        reid(data)
    images = reid.preprocess_image(data)
    with torch.no_grad():
        embedded = reid.backbone.embed_patches(images)           # x_i of the ReID model, (B, 50, D)
    sps_masks = hand_binary_masks(sps, images, data["camids"])
    sps_hp, sps_wp = sps.grid_size
    if sps_stride == 12:
        assert (sps_hp, sps_wp) == (10, 5)
        token_masks = sps_masks
    else:   # 8 x 4 SPS grid, nearest-resized by hand to the 10 x 5 token grid: source index floor(dst·in/out)
        assert (sps_hp, sps_wp) == (8, 4)
        rows = [r * sps_hp // 10 for r in range(10)]
        cols = [c * sps_wp // 5 for c in range(5)]
        grid = sps_masks.view(-1, sps_hp, sps_wp)
        token_masks = torch.stack([grid[:, r, c] for r in rows for c in cols], dim=1)

    partners = synthesizer.last["partners"].tolist()
    assert sum(j >= 0 for j in partners) >= 6   # permissive settings: (almost) everyone is synthesised
    expected = embedded.clone()
    for i, j in enumerate(partners):
        assert j != i and (j < 0 or data["targets"][j] != data["targets"][i])
        if j >= 0:
            for n in range(embedded.shape[1]):
                anchor_kept = token_masks[j, n] or (keep == "union" and token_masks[i, n])
                expected[i, n] = embedded[i, n] if anchor_kept else embedded[j, n]
    assert len(records) == 1
    torch.testing.assert_close(records[0][0], expected)


def test_partner_class_is_excluded_from_the_softmax_and_from_triplet_negatives():
    reid, _, synthesizer = reid_with_spt()
    data = batch()
    records = record_transformer_inputs(reid)
    with EventStorage(0):
        losses = reid(data)
    targets = data["targets"]
    partners = synthesizer.last["partners"]
    ignored = [int(targets[j]) if j >= 0 else -1 for j in partners.tolist()]
    assert synthesizer.last["ignored_classes"].tolist() == ignored and sum(k >= 0 for k in ignored) >= 6

    cfg = tiny_cfg()
    epsilon, outputs = cfg.MODEL.LOSSES.ID.EPSILON, records[0][1]
    logits = reid.heads(outputs)                                   # BN in train mode: the batch's statistics
    for branch in ("cls", "proj"):
        per_sample = []
        for i, k in enumerate(ignored):
            row, target = logits[branch][i], int(targets[i])
            if k >= 0:                                             # delete the partner's column
                row = torch.cat([row[:k], row[k + 1:]])
                target -= int(target > k)
            per_sample.append(F.cross_entropy(row[None], torch.tensor([target]), label_smoothing=epsilon))
        expected = torch.stack(per_sample).mean()
        torch.testing.assert_close(losses[f"loss_id_{branch}"], cfg.MODEL.LOSSES.ID.SCALE * expected)
        plain = F.cross_entropy(logits[branch], targets, label_smoothing=epsilon)
        assert not torch.allclose(expected, plain)

    # Triplet: samples of the partner's identity are no negatives of the anchor.
    features, margin = outputs["cls"], cfg.MODEL.LOSSES.TRI.MARGIN
    dist = torch.cdist(features, features)
    terms = []
    for a in range(len(targets)):
        positive = max(dist[a, p] for p in range(len(targets)) if targets[p] == targets[a])
        negatives = [dist[a, n] for n in range(len(targets))
                     if targets[n] != targets[a] and int(targets[n]) != ignored[a]]
        terms.append(torch.relu(positive - min(negatives) + margin))
    torch.testing.assert_close(losses["loss_triplet_cls"], cfg.MODEL.LOSSES.TRI.SCALE * torch.stack(terms).mean())


def test_ignore_partner_off_keeps_every_class_and_negative():
    reid, _, synthesizer = reid_with_spt(cfg_overrides=["SPT.IGNORE_PARTNER", False])
    info = synthesizer.synthesize(reid.preprocess_image(batch()), batch()["camids"], batch()["targets"])
    assert bool((info["partners"] >= 0).any())
    assert info["ignored_classes"].tolist() == [-1] * 8 and not bool(info["excluded_negatives"].any())


def test_draws_are_reproducible_and_leave_the_global_rng_alone():
    reid, sps, _ = reid_with_spt(cfg_overrides=["SPT.PROB", 0.5])
    data = batch()
    images = reid.preprocess_image(data)
    runs = []
    for _ in range(2):
        synthesizer = SPTSynthesizer.from_config(tiny_cfg("SPT.PROB", 0.5), sps, reid.backbone.grid_size, seed=7)
        state = torch.get_rng_state()
        runs.append([synthesizer.synthesize(images, data["camids"], data["targets"])["partners"] for _ in range(3)])
        assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    assert not all(torch.equal(runs[0][0], later) for later in runs[0][1:])   # the stream moves on


def test_sps_model_stays_frozen_and_outside_the_reid_model():
    reid, sps, _ = reid_with_spt()
    assert not sps.training and not any(p.requires_grad for p in sps.parameters())
    reid.train()
    assert not sps.training
    assert not any(key.startswith("selector.") for key in reid.state_dict())
    reid_ids = {id(p) for p in reid.parameters()}
    assert not any(id(p) in reid_ids for p in sps.parameters())


# ----------------------------------------------------------------------------- SPS checkpoint errors
def test_sps_weights_errors_name_the_key_and_the_file(tmp_path):
    cfg = tiny_cfg()
    with pytest.raises(SPSWeightsError, match="SPT.SPS_WEIGHTS is empty"):
        load_frozen_sps_model(cfg, "")
    missing = str(tmp_path / "nope" / "sps_final.pth")
    with pytest.raises(SPSWeightsError, match="SPT.SPS_WEIGHTS.*" + missing.replace(".", r"\.")):
        load_frozen_sps_model(cfg, missing)
    not_sps = str(tmp_path / "tensor.pth")
    torch.save({"weights": torch.zeros(2)}, not_sps)
    with pytest.raises(SPSWeightsError, match="SPT.SPS_WEIGHTS.*not an SPS checkpoint"):
        load_frozen_sps_model(cfg, not_sps)
    wider = str(tmp_path / "wider.pth")
    torch.save({"model": build("SPSModel", "MODEL.VIT.WIDTH", 64).state_dict()}, wider)
    with pytest.raises(SPSWeightsError, match="SPT.SPS_WEIGHTS.*wider.pth.*does not match"):
        load_frozen_sps_model(cfg, wider)
    # The same file is fine once the Stage II backbone keys travel with it (the Stage II artifact format).
    torch.save({"model": build("SPSModel", "MODEL.VIT.WIDTH", 64).state_dict(),
                "sps_meta": {"backbone_config": {"MODEL.VIT.WIDTH": 64}}}, wider)
    assert load_frozen_sps_model(cfg, wider).backbone.width == 64
    with pytest.raises(ValueError, match="attach_spt.*MODEL.META_ARCHITECTURE is Baseline"):
        SPTHook(tiny_cfg("MODEL.META_ARCHITECTURE", "Baseline", "SPT.SPS_WEIGHTS", wider))


# ----------------------------------------------------------------------------- tools/train_net.py with SPT
def train_net_args(output_dir, dataset_root, sps_weights, *opts):
    argv = ["--config-file", BASELINE_CONFIG, *map(str, TINY + PERMISSIVE),
            "DATASETS.ROOT", dataset_root, "OUTPUT_DIR", output_dir, "SOLVER.MAX_EPOCH", "1",
            "TEST.EVAL_PERIOD", "1", "SPT.ENABLED", "True", "SPT.SPS_WEIGHTS", sps_weights, *map(str, opts)]
    return default_argument_parser().parse_args(argv)


def test_train_net_with_spt_logs_statistics_draws_samples_and_keeps_sps_out(dataset_root, tmp_path, load_tool):
    tool = load_tool("train_net")
    with pytest.raises(SPSWeightsError, match="SPT.SPS_WEIGHTS.*missing.pth"):
        tool.main(train_net_args(str(tmp_path / "fails"), dataset_root, str(tmp_path / "missing.pth")))

    sps_weights = str(tmp_path / "sps_final.pth")   # Stage II artifact format, an SPS model with stride 16
    sps = build("SPSModel", "MODEL.BACKBONE.STRIDE_SIZE", (16, 16), "MODEL.HEADS.NUM_CLASSES", 8)
    torch.save({"model": sps.state_dict(),
                "sps_meta": {"backbone_config": {"MODEL.BACKBONE.STRIDE_SIZE": [16, 16]}}}, sps_weights)
    output = str(tmp_path / "baseline_spt")
    results = tool.main(train_net_args(output, dataset_root, sps_weights, "SPT.VIS_PERIOD", 2))
    assert "Rank-1" in results

    with open(os.path.join(output, "metrics.json")) as f:
        metrics = [json.loads(line) for line in f if line.strip()]
    last = metrics[-1]
    assert {"spt_fraction", "spt_mean_oiou", "spt_covered_fraction", "spt_transferred_fraction"} <= set(last)
    assert 0.5 <= last["spt_fraction"] <= 1.0 and 0.0 < last["spt_mean_oiou"] <= 1.0
    for iteration in (0, 1, 3):   # the first iteration, then every SPT.VIS_PERIOD = 2 iterations (4 in all)
        with open(os.path.join(output, f"spt_samples_iter{iteration}.png"), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not os.path.exists(os.path.join(output, "spt_samples_iter2.png"))

    saved = trusted_torch_load(os.path.join(output, "model_final.pth"))["model"]
    reid = build("CLIPBaseline", "MODEL.HEADS.NUM_CLASSES", 8)
    assert set(saved) == set(reid.state_dict())        # the frozen SPS model is not part of the ReID checkpoint


def test_partner_share_check_warns_once_when_synthesised_images_are_mostly_the_partner():
    from fastreid_dpmpp.engine.stage3_spt_hook import PartnerShareCheck
    check = PartnerShareCheck(limit=0.8, steps=3)
    idle = {"spt_fraction": 0.0, "spt_transferred_fraction": 0.0}
    assert check.update(idle) is None and check.shares == []          # iterations without synthesis do not count
    assert check.update({"spt_fraction": 0.2, "spt_transferred_fraction": 0.9}) is None
    assert check.update({"spt_fraction": 0.2, "spt_transferred_fraction": 0.7}) is None
    message = check.update({"spt_fraction": 0.1, "spt_transferred_fraction": 0.95})  # mean 0.85 > 0.8
    assert message is not None and "85 %" in message and "SPT.SPS_WEIGHTS" in message
    assert check.update({"spt_fraction": 0.1, "spt_transferred_fraction": 1.0}) is None   # once only

    quiet = PartnerShareCheck(limit=0.8, steps=2)
    quiet.update({"spt_fraction": 0.5, "spt_transferred_fraction": 0.5})
    assert quiet.update({"spt_fraction": 0.5, "spt_transferred_fraction": 0.6}) is None and quiet.done
