"""Stage I runner (SPEC §2): the T file, the schedule, the cached-feature loader, and an end-to-end run of
tools/train_stage1.py on a tiny synthetic Occluded-Duke folder, then ``--resume``."""
import importlib.util
import json
import math
import os
import re
import shutil

import pytest
import torch

import fastreid_dpmpp  # noqa: F401  (fast-reid import fixes first)
from fastreid.data.data_utils import read_image
from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.data.datasets.dukemtmcreid import DukeMTMC
from fastreid.data.transforms import build_transforms
from fastreid.engine import default_argument_parser
from fastreid.modeling.meta_arch import build_model
from fastreid.utils.checkpoint import Checkpointer

import fastreid_dpmpp.engine.stage1 as stage1
from fastreid_dpmpp.checkpoint import UntrustedCheckpointError
from fastreid_dpmpp.engine.defaults import load_config
from fastreid_dpmpp.engine.stage1 import (CachedFeatureLoader, WarmupCosineFactor, build_stage1_scheduler,
                                          stage1_config)
from fastreid_dpmpp.modeling.backbones.clip_vit import build_clip_model
from fastreid_dpmpp.text_prototypes import (TextPrototypeMismatchError, load_text_prototypes, read_text_prototypes,
                                            save_text_prototypes)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(ROOT, "configs", "Synthetic", "Base-Tiny.yml")


# ----------------------------------------------------------------------------- T file
def test_text_prototypes_round_trip(tmp_path):
    path = str(tmp_path / "T.pth")
    prototypes = torch.randn(3, 8)
    save_text_prototypes(path, prototypes, ["Duke_7", "Duke_10", "Duke_2"])
    raw = torch.load(path, weights_only=True)  # plain data only
    assert set(raw) == {"prototypes", "num_classes", "identities", "embed_dim"}
    assert raw["num_classes"] == 3 and raw["embed_dim"] == 8 and raw["identities"] == ["Duke_7", "Duke_10", "Duke_2"]
    loaded = load_text_prototypes(path, ["Duke_7", "Duke_10", "Duke_2"], expected_dim=8)
    assert torch.equal(loaded, prototypes)
    assert torch.equal(load_text_prototypes(path), prototypes)
    assert not [n for n in os.listdir(tmp_path) if n != "T.pth"]  # no temporary file left behind


def test_text_prototypes_errors_name_the_file(tmp_path):
    path = str(tmp_path / "T.pth")
    save_text_prototypes(path, torch.randn(3, 8), ["a_1", "a_2", "a_3"])
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_text_prototypes(str(tmp_path / "missing.pth"), ["a_1"])
    with pytest.raises(FileNotFoundError, match="TEXT_PROTOTYPES"):
        load_text_prototypes("", ["a_1"])
    with pytest.raises(TextPrototypeMismatchError, match=r"T\.pth.*C=3.*C=4"):
        load_text_prototypes(path, ["a_1", "a_2", "a_3", "a_4"])
    with pytest.raises(TextPrototypeMismatchError, match=r"T\.pth.*label 1: file has 'a_2', training set has 'a_3'"):
        load_text_prototypes(path, ["a_1", "a_3", "a_2"])
    with pytest.raises(TextPrototypeMismatchError, match="D_t=8"):
        load_text_prototypes(path, ["a_1", "a_2", "a_3"], expected_dim=16)
    torch.save({"prototypes": torch.randn(3, 8)}, str(tmp_path / "partial.pth"))
    with pytest.raises(ValueError, match="partial.pth.*expected keys"):
        load_text_prototypes(str(tmp_path / "partial.pth"))
    torch.save({"prototypes": torch.randn(3, 8), "num_classes": 2, "identities": ["a", "b"], "embed_dim": 8},
               str(tmp_path / "bad.pth"))
    with pytest.raises(ValueError, match="bad.pth.*inconsistent"):
        load_text_prototypes(str(tmp_path / "bad.pth"))
    torch.save({"prototypes": torch.randn(1, 2), "num_classes": 1, "identities": [WarmupCosineFactor(1)],
                "embed_dim": 2}, str(tmp_path / "code.pth"))
    with pytest.raises(UntrustedCheckpointError, match="code.pth"):
        load_text_prototypes(str(tmp_path / "code.pth"))
    with pytest.raises(ValueError, match="identity keys"):
        save_text_prototypes(path, torch.randn(3, 8), ["a_1", "a_2"])


# ----------------------------------------------------------------------------- schedule and loader
def test_warmup_cosine_factor_hand_values():
    f = WarmupCosineFactor(max_epoch=10, warmup_epochs=2, warmup_factor=0.1, min_factor=0.01)
    assert f(0) == pytest.approx(0.1)
    assert f(1) == pytest.approx(0.55)
    assert f(2) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.2)))
    assert f(5) == pytest.approx(0.01 + 0.99 * 0.5)
    assert f(10) == pytest.approx(0.01)
    assert WarmupCosineFactor(max_epoch=4)(0) == pytest.approx(1.0)


def test_scheduler_is_epoch_stepped_and_its_state_loads_with_weights_only(tmp_path):
    cfg = load_config(TINY_CONFIG, ["STAGE1.BASE_LR", "0.1", "STAGE1.MAX_EPOCH", "10", "STAGE1.WARMUP_EPOCHS", "2",
                                    "STAGE1.WARMUP_FACTOR", "0.1", "STAGE1.MIN_LR_FACTOR", "0.01"])
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=cfg.STAGE1.BASE_LR)
    scheduler = build_stage1_scheduler(cfg, optimizer)
    lrs = []
    for _ in range(4):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [0.01, 0.055, 0.1 * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.2))),
                0.1 * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.3)))]
    assert lrs == pytest.approx(expected)
    torch.save(scheduler.state_dict(), str(tmp_path / "s.pth"))
    state = torch.load(str(tmp_path / "s.pth"), weights_only=True)
    assert state["last_epoch"] == 4


def test_cached_feature_loader_permutes_every_epoch():
    features, labels = torch.arange(10.0).view(10, 1), torch.arange(10) % 3
    loader = CachedFeatureLoader(features, labels, batch_size=4, seed=5)
    assert len(loader) == 3
    stream = iter(loader)
    epochs = [[next(stream) for _ in range(3)] for _ in range(2)]
    for batches in epochs:
        assert [len(b["targets"]) for b in batches] == [4, 4, 2]
        order = torch.cat([b["features"][:, 0] for b in batches]).long()
        assert sorted(order.tolist()) == list(range(10))
        assert torch.equal(torch.cat([b["targets"] for b in batches]), order % 3)
    first, second = (torch.cat([b["features"] for b in e]) for e in epochs)
    assert not torch.equal(first, second)
    resumed = CachedFeatureLoader(features, labels, batch_size=4, seed=5, start_epoch=1)
    assert torch.equal(torch.cat([b["features"] for b, _ in zip(resumed, range(3))]), second)


# ----------------------------------------------------------------------------- end to end
class Stage1TestOccludedDuke(DukeMTMC):
    """The real Occluded-Duke layout (fast-reid's Duke parser, ``<pid>_c<cam>_f<frame>.jpg``)."""
    dataset_dir = "Occluded_Duke"
    dataset_name = "occludedduke"


def occluded_duke_dataset_name():
    try:
        import fastreid_dpmpp.data  # noqa: F401  (registers the plugin's OccludedDuke, if present)
    except ImportError:
        pass
    try:
        DATASET_REGISTRY.get("OccludedDuke")
        return "OccludedDuke"
    except KeyError:
        try:
            DATASET_REGISTRY.get(Stage1TestOccludedDuke.__name__)
        except KeyError:
            DATASET_REGISTRY.register(Stage1TestOccludedDuke)
        return Stage1TestOccludedDuke.__name__


def write_occluded_duke(root):
    """4 training identities x 3 images (+1 query, 1 gallery image) in the Occluded-Duke layout."""
    try:
        from fastreid_dpmpp.data.synthetic import make_synthetic_benchmark
        make_synthetic_benchmark(root, layout="occluded_duke", num_train_ids=4, images_per_train_id=3,
                                 num_test_ids=1, max_queries_per_id=1, gallery_images_per_id=1, num_distractor_ids=0)
        return
    except ImportError:
        pass
    import cv2
    import numpy as np
    rng = np.random.default_rng(0)
    base = os.path.join(root, "Occluded_Duke")
    plan = [("bounding_box_train", pid, cam) for pid in (5, 12, 40, 301) for cam in (1, 2, 3)]
    plan += [("query", 900, 1), ("bounding_box_test", 900, 2)]
    for frame, (split, pid, cam) in enumerate(plan):
        os.makedirs(os.path.join(base, split), exist_ok=True)
        image = rng.integers(0, 255, (128, 64, 3), dtype=np.uint8)
        cv2.imwrite(os.path.join(base, split, f"{pid:04d}_c{cam}_f{frame:07d}.jpg"), image)


def load_train_stage1():
    spec = importlib.util.spec_from_file_location("train_stage1", os.path.join(ROOT, "tools", "train_stage1.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_metrics(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def stage1_run(tmp_path_factory):
    """Stage I for 2 epochs through tools/train_stage1.py; returns its config and the artefacts read back."""
    tmp = tmp_path_factory.mktemp("stage1")
    data_root, output = str(tmp / "data"), str(tmp / "out")
    write_occluded_duke(data_root)
    opts = ["OUTPUT_DIR", output, "DATASETS.ROOT", data_root, "DATASETS.NAMES", f"('{occluded_duke_dataset_name()}',)",
            "STAGE1.MAX_EPOCH", "2", "STAGE1.WARMUP_EPOCHS", "1", "STAGE1.IMS_PER_BATCH", "4",
            "SOLVER.CHECKPOINT_PERIOD", "1", "TEST.IMS_PER_BATCH", "5", "MODEL.VIT.SIE_ENABLED", "False"]
    # A CLIP weights file makes the frozen towers reproducible (a random init differs at every build).
    cfg = load_config(TINY_CONFIG, opts)
    torch.manual_seed(0)
    weights = str(tmp / "tiny_clip.pth")
    torch.save(build_clip_model(cfg).state_dict(), weights)
    opts += ["MODEL.VIT.WEIGHTS", weights]
    tool = load_train_stage1()
    args = default_argument_parser().parse_args(["--config-file", TINY_CONFIG] + opts)
    t_path = tool.main(args)
    cfg = load_config(TINY_CONFIG, opts)
    return {
        "key_prefix": DATASET_REGISTRY.get(cfg.DATASETS.NAMES[0]).dataset_name + "_",
        "tool": tool, "opts": opts, "cfg": cfg, "data_root": data_root, "output": output, "t_path": t_path,
        "T": read_text_prototypes(t_path),
        "metrics": read_metrics(os.path.join(output, "stage1", "metrics.json")),
        "final": torch.load(os.path.join(output, "stage1", "model_final.pth"), weights_only=True),
    }


def training_pids(data_root):
    names = os.listdir(os.path.join(data_root, "Occluded_Duke", "bounding_box_train"))
    return {int(re.match(r"(\d+)_c\d", n).group(1)) for n in names}


def test_stage1_writes_T_for_all_identities_in_fastreid_label_order(stage1_run):
    T = stage1_run["T"]
    assert stage1_run["t_path"] == os.path.join(stage1_run["output"], "text_prototypes.pth")
    # fast-reid's CommDataset sorts the "<dataset_name>_<pid>" strings to assign labels 0..C-1.
    expected = sorted(f"{stage1_run['key_prefix']}{pid}" for pid in training_pids(stage1_run["data_root"]))
    assert T["identities"] == expected and T["num_classes"] == 4 and T["embed_dim"] == 64
    assert T["prototypes"].shape == (4, 64) and torch.isfinite(T["prototypes"]).all()
    assert torch.equal(load_text_prototypes(stage1_run["t_path"], expected, expected_dim=64), T["prototypes"])


def test_T_equals_the_text_features_of_the_final_checkpoint(stage1_run):
    cfg = stage1_config(stage1_run["cfg"], num_classes=4)
    model = build_model(cfg)
    initial = model.all_text_features()
    Checkpointer(model).load(os.path.join(stage1_run["output"], "stage1", "model_final.pth"))
    assert torch.allclose(model.all_text_features(), stage1_run["T"]["prototypes"], atol=1e-5)
    assert not torch.allclose(initial, stage1_run["T"]["prototypes"], atol=1e-3)


def test_checkpoints_hold_only_the_trainable_context_and_training_state(stage1_run):
    final = stage1_run["final"]
    assert sorted(final["model"]) == ["prompt_learner.ctx", "prompt_learner.token_prefix",
                                      "prompt_learner.token_suffix"]
    assert final["model"]["prompt_learner.ctx"].shape == (4, 4, 64)
    assert final["epoch"] == 1 and final["lr_sched"]["last_epoch"] == 2
    assert len(final["optimizer"]["param_groups"]) == 1 and final["optimizer"]["param_groups"][0]["params"] == [0]
    names = os.listdir(os.path.join(stage1_run["output"], "stage1"))
    assert {"model_0000.pth", "model_final.pth", "last_checkpoint", "image_features.pth"} <= set(names)


def test_cached_image_features_are_the_frozen_encoder_on_test_transformed_images(stage1_run):
    cfg = stage1_run["cfg"]
    cache = torch.load(os.path.join(stage1_run["output"], "stage1", "image_features.pth"), weights_only=True)
    assert cache["features"].shape == (12, 64) and sorted(set(cache["labels"].tolist())) == [0, 1, 2, 3]
    clip = build_clip_model(cfg).eval()
    transform = build_transforms(cfg, is_train=False)
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(cfg.MODEL.PIXEL_STD).view(1, 3, 1, 1)
    for index in (0, 7):
        path = cache["img_paths"][index]
        image = transform(read_image(path)).unsqueeze(0)
        with torch.no_grad():
            expected = clip.encode_image((image - mean) / std)[0]
        assert torch.allclose(cache["features"][index], expected, atol=1e-4)
        pid = int(re.match(r"(\d+)_c\d", os.path.basename(path)).group(1))
        assert cache["identities"][int(cache["labels"][index])] == f"{stage1_run['key_prefix']}{pid}"


def test_metrics_are_logged_every_epoch(stage1_run):
    records = stage1_run["metrics"]
    # 12 images, batches of 4: 3 iterations per epoch; fast-reid's writer writes after each epoch.
    assert [r["iteration"] for r in records] == [2, 5]
    assert all({"loss_i2t", "loss_t2i", "total_loss", "lr"} <= set(r) for r in records)
    base_lr = stage1_run["cfg"].STAGE1.BASE_LR
    assert records[0]["lr"] == pytest.approx(base_lr * stage1_run["cfg"].STAGE1.WARMUP_FACTOR)


def test_resume_continues_from_the_checkpoint_without_recomputing_features(stage1_run, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the image features were recomputed on resume")
    monkeypatch.setattr(stage1, "compute_image_features", fail)
    opts = stage1_run["opts"] + ["STAGE1.MAX_EPOCH", "3"]
    args = default_argument_parser().parse_args(["--config-file", TINY_CONFIG, "--resume"] + opts)
    t_path = stage1_run["tool"].main(args)
    records = read_metrics(os.path.join(stage1_run["output"], "stage1", "metrics.json"))
    assert [r["iteration"] for r in records] == [2, 5, 8]  # the third epoch only, numbered after the first two
    final = torch.load(os.path.join(stage1_run["output"], "stage1", "model_final.pth"), weights_only=True)
    assert final["epoch"] == 2 and final["lr_sched"]["last_epoch"] == 3
    assert not torch.equal(final["model"]["prompt_learner.ctx"], stage1_run["final"]["model"]["prompt_learner.ctx"])
    resumed = read_text_prototypes(t_path)
    assert resumed["identities"] == stage1_run["T"]["identities"]
    assert not torch.allclose(resumed["prototypes"], stage1_run["T"]["prototypes"])


def test_a_stale_feature_cache_is_recomputed(stage1_run, tmp_path, monkeypatch):
    cfg = stage1_run["cfg"]
    train_set = stage1.build_stage1_train_set(cfg)
    cache_path = str(tmp_path / "image_features.pth")
    shutil.copy(os.path.join(stage1_run["output"], "stage1", "image_features.pth"), cache_path)
    calls = []
    real = stage1.compute_image_features
    monkeypatch.setattr(stage1, "compute_image_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    features, _ = stage1.load_or_compute_image_features(cfg, train_set, cache_path)
    assert calls == [] and features.shape == (12, 64)
    train_set.img_items = train_set.img_items[::-1]  # another image order: the cache no longer matches
    stage1.load_or_compute_image_features(cfg, train_set, cache_path)
    assert calls == [1]
