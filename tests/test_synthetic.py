"""The synthetic occluded benchmark (fastreid_dpmpp/data/synthetic.py): layouts, determinism, occlusion
statistics, occluder fitting, and a colour-histogram sanity check that occlusion hurts retrieval."""
import hashlib
import importlib.util
import os
import re

import cv2
import numpy as np
import pytest

import fastreid_dpmpp  # noqa: F401  (fast-reid fixes before fastreid.evaluation)
from fastreid.evaluation.rank import evaluate_rank

from fastreid_dpmpp.data.synthetic import (
    COVERAGE_RANGE, LAYOUT_DIRS, OCCLUDER_KINDS, Layer, Scene, _sample_occluder, covered_fraction,
    draw_occluder, fit_occluder, load_meta, make_preview, make_synthetic_benchmark,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL = list(LAYOUT_DIRS)
TINY = dict(image_size=(48, 24), num_train_ids=6, images_per_train_id=4, num_test_ids=5, gallery_images_per_id=3,
            num_distractor_ids=3, market_junk_images=2, oreid_num_ids=4, oreid_images_per_id=3)


def _hashes(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tiny"))
    summary = make_synthetic_benchmark(root, seed=11, layout=ALL, **TINY)
    return root, summary


# ----------------------------------------------------------------------------- determinism
def test_same_seed_gives_identical_bytes(tiny, tmp_path):
    root, _ = tiny
    make_synthetic_benchmark(str(tmp_path / "again"), seed=11, layout=ALL, **TINY)
    first, second = _hashes(root), _hashes(str(tmp_path / "again"))
    assert len(first) > 100 and first == second

    make_synthetic_benchmark(str(tmp_path / "other"), seed=12, layout="occluded_duke", **TINY)
    other = _hashes(str(tmp_path / "other"))
    shared = set(other) & set(first)
    assert sum(first[k] == other[k] for k in shared) == 0


def test_regenerating_into_the_same_root_replaces_the_files(tiny, tmp_path):
    root = str(tmp_path / "r")
    make_synthetic_benchmark(root, seed=5, layout="occluded_reid", oreid_num_ids=3, oreid_images_per_id=2)
    make_synthetic_benchmark(root, seed=5, layout="occluded_reid", oreid_num_ids=2, oreid_images_per_id=2)
    files = [f for f in _hashes(root) if f.endswith(".tif")]
    assert len(files) == 2 * 2 * 2


# ----------------------------------------------------------------------------- layouts
def _files(layout_root, split):
    return sorted(os.listdir(os.path.join(layout_root, split)))


def test_layouts_and_file_names(tiny):
    root, summary = tiny
    duke = os.path.join(root, "Occluded_Duke")
    for split in ("bounding_box_train", "query", "bounding_box_test", "query_holistic"):
        names = _files(duke, split)
        assert names and all(re.fullmatch(r"\d{4}_c[1-8]_f\d{7}\.jpg", n) for n in names), split
    assert _files(duke, "query") == _files(duke, "query_holistic")
    assert len(_files(duke, "bounding_box_train")) == 6 * 4

    market = os.path.join(root, "Market-1501-v15.09.15")
    for split in ("bounding_box_train", "query", "bounding_box_test"):
        names = _files(market, split)
        assert names and all(re.fullmatch(r"(\d{4}|-1)_c[1-6]s[1-6]_\d{6}_\d{2}\.jpg", n) for n in names)
        assert all(0 < int(n.split("_")[0]) <= 1501 for n in names if not n.startswith("-1"))
    assert sum(n.startswith("-1_") for n in _files(market, "bounding_box_test")) == 2

    oreid = os.path.join(root, "OccludedREID")
    for split in ("occluded_body_images", "whole_body_images"):
        assert _files(oreid, split) == ["001", "002", "003", "004"]
        for pid in _files(oreid, split):
            assert _files(oreid, os.path.join(split, pid)) == [f"{pid}_{nn:02d}.tif" for nn in (1, 2, 3)]

    holistic = os.path.join(root, "DukeMTMC-reID")
    for split in ("bounding_box_train", "query", "bounding_box_test"):
        assert _files(holistic, split) == _files(duke, split)
    assert set(summary["layouts"]) == set(ALL)


def test_images_have_the_requested_size_and_are_readable_by_fastreid(tiny):
    from fastreid.data.data_utils import read_image
    root, _ = tiny
    for path in (os.path.join(root, "Occluded_Duke", "query", _files(os.path.join(root, "Occluded_Duke"), "query")[0]),
                 os.path.join(root, "OccludedREID", "whole_body_images", "001", "001_01.tif")):
        img = np.asarray(read_image(path))
        assert img.shape == (48, 24, 3) and img.dtype == np.uint8 and img.std() > 5


def test_identity_splits_are_disjoint_and_every_query_has_a_cross_camera_match(tiny):
    root, _ = tiny
    for layout in ("Occluded_Duke", "Market-1501-v15.09.15"):
        images = load_meta(os.path.join(root, layout))["images"]
        ids = {s: {i["pid"] for i in images.values() if i["split"] == s}
               for s in ("bounding_box_train", "query", "bounding_box_test")}
        assert not ids["bounding_box_train"] & (ids["query"] | ids["bounding_box_test"])
        assert ids["query"] <= ids["bounding_box_test"]
        assert len(ids["bounding_box_test"] - ids["query"] - {-1}) == 3      # distractors
        gallery = [(i["pid"], i["cam"]) for i in images.values() if i["split"] == "bounding_box_test"]
        for q in (i for i in images.values() if i["split"] == "query"):
            assert any(p == q["pid"] and c != q["cam"] for p, c in gallery)


def test_occluded_reid_identities_are_not_market_training_identities(tiny):
    root, _ = tiny
    market = load_meta(os.path.join(root, "Market-1501-v15.09.15"))
    oreid = load_meta(os.path.join(root, "OccludedREID"))
    train_idents = {str(i["identity"]) for i in market["images"].values() if i["split"] == "bounding_box_train"}
    market_looks = [market["identities"][k] for k in train_idents]
    for look in oreid["identities"].values():
        assert look not in market_looks          # body proportions are continuous: equal only if re-used


# ----------------------------------------------------------------------------- occlusion statistics
def test_occlusion_statistics_follow_occluded_duke(tiny):
    root, _ = tiny
    images = load_meta(os.path.join(root, "Occluded_Duke"))["images"]
    by_split = {}
    for info in images.values():
        by_split.setdefault(info["split"], []).append(info)
    assert all(i["occluder"] in OCCLUDER_KINDS for i in by_split["query"])
    assert all(i["occluder"] == "" and i["covered"] == 0 for i in by_split["query_holistic"])
    n_train = len(by_split["bounding_box_train"])
    assert sum(bool(i["occluder"]) for i in by_split["bounding_box_train"]) == round(0.35 * n_train)
    n_gal = len(by_split["bounding_box_test"])
    assert sum(bool(i["occluder"]) for i in by_split["bounding_box_test"]) == round(0.1 * n_gal)
    lo, hi = COVERAGE_RANGE
    for info in images.values():
        assert (lo <= info["covered"] <= hi) if info["occluder"] else info["covered"] == 0.0
    for f, info in images.items():
        if info["split"] == "query_holistic":
            assert info["holistic_of"] == "query/" + os.path.basename(f)
            q = images[info["holistic_of"]]
            assert (q["pid"], q["cam"], q["view"]) == (info["pid"], info["cam"], info["view"])

    oreid = load_meta(os.path.join(root, "OccludedREID"))["images"]
    assert all(bool(i["occluder"]) == (i["split"] == "occluded_body_images") for i in oreid.values())
    assert all(i["occluder"] == "" for i in load_meta(os.path.join(root, "DukeMTMC-reID"))["images"].values())


def test_holistic_query_differs_from_the_occluded_one_only_where_the_occluder_is(tiny):
    root, _ = tiny
    duke = os.path.join(root, "Occluded_Duke")
    images = load_meta(duke)["images"]
    for name in _files(duke, "query"):
        occ = cv2.imread(os.path.join(duke, "query", name)).astype(np.int16)
        hol = cv2.imread(os.path.join(duke, "query_holistic", name)).astype(np.int16)
        same = (np.abs(occ - hol).max(axis=2) <= 12).mean()
        assert 0.15 < same < 0.97, (name, images["query/" + name]["occluder"], same)


def test_covered_fraction_hand_computed():
    body = np.zeros((10, 10), np.uint8)
    body[2:8, 3:7] = 255                       # 24 body pixels
    occ = np.zeros_like(body)
    occ[6:, :] = 255                           # covers rows 6 and 7: 8 pixels
    assert covered_fraction(body, occ) == pytest.approx(8 / 24)
    occ[:, :] = 100                            # below the one-half threshold: covers nothing
    assert covered_fraction(body, occ) == 0.0


@pytest.mark.parametrize("kind", OCCLUDER_KINDS)
def test_each_occluder_grows_with_its_amount_and_can_be_fitted(kind):
    H, W, h = 256, 128, 230.0
    body_layer = Layer(shape=(H, W))
    body_layer.rect(W / 2 - 0.1 * h, H - 5 - h, W / 2 + 0.1 * h, H - 5, 255)     # a box-shaped "body"
    scene = Scene(H=H, W=W, foot_x=W / 2, foot_y=H - 5, height=h, body_x0=W / 2 - 0.1 * h, body_x1=W / 2 + 0.1 * h)
    rng = np.random.default_rng(0)
    for _ in range(3):
        params = _sample_occluder(kind, rng, scene)
        cov = []
        for a in np.linspace(0, 1, 9):
            layer = Layer(shape=(H, W))
            draw_occluder(layer, kind, params, float(a), scene)
            cov.append(covered_fraction(body_layer.mask, layer.mask))
        assert all(b >= a - 0.03 for a, b in zip(cov, cov[1:])), (kind, cov)       # (nearly) monotone
        if cov[0] < 0.3 < cov[-1]:
            amount, c = fit_occluder(kind, params, scene, body_layer.mask, 0.3)
            layer = Layer(shape=(H, W))
            draw_occluder(layer, kind, params, amount, scene)
            exact = covered_fraction(body_layer.mask, layer.mask)
            assert abs(exact - 0.3) < 0.05 and abs(c - exact) < 0.02


# ----------------------------------------------------------------------------- hardness
def _stripe_histograms(path, stripes=6):
    """Grey-world normalised HSV histograms of 6 horizontal stripes of the image centre (a classic
    hand-crafted ReID descriptor), Hellinger-embedded."""
    img = cv2.imread(path).astype(np.float32)
    img = np.clip(img / img.reshape(-1, 3).mean(0) * 128, 0, 255).astype(np.uint8)
    H, W = img.shape[:2]
    hsv = cv2.cvtColor(img[:, int(W * 0.3):int(W * 0.7)], cv2.COLOR_BGR2HSV)
    feats = []
    for k in range(stripes):
        hist = cv2.calcHist([hsv[k * H // stripes:(k + 1) * H // stripes]], [0, 1, 2], None, [8, 3, 3],
                            [0, 180, 0, 256, 0, 256]).ravel()
        feats.append(np.sqrt(hist / hist.sum()))
    return np.concatenate(feats)


def test_occlusion_hurts_a_colour_histogram_baseline(tmp_path):
    root = str(tmp_path)
    make_synthetic_benchmark(root, seed=0, layout="occluded_duke", image_size=(64, 32), num_train_ids=1,
                             images_per_train_id=1, num_test_ids=30, num_distractor_ids=10)
    duke = os.path.join(root, "Occluded_Duke")
    images = load_meta(duke)["images"]

    def split(name):
        files = sorted(f for f, i in images.items() if i["split"] == name)
        feats = np.stack([_stripe_histograms(os.path.join(duke, f)) for f in files])
        return feats, np.array([images[f]["pid"] for f in files]), np.array([images[f]["cam"] for f in files])

    g, g_pids, g_cams = split("bounding_box_test")
    result = {}
    for name in ("query", "query_holistic"):
        q, q_pids, q_cams = split(name)
        dist = ((q[:, None, :] - g[None, :, :]) ** 2).sum(-1)
        cmc, aps, _ = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=10, use_cython=False)
        result[name] = (float(cmc[0]), float(np.mean(aps)))
    print("colour-histogram baseline (R1, mAP):", result)
    occ_map, hol_map = result["query"][1], result["query_holistic"][1]
    chance = 1.0 / len(set(g_pids.tolist()))
    assert hol_map > 4 * chance            # the identities are learnable from colour alone ...
    assert hol_map - occ_map > 0.08        # ... and the occluders take a clear part of that away
    assert result["query"][0] < result["query_holistic"][0]


# ----------------------------------------------------------------------------- preview, CLI, errors
def test_preview_contact_sheet(tiny, tmp_path):
    root, _ = tiny
    out = make_preview(root, str(tmp_path / "sheet.png"), per_row=4, scale=2)
    sheet = cv2.imread(out)
    rows = 4 + 1 + 2            # Occluded-Duke train/query/query_holistic/gallery, Market, Occluded-REID x2
    assert sheet.shape[0] == rows * (48 * 2 + 4)
    assert sheet.shape[1] == 150 + 4 * (24 * 2 + 3)


def test_cli_writes_a_benchmark_and_a_preview(tmp_path):
    spec = importlib.util.spec_from_file_location("make_synthetic_dataset",
                                                  os.path.join(REPO, "tools", "make_synthetic_dataset.py"))
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    summary = cli.main(["--root", str(tmp_path / "d"), "--seed", "2", "--layout", "occluded_reid",
                        "--height", "48", "--width", "24", "--oreid-num-ids", "2", "--oreid-images-per-id", "1",
                        "--preview", str(tmp_path / "p.png")])
    assert summary["layouts"]["occluded_reid"]["counts"] == {"occluded_body_images": 2, "whole_body_images": 2}
    assert os.path.isfile(tmp_path / "p.png")


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown layout"):
        make_synthetic_benchmark(str(tmp_path), layout="cuhk03")
    with pytest.raises(ValueError, match="1..1501"):
        make_synthetic_benchmark(str(tmp_path), layout="market1501", num_train_ids=1000, num_test_ids=600)
    foreign = tmp_path / "Occluded_Duke"
    foreign.mkdir()
    (foreign / "my_real_data.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not written by"):
        make_synthetic_benchmark(str(tmp_path), layout="occluded_duke")
    assert (foreign / "my_real_data.txt").read_text() == "keep me"
