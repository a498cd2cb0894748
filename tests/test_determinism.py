"""Determinism (issue 6.5): on CPU, the same SEED gives the same weights and the same metrics; (A third run with another seed would
double the test time; tests/test_crash_safety.py shows that the seed drives the batches.)"""
import os

import torch

from _tiny import REPO, TINY_MODEL, metrics_row, run_tool


def train(out, data_root, seed):
    config = os.path.join(REPO, "configs", "Synthetic", "dpmpp.yml")
    log = run_tool("train_net.py", "--config-file", config, *TINY_MODEL, "SEED", seed, "DATASETS.ROOT", data_root,
                   "OUTPUT_DIR", out)
    return metrics_row(log), torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)["model"]


def test_same_seed_same_weights_and_metrics(data_root, tmp_path):
    metrics_a, weights_a = train(tmp_path / "a", data_root, seed=0)
    metrics_b, weights_b = train(tmp_path / "b", data_root, seed=0)
    assert metrics_a == metrics_b
    assert weights_a.keys() == weights_b.keys()
    different = [k for k in weights_a if not torch.equal(weights_a[k], weights_b[k])]
    assert not different, f"two runs with SEED 0 ended with different weights: {different[:5]}"
