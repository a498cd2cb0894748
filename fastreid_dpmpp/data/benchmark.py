"""The frozen synthetic benchmark of the evaluation protocol (docs/EVALUATION.md).

One "world" (camera styles of ``camera_seed``), one training split per training protocol, drawn from
``train_seed`` (the same identities and images in both; only the occluders differ), and evaluation splits of
their own identities, one per seed in ``SPLITS``:

* training protocols: ``occluded`` (Occluded-Duke style: 35 % of the training images occluded) and
  ``holistic`` (Occluded-REID style: no occluded training image; the test is the same occluded test);
* evaluation splits: ``val`` (every choice is made on it) and ``test1``, ``test2`` (fresh seeds no choice
  looked at); each with ~hundreds of occluded queries, their unoccluded twins (``query_holistic``) and a
  gallery about 10 % occluded.

``ensure_benchmark(base, training, split)`` writes ``<base>/<training>/<split>`` (a dataset root holding
``Occluded_Duke/``) once; ``benchmark_id()`` hashes the generator parameters, and every written root records
the sha256 of its files, so a result can name exactly what it was measured on.
"""
import hashlib
import json
import os

import numpy as np

from .synthetic import FORMAT_VERSION, LAYOUT_DIRS, META_FILE, make_synthetic_benchmark

__all__ = ["PROTOCOL_NAME", "GENERATOR_PARAMS", "TRAINING_PROTOCOLS", "SPLITS", "benchmark_id", "benchmark_root",
           "ensure_benchmark", "benchmark_record", "content_sha256", "benchmark_split"]

PROTOCOL_NAME = "synthetic-occluded-v2"
GENERATOR_PARAMS = dict(
    image_size=(128, 64), train_seed=0, camera_seed=0,
    num_train_ids=150, images_per_train_id=8,
    num_test_ids=200, max_queries_per_id=3, gallery_images_per_id=4, num_distractor_ids=60,
    gallery_occluded_fraction=0.1,
)
TRAINING_PROTOCOLS = {"occluded": 0.35, "holistic": 0.0}     # share of occluded training images
SPLITS = {"val": 101, "test1": 202, "test2": 303}            # generator seed of each evaluation split
RECORD_FILE = "benchmark.json"


def _canonical(value):
    return json.dumps(value, sort_keys=True, default=list)


def benchmark_id():
    """Short sha256 of everything that decides the benchmark's images (parameters, splits, format version)."""
    payload = dict(name=PROTOCOL_NAME, params=GENERATOR_PARAMS, training=TRAINING_PROTOCOLS, splits=SPLITS,
                   format=FORMAT_VERSION)
    return hashlib.sha256(_canonical(payload).encode()).hexdigest()[:16]


def _check(training, split):
    if training not in TRAINING_PROTOCOLS:
        raise ValueError(f"training protocol {training!r} is not one of {sorted(TRAINING_PROTOCOLS)}")
    if split not in SPLITS:
        raise ValueError(f"benchmark split {split!r} is not one of {sorted(SPLITS)}")


def benchmark_root(base, training, split):
    _check(training, split)
    return os.path.join(base, training, split)


def content_sha256(root):
    """sha256 over the relative paths and bytes of every image under ``root/Occluded_Duke``."""
    digest = hashlib.sha256()
    layout = os.path.join(root, LAYOUT_DIRS["occluded_duke"])
    for folder, _, files in sorted(os.walk(layout)):
        for name in sorted(files):
            if name == META_FILE:
                continue
            path = os.path.join(folder, name)
            digest.update(os.path.relpath(path, layout).encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


def benchmark_record(root):
    """The record written beside a benchmark root (benchmark id, training protocol, split, seeds, content hash)."""
    with open(os.path.join(root, RECORD_FILE)) as f:
        return json.load(f)


def ensure_benchmark(base, training, split):
    """Write ``<base>/<training>/<split>`` unless a complete copy of this benchmark version is there; returns it."""
    root = benchmark_root(base, training, split)
    record_path = os.path.join(root, RECORD_FILE)
    if os.path.isfile(record_path) and benchmark_record(root).get("benchmark_id") == benchmark_id():
        return root
    params = dict(GENERATOR_PARAMS)
    make_synthetic_benchmark(root, seed=SPLITS[split], layout="occluded_duke",
                             train_occluded_fraction=TRAINING_PROTOCOLS[training], **params)
    record = dict(benchmark=PROTOCOL_NAME, benchmark_id=benchmark_id(), training=training, split=split,
                  split_seed=SPLITS[split], params=params, train_occluded_fraction=TRAINING_PROTOCOLS[training],
                  content_sha256=content_sha256(root))
    with open(record_path, "w") as f:
        f.write(_canonical(record))
    return root


def benchmark_split(root):
    """Occluded queries, their unoccluded twins and the gallery of a benchmark root:
    {"query", "query_holistic", "gallery"} -> (paths, pids, camids) as read by the dataset classes."""
    from .datasets import OccludedDuke, OccludedDukeHolisticQuery
    occluded, holistic = OccludedDuke(root=root), OccludedDukeHolisticQuery(root=root)

    def unpack(items):
        paths, pids, camids = zip(*items)
        return list(paths), np.array(pids), np.array(camids)
    return dict(query=unpack(occluded.query), query_holistic=unpack(holistic.query), gallery=unpack(occluded.gallery))
