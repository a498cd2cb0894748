"""The evaluation protocol (issue 12): per-query metrics equal fast-reid's ranking, bootstrap and paired intervals,
breakdowns, own-camera share, oracle and shuffled masks, descriptor spaces, spatial reference, WiSE-FT, the frozen
benchmark, and a protocol evaluation of a tiny model end to end."""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastreid_dpmpp  # noqa: F401  (fast-reid import fixes first)
from fastreid.evaluation.rank import evaluate_rank
from fastreid_dpmpp.data import benchmark as B
from fastreid_dpmpp.engine.protocol_eval import descriptor_spaces, interpolate_backbone, pooled_patch_tokens
from fastreid_dpmpp.evaluation import protocol as P


def _labels(rng, queries=30, gallery=80, ids=12, cams=4):
    q_pids, g_pids = rng.integers(0, ids, queries), rng.integers(0, ids, gallery)
    q_cams, g_cams = rng.integers(0, cams, queries), rng.integers(0, cams, gallery)
    return q_pids, g_pids, q_cams, g_cams


def test_per_query_metrics_equal_fastreid_evaluate_rank():
    rng = np.random.default_rng(0)
    q_pids, g_pids, q_cams, g_cams = _labels(rng)
    dist = rng.random((len(q_pids), len(g_pids)))
    metrics = P.per_query_metrics(dist, q_pids, g_pids, q_cams, g_cams)
    cmc, all_ap, _ = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=10, use_cython=False)
    assert np.allclose(np.sort(metrics["ap"][metrics["valid"]]), np.sort(all_ap))
    summary = P.summarize(metrics)
    assert summary["mAP"] == pytest.approx(100 * np.mean(all_ap))
    assert summary["Rank-1"] == pytest.approx(100 * cmc[0]) and summary["Rank-5"] == pytest.approx(100 * cmc[4])
    # the first kept gallery row: nearest row that is not the query's own identity from its own camera
    for q in range(len(q_pids)):
        kept = [g for g in np.argsort(dist[q], kind="stable") if not (g_pids[g] == q_pids[q] and g_cams[g] == q_cams[q])]
        assert metrics["top1"][q] == kept[0]


def test_bootstrap_interval_and_paired_delta():
    rng = np.random.default_rng(1)
    values = rng.normal(5.0, 2.0, 400)
    low, high = P.bootstrap_interval(values, seed=0)
    assert low < values.mean() < high and high - low == pytest.approx(2 * 1.96 * 2.0 / 20, rel=0.25)
    a = dict(ap=rng.random(200), valid=np.ones(200, bool))
    b = dict(ap=a["ap"] + 0.05, valid=np.ones(200, bool))
    delta = P.paired_delta(a, b)
    assert delta["delta"] == pytest.approx(5.0) and delta["low"] == pytest.approx(5.0) and delta["high"] == pytest.approx(5.0)
    noisy = dict(ap=a["ap"] + rng.normal(0, 0.2, 200), valid=np.ones(200, bool))
    spread = P.paired_delta(a, noisy)
    assert spread["low"] < spread["delta"] < spread["high"] and spread["low"] < 0 < spread["high"]


def test_breakdowns_coverage_bins_and_own_camera_share():
    metrics = dict(ap=np.array([1.0, 0.5, 0.0, 0.25]), first_hit=np.array([1.0, 2.0, 12.0, 4.0]),
                   top1=np.array([0, 1, 2, 0]), valid=np.array([True, True, True, False]))
    by_kind = P.breakdown(metrics, ["car", "car", "bush", "bush"])
    assert by_kind["car"]["mAP"] == pytest.approx(75.0) and by_kind["bush"]["queries"] == 1
    assert list(P.coverage_bins([0.0, 0.25, 0.35, 0.6])) == ["none", "0.2-0.3", "0.3-0.4", "0.5-0.6"]
    share = P.own_camera_top1_share(metrics, query_camids=[1, 2, 3, 1], gallery_camids=[1, 5, 3])
    assert share == pytest.approx(100 * 2 / 3)
    assert P.chance_own_camera_share([1, 2], [1, 1, 2, 3]) == pytest.approx(100 * (0.5 + 0.25) / 2)


def test_oracle_masks_keep_the_least_changed_channels_and_shuffle_is_a_derangement():
    occluded = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0]])
    holistic = np.array([[1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0]])
    masks = P.oracle_channel_masks(occluded, holistic, 0.5)
    assert masks.sum(1).tolist() == [2.0, 2.0]
    assert masks[0, 1] == 0.0      # the channel the occlusion changed most is dropped
    rows = np.arange(10)[:, None] * np.ones((10, 3))
    shuffled = P.shuffled_rows(rows, seed=3)
    assert sorted(shuffled[:, 0].tolist()) == list(range(10)) and (shuffled[:, 0] != np.arange(10)).all()


def test_masked_query_distance_drops_occluded_channels():
    """A query whose second half is corrupted: masking it finds the true match, plain cosine does not."""
    gallery = np.array([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 1.0, 1.0]])
    query = np.array([[1.0, 1.0, 1.0, 1.0]])
    plain = P.query_distance(query, gallery)
    masked = P.query_distance(query, gallery, np.array([[1.0, 1.0, 0.0, 0.0]]))
    assert plain[0, 1] < plain[0, 0] and masked[0, 0] < masked[0, 1]


def test_masked_query_distance_placements_and_their_use_in_the_protocol(monkeypatch):
    """Each Table IV placement at test equals its formula computed here in numpy; the protocol evaluation scores
    the learned masks (not the oracle) with the placement it is given."""
    rng = np.random.default_rng(0)
    query, gallery, masks = rng.normal(size=(3, 6)), rng.normal(size=(5, 6)), rng.uniform(0.1, 1.0, (3, 6))
    q = query / np.linalg.norm(query, axis=1, keepdims=True)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    raw = (q * masks) @ g.T
    expected = {("prototype", True): raw / np.sqrt((masks ** 2) @ (g ** 2).T),
                ("prototype", False): raw, ("feature", False): raw,
                ("feature", True): raw / np.linalg.norm(q * masks, axis=1, keepdims=True),
                ("both", False): (q * masks ** 2) @ g.T,
                ("both", True): ((q * masks ** 2) @ g.T) / np.linalg.norm(q * masks, axis=1, keepdims=True)
                / np.sqrt((masks ** 2) @ (g ** 2).T)}
    for placement, similarity in expected.items():
        np.testing.assert_allclose(P.query_distance(query, gallery, masks, placement=placement), 1 - similarity,
                                   atol=1e-5, err_msg=str(placement))
    np.testing.assert_allclose(P.query_distance(query, gallery, masks), 1 - expected[("prototype", True)], atol=1e-5)

    from fastreid_dpmpp.engine import protocol_eval
    calls, real = [], P.query_distance

    def recording(query, gallery, query_masks=None, masked_dims=None, placement=("prototype", True)):
        calls.append((query_masks is not None, placement))
        return real(query, gallery, query_masks, masked_dims, placement)

    monkeypatch.setattr(P, "query_distance", recording)
    labels = dict(pids=np.arange(3), camids=np.zeros(3, int))
    data = dict(query=labels, query_holistic=labels, gallery=dict(pids=np.arange(3).repeat(2), camids=np.ones(6, int)))
    protocol_eval.evaluate_space("v", rng.normal(size=(12, 6)), 6, data, masks=rng.uniform(size=(12, 6)),
                                 kinds=np.array(["none"] * 3), covered=np.zeros(3), placement=("both", False))
    plain, learned, oracle = calls[:2], calls[2:4], calls[4:]
    assert [masked for masked, _ in plain] == [False, False]
    assert learned == [(True, ("both", False))] * 2
    assert oracle and all(masked and placement == ("prototype", True) for masked, placement in oracle)


def test_descriptor_spaces_pooled_patch_tokens_and_interpolation():
    rng = np.random.default_rng(0)
    features = {"v": rng.normal(size=(5, 8)), "vp": rng.normal(size=(5, 4)), "bn_v": rng.normal(size=(5, 8))}
    spaces = descriptor_spaces(features)
    assert set(spaces) == {"v", "vp", "bn_v", "concat", "concat_bn"}
    concat, dims = spaces["concat"]
    assert dims == 8 and np.allclose(np.linalg.norm(concat, axis=1), 1.0)
    expected = F.normalize(torch.tensor(np.concatenate([features["v"], features["vp"]], 1)), dim=1).numpy()
    assert np.allclose(concat, expected)

    tokens = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    saliency = torch.tensor([[0.9, 0.1, 0.8, 0.2], [0.1, 0.1, 0.1, 0.1]])
    pooled = pooled_patch_tokens(tokens, saliency, grid=(2, 2), sps_grid=(2, 2))
    assert torch.allclose(pooled["patch_salient"][0], tokens[0, [0, 2]].mean(0))
    assert torch.allclose(pooled["patch_salient"][1], tokens[1].mean(0))     # nothing salient: all patches
    assert torch.allclose(pooled["patch_mean"], tokens.mean(1))

    backbone = torch.nn.Linear(3, 2)
    backbone.register_parameter("sie_embed", torch.nn.Parameter(torch.ones(2, 2)))
    zero_shot = {k: torch.zeros_like(v) for k, v in backbone.state_dict().items()}
    fine = {k: v.clone() for k, v in backbone.state_dict().items()}
    interpolate_backbone(backbone, zero_shot, 0.25)
    assert torch.allclose(backbone.weight, 0.25 * fine["weight"]) and torch.equal(backbone.sie_embed, fine["sie_embed"])


def test_benchmark_is_frozen_and_hashed(tmp_path, monkeypatch):
    first = B.benchmark_id()
    monkeypatch.setitem(B.GENERATOR_PARAMS, "num_test_ids", 201)
    assert B.benchmark_id() != first
    monkeypatch.setattr(B, "GENERATOR_PARAMS", dict(B.GENERATOR_PARAMS, num_train_ids=3, images_per_train_id=2,
                                                     num_test_ids=4, num_distractor_ids=1, max_queries_per_id=1))
    occluded = B.ensure_benchmark(str(tmp_path), "occluded", "val")
    holistic = B.ensure_benchmark(str(tmp_path), "holistic", "val")
    record = B.benchmark_record(occluded)
    assert record["benchmark_id"] == B.benchmark_id() and record["content_sha256"] == B.content_sha256(occluded)
    train = lambda root: sorted(os.listdir(os.path.join(root, "Occluded_Duke", "bounding_box_train")))
    assert train(occluded) == train(holistic)          # the same training images, with or without occluders
    with open(os.path.join(holistic, "Occluded_Duke", "meta.json")) as f:
        assert json.load(f)["summary"]["occluded_fraction"]["bounding_box_train"] == 0.0
    split = B.benchmark_split(occluded)
    assert len(split["query"][0]) == len(split["query_holistic"][0])
    assert B.ensure_benchmark(str(tmp_path), "occluded", "val") == occluded      # reused, not rewritten
    with pytest.raises(ValueError, match="training protocol"):
        B.benchmark_root(str(tmp_path), "occludedd", "val")


def test_trainer_evaluators_write_breakdowns(data_root, tmp_path):
    """fast-reid's ReidEvaluator with the breakdowns: own-camera top-1 share and per-occluder metrics of the
    synthetic benchmark's queries, equal to the protocol functions on the same cosine ranking."""
    from fastreid.evaluation import ReidEvaluator

    from fastreid_dpmpp.data.datasets import OccludedDuke
    from fastreid_dpmpp.engine import load_config
    from fastreid_dpmpp.evaluation.breakdown import image_meta, with_breakdowns
    data = OccludedDuke(root=data_root)
    items = data.query + data.gallery
    rng = np.random.default_rng(0)
    features = torch.tensor(rng.normal(size=(len(items), 6)), dtype=torch.float32)
    cfg = load_config("", ["TEST.METRIC", "cosine"])
    evaluator = with_breakdowns(ReidEvaluator)("OccludedDuke", cfg, len(data.query), str(tmp_path))
    evaluator.reset()
    for start in range(0, len(items), 5):
        chunk = items[start:start + 5]
        evaluator.process({"targets": torch.tensor([i[1] for i in chunk]), "camids": torch.tensor([i[2] for i in chunk]),
                           "img_paths": [i[0] for i in chunk]}, features[start:start + 5])
    results = evaluator.evaluate()
    with open(tmp_path / "breakdowns_OccludedDuke.json") as f:
        written = json.load(f)
    nq = len(data.query)
    pids, camids = np.array([i[1] for i in items]), np.array([i[2] for i in items])
    metrics = P.per_query_metrics(P.cosine_distance(features[:nq], features[nq:]), pids[:nq], pids[nq:],
                                  camids[:nq], camids[nq:])
    assert written["own_camera_top1"] == pytest.approx(P.own_camera_top1_share(metrics, camids[:nq], camids[nq:]))
    kinds, _ = image_meta([i[0] for i in data.query])
    assert set(written["by_occluder"]) == set(kinds) and "none" not in written["by_occluder"]   # queries: occluded
    assert sum(v["queries"] for v in written["by_occluder"].values()) == int(metrics["valid"].sum())
    assert results["mAP"] == pytest.approx(P.summarize(metrics)["mAP"], abs=1e-3)
    assert image_meta([str(tmp_path / "elsewhere" / "query" / "0001_c1_f1.jpg")]) == (None, None)


def test_experiment_evaluates_only_the_asked_spaces_and_sie_settings(tmp_path, monkeypatch):
    from fastreid_dpmpp.engine import experiment as E
    calls = []
    monkeypatch.setattr(E.subprocess, "call", lambda command, **kwargs: calls.append(command) or 0)
    exp = E.Experiment(arms=[], seeds=[0], training="occluded", root=str(tmp_path), benchmark_dir="bench",
                       stage_config="unused.yml", splits=("test1",), eval_spaces=("concat_bn",), eval_sie=("off",))
    E._evaluate("run", "run", exp, str(tmp_path / "log"))
    E._evaluate("run", "run", E.Experiment(arms=[], seeds=[0], training="occluded", root=str(tmp_path),
                                           benchmark_dir="bench", stage_config="unused.yml"), str(tmp_path / "log"))
    from _tiny import load_tool_module
    parser = load_tool_module("evaluate_protocol", "evaluate_protocol_parser").build_parser()
    asked, default = (parser.parse_args(command[2:]) for command in calls)   # what the tool reads from them
    assert (asked.sie, asked.spaces, asked.splits) == (["off"], ["concat_bn"], ["test1"])
    assert (default.sie, default.spaces) == (["off", "on"], None)
    for args in (asked, default):
        assert args.opts == ["MODEL.WEIGHTS", os.path.join("run", "model_final.pth")]
        assert args.output == os.path.join("run", "protocol.json")


def _fake_protocol(rng, plain, holistic, oracles, queries=20):
    ap = rng.random(queries)
    space = {"plain": {"mAP": plain, "Rank-1": plain + 2, "own_camera_top1": 5.0},
             "holistic": {"mAP": holistic, "Rank-1": holistic + 1},
             "per_query_ap": {"plain": ap.tolist()}}
    space.update({f"oracle_{keep:g}": {"mAP": value} for keep, value in oracles.items()})
    return {"splits": {"test1": {"sie_off": {"bn_v": space}}}}


def test_comparison_rows_mean_std_paired_delta_and_oracle_bound():
    from fastreid_dpmpp.engine.experiment import Arm, Setting, comparison_markdown, comparison_rows, verdict
    rng = np.random.default_rng(0)
    ref = {1: 40.0, 2: 42.0, 3: 41.0}
    new = {1: 45.0, 2: 46.5, 3: 45.0}
    results = {}
    for seed in ref:
        results[("ref", seed)] = _fake_protocol(rng, ref[seed], 80.0, {0.25: 50.0, 0.5: 60.0 + seed})
        results[("new", seed)] = _fake_protocol(rng, new[seed], 82.0, {0.5: 70.0})
    arms = [Arm("ref", "a.yml"), Arm("new", "b.yml")]
    rows = {r["arm"]: r for r in comparison_rows(results, arms, [1, 2, 3], "test1", Setting(space="bn_v"), "ref")}
    deltas = [new[s] - ref[s] for s in (1, 2, 3)]
    assert rows["new"]["delta"][0] == pytest.approx(np.mean(deltas))
    assert rows["new"]["delta"][1] == pytest.approx(np.std(deltas, ddof=1))
    assert rows["ref"]["mAP"][1] == pytest.approx(np.std(list(ref.values()), ddof=1))
    assert rows["ref"]["oracle_mAP"][0] == pytest.approx(62.0)            # best keep fraction per seed: 61, 62, 63
    assert rows["new"]["holistic_delta"][0] == pytest.approx(2.0)
    assert verdict(rows["ref"]) == "reference"
    table = comparison_markdown(list(rows.values()), "test1", Setting(space="bn_v"))
    assert "62.0 ± 1.0" in table and "70.0 ± 0.0" in table


def test_seed_mean_std_is_the_sample_std_and_zero_for_one_seed():
    from fastreid_dpmpp.evaluation.protocol import seed_mean_std
    assert seed_mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)        # sample std: sqrt(((-1)^2 + 0 + 1^2) / 2) = 1
    assert seed_mean_std([4.5]) == (4.5, 0.0)
