"""The mask-learning diagnostic (analysis/mask_learning.py, tools/diagnose_masks.py) and the demo's report
(tools/demo.py): numbers checked against values computed here."""
import importlib.util
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastreid_dpmpp  # noqa: F401  (fast-reid import fixes first)
from fastreid.modeling import build_model
from fastreid_dpmpp.analysis.mask_learning import _centred_cosine, mask_learning_statistics
from fastreid_dpmpp.engine import load_config
from _tiny import tiny_vit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DPMPP = os.path.join(REPO, "configs", "Synthetic", "dpmpp.yml")
D, C = 32, 4
TINY = tiny_vit(D, 2, 2, 16, (1, 2), (1, 1), (64, 32), "MODEL.HEADS.NUM_CLASSES", C, "MODEL.VIT.SIE_ENABLED", False)


class HalfOccluder:
    """Pairs even rows with the next row and blanks the lower half of the patch tokens of every image."""

    def synthesize(self, images, camids, targets):
        size = len(targets)
        partners = torch.full((size,), -1)
        partners[::2] = torch.arange(1, size, 2)

        def blank_lower_half(tokens):
            tokens = tokens.clone()
            tokens[:, tokens.shape[1] // 2:] = 0
            return tokens

        return {"patch_transform": blank_lower_half, "partners": partners,
                "ignored_classes": torch.full((size,), -1)}


def test_centred_cosine():
    a, b = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[3.0, 2.0, 1.0]])
    assert _centred_cosine(a, b).item() == pytest.approx(-1.0)
    assert _centred_cosine(a, 2 * a + 5).item() == pytest.approx(1.0)


def test_mask_learning_statistics_on_a_tiny_model():
    torch.manual_seed(0)
    model = build_model(load_config(DPMPP, TINY))
    for parameter in model.heads.mask_generator.parameters():    # a mask that varies across channels
        torch.nn.init.normal_(parameter, std=0.5)
    batch = {"images": torch.rand(8, 3, 64, 32) * 255, "targets": torch.arange(C).repeat_interleave(2)}
    stats = mask_learning_statistics(model, HalfOccluder(), [batch, batch], keep=0.5)
    assert stats["samples"] == 8                     # 4 synthesised rows per batch, two batches
    for key in ("loss_alignment", "mask_alignment"):
        assert -1.0 <= stats[key] <= 1.0
    assert stats["gradient_norm"] > 0 and stats["mask_within_std"] > 0
    # the learned-mask alignment, recomputed here from the model's own mask and the agreement target
    model.eval()
    with torch.no_grad():
        images = model.preprocess_image(batch)
        info = HalfOccluder().synthesize(images, None, batch["targets"])
        clean = model.backbone.forward_features(images, None)
        synthetic = model.backbone.forward_features(images, None, patch_transform=info["patch_transform"])
        mask = model.heads.mask_from(synthetic)[::2]
        bn = lambda v: F.batch_norm(v, model.heads.bottleneck.running_mean, model.heads.bottleneck.running_var,
                                    model.heads.bottleneck.weight, model.heads.bottleneck.bias, False)
        change = (F.normalize(bn(synthetic["cls"]), dim=1) - F.normalize(bn(clean["cls"]), dim=1)).abs()[::2]
    kept = torch.zeros_like(change)
    kept.scatter_(1, change.argsort(dim=1)[:, :change.shape[1] // 2], 1.0)
    expected = np.mean([np.corrcoef(m.numpy(), t.numpy())[0, 1] for m, t in zip(mask, kept)])
    assert stats["mask_alignment"] == pytest.approx(expected, abs=1e-4)


def test_mask_learning_statistics_needs_synthesised_rows():
    model = build_model(load_config(DPMPP, TINY))

    class NoPartners(HalfOccluder):
        def synthesize(self, images, camids, targets):
            return dict(super().synthesize(images, camids, targets), partners=torch.full((len(targets),), -1))

    batch = {"images": torch.rand(4, 3, 64, 32) * 255, "targets": torch.arange(C)}
    with pytest.raises(ValueError, match="no SPT-synthesised sample"):
        mask_learning_statistics(model, NoPartners(), [batch])


# ------------------------------------------------------------------------------------------------ demo report
def _demo():
    spec = importlib.util.spec_from_file_location("demo", os.path.join(REPO, "tools", "demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _protocol(plain, masked=None, shuffled=None, holistic=80.0, queries=6, offset=0.0):
    per_query = list(np.clip(np.linspace(0.2, 0.8, queries) + offset, 0, 1))
    space = {"plain": {"mAP": plain, "Rank-1": plain + 1, "own_camera_top1": 10.0},
             "holistic": {"mAP": holistic, "Rank-1": holistic + 1}, "per_query_ap": {"plain": per_query}}
    if masked is not None:
        space["masked"] = {"mAP": masked, "Rank-1": masked + 1, "own_camera_top1": 10.0}
        space["masked_shuffled"] = {"mAP": shuffled}
        space["per_query_ap"]["masked"] = per_query
    return {"splits": {"test1": {"sie_off": {"concat_bn": space}}}}


def test_demo_rows_table_and_reading():
    demo = _demo()
    results = {("clip_baseline", 0): _protocol(40.0),
               ("dpm", 0): _protocol(45.0, 45.2, 45.1, holistic=85.0, offset=0.1),
               ("dpmpp", 0): _protocol(41.5, 41.4, 41.6, holistic=77.0, offset=-0.1)}
    rows = demo.demo_rows(results, "test1", 0)
    assert [r["arm"] for r in rows] == ["clip_baseline", "dpm", "dpmpp"]
    by_name = {r["arm"]: r for r in rows}
    assert by_name["dpm"]["mAP"][0] == pytest.approx(45.2)          # masked matching where the model has masks
    assert by_name["dpm"]["delta"][0] == pytest.approx(5.2)
    assert by_name["dpm"]["delta_ci"][0] > 0                         # every query gains 0.1 AP
    assert by_name["dpmpp"]["delta_ci"][1] < 0
    chance = {"mAP": (3.0, 0.1), "Rank-1": (1.0, 0.5)}
    table = demo.results_table(rows, chance)
    assert "random ranking" in table and "reference" in table and "45.1" in table
    text = demo.reading(rows)
    assert "DPM (Stage I -> III, no SPT): +5.2 mAP on occluded queries, better than" in text
    assert "worse than the CLIP baseline" in text
    assert "(DPM++ against DPM): -3.8 mAP occluded, -8.0 without occluders" in text
    assert "dpm +0.1, dpmpp -0.2" in text
    assert "The budget" not in text and "fine-tunes 15 epochs" in demo.reading(rows, epochs=15)


def test_demo_schedule_keeps_the_step_fractions():
    demo = _demo()
    opts = dict(zip(*[iter(demo.schedule_opts(15))] * 2))
    # Base-Tiny.yml decays at epochs 20 and 27 of 30: 2/3 and 9/10 of training
    assert opts["SOLVER.MAX_EPOCH"] == "15" and opts["SOLVER.STEPS"] == "(10,14)"
    assert dict(zip(*[iter(demo.schedule_opts(30))] * 2))["SOLVER.STEPS"] == "(20,27)"
    with pytest.raises(ValueError, match="--epochs"):
        demo.schedule_opts(0)
