"""Dataset classes (fastreid_dpmpp/data/datasets.py) on the synthetic layouts, fast-reid's own Market1501 and
DukeMTMC on the same files, FASTREID_DATASETS, and every layout error."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

import fastreid_dpmpp  # noqa: F401  (fast-reid fixes first)
from fastreid.data.common import CommDataset
from fastreid.data.datasets import DATASET_REGISTRY

from fastreid_dpmpp.data.datasets import (
    DatasetLayoutError, DatasetNotFoundError, EmptySplitError, FileNamePatternError,
    OccludedDuke, OccludedDukeHolisticQuery, OccludedREID,
)
from fastreid_dpmpp.data.synthetic import load_meta, make_synthetic_benchmark

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(image_size=(48, 24), num_train_ids=5, images_per_train_id=3, num_test_ids=4, gallery_images_per_id=2,
            num_distractor_ids=2, market_junk_images=2, oreid_num_ids=3, oreid_images_per_id=2)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthroot"))
    make_synthetic_benchmark(root, seed=3, layout=["occluded_duke", "market1501", "occluded_reid", "dukemtmc"], **TINY)
    return root


def _expected(layout_root, split, with_junk=False):
    """(basename -> (pid, cam)) of a split, read from the file names with a hand-written parser."""
    out = {}
    for name in os.listdir(os.path.join(layout_root, split)):
        pid_str, rest = name.split("_", 1)
        cam = int(rest[1])
        if pid_str == "-1" and not with_junk:
            continue
        out[name] = (int(pid_str), cam)
    return out


def _by_name(items):
    return {os.path.basename(p): (pid, cam) for p, pid, cam in items}


# ----------------------------------------------------------------------------- parsing
def test_occluded_duke_parses_the_synthetic_layout(synth_root):
    ds = OccludedDuke(root=synth_root)
    base = os.path.join(synth_root, "Occluded_Duke")
    meta = load_meta(base)["summary"]["counts"]
    assert (len(ds.train), len(ds.query), len(ds.gallery)) == \
        (meta["bounding_box_train"], meta["query"], meta["bounding_box_test"])
    assert len(ds.train) == 5 * 3

    train = _by_name(ds.train)
    for name, (pid, cam) in _expected(base, "bounding_box_train").items():
        assert train[name] == (f"occludedduke_{pid}", f"occludedduke_{cam - 1}")
    for split, items in (("query", ds.query), ("bounding_box_test", ds.gallery)):
        assert _by_name(items) == {n: (pid, cam - 1) for n, (pid, cam) in _expected(base, split).items()}
    assert all(0 <= cam <= 7 for _, _, cam in ds.query + ds.gallery)
    assert all(os.path.isfile(p) for p, _, _ in ds.train + ds.query + ds.gallery)
    assert ds.get_num_pids(ds.train) == 5
    assert DATASET_REGISTRY.get("OccludedDuke") is OccludedDuke


def test_training_ids_relabel_to_consecutive_classes(synth_root):
    ds = OccludedDuke(root=synth_root)
    train_set = CommDataset(ds.train, transform=None, relabel=True)
    assert train_set.num_classes == 5
    labels = sorted({train_set.pid_dict[pid] for _, pid, _ in ds.train})
    assert labels == list(range(5))
    # the relabelling keeps identities apart: each label maps back to one numeric pid
    back = {}
    for _, pid, _ in ds.train:
        back.setdefault(train_set.pid_dict[pid], set()).add(pid)
    assert all(len(v) == 1 for v in back.values())


def test_occluded_duke_accepts_the_clip_reid_folder(synth_root, tmp_path):
    shutil.copytree(os.path.join(synth_root, "Occluded_Duke"), tmp_path / "dukemtmcreid" / "Occluded_Duke")
    ds = OccludedDuke(root=str(tmp_path))
    ref = OccludedDuke(root=synth_root)
    assert ds.dataset_dir == str(tmp_path / "dukemtmcreid" / "Occluded_Duke")
    assert _by_name(ds.query) == _by_name(ref.query) and len(ds.train) == len(ref.train)


def test_holistic_query_variant_reads_the_same_queries_without_occluders(synth_root):
    occ, hol = OccludedDuke(root=synth_root), OccludedDukeHolisticQuery(root=synth_root)
    assert _by_name(hol.query) == _by_name(occ.query)
    assert all("/query_holistic/" in p for p, _, _ in hol.query)
    assert hol.train == occ.train and hol.gallery == occ.gallery


def test_occluded_reid_reads_the_raw_layout(synth_root):
    ds = OccludedREID(root=synth_root)
    assert ds.train == []
    assert len(ds.query) == len(ds.gallery) == 3 * 2
    assert {cam for _, _, cam in ds.query} == {0} and {cam for _, _, cam in ds.gallery} == {1}
    for items, folder in ((ds.query, "occluded_body_images"), (ds.gallery, "whole_body_images")):
        for path, pid, _ in items:
            rel = os.path.relpath(path, os.path.join(synth_root, "OccludedREID", folder))
            assert re.fullmatch(r"(\d{3})/\1_\d{2}\.tif", rel) and int(rel[:3]) == pid
    assert sorted({p for _, p, _ in ds.query}) == [1, 2, 3]


def test_occluded_reid_same_camera_filter_drops_nothing(synth_root):
    import numpy as np
    from fastreid.evaluation.rank import evaluate_rank
    ds = OccludedREID(root=synth_root)
    qp = np.array([p for _, p, _ in ds.query])
    gp = np.array([p for _, p, _ in ds.gallery])
    qc = np.array([c for _, _, c in ds.query])
    gc = np.array([c for _, _, c in ds.gallery])
    dist = np.where(qp[:, None] == gp[None, :], 0.0, 1.0)       # a perfect ranking
    cmc, aps, _ = evaluate_rank(dist, qp, gp, qc, gc, max_rank=2, use_cython=False)
    assert len(aps) == len(qp) and cmc[0] == 1.0 and np.allclose(aps, 1.0)
    # with equal camera ids every true match would have been dropped
    with pytest.raises(AssertionError):
        evaluate_rank(dist, qp, gp, qc, np.zeros_like(gc), max_rank=2, use_cython=False)


def test_occluded_reid_alternative_folder_name_and_extensions(synth_root, tmp_path):
    import cv2
    src = os.path.join(synth_root, "OccludedREID")
    dst = tmp_path / "Occluded_REID"
    shutil.copytree(src, dst)
    for i, path in enumerate(sorted((dst / "whole_body_images").glob("*/*.tif"))):
        ext = (".jpg", ".png", ".tif")[i % 3]
        if ext != ".tif":
            cv2.imwrite(str(path.with_suffix(ext)), cv2.imread(str(path)))
            path.unlink()
    ds = OccludedREID(root=str(tmp_path))
    exts = {os.path.splitext(p)[1] for p, _, _ in ds.gallery}
    assert exts == {".jpg", ".png", ".tif"} and len(ds.gallery) == 6


def test_fastreid_market1501_and_dukemtmc_read_the_synthetic_layouts(synth_root):
    market = DATASET_REGISTRY.get("Market1501")(root=synth_root)
    base = os.path.join(synth_root, "Market-1501-v15.09.15")
    assert _by_name(market.query) == {n: (p, c - 1) for n, (p, c) in _expected(base, "query").items()}
    gallery = _expected(base, "bounding_box_test")
    assert _by_name(market.gallery) == {n: (p, c - 1) for n, (p, c) in gallery.items()}
    junk = set(_expected(base, "bounding_box_test", with_junk=True)) - set(gallery)
    assert len(junk) == 2 and all(n.startswith("-1_") for n in junk)      # pid -1 skipped by fast-reid
    assert {pid for _, pid, _ in market.train} == \
        {f"market1501_{p}" for p, _ in _expected(base, "bounding_box_train").values()}

    duke = DATASET_REGISTRY.get("DukeMTMC")(root=synth_root)
    occ = OccludedDuke(root=synth_root)
    assert _by_name(duke.query) == _by_name(occ.query) and _by_name(duke.gallery) == _by_name(occ.gallery)
    assert {p.replace("dukemtmc_", "") for _, p, _ in duke.train} == \
        {p.replace("occludedduke_", "") for _, p, _ in occ.train}


_LOADER_SCRIPT = r"""
import json, sys
import fastreid_dpmpp, fastreid_dpmpp.data
from fastreid.config import get_cfg
from fastreid.data.build import _root, build_reid_test_loader, build_reid_train_loader
out = {"root": _root}
cfg = get_cfg()
cfg.DATALOADER.NUM_WORKERS = 0
cfg.SOLVER.IMS_PER_BATCH = 4
for name in ("Market1501", "DukeMTMC", "OccludedDuke"):
    cfg.defrost(); cfg.DATASETS.NAMES = (name,); cfg.freeze()
    loader = build_reid_train_loader(cfg)
    batch = next(iter(loader))
    out[name + "/train"] = [len(loader.dataset), loader.dataset.num_classes, list(batch["images"].shape)]
for name in ("Market1501", "DukeMTMC", "OccludedDuke", "OccludedDukeHolisticQuery", "OccludedREID"):
    loader, num_query = build_reid_test_loader(cfg, dataset_name=name)
    out[name + "/test"] = [len(loader.dataset), num_query]
print("RESULT " + json.dumps(out))
"""


def test_fastreid_datasets_environment_variable_reaches_every_class(synth_root):
    env = dict(os.environ, FASTREID_DATASETS=synth_root,
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", _LOADER_SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
    out = json.loads(line[len("RESULT "):])
    assert out["root"] == synth_root

    def counts(layout):
        return load_meta(os.path.join(synth_root, layout))["summary"]["counts"]
    duke, market, oreid = counts("Occluded_Duke"), counts("Market-1501-v15.09.15"), counts("OccludedREID")
    assert out["Market1501/train"][:2] == [market["bounding_box_train"], 5]
    assert out["DukeMTMC/train"][:2] == out["OccludedDuke/train"][:2] == [duke["bounding_box_train"], 5]
    assert out["OccludedDuke/train"][2] == [4, 3, 256, 128]             # fast-reid's default SIZE_TRAIN
    assert out["Market1501/test"] == [market["query"] + market["bounding_box_test"] - 2, market["query"]]
    assert out["OccludedDuke/test"] == [duke["query"] + duke["bounding_box_test"], duke["query"]]
    assert out["OccludedDukeHolisticQuery/test"] == out["OccludedDuke/test"]
    assert out["OccludedREID/test"] == [oreid["occluded_body_images"] + oreid["whole_body_images"],
                                        oreid["occluded_body_images"]]


# ----------------------------------------------------------------------------- errors
def _touch(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()


def _fake_duke(root, folder="Occluded_Duke", names=("0001_c1_f0000001.jpg",)):
    for split in ("bounding_box_train", "query", "bounding_box_test"):
        for n in names:
            _touch(os.path.join(root, folder, split, n))
    return os.path.join(root, folder)


def _fake_oreid(root, folder="OccludedREID"):
    for split in ("occluded_body_images", "whole_body_images"):
        _touch(os.path.join(root, folder, split, "001", "001_01.tif"))
    return os.path.join(root, folder)


def test_fake_layouts_parse(tmp_path):
    _fake_duke(str(tmp_path))
    _fake_oreid(str(tmp_path))
    assert OccludedDuke(root=str(tmp_path)).query[0][1:] == (1, 0)
    assert OccludedREID(root=str(tmp_path)).gallery[0][1:] == (1, 1)


def test_missing_dataset_folder_names_paths_and_layout(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        OccludedDuke(root=str(tmp_path))
    msg = str(e.value)
    assert str(tmp_path / "Occluded_Duke") in msg and str(tmp_path / "dukemtmcreid" / "Occluded_Duke") in msg
    assert "bounding_box_train/" in msg and "<pid>_c<cam>_f<frame>.jpg" in msg
    assert isinstance(e.value, DatasetLayoutError) and isinstance(e.value, RuntimeError)

    with pytest.raises(DatasetNotFoundError) as e:
        OccludedREID(root=str(tmp_path))
    msg = str(e.value)
    assert str(tmp_path / "OccludedREID") in msg and str(tmp_path / "Occluded_REID") in msg
    assert "occluded_body_images/" in msg and "whole_body_images/" in msg


def test_root_pointing_inside_the_dataset_folder_gets_a_hint(tmp_path):
    inner = _fake_duke(str(tmp_path))
    with pytest.raises(DatasetNotFoundError, match="parent folder"):
        OccludedDuke(root=inner)


def test_missing_split_folder_is_named(tmp_path):
    base = _fake_duke(str(tmp_path))
    shutil.rmtree(os.path.join(base, "query"))
    with pytest.raises(DatasetNotFoundError) as e:
        OccludedDuke(root=str(tmp_path))
    assert os.path.join(base, "query") in str(e.value) and "Expected layout" in str(e.value)
    with pytest.raises(DatasetNotFoundError, match="query_holistic"):
        OccludedDukeHolisticQuery(root=str(tmp_path / "nothing"))

    ob = _fake_oreid(str(tmp_path))
    shutil.rmtree(os.path.join(ob, "whole_body_images"))
    with pytest.raises(DatasetNotFoundError) as e:
        OccludedREID(root=str(tmp_path))
    assert os.path.join(ob, "whole_body_images") in str(e.value)


def test_file_name_not_matching_the_pattern_is_named(tmp_path):
    base = _fake_duke(str(tmp_path))
    bad = os.path.join(base, "bounding_box_train", "person7.jpg")
    _touch(bad)
    with pytest.raises(FileNamePatternError) as e:
        OccludedDuke(root=str(tmp_path))
    assert bad in str(e.value) and r"([-\d]+)_c(\d)" in str(e.value)

    os.remove(bad)
    wrong_cam = os.path.join(base, "query", "0002_c9_f0000001.jpg")
    _touch(wrong_cam)
    with pytest.raises(FileNamePatternError, match="c1..c8") as e:
        OccludedDuke(root=str(tmp_path))
    assert wrong_cam in str(e.value)


def test_occluded_reid_bad_names_are_named(tmp_path):
    base = _fake_oreid(str(tmp_path))
    bad = os.path.join(base, "occluded_body_images", "001", "img1.tif")
    _touch(bad)
    with pytest.raises(FileNamePatternError) as e:
        OccludedREID(root=str(tmp_path))
    assert bad in str(e.value) and OccludedREID.pattern.pattern in str(e.value)
    os.remove(bad)

    mismatch = os.path.join(base, "whole_body_images", "002", "003_01.tif")   # pid differs from its folder
    _touch(mismatch)
    with pytest.raises(FileNamePatternError, match="003_01.tif"):
        OccludedREID(root=str(tmp_path))
    shutil.rmtree(os.path.dirname(mismatch))

    flat = os.path.join(base, "whole_body_images", "001_02.tif")              # the renamed / flat layout
    _touch(flat)
    with pytest.raises(FileNamePatternError, match="directly in"):
        OccludedREID(root=str(tmp_path))


def test_empty_split_is_named(tmp_path):
    base = _fake_duke(str(tmp_path))
    q = os.path.join(base, "query")
    os.remove(os.path.join(q, "0001_c1_f0000001.jpg"))
    _touch(os.path.join(q, "Thumbs.db"))            # non-image entries are ignored, not counted
    with pytest.raises(EmptySplitError) as e:
        OccludedDuke(root=str(tmp_path))
    assert q in str(e.value)

    ob = _fake_oreid(str(tmp_path))
    g = os.path.join(ob, "whole_body_images")
    shutil.rmtree(os.path.join(g, "001"))
    with pytest.raises(EmptySplitError) as e:
        OccludedREID(root=str(tmp_path))
    assert g in str(e.value)
