"""tools/search.py end to end on a tiny random-init DPM++ model and a synthetic gallery folder: build (flat and
IVF-PQ), query, the printed top-k against an exhaustive masked ranking computed here, the rank-list picture."""
import os
import re
import shutil

import numpy as np
import pytest
import torch

import fastreid_dpmpp  # noqa: F401  (fast-reid fixes first)
from fastreid_dpmpp.data.synthetic import make_synthetic_benchmark
from fastreid_dpmpp.evaluation.masked_matching import masked_similarity
from fastreid_dpmpp.evaluation.search import FeatureExtractor, parse_name
from fastreid_dpmpp.export import load_inference_model

from _tiny import REPO, TINY_INFERENCE_MODEL as TINY, run_search

CONFIG = os.path.join(REPO, "configs", "Synthetic", "dpmpp.yml")
RESULT_LINE = re.compile(r"^\s+(\d+)\s+(-?[\d.]+)\s+(\S+)$", re.M)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    make_synthetic_benchmark(str(root / "data"), seed=0, layout="occluded_duke", image_size=(64, 32),
                             num_train_ids=2, images_per_train_id=2, num_test_ids=6, gallery_images_per_id=3,
                             num_distractor_ids=2)
    source = root / "data" / "Occluded_Duke"
    gallery = root / "gallery"
    # any layout: half the images one level deeper
    files = sorted(os.listdir(source / "bounding_box_test"))
    (gallery / "nested" / "deeper").mkdir(parents=True)
    for position, name in enumerate(files):
        target = gallery / "nested" / "deeper" if position % 2 else gallery
        shutil.copy(source / "bounding_box_test" / name, target / name)
    queries = sorted(str(source / "query" / name) for name in os.listdir(source / "query"))[:2]
    torch.manual_seed(0)
    model, _ = load_inference_model(CONFIG, TINY)
    with torch.no_grad():  # random init gives a constant mask (HMG FC at zero): make it vary
        head = model.heads.mask_generator.fc
        head.weight.normal_(0, 0.5)
        head.bias.normal_(0, 0.5)
    weights = root / "model.pth"
    torch.save({"model": model.state_dict()}, weights)
    return {"root": root, "gallery": gallery, "queries": queries, "weights": weights, "count": len(files)}


def exhaustive_ranking(setup, query_path, k):
    """Independent of the index: features from the model, masked similarity to every gallery file."""
    model, cfg = load_inference_model(CONFIG, TINY + ["MODEL.WEIGHTS", str(setup["weights"])])
    extractor = FeatureExtractor(model, cfg)
    paths = sorted(str(p) for p in setup["gallery"].rglob("*.jpg"))
    assert len(paths) == setup["count"]
    gallery, _ = extractor(paths, [parse_name(p)[1] for p in paths])
    query, mask = extractor([query_path], [parse_name(query_path)[1]])
    assert mask.std() > 1e-3  # the mask matters in this test
    similarity = masked_similarity(torch.from_numpy(query), torch.from_numpy(gallery), torch.from_numpy(mask))[0]
    scores, order = similarity.sort(descending=True)
    return [os.path.abspath(paths[i]) for i in order[:k]], scores[:k].numpy()


def test_build_and_query_flat_index_equals_exhaustive_masked_ranking(setup, capsys):
    index = setup["root"] / "flat"
    log = run_search(capsys, "build", "--config-file", CONFIG, "--gallery", setup["gallery"], "--index", index,
                     *TINY, "MODEL.WEIGHTS", setup["weights"])
    assert f"indexed {setup['count']} images" in log
    for name in ("index.faiss", "descriptors.npy", "masks.npy", "gallery.json"):
        assert (index / name).is_file(), name
    assert not list(index.glob("*.tmp*"))

    k = 5
    log = run_search(capsys, "query", "--index", index, "--k", k, "--candidates", setup["count"], *setup["queries"])
    blocks = log.split("query ")[1:]
    assert len(blocks) == 2
    for query_path, block in zip(setup["queries"], blocks):
        rows = RESULT_LINE.findall(block)
        assert [int(r[0]) for r in rows] == list(range(1, k + 1))
        expected_paths, expected_scores = exhaustive_ranking(setup, query_path, k)
        assert [r[2] for r in rows] == expected_paths
        assert np.allclose([float(r[1]) for r in rows], expected_scores, atol=1e-4)
        stem = os.path.splitext(os.path.basename(query_path))[0]
        picture = index / "ranklists" / f"ranklist_{stem}.png"
        assert picture.is_file() and picture.stat().st_size > 5000


def test_ivfpq_index_builds_and_answers(setup, capsys):
    index = setup["root"] / "ivfpq"
    run_search(capsys, "build", "--config-file", CONFIG, "--gallery", setup["gallery"], "--index", index,
               "--index-type", "ivfpq", "--nlist", 2, "--nprobe", 2, "--pq-m", 8, "--pq-bits", 3,
               *TINY, "MODEL.WEIGHTS", setup["weights"])
    log = run_search(capsys, "query", "--index", index, "--k", 3, "--no-plot", setup["queries"][0])
    rows = RESULT_LINE.findall(log)
    assert len(rows) == 3
    scores = [float(r[1]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert all(os.path.isfile(r[2]) for r in rows)
