"""The mask-predictability analysis (fastreid_dpmpp/analysis/mask_predictability.py, tools/mask_predictability.py):
each predictor against an independent computation, the scoring rows, the seed summary, and the tool end to end."""
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fastreid_dpmpp.analysis import mask_predictability as M
from fastreid_dpmpp.evaluation import protocol as P


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _inputs(rng, queries=30, dim=8, kinds=("car", "pole", "sign")):
    q, h = rng.normal(size=(queries, dim)), rng.normal(size=(queries, dim))
    return M.QueryInputs(q, rng.normal(size=(queries, 3, 4)), [kinds[i % len(kinds)] for i in range(queries)],
                         np.arange(queries) % 5, np.arange(queries) % 2, h)


def test_channel_change_and_keep_least_changed_match_numpy():
    rng = np.random.default_rng(0)
    q, h = rng.normal(size=(5, 10)), rng.normal(size=(5, 10))
    change = np.abs(_unit(q) - _unit(h))
    np.testing.assert_allclose(P.channel_change(q, h), change, atol=1e-6)
    masks = P.keep_least_changed(change, 0.3)
    for row, mask in zip(change, masks):
        assert set(np.flatnonzero(mask)) == set(np.argsort(row)[:3])
    np.testing.assert_array_equal(P.oracle_channel_masks(q, h, 0.3), masks)
    with pytest.raises(ValueError, match="keep_fraction"):
        P.keep_least_changed(change, 0.0)


def test_constant_and_kind_predictors_are_the_fitted_means():
    rng = np.random.default_rng(1)
    fit, other = _inputs(rng), _inputs(rng, kinds=("car", "bench"))
    change = np.abs(_unit(fit.descriptors) - _unit(fit.holistic))
    predictors = M.fit_predictors(fit, ("constant", "occluder_kind"))
    np.testing.assert_allclose(predictors["constant"].predict(other), np.tile(change.mean(0), (30, 1)), atol=1e-6)
    predicted = predictors["occluder_kind"].predict(other)
    car = np.array(fit.kinds.tolist()) == "car"
    np.testing.assert_allclose(predicted[0], change[car].mean(0), atol=1e-6)   # other's first query: a car
    np.testing.assert_allclose(predicted[1], change.mean(0), atol=1e-6)        # an unseen kind: the overall mean
    with pytest.raises(ValueError, match="unknown mask predictor"):
        M.fit_predictors(fit, ("ridge",))


def test_ridge_predictor_learns_a_linear_change_and_picks_alpha_by_cross_validation():
    rng = np.random.default_rng(2)
    weights = rng.normal(size=(12, 6))
    train_x, test_x = rng.normal(size=(200, 12)), rng.normal(size=(50, 12))
    ridge = M._Ridge("tokens").fit(SimpleNamespace(tokens=train_x, change=train_x @ weights))
    predicted = ridge.predict(SimpleNamespace(tokens=test_x))
    assert np.corrcoef(predicted.ravel(), (test_x @ weights).ravel())[0, 1] > 0.99
    assert ridge.alpha in M.RIDGE_ALPHAS
    noise = M._Ridge("tokens").fit(SimpleNamespace(tokens=train_x, change=rng.normal(size=(200, 6))))
    assert noise.alpha >= 1e3                       # nothing to learn: cross-validation shrinks to the mean


class _Knows:
    """A predictor handed the true change: its mask must be the oracle's."""

    def predict(self, inputs):
        return inputs.change


def test_score_masks_rows_equal_independently_masked_rankings():
    rng = np.random.default_rng(3)
    fit, query = _inputs(rng), _inputs(rng)
    gallery = dict(descriptors=rng.normal(size=(20, 8)), pids=np.arange(20) % 5, camids=np.full(20, 7))
    predictors = dict(M.fit_predictors(fit, ("constant",)), knows=_Knows())
    learned = rng.random((30, 4))
    rows = M.score_masks(predictors, query, gallery, 0.5, learned, 4)
    assert set(rows) == {"plain", "oracle", "constant", "knows", "learned"}
    np.testing.assert_array_equal(rows["knows"]["ap"], rows["oracle"]["ap"])

    def ranked(dist):
        return P.per_query_metrics(dist, query.pids, gallery["pids"], query.camids, gallery["camids"])["ap"]

    mean_change = np.abs(_unit(fit.descriptors) - _unit(fit.holistic)).mean(0)
    constant = np.zeros(8)
    constant[np.argsort(mean_change)[:4]] = 1.0
    q, g = query.descriptors * constant, gallery["descriptors"] * constant
    np.testing.assert_allclose(rows["constant"]["ap"], ranked(1 - _unit(q) @ _unit(g).T), atol=1e-6)
    np.testing.assert_allclose(rows["plain"]["ap"], ranked(1 - _unit(query.descriptors) @ _unit(gallery["descriptors"]).T),
                               atol=1e-6)
    np.testing.assert_allclose(rows["learned"]["ap"], ranked(P.query_distance(query.descriptors, gallery["descriptors"],
                                                                              learned, 4)), atol=1e-6)


def _result(rng, maps, queries=40):
    return {"run_dir": "x/seed1", "fit_split": "val", "splits": {"test1": {"keep0.5": {
        name: {"mAP": value, "per_query_ap": (rng.random(queries)).tolist()} for name, value in maps.items()}}}}


def test_summary_rows_mean_std_delta_and_oracle_share(load_tool):
    tool = load_tool("mask_predictability")
    rng = np.random.default_rng(4)
    results = [_result(rng, dict(plain=40.0, constant=40.5, ridge_tokens=41.0 + s, oracle=60.0)) for s in (0, 1, 2)]
    rows = {row["row"]: row for row in tool.summary_rows([r["splits"]["test1"]["keep0.5"] for r in results])}
    assert list(rows) == ["plain", "constant", "ridge_tokens", "oracle"]
    assert rows["ridge_tokens"]["mAP"] == pytest.approx((42.0, 1.0))
    assert rows["ridge_tokens"]["delta"] == pytest.approx((1.5, 1.0))
    assert rows["ridge_tokens"]["recovered"][0] == pytest.approx(np.mean([1 / 20, 2 / 20, 3 / 20]))
    per_query = np.mean([np.subtract(r["splits"]["test1"]["keep0.5"]["ridge_tokens"]["per_query_ap"],
                                     r["splits"]["test1"]["keep0.5"]["constant"]["per_query_ap"]) for r in results], 0)
    assert rows["ridge_tokens"]["delta_ci"] == pytest.approx(P.bootstrap_interval(100 * per_query))
    assert "delta" not in rows["constant"] and rows["oracle"]["recovered"][0] == pytest.approx(1.0)


def test_tool_end_to_end_on_a_tiny_model(data_root, tmp_path, monkeypatch, load_tool):
    """Fits on one benchmark root and scores it (the tiny benchmark stands in for val and test1)."""
    from _tiny import TINY_INFERENCE_MODEL
    from fastreid_dpmpp.engine import load_config
    from fastreid_dpmpp.engine.trainer import DPMPPTrainer
    tool = load_tool("mask_predictability")
    monkeypatch.setattr(tool, "ensure_benchmark", lambda base, training, split: data_root)
    run = tmp_path / "dpm" / "seed1"
    run.mkdir(parents=True)
    cfg = load_config(os.path.join("configs", "Synthetic", "dpmpp.yml"),
                      TINY_INFERENCE_MODEL + ["DATASETS.ROOT", data_root, "MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    torch.save({"model": DPMPPTrainer.build_model(cfg).state_dict()}, run / "model_final.pth")
    (run / "config.yaml").write_text(cfg.dump())
    sps = DPMPPTrainer.build_model(load_config(os.path.join("configs", "Synthetic", "dpmpp.yml"), TINY_INFERENCE_MODEL
                                               + ["MODEL.META_ARCHITECTURE", "SPSModel", "MODEL.DEVICE", "cpu"]))
    torch.save({"model": sps.state_dict()}, tmp_path / "sps_final.pth")
    assert tool.main(["--run-dir", str(run), "--eval-splits", "test1", "--keep", "0.5", "1",
                      "--sps-weights", str(tmp_path / "sps_final.pth")]) == 0
    result = json.loads((run / tool.RESULT_FILE).read_text())
    rows, everything = result["splits"]["test1"]["keep0.5"], result["splits"]["test1"]["keep1"]
    assert set(rows) == {"plain", "oracle", "learned", *M.PREDICTORS}
    assert all(0.0 <= row["mAP"] <= 100.0 for row in rows.values())
    for name in ("oracle", *M.PREDICTORS):                 # keeping every channel is plain matching
        assert everything[name]["per_query_ap"] == pytest.approx(everything["plain"]["per_query_ap"], nan_ok=True)
    assert set(result["ridge_alpha"]) == {"ridge_descriptor", "ridge_tokens"}
    spatial = result["spatial"]["test1"]
    hidden_rows = ("spatial_oracle", "spatial_random", "spatial_sps", "spatial_probe")
    assert set(spatial) == {*tool.SPATIAL_ROWS, *(f"{r}_hidden" for r in hidden_rows), "probe_agreement"}
    assert 0.0 < spatial["spatial_oracle_hidden"] < 1.0
    assert spatial["spatial_random_hidden"] == pytest.approx(spatial["spatial_oracle_hidden"])
    assert 0.0 <= spatial["probe_agreement"]["iou"] <= 1.0
    assert spatial["plain"]["per_query_ap"] == pytest.approx(rows["plain"]["per_query_ap"], nan_ok=True)
    monkeypatch.setattr(tool, "protocol_chance", lambda *a: {"mAP": (1.0, 0.1)})
    assert tool.main(["--report", str(tmp_path), "--eval-splits", "test1", "--keep", "0.5", "1"]) == 0
    written = (tmp_path / f"{tool.REPORT_NAME}.md").read_text()
    assert "### dpm (seed1)" in written and "## Spatial reference: test1" in written
    assert (tmp_path / f"{tool.REPORT_NAME}.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(FileNotFoundError, match="config.yaml not found"):
        tool.main(["--run-dir", str(tmp_path)])


def test_occluder_patches_and_random_control_match_a_loop():
    from fastreid_dpmpp.analysis.spatial_visibility import occluder_patches, random_patches_like
    holistic = torch.full((2, 3, 8, 6), 100.0)
    occluded = holistic.clone()
    occluded[0, 1, 4:8, 0:4] = 200.0          # an occluder over the lower-left 4x4 pixels of image 0
    occluded[1, :, 0:2, :] += 10.0            # below the tolerance: JPEG-like noise
    hidden = occluder_patches(occluded, holistic, patch_size=(4, 4), stride=(2, 2))
    expected = torch.zeros(2, 3, 2, dtype=torch.bool)
    for b in range(2):
        for i in range(3):
            for j in range(2):
                window = (occluded[b, :, 2 * i:2 * i + 4, 2 * j:2 * j + 4] - holistic[b, :, 2 * i:2 * i + 4,
                                                                                  2 * j:2 * j + 4]).abs()
                expected[b, i, j] = (window.amax(0) > 24).float().mean() > 0.5
    assert torch.equal(hidden, expected.flatten(1)) and hidden[0].sum() == 1 and hidden[1].sum() == 0
    random = random_patches_like(torch.tensor([[True, True, False, False, False], [False] * 5]),
                                 torch.Generator().manual_seed(0))
    assert random.sum(1).tolist() == [2, 0]
    with pytest.raises(ValueError, match="differ in shape"):
        occluder_patches(occluded, holistic[:1], (4, 4), (2, 2))


def test_hidden_patches_never_reach_the_class_token():
    from _tiny import tiny_vit
    from fastreid_dpmpp.engine import load_config
    from fastreid_dpmpp.modeling.backbones.clip_vit import build_clip_vit_backbone
    torch.manual_seed(0)
    backbone = build_clip_vit_backbone(load_config(os.path.join("configs", "Synthetic", "dpmpp.yml"), tiny_vit())).eval()
    tokens = torch.randn(2, backbone.num_patches, backbone.width)
    visible = torch.ones(2, backbone.num_patches, dtype=torch.bool)
    visible[:, 3] = False
    changed = tokens.clone()
    changed[:, 3] = 3.0 * torch.randn(2, backbone.width)
    with torch.no_grad():
        everything = backbone.forward_tokens(tokens)["cls"]
        assert torch.allclose(backbone.forward_tokens(tokens, visible_patches=torch.ones_like(visible))["cls"],
                              everything, atol=1e-6)
        hidden = backbone.forward_tokens(tokens, visible_patches=visible)["cls"]
        assert torch.allclose(backbone.forward_tokens(changed, visible_patches=visible)["cls"], hidden, atol=1e-6)
        assert not torch.allclose(backbone.forward_tokens(changed)["cls"], everything, atol=1e-3)
    with pytest.raises(ValueError, match="visible_patches must be"):
        backbone.forward_tokens(tokens, visible_patches=visible[:, 1:])


def test_occluder_probe_reads_a_visible_occluder_and_agreement():
    from fastreid_dpmpp.analysis.spatial_visibility import OccluderPatchProbe, patch_agreement
    rng = np.random.default_rng(5)
    hidden = rng.random((60, 6)) < 0.3
    tokens = rng.normal(size=(60, 6, 4))
    tokens[..., 0] += 3.0 * hidden                   # the occluder shows in the first channel of its tokens
    probe = OccluderPatchProbe().fit(tokens[:40], hidden[:40])
    assert patch_agreement(probe.predict(tokens[40:]), hidden[40:])["accuracy"] > 0.9
    truth = np.array([[True, True, False, False]])
    assert patch_agreement(np.array([[True, False, True, False]]), truth) == dict(accuracy=0.5, iou=1 / 3)
    assert patch_agreement(np.zeros((1, 4), bool), np.zeros((1, 4), bool))["iou"] == 1.0


def test_bar_panels_need_a_panel():
    from fastreid_dpmpp.analysis.figures import plot_bar_panels
    with pytest.raises(ValueError, match="at least one panel"):
        plot_bar_panels([], "unused.png")


def test_random_patch_hiding_draws_rectangles_and_is_checked():
    from fastreid_dpmpp.modeling.patch_hiding import check_hiding, sample_hidden_rectangles
    generator = torch.Generator().manual_seed(0)
    hidden = sample_hidden_rectangles(400, (10, 5), 0.5, (0.1, 0.5), generator).view(400, 10, 5)
    chosen = hidden.flatten(1).any(1)
    assert 0.4 < chosen.float().mean() < 0.6
    for image in hidden[chosen]:
        rows, columns = image.any(1).nonzero().flatten(), image.any(0).nonzero().flatten()
        box = image[rows.min():rows.max() + 1, columns.min():columns.max() + 1]
        assert bool(box.all()) and int(box.sum()) == int(image.sum())       # one filled rectangle
        assert 1 <= int(image.sum()) <= 0.5 * 50 * 1.8                        # rounding to whole patches
    assert not sample_hidden_rectangles(8, (10, 5), 0.0, (0.1, 0.5)).any()
    for prob, area, key in ((1.5, (0.1, 0.5), "PROB"), (0.5, (0.6, 0.5), "AREA"), (0.5, (0.0, 0.5), "AREA")):
        with pytest.raises(ValueError, match=f"HIDE_PATCHES.{key}"):
            check_hiding(prob, area)


def test_training_with_hidden_patches_hides_them_from_the_class_token(monkeypatch):
    from _tiny import TINY_INFERENCE_MODEL
    from fastreid_dpmpp.engine import load_config
    from fastreid_dpmpp.engine.trainer import DPMPPTrainer
    cfg = load_config(os.path.join("configs", "Synthetic", "clip_baseline.yml"), TINY_INFERENCE_MODEL + [
        "MODEL.DEVICE", "cpu", "MODEL.VIT.HIDE_PATCHES.PROB", "1.0"])
    model = DPMPPTrainer.build_model(cfg).train()
    seen = []
    original = model.backbone.forward_features
    monkeypatch.setattr(model.backbone, "forward_features",
                        lambda *a, **k: seen.append(k.get("visible_patches")) or original(*a, **k))
    batch = {"images": torch.rand(4, 3, 64, 32) * 255, "targets": torch.tensor([0, 0, 1, 1]),
             "camids": torch.zeros(4, dtype=torch.long)}
    from fastreid.utils.events import EventStorage
    with EventStorage(0):
        losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values())
    assert seen[0].shape == (4, model.backbone.num_patches) and not bool(seen[0].all(1).any())
