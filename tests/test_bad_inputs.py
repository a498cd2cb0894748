"""Bad inputs a user meets (issue 6): each stops with an error naming the file / key / value and what was expected,
or, where the config says so, is skipped with a warning; nothing already written is lost.

Covered elsewhere (same standard): missing / misnamed dataset and split folders, bad file names and empty splits
(test_datasets.py), stride / input size (test_clip_vit.py), CLIP weights (test_clip_vit.py), the Stage I prototype
file (test_stage1.py, test_end_to_end.py), the SPS checkpoint (test_spt_hook.py)."""
import hashlib
import logging
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import fastreid_dpmpp  # noqa: F401  (fast-reid fixes first)
from fastreid.data.common import CommDataset
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY

from fastreid_dpmpp.compat import ImageReadError, QueryIdentitiesNotInGalleryError
from fastreid_dpmpp.data.datasets import DatasetNotFoundError, FileNamePatternError, OccludedDuke
from fastreid_dpmpp.data.synthetic import make_synthetic_benchmark
from fastreid_dpmpp.engine.defaults import UnknownConfigKeyError, apply_dataset_root, load_config
from fastreid_dpmpp.engine.nan_guard import NonFiniteLossError, NonFiniteWeightsError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    make_synthetic_benchmark(str(root), seed=0, layout="occluded_duke", image_size=(32, 16), num_train_ids=4,
                             images_per_train_id=4, num_test_ids=2, gallery_images_per_id=2, num_distractor_ids=0)
    return str(root)


def _write_jpeg(path, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (32, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)


# ----------------------------------------------------------------------------- dataset folders and file names
def test_missing_dataset_folder_through_the_trainer_names_root_and_layout(tmp_path):
    from fastreid_dpmpp.engine.trainer import DPMPPTrainer
    cfg = load_config("", ["DATASETS.ROOT", str(tmp_path / "no_such_root"), "DATASETS.TESTS", "('OccludedDuke',)"])
    with pytest.raises(DatasetNotFoundError) as e:
        DPMPPTrainer.build_test_loader(cfg, "OccludedDuke")
    assert str(tmp_path / "no_such_root" / "Occluded_Duke") in str(e.value)
    assert "Expected layout" in str(e.value) and "bounding_box_test/" in str(e.value)


def _duke_with_bad_names(root):
    base = os.path.join(root, "Occluded_Duke")
    for split in ("bounding_box_train", "query", "bounding_box_test"):
        for i, name in enumerate(("0001_c1_f0000001.jpg", "0001_c2_f0000002.jpg")):
            _write_jpeg(os.path.join(base, split, name), seed=i)
    bad = [os.path.join(base, "bounding_box_train", n) for n in ("IMG_2041.jpg", "person_7.jpg", "0001_c9_f1.jpg")]
    for path in bad:
        _write_jpeg(path)
    return bad


def test_bad_file_names_stop_by_default_naming_every_file_and_the_key(tmp_path):
    bad = _duke_with_bad_names(str(tmp_path))
    with pytest.raises(FileNamePatternError) as e:
        OccludedDuke(root=str(tmp_path), skip_bad_files=False)
    message = str(e.value)
    assert all(path in message for path in bad)
    assert "2 more file(s)" in message and "DATASETS.SKIP_BAD_FILES True" in message and "c1..c8" in message


def test_skip_bad_files_from_the_config_logs_the_files_and_keeps_the_good_ones(tmp_path, caplog):
    bad = _duke_with_bad_names(str(tmp_path))
    cfg = load_config("", ["DATASETS.ROOT", str(tmp_path)])
    cfg.DATASETS.SKIP_BAD_FILES = True          # the key the lead adds to config.py (read with .get until then)
    apply_dataset_root(cfg)
    try:
        with caplog.at_level(logging.WARNING, logger="fastreid.dpmpp.data.datasets"):
            dataset = OccludedDuke(root=str(tmp_path))
    finally:
        cfg.DATASETS.SKIP_BAD_FILES = False
        apply_dataset_root(cfg)
    assert sorted(os.path.basename(p) for p, _, _ in dataset.train) == ["0001_c1_f0000001.jpg", "0001_c2_f0000002.jpg"]
    warning = "\n".join(r.getMessage() for r in caplog.records)
    assert all(path in warning for path in bad) and "skipping 3 file(s)" in warning
    with pytest.raises(FileNamePatternError):   # back to the default: stop
        OccludedDuke(root=str(tmp_path))


# ----------------------------------------------------------------------------- corrupt images
def test_truncated_image_error_names_the_file(tmp_path):
    import fastreid.data.data_utils as data_utils
    good = str(tmp_path / "0001_c1_f1.jpg")
    _write_jpeg(good)
    truncated = str(tmp_path / "0002_c1_f1.jpg")
    with open(good, "rb") as f:
        content = f.read()
    with open(truncated, "wb") as f:
        f.write(content[: len(content) // 2])
    garbage = tmp_path / "0003_c1_f1.jpg"
    garbage.write_bytes(b"this is not an image")

    stock = data_utils.read_image.__wrapped_original__
    with pytest.raises(OSError) as e:          # stock fast-reid: PIL's message, no file name
        stock(truncated)
    assert "truncated" in str(e.value).lower() and truncated not in str(e.value)

    assert data_utils.read_image(good).size == (16, 32)
    for path in (truncated, str(garbage)):
        with pytest.raises(ImageReadError, match="cannot read image '" + path + "'.*corrupt or truncated"):
            data_utils.read_image(path)
    dataset = CommDataset([(good, 1, 0), (truncated, 1, 0)], transform=None, relabel=False)
    assert dataset[0]["img_paths"] == good       # what fast-reid's data loader calls, through fastreid.data.common
    with pytest.raises(ImageReadError, match=truncated):
        dataset[1]


# ----------------------------------------------------------------------------- query identities vs gallery
def test_query_identities_absent_from_the_gallery():
    from fastreid.evaluation.rank import evaluate_rank
    rng = np.random.default_rng(0)
    g_pids, g_cams = np.array([1, 1, 2, 2, 3]), np.array([1, 2, 1, 2, 1])
    q_pids, q_cams = np.array([1, 2, 7, 9]), np.array([0, 0, 0, 0])
    dist = rng.random((4, 5)).astype(np.float32)

    with pytest.raises(QueryIdentitiesNotInGalleryError) as e:     # no query can be matched
        evaluate_rank(dist[2:], q_pids[2:], g_pids, q_cams[2:], g_cams, max_rank=3, use_cython=False)
    assert "absent from the gallery: [7, 9]" in str(e.value) and isinstance(e.value, AssertionError)

    with pytest.raises(QueryIdentitiesNotInGalleryError, match=r"own camera.*\[3\]"):   # only same-camera images
        evaluate_rank(dist[:1], np.array([3]), g_pids, np.array([1]), g_cams, max_rank=3, use_cython=False)


def test_some_absent_query_identities_are_named_and_left_out(caplog):
    from fastreid.evaluation.rank import evaluate_rank
    rng = np.random.default_rng(1)
    g_pids, g_cams = np.array([1, 1, 2, 2, 3]), np.array([1, 2, 1, 2, 1])
    q_pids, q_cams = np.array([1, 2, 7, 9]), np.array([0, 0, 0, 0])
    dist = rng.random((4, 5)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="fastreid.dpmpp.compat"):
        cmc, ap, _ = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=3, use_cython=False)
    assert "2 of 4 query images" in caplog.text and "absent from the gallery: [7, 9]" in caplog.text
    # the metrics are those of the matchable queries alone (what fast-reid computes)
    cmc_kept, ap_kept, _ = evaluate_rank(dist[:2], q_pids[:2], g_pids, q_cams[:2], g_cams, max_rank=3,
                                         use_cython=False)
    np.testing.assert_allclose(cmc, cmc_kept)
    assert np.mean(ap) == pytest.approx(np.mean(ap_kept))


# ----------------------------------------------------------------------------- config typos
def test_config_typo_on_the_command_line_names_the_key_and_the_closest_ones():
    with pytest.raises(UnknownConfigKeyError) as e:
        load_config("", ["MODEL.VIT.WEIGTHS", "x.pt"])
    assert str(e.value).startswith("Unknown config key 'MODEL.VIT.WEIGTHS' on the command line.")
    assert "Did you mean: MODEL.VIT.WEIGHTS" in str(e.value)
    assert isinstance(e.value, KeyError)


def test_config_typo_in_a_file_names_the_file_and_the_key(tmp_path):
    config = tmp_path / "typo.yml"
    config.write_text(f"_BASE_: {os.path.join(REPO, 'configs', 'Base-DPMPP.yml')}\nSOLVER:\n  BASE_LRR: 0.1\n")
    with pytest.raises(UnknownConfigKeyError, match=r"'SOLVER.BASE_LRR' in config file .*typo\.yml.*"
                                                    r"Did you mean: SOLVER.BASE_LR\b"):
        load_config(str(config))


def test_train_net_prints_the_typo_message_without_a_traceback(tmp_path, monkeypatch):
    """tools/train_net.py's entry point, in process: Python prints a string SystemExit code to stderr, exit status 1."""
    from fastreid_dpmpp.engine.defaults import launch_from_command_line, train_or_evaluate
    monkeypatch.setattr(sys, "argv", ["train_net.py", "--config-file", os.path.join(REPO, "configs", "Base-DPMPP.yml"),
                                      "SOLVER.MAX_EPOCHS", "3", "OUTPUT_DIR", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as e:
        launch_from_command_line(train_or_evaluate)
    assert e.value.code.startswith("error: Unknown config key 'SOLVER.MAX_EPOCHS' on the command line. "
                                   "Did you mean: SOLVER.MAX_EPOCH")
    assert e.value.__cause__ is None and e.value.__suppress_context__     # no chained traceback
    assert not (tmp_path / "out").exists()      # nothing was created


# ----------------------------------------------------------------------------- NaN / inf during training
@META_ARCH_REGISTRY.register()
class GoesBadAtCall(nn.Module):
    """A tiny reid model whose loss term ``loss_b`` becomes NaN at call ``BAD_CALL`` (mode "loss"), or whose weights
    are set to inf after a finite loss at that call (mode "weights")."""
    BAD_CALL, MODE = 3, "loss"

    def __init__(self, cfg):
        super().__init__()
        self.linear = nn.Linear(3, cfg.MODEL.HEADS.NUM_CLASSES)
        self.calls = 0

    def forward(self, batched_inputs):
        features = batched_inputs["images"].float().mean(dim=(2, 3)) / 255.0
        if not self.training:
            return features
        logits = self.linear(features)
        losses = {"loss_a": F.cross_entropy(logits, batched_inputs["targets"].long()),
                  "loss_b": 0.01 * logits.pow(2).mean()}
        if self.calls == self.BAD_CALL and self.MODE == "loss":
            losses["loss_b"] = losses["loss_b"] * float("nan")
        if self.calls == self.BAD_CALL and self.MODE == "weights":
            with torch.no_grad():
                self.linear.bias.fill_(float("inf"))
        self.calls += 1
        return losses


def _tiny_trainer(data_root, output_dir, mode):
    from fastreid_dpmpp.engine.trainer import DPMPPTrainer
    GoesBadAtCall.MODE = mode
    cfg = load_config("", ["MODEL.META_ARCHITECTURE", "GoesBadAtCall", "MODEL.DEVICE", "cpu",
                           "DATASETS.NAMES", "('OccludedDuke',)", "DATASETS.TESTS", "('OccludedDuke',)",
                           "DATASETS.ROOT", data_root, "INPUT.SIZE_TRAIN", "[32, 16]", "INPUT.SIZE_TEST", "[32, 16]",
                           "SOLVER.IMS_PER_BATCH", 8, "DATALOADER.NUM_INSTANCE", 2, "DATALOADER.NUM_WORKERS", 0,
                           "SOLVER.MAX_EPOCH", 3, "SOLVER.CHECKPOINT_PERIOD", 1, "SOLVER.WARMUP_ITERS", 0,
                           "TEST.EVAL_PERIOD", 100, "MODEL.VIT.SIE_ENABLED", False, "SEED", 0,
                           "OUTPUT_DIR", str(output_dir)])
    trainer = DPMPPTrainer(cfg)
    assert trainer.iters_per_epoch == 2
    return trainer


def _digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_nan_loss_stops_naming_the_term_and_iteration_and_keeps_the_last_checkpoint(data_root, tmp_path):
    trainer = _tiny_trainer(data_root, tmp_path, "loss")
    with pytest.raises(NonFiniteLossError) as e:
        trainer.train()
    message = str(e.value)
    assert "loss term(s) loss_b=nan became non-finite at iteration 3 (epoch 1)" in message
    assert "the other terms were loss_a=" in message and "Last checkpoint kept: model_0000.pth" in message
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["model_0000.pth"]   # no model_final.pth
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_0000.pth"
    kept = torch.load(tmp_path / "model_0000.pth", weights_only=True)
    assert kept["epoch"] == 0 and all(torch.isfinite(v).all() for v in kept["model"].values())
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())   # the NaN step was not applied

    # --resume continues from the kept checkpoint, which a new stop leaves byte-for-byte intact
    digest = _digest(tmp_path / "model_0000.pth")
    again = _tiny_trainer(data_root, tmp_path, "loss")
    again.resume_or_load(resume=True)
    assert again.start_epoch == 1
    with pytest.raises(NonFiniteLossError, match="iteration 5 .epoch 2"):  # 4th call = iteration 2 + 3
        again.train()
    assert _digest(tmp_path / "model_0000.pth") == digest and not (tmp_path / "model_final.pth").exists()


def test_infinite_weights_are_never_checkpointed(data_root, tmp_path):
    trainer = _tiny_trainer(data_root, tmp_path, "weights")
    # call 3 = the last step of epoch 1: its loss is finite, the weights it leaves are not
    with pytest.raises(NonFiniteWeightsError) as e:
        trainer.train()
    assert "end of epoch 1" in str(e.value) and "linear.bias" in str(e.value)
    assert "last checkpoint kept: model_0000.pth" in str(e.value)
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["model_0000.pth"]
    assert not torch.isfinite(trainer.model.linear.bias).any()   # still in memory, never on disk


def test_no_final_evaluation_after_a_failure_in_the_last_epoch():
    """fast-reid's EvalHook.after_train evaluates after a training that failed in its last epoch (the compat fix
    skips it); after a training that ends normally it still evaluates."""
    from fastreid.engine.hooks import EvalHook
    from fastreid.engine.train_loop import HookBase, TrainerBase

    class FailsInLastEpoch(HookBase):
        def __init__(self, fail):
            self.fail = fail

        def after_step(self):
            if self.fail and self.trainer.epoch == 1:
                raise RuntimeError("boom")

    class Loop(TrainerBase):
        def run_step(self):
            pass

    def run(fail, after_train=None):
        evaluations = []
        hook = EvalHook(5, lambda: evaluations.append(1) or {})
        if after_train is not None:
            hook.after_train = after_train.__get__(hook)
        loop = Loop()
        loop.register_hooks([FailsInLastEpoch(fail), hook])
        loop.max_epoch = 2
        try:
            loop.train(0, 2, 1)
        except RuntimeError:
            pass
        return len(evaluations)

    assert run(fail=True) == 0
    assert run(fail=False) == 1
    assert run(fail=True, after_train=EvalHook.after_train.__wrapped_original__) == 1   # stock fast-reid
