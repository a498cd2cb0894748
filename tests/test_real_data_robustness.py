"""Real data never costs a user their training run (issue 14): test cameras training never saw, an evaluation that
fails after training, progress in a log file, image folders as real collections come, files that are no checkpoint,
a missing config file, DATASETS.ROOT under fast-reid's own train_net, a search index used from elsewhere."""
import contextlib
import io
import json
import logging
import math
import os
import shlex
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

import fastreid_dpmpp  # noqa: F401  (fast-reid fixes first)
from fastreid.data.common import CommDataset
from fastreid.data.data_utils import read_image
from fastreid.data.transforms import build_transforms
from fastreid.utils.checkpoint import Checkpointer

from fastreid_dpmpp.checkpoint import CheckpointReadError, UntrustedCheckpointError, trusted_torch_load
from fastreid_dpmpp.compat import TRANSPARENT_BACKGROUND
from fastreid_dpmpp.data.datasets import DatasetNotFoundError, FileNamePatternError, OccludedDuke
from fastreid_dpmpp.data.synthetic import make_synthetic_benchmark
from fastreid_dpmpp.engine.cameras import camera_rows
from fastreid_dpmpp.engine.defaults import ConfigFileNotFoundError, load_config
from fastreid_dpmpp.engine.pipeline import Stage, run_stage
from fastreid_dpmpp.engine.trainer import DPMPPTrainer
from fastreid_dpmpp.evaluation.search import find_images
from _tiny import TINY_INFERENCE_MODEL as TINY_SEARCH_MODEL, TINY_MODEL, run_search

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASELINE = os.path.join(REPO, "configs", "Synthetic", "clip_baseline.yml")
DPMPP = os.path.join(REPO, "configs", "Synthetic", "dpmpp.yml")
RANDOM_INIT = ["MODEL.VIT.WEIGHTS", ""]


@contextlib.contextmanager
def logged(name, level=logging.INFO):
    """Records of logger ``name`` (fast-reid's setup_logger stops propagation, so caplog may see nothing)."""
    records = []
    handler = logging.Handler(level)
    handler.emit = records.append
    logger = logging.getLogger(name)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(min(level, logger.level or level))
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


# ============================================================================ 1. unseen test cameras
def _recamera(folder, cameras):
    """Rename <pid>_c<cam>_f<frame>.jpg so that the folder has cameras 1..``cameras`` (cam -> 1 + (cam-1) % n)."""
    for name in sorted(os.listdir(folder)):
        pid, cam, rest = name.split("_", 2)
        new = f"{pid}_c{1 + (int(cam[1:]) - 1) % cameras}_{rest[:-4]}{cam}.jpg"   # old camera kept: no collision
        os.rename(os.path.join(folder, name), os.path.join(folder, new))


@pytest.fixture(scope="module")
def four_cameras(tmp_path_factory):
    """Synthetic Occluded-Duke whose training split has cameras c1, c2 and whose query / gallery have c1..c4."""
    root = tmp_path_factory.mktemp("four_cameras")
    make_synthetic_benchmark(str(root), seed=0, layout="occluded_duke", image_size=(64, 32), num_train_ids=8,
                             images_per_train_id=4, num_test_ids=6, gallery_images_per_id=3, num_distractor_ids=2)
    base = root / "Occluded_Duke"
    _recamera(base / "bounding_box_train", 2)
    for split in ("query", "bounding_box_test"):
        _recamera(base / split, 4)
    cameras = {split: {name.split("_")[1] for name in os.listdir(base / split)}
               for split in ("bounding_box_train", "query", "bounding_box_test")}
    assert cameras["bounding_box_train"] == {"c1", "c2"}
    assert cameras["query"] | cameras["bounding_box_test"] == {"c1", "c2", "c3", "c4"}
    return str(root)


def train_config(root, output, *opts):
    cfg = load_config(BASELINE, [str(o) for o in TINY_MODEL] + RANDOM_INIT + [
        "DATASETS.ROOT", root, "OUTPUT_DIR", str(output), "SOLVER.MAX_EPOCH", 1, "TEST.EVAL_PERIOD", 1] + list(opts))
    cfg.freeze()
    os.makedirs(output, exist_ok=True)
    return cfg


def test_training_on_2_cameras_evaluates_on_4_with_the_unseen_ones_named_at_build_time(four_cameras, tmp_path):
    out = tmp_path / "run"
    cfg = train_config(four_cameras, out, "MODEL.VIT.SIE_AT_TEST", True)   # the camera embedding is used at test
    with logged("fastreid.dpmpp.cameras", logging.WARNING) as at_build:
        trainer = DPMPPTrainer(cfg)
    warnings = [r.getMessage() for r in at_build]
    assert len(warnings) == 1, warnings             # one warning, before any training step
    assert "OccludedDuke" in warnings[0] and "c3, c4" in warnings[0] and "mean camera embedding" in warnings[0]
    assert trainer.cfg.MODEL.VIT.NUM_CAMERAS == 2
    assert tuple(trainer.cfg.MODEL.VIT.TRAIN_CAMERAS) == ("occludedduke_0", "occludedduke_1")

    trainer.resume_or_load(resume=False)
    with logged("fastreid.dpmpp.clip_vit") as at_test:
        results = trainer.train()          # stock code stopped here: "camera id 2 is out of range"
    assert all(math.isfinite(results[m]) for m in ("Rank-1", "mAP"))
    assert any("camera id(s) [2, 3]" in r.getMessage() for r in at_test)  # rows beyond the 2 trained: the mean
    assert json.loads((out / "eval_results.json").read_text())["OccludedDuke"]["mAP"] == pytest.approx(results["mAP"])
    saved = load_config(str(out / "config.yaml"))           # --eval-only needs no training data to map cameras
    assert saved.MODEL.VIT.NUM_CAMERAS == 2 and tuple(saved.MODEL.VIT.TRAIN_CAMERAS) == (
        "occludedduke_0", "occludedduke_1")


def test_unseen_camera_ids_get_the_mean_of_the_trained_rows():
    from fastreid_dpmpp.modeling.backbones.clip_vit import build_clip_vit_backbone
    cfg = load_config("", ["MODEL.VIT.WIDTH", 32, "MODEL.VIT.LAYERS", 1, "MODEL.VIT.HEADS", 2,
                           "MODEL.VIT.EMBED_DIM", 16, "MODEL.VIT.NUM_CAMERAS", 3, "MODEL.BACKBONE.SIE_COE", 2.0, "MODEL.VIT.TAPS", "(1,)",
                           "INPUT.SIZE_TRAIN", [64, 32]] + RANDOM_INIT)
    vit = build_clip_vit_backbone(cfg)
    tokens = torch.randn(4, 5, 32)
    with torch.no_grad():
        out = vit._add_sie(tokens, torch.tensor([0, 2, 3, 7]))
    table = vit.sie_embed.detach()
    expected_cls = tokens[:, 0] + 2.0 * torch.stack([table[0], table[2], table.mean(0), table.mean(0)])
    torch.testing.assert_close(out[:, 0], expected_cls)
    torch.testing.assert_close(out[:, 1:], tokens[:, 1:])      # "cls" mode: the patches are untouched
    assert not torch.allclose(table.mean(0), torch.zeros(32))   # the mean is not "no embedding" here
    with pytest.raises(ValueError, match="negative"):
        vit._add_sie(tokens, torch.tensor([0, -1, 1, 1]))


def test_test_cameras_map_to_the_rows_of_the_same_training_cameras():
    # training saw c2 and c4 of this dataset (rows 0, 1): c1, c3 and an unknown camera are unseen, each its own id
    rows, unseen = camera_rows([1, 3, 0, 2, None, 1], ("occludedduke_1", "occludedduke_3"), 2, "occludedduke")
    assert rows == [0, 1, 2, 3, 4, 0] and unseen == [0, 2, None]
    rows, unseen = camera_rows([0, 1], ("market1501_0", "market1501_1"), 2, "occludedreid")  # cross-domain
    assert rows == [2, 3] and unseen == [0, 1]
    rows, unseen = camera_rows([0, 1, 5], (), 2)                 # NUM_CAMERAS set by hand: camera c is row c
    assert rows == [0, 1, 2] and unseen == [5]


def test_training_camera_rows_follow_the_train_loaders_order(monkeypatch, data_root):
    """fast-reid's CommDataset numbers training cameras in sorted order: ints as ints (2 before 10)."""
    from fastreid.data.datasets import DATASET_REGISTRY

    from fastreid_dpmpp.engine.cameras import training_cameras

    class IntCameras:
        def __init__(self, **kwargs):
            self.train = [("a.jpg", 1, 10), ("b.jpg", 1, 2), ("c.jpg", 2, 10)]
    monkeypatch.setattr(DATASET_REGISTRY, "get", lambda name: IntCameras)
    cfg = load_config("", ["DATASETS.ROOT", data_root])
    assert training_cameras(cfg) == ["2", "10"]
    assert CommDataset(IntCameras().train, relabel=True).cam_dict == {2: 0, 10: 1}


# ============================================================================ 2. evaluation failures keep the weights
def test_a_failing_final_evaluation_leaves_model_final_and_the_eval_only_command(four_cameras, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(four_cameras, data)
    out = tmp_path / "run"
    cfg = train_config(str(data), out)
    trainer = DPMPPTrainer(cfg)
    trainer.resume_or_load(resume=False)
    (out / "eval_results.json").write_text('{"OccludedDuke": {"mAP": 1.0}}')   # an earlier evaluation's
    query = data / "Occluded_Duke" / "query"
    query.rename(data / "query_elsewhere")           # the test set breaks while the model trains
    with pytest.raises(DatasetNotFoundError) as failure:
        trainer.train()

    final = out / "model_final.pth"
    assert final.is_file()
    assert not (out / "eval_results.json").exists()    # no metrics file claims a final evaluation that failed
    saved = torch.load(final, map_location="cpu", weights_only=True)["model"]
    for name, value in trainer.model.state_dict().items():   # the weights at the end of training
        assert torch.equal(saved[name], value), name
    note = "\n".join(getattr(failure.value, "__notes__", []))
    assert str(final) in note and "--eval-only" in note and str(out / "config.yaml") in note
    command = shlex.split(next(line for line in note.splitlines() if "--eval-only" in line))

    (data / "query_elsewhere").rename(query)        # fixed: the printed command evaluates the saved model
    result = subprocess.run([sys.executable] + command[1:], capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Evaluation results for OccludedDuke" in result.stdout + result.stderr


def test_a_failing_evaluation_mid_training_saves_that_epoch_and_says_resume(four_cameras, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(four_cameras, data)
    out = tmp_path / "run"
    trainer = DPMPPTrainer(train_config(str(data), out, "SOLVER.MAX_EPOCH", 2, "SOLVER.CHECKPOINT_PERIOD", 5))
    trainer.resume_or_load(resume=False)
    shutil.rmtree(data / "Occluded_Duke" / "bounding_box_test")
    with pytest.raises(DatasetNotFoundError) as failure:
        trainer.train()
    assert (out / "model_0000.pth").is_file() and not (out / "model_final.pth").exists()
    assert not (out / "eval_results.json").exists()
    assert (out / "last_checkpoint").read_text() == "model_0000.pth"      # --resume continues from it
    note = "\n".join(failure.value.__notes__)
    assert "after epoch 1 of 2" in note and str(out / "model_0000.pth") in note and "--resume" in note


# ============================================================================ 3. progress on a terminal and in a file
FAKE_STAGE = """
import os, sys, time
out = sys.argv[sys.argv.index("OUTPUT_DIR") + 1]
for epoch in range(3):
    for it in range(4):
        print(f"[12/02 10:00:0{it}] fastreid.utils.events]:  eta: 0:00:{30 - 10 * epoch - it:02d}  "
              f"epoch/iter: {epoch}/{4 * epoch + it}  total_loss: {5.0 - epoch - it / 10:.3f}  time: 0.1", flush=True)
if os.environ.get("FAKE_STAGE_FAILS"):
    print("Traceback (most recent call last):")
    print("ValueError: the evaluation broke")
    print("The trained weights are saved in /somewhere/model_final.pth")
    sys.exit(1)
open(os.path.join(out, "artifact.pth"), "w").close()
"""


class Terminal(io.StringIO):
    def isatty(self):
        return True


def _fake_stage(tmp_path):
    script = tmp_path / "fake_stage.py"
    script.write_text(FAKE_STAGE)
    return Stage("II: fake", str(script), DPMPP, str(tmp_path / "out"), "artifact.pth", epochs=3)


def test_progress_redirected_to_a_file_is_one_line_per_epoch(tmp_path):
    stage = _fake_stage(tmp_path)
    with open(tmp_path / "console.txt", "w") as console:      # `> log`, nohup, CI: not a terminal
        run_stage(stage, str(tmp_path / "stage.log"), stream=console)
    text = (tmp_path / "console.txt").read_text()
    assert "\r" not in text
    lines = text.splitlines()
    assert [line.split(" loss")[0] for line in lines[:3]] == [f"  [II: fake] epoch {e}/3" for e in (1, 2, 3)]
    assert lines[1].endswith("loss 4.000 eta 0:00:20")       # loss and ETA as fast-reid logged them
    assert len(lines) == 4 and lines[3].startswith("  [II: fake] finished in")
    assert (tmp_path / "stage.log").read_text().count("epoch/iter") == 12   # the full log is kept


def test_progress_on_a_terminal_is_redrawn_in_place(tmp_path):
    terminal = Terminal()
    run_stage(_fake_stage(tmp_path), str(tmp_path / "stage.log"), stream=terminal)
    text = terminal.getvalue()
    assert "\r" in text and "3/3 epochs" in text
    assert text.count("\n") <= 2          # the bar is redrawn; only the closing line ends with a newline


def test_a_failed_stage_shows_its_last_lines(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STAGE_FAILS", "1")
    with pytest.raises(RuntimeError) as e:
        run_stage(_fake_stage(tmp_path), str(tmp_path / "stage.log"), stream=io.StringIO())
    assert "ValueError: the evaluation broke" in str(e.value) and "/somewhere/model_final.pth" in str(e.value)


# ============================================================================ 4. image folders as they come
def _save(image, path, **kwargs):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, **kwargs)
    return path


def _rgb(h, w, seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


@pytest.fixture
def real_world_folder(tmp_path):
    """Occluded-Duke layout under a non-ASCII root with one of each: sizes and aspect ratios, grayscale, RGBA,
    palette with transparency, 16-bit TIFF, RGB TIFF, upper-case extensions, a symbolic link, a stray text file."""
    root = tmp_path / "Datensätze_日本"
    train = root / "Occluded_Duke" / "bounding_box_train"
    elsewhere = _save(_rgb(40, 20, 9), str(tmp_path / "elsewhere" / "kept.jpg"))
    rgba = np.zeros((48, 24, 4), np.uint8)
    rgba[:24] = (200, 10, 10, 255)                       # top: opaque red, bottom: fully transparent
    palette = Image.new("P", (16, 32))
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.putdata([1] * 256 + [0] * 256)               # top half colour 1 (green), bottom half colour 0
    palette.info["transparency"] = 0
    deep = Image.fromarray(np.full((32, 16), 65535, np.uint16))
    files = {
        "0001_c1_f0000001.jpg": lambda p: _save(_rgb(96, 32, 1), p),          # tall
        "0001_c2_f0000002.JPG": lambda p: _save(_rgb(20, 60, 2), p),          # wide, upper-case extension
        "0002_c1_f0000003.png": lambda p: _save(Image.fromarray(rgba, "RGBA"), p),
        "0002_c2_f0000004.PNG": lambda p: _save(palette, p, transparency=0),
        "0003_c1_f0000005.tif": lambda p: _save(deep, p),
        "0003_c2_f0000006.tiff": lambda p: _save(_rgb(30, 15, 3), p),
        "0004_c1_f0000007.jpeg": lambda p: _save(_rgb(64, 32, 4).convert("L"), p),
        "0004_c2_f0000008.jpg": lambda p: os.symlink(elsewhere, p),
    }
    for name, write in files.items():
        write(str(train / name))
    (train / "notes.txt").write_text("camera list for the new site\n")
    for split, names in (("query", ["0005_c1_f0000009.jpg"]), ("bounding_box_test", ["0005_c2_f0000010.jpg"])):
        for i, name in enumerate(names):
            _save(_rgb(64, 32, 10 + i), str(root / "Occluded_Duke" / split / name))
    return root, sorted(files)


def test_a_real_world_folder_is_read_whole_and_names_the_stray_file(real_world_folder):
    root, names = real_world_folder
    with logged("fastreid.dpmpp.data.datasets", logging.WARNING) as warnings:
        dataset = OccludedDuke(root=str(root))
    assert sorted(os.path.basename(p) for p, _, _ in dataset.train) == names
    message = "\n".join(r.getMessage() for r in warnings)
    assert str(root / "Occluded_Duke" / "bounding_box_train" / "notes.txt") in message and "not images" in message

    cfg = load_config(BASELINE, ["INPUT.SIZE_TEST", [64, 32]])
    data = CommDataset(dataset.train, build_transforms(cfg, is_train=False), relabel=True)
    for i in range(len(data)):                          # every image: 3 channels at the configured size
        assert data[i]["images"].shape == (3, 64, 32), data[i]["img_paths"]
    train = root / "Occluded_Duke" / "bounding_box_train"
    stock = read_image.__wrapped_original__.__wrapped_original__     # fast-reid's own read_image
    assert np.asarray(stock(str(train / "0002_c1_f0000003.png"))).shape == (48, 24, 4)       # 4 channels
    assert np.asarray(stock(str(train / "0002_c2_f0000004.PNG")))[0, 0].tolist() == [1, 1, 1]  # palette index
    rgba = np.asarray(read_image(str(train / "0002_c1_f0000003.png")))
    assert rgba.shape == (48, 24, 3) and tuple(rgba[0, 0]) == (200, 10, 10)
    assert tuple(rgba[-1, -1]) == TRANSPARENT_BACKGROUND     # transparent: the pixel mean, ~0 once normalised
    palette = np.asarray(read_image(str(train / "0002_c2_f0000004.PNG")))
    assert tuple(palette[0, 0]) == (10, 200, 30) and tuple(palette[-1, -1]) == TRANSPARENT_BACKGROUND
    assert np.asarray(read_image(str(train / "0003_c1_f0000005.tif"))).min() == 255    # 16-bit white stays white
    gray = np.asarray(read_image(str(train / "0004_c1_f0000007.jpeg")))
    assert gray.shape == (64, 32, 3) and (gray[..., 0] == gray[..., 2]).all()


def test_a_symbolic_link_to_nothing_is_refused_naming_it(real_world_folder):
    root, _ = real_world_folder
    broken = root / "Occluded_Duke" / "bounding_box_train" / "0006_c1_f0000011.jpg"
    os.symlink(str(root / "no_such_file.jpg"), broken)
    with pytest.raises(FileNamePatternError, match=str(broken) + " is a symbolic link to"):
        OccludedDuke(root=str(root))


def test_search_reads_galleries_through_linked_folders_and_any_extension_case(tmp_path, real_world_folder):
    root, _ = real_world_folder
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    os.symlink(root / "Occluded_Duke" / "bounding_box_train", gallery / "site_a")    # a linked folder
    _save(_rgb(32, 16, 5), str(gallery / "0009_c1_f1.WEBP"))
    found = find_images(str(gallery))
    assert len(found) == 9 and str(gallery / "0009_c1_f1.WEBP") in found
    assert str(gallery / "site_a" / "0002_c2_f0000004.PNG") in found
    os.symlink(str(tmp_path / "gone.jpg"), gallery / "0010_c1_f1.jpg")
    with pytest.raises(FileNotFoundError, match="0010_c1_f1.jpg"):
        find_images(str(gallery))


# ============================================================================ 5. checkpoints, config file, dataset root
@pytest.mark.parametrize("content, kind", [
    (b"", "an empty file"),
    (b"model weights go here\n", "a text file (starting 'model weights go here')"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:0\n", "a Git LFS pointer"),
    ("truncated", "truncated or corrupted"),
])
def test_a_file_that_is_no_checkpoint_is_reported_as_such(tmp_path, content, kind):
    path = tmp_path / "model_final.pth"
    if content == "truncated":
        torch.save({"model": {"w": torch.ones(100)}}, path)
        content = path.read_bytes()[:300]
    path.write_bytes(content)
    model = torch.nn.Linear(2, 2)
    with pytest.raises(CheckpointReadError) as e:
        Checkpointer(model).load(str(path))          # MODEL.WEIGHTS / --resume go through fast-reid's Checkpointer
    message = str(e.value)
    assert str(path) in message and f"({len(content)} bytes)" in message and kind in message
    assert "Expected a file written by torch.save" in message
    assert "weights_only" not in message and e.value.__cause__ is None     # no advice to disable weights-only


def test_torch_files_that_are_not_model_checkpoints(tmp_path):
    model = torch.nn.Linear(2, 2)
    tensor = tmp_path / "tensor.pth"
    torch.save(torch.ones(3), tensor)
    with pytest.raises(CheckpointReadError, match=r"not a model checkpoint: it holds a Tensor"):
        Checkpointer(model).load(str(tensor))
    other = tmp_path / "other.pth"
    torch.save({"epoch": 3, "weights": [1, 2]}, other)
    with pytest.raises(CheckpointReadError, match=r"holds a dict with keys \[epoch, weights\]"):
        Checkpointer(model).load(str(other))
    plain = tmp_path / "state_dict.pth"                  # a bare state dict is a model checkpoint too
    source = torch.nn.Linear(2, 2)
    torch.save(source.state_dict(), plain)
    Checkpointer(model).load(str(plain))
    assert torch.equal(model.weight, source.weight)


def test_a_pickle_that_would_run_code_is_still_refused_without_the_dangerous_advice(tmp_path):
    class RunsCode:
        def __reduce__(self):
            return (os.system, ("true",))
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "x": RunsCode()}, path)
    with pytest.raises(UntrustedCheckpointError) as e:
        trusted_torch_load(str(path))
    assert "could run code" in str(e.value) and "weights_only" not in str(e.value)
    assert "GLOBAL" in str(e.value) and "Please" not in str(e.value)


def run_tool(*args, env=None, cwd=REPO):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=600, cwd=cwd,
                          env=dict(os.environ, **(env or {})))


def test_a_missing_config_file_is_one_line_naming_it(tmp_path):
    missing = tmp_path / "no_such.yml"
    with pytest.raises(ConfigFileNotFoundError, match=str(missing)):
        load_config(str(missing))
    base = tmp_path / "child.yml"
    base.write_text("_BASE_: gone/Base.yml\n")
    with pytest.raises(ConfigFileNotFoundError, match="gone/Base.yml"):
        load_config(str(base))
    result = run_tool(os.path.join(REPO, "tools", "train_net.py"), "--config-file", missing)
    assert result.returncode != 0
    assert result.stderr.strip() == f"error: config file not found: {missing} (--config-file {missing})"


def test_dataset_root_means_the_same_under_fastreids_own_trainer(tmp_path, data_root):
    """fast-reid's DefaultTrainer (its tools/train_net.py) with the plugin auto-loaded reads DATASETS.ROOT; without
    it, the dataset error names FASTREID_DATASETS."""
    script = tmp_path / "stock_fastreid.py"
    script.write_text(textwrap.dedent(f"""
        from fastreid.config import get_cfg
        from fastreid.engine import DefaultTrainer
        cfg = get_cfg()
        cfg.merge_from_file({BASELINE!r})
        cfg.merge_from_list(["DATASETS.ROOT", {data_root!r}, "DATALOADER.NUM_WORKERS", 0])
        loader, num_query = DefaultTrainer.build_test_loader(cfg, "OccludedDuke")
        print("test images", len(loader.dataset), "queries", num_query)
        cfg.merge_from_list(["DATASETS.ROOT", ""])
        try:
            DefaultTrainer.build_test_loader(cfg, "OccludedDuke")
        except Exception as e:
            print("ERROR", e)
    """))
    result = run_tool(script, cwd=tmp_path, env={"FASTREID_DPMPP_AUTOLOAD": "1",
                                                 "FASTREID_DATASETS": str(tmp_path / "elsewhere")})
    assert result.returncode == 0, result.stderr[-3000:]
    expected = len(OccludedDuke(root=data_root).query) + len(OccludedDuke(root=data_root).gallery)
    assert f"test images {expected}" in result.stdout
    error = result.stdout.split("ERROR", 1)[1]
    assert str(tmp_path / "elsewhere") in error and "FASTREID_DATASETS" in error


# ============================================================================ 6. a search index that travels
@pytest.fixture(scope="module")
def search_setup(tmp_path_factory):
    from fastreid_dpmpp.export import load_inference_model
    root = tmp_path_factory.mktemp("search14")
    make_synthetic_benchmark(str(root / "data"), seed=1, layout="occluded_duke", image_size=(64, 32),
                             num_train_ids=2, images_per_train_id=2, num_test_ids=3, gallery_images_per_id=2,
                             num_distractor_ids=0)
    torch.manual_seed(0)
    model, _ = load_inference_model(DPMPP, TINY_SEARCH_MODEL + RANDOM_INIT)
    project = root / "project"                          # where `build` runs, with relative paths
    (project / "weights").mkdir(parents=True)
    torch.save({"model": model.state_dict()}, project / "weights" / "model.pth")
    (project / "dpmpp.yml").write_text(f"_BASE_: {DPMPP}\n")
    data = root / "data" / "Occluded_Duke"
    query = sorted(str(data / "query" / n) for n in os.listdir(data / "query"))[0]
    return {"root": root, "project": project, "gallery": data / "bounding_box_test", "query": query}


def _build(capsys, setup, index, *extra):
    return run_search(capsys, "build", "--config-file", "dpmpp.yml", "--gallery", setup["gallery"], "--index", index,
                   *extra, *TINY_SEARCH_MODEL, *RANDOM_INIT, "MODEL.WEIGHTS", "weights/model.pth")


def _ranking(log):
    return [line.split()[-1] for line in log.splitlines() if line.startswith("  ") and "rank list" not in line]


def test_a_search_index_answers_from_another_directory_and_keeps_its_model(capsys, monkeypatch, search_setup,
                                                                          tmp_path):
    monkeypatch.chdir(search_setup["project"])
    _build(capsys, search_setup, "index")
    expected = _ranking(run_search(capsys, "query", "--index", "index", "--k", 3, "--no-plot", search_setup["query"]))
    assert len(expected) == 3
    index = search_setup["project"] / "index"
    assert (index / "model_config.yaml").is_file() and (index / "model.pth").is_file()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)                       # another working directory: the typed paths mean nothing
    log = run_search(capsys, "query", "--index", index, "--k", 3, "--output", elsewhere / "lists", search_setup["query"])
    assert _ranking(log) == expected
    assert list((elsewhere / "lists").glob("ranklist_*.png"))

    moved = tmp_path / "copied_index"                   # another machine: the index folder alone, weights removed
    shutil.copytree(index, moved)
    (search_setup["project"] / "weights" / "model.pth").rename(tmp_path / "model_away.pth")
    try:
        assert _ranking(run_search(capsys, "query", "--index", moved, "--k", 3, "--no-plot",
                                search_setup["query"])) == expected
    finally:
        (tmp_path / "model_away.pth").rename(search_setup["project"] / "weights" / "model.pth")


def test_a_linked_checkpoint_that_moved_or_changed_is_refused(capsys, monkeypatch, search_setup, tmp_path):
    monkeypatch.chdir(search_setup["project"])
    index = tmp_path / "linked"
    _build(capsys, search_setup, index, "--link-weights")
    assert not (index / "model.pth").exists()
    meta = json.loads((index / "gallery.json").read_text())["model"]["weights"]
    weights = search_setup["project"] / "weights" / "model.pth"
    assert meta["path"] == str(weights) and meta["size"] == weights.stat().st_size and len(meta["sha256"]) == 64
    query = ["query", "--index", index, "--k", 2, "--no-plot", search_setup["query"]]
    assert len(_ranking(run_search(capsys, *query))) == 2

    original = weights.read_bytes()
    try:
        weights.rename(tmp_path / "moved.pth")
        with pytest.raises(SystemExit, match=f"missing: {weights} \\(moved or deleted"):
            run_search(capsys, *query)
        (tmp_path / "moved.pth").rename(weights)
        state = torch.load(weights, weights_only=True)
        state["model"]["heads.bottleneck.bias"] = state["model"]["heads.bottleneck.bias"] + 1  # retrained, say
        torch.save(state, weights)
        with pytest.raises(SystemExit, match="changed since this index was built"):
            run_search(capsys, *query)
    finally:
        weights.write_bytes(original)
