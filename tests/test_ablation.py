"""tools/ablate.py / engine/ablation.py: row configs, run planning, hand-over of Stage I/II, reuse after a failure,
and the mean ± std table (the training itself is covered by the end-to-end tests; here run_stage is faked)."""
import json
import os

import numpy as np
import pytest

import fastreid_dpmpp  # noqa: F401
from fastreid_dpmpp.engine import ablation
from fastreid_dpmpp.engine.ablation import (METRICS, TABLES, TEST_SETS, RunSpec, chance_metrics, finished_runs,
                                            markdown_table,
                                            missing_runs,
                                            plan_runs, read_final_metrics, run_ablation, summarise)
from fastreid_dpmpp.engine.defaults import load_config

# What each Table III row switches on: DPM branch, HMG, HEM, SPT, OIoU, mask rolling.
TABLE_III_SWITCHES = {
    "baseline.yml": (False, False, False, False, None, None),
    "spt.yml": (False, False, False, True, False, False),
    "spt_oiou.yml": (False, False, False, True, True, False),
    "spt_oiou_mr.yml": (False, False, False, True, True, True),
    "dpm.yml": (True, False, False, False, None, None),
    "dpm_hmg.yml": (True, True, False, False, None, None),
    "dpm_hmg_hem.yml": (True, True, True, False, None, None),
    "full.yml": (True, True, True, True, True, True),
}


def _switches(cfg):
    spt = cfg.SPT.ENABLED
    return (cfg.MODEL.DPMPP.DPM_ENABLED, cfg.MODEL.DPMPP.HMG_ENABLED, cfg.MODEL.LOSSES.HEM.ENABLED, spt,
            cfg.SPT.OIOU if spt else None, cfg.SPT.MASK_ROLLING if spt else None)


@pytest.mark.parametrize("backbone,family", [("clip", "clip"), ("vit", "vanilla")])
def test_table_iii_rows_switch_exactly_their_components(backbone, family):
    assert [row.config for row in TABLES["III"].rows] == list(TABLE_III_SWITCHES)
    for config, expected in TABLE_III_SWITCHES.items():
        cfg = load_config(os.path.join(ablation.CONFIG_DIR, backbone, config), [])
        assert _switches(cfg) == expected, config
        assert cfg.MODEL.VIT.FAMILY == family
        assert (cfg.MODEL.DPMPP.MASK_SIDE, cfg.MODEL.DPMPP.MASK_BEFORE_NORM) == ("prototype", True)
        assert cfg.MODEL.DPMPP.MASKED_PROTOTYPE == "visual" and cfg.INPUT.REA.ENABLED


def test_table_iv_vi_vii_rows_change_only_their_key():
    full = load_config(os.path.join(ablation.CONFIG_DIR, "clip", "full.yml"), [])
    expected = {
        "mask_prototype_after.yml": {"MODEL.DPMPP.MASK_BEFORE_NORM": False},
        "mask_feature_before.yml": {"MODEL.DPMPP.MASK_SIDE": "feature"},
        "mask_feature_after.yml": {"MODEL.DPMPP.MASK_SIDE": "feature", "MODEL.DPMPP.MASK_BEFORE_NORM": False},
        "mask_both_before.yml": {"MODEL.DPMPP.MASK_SIDE": "both"},
        "mask_both_after.yml": {"MODEL.DPMPP.MASK_SIDE": "both", "MODEL.DPMPP.MASK_BEFORE_NORM": False},
        "no_mask.yml": {"MODEL.DPMPP.MASKED_PROTOTYPE": "none"},
        "text_prototype.yml": {"MODEL.DPMPP.MASKED_PROTOTYPE": "text"},
    }
    for config, changes in expected.items():
        cfg = load_config(os.path.join(ablation.CONFIG_DIR, "clip", config), [])
        flat_cfg, flat_full = _flatten(cfg), _flatten(full)
        differing = {k: flat_cfg[k] for k in flat_cfg if flat_cfg[k] != flat_full[k]}
        assert differing == changes, config
    spt_only = _flatten(load_config(os.path.join(ablation.CONFIG_DIR, "clip", "spt_no_rea.yml"), []))
    spt_rea = _flatten(load_config(os.path.join(ablation.CONFIG_DIR, "clip", "spt_oiou_mr.yml"), []))
    assert {k for k in spt_only if spt_only[k] != spt_rea[k]} == {"INPUT.REA.ENABLED"}


def _flatten(node, prefix=""):
    flat = {}
    for key, value in node.items():
        if hasattr(value, "items"):
            flat.update(_flatten(value, f"{prefix}{key}."))
        elif key != "OUTPUT_DIR":
            flat[f"{prefix}{key}"] = value
    return flat


def test_plan_runs_shares_rows_between_tables_and_finishes_the_first_table_first():
    runs = plan_runs(["III", "VI"], [0, 1])
    names = [r.name for r in runs]
    assert len(names) == len(set(names)) == 2 * (2 * 8) + 2 * 2  # VI adds no_mask and text_prototype only
    assert names.index("clip/full/seed1") < names.index("clip/no_mask/seed0")
    with pytest.raises(ValueError, match="unknown table"):
        plan_runs(["V"], [0])


def _fake_metrics(spec):
    """Distinct, reproducible numbers per run so that aggregation can be checked."""
    value = 10.0 * spec.seed + len(spec.config) + (0.5 if spec.backbone == "vit" else 0.0)
    return {test: {m: value + i + (20 if test == "OccludedDukeHolisticQuery" else 0) for i, m in enumerate(METRICS)}
            for test in TEST_SETS}


def test_run_ablation_hands_over_stages_reuses_results_and_survives_a_failed_run(tmp_path, monkeypatch):
    calls, fail = [], {"clip/spt_no_rea/seed1"}

    def fake_run_stage(stage, log_file, show_progress=True):
        calls.append((stage.name, list(map(str, stage.opts))))
        os.makedirs(stage.output_dir, exist_ok=True)
        if stage.name in fail:
            raise RuntimeError("boom")
        if stage.name.startswith(("clip/", "vit/")):
            backbone, row, seed = stage.name.split("/")
            metrics = _fake_metrics(RunSpec(backbone, row + ".yml", int(seed[4:])))
            with open(os.path.join(stage.output_dir, "eval_results.json"), "w") as f:
                json.dump(metrics, f)
        open(stage.artifact_path, "w").close()
        return 1.0

    monkeypatch.setattr(ablation, "run_stage", fake_run_stage)
    results = run_ablation(["VII"], [0, 1], str(tmp_path), ["DATASETS.ROOT", "/nowhere"], num_jobs=2)
    assert sorted(results) == sorted({"clip/baseline/seed0", "clip/spt_no_rea/seed0", "clip/spt_oiou_mr/seed0",
                                      "clip/baseline/seed1", "clip/spt_oiou_mr/seed1"})
    stage_names = [name for name, _ in calls if not name.startswith("clip/")]
    assert sorted(stage_names) == sorted(["I: prompt learning", "II: salient patch selection"] * 2)
    opts = dict(calls)["clip/spt_oiou_mr/seed1"]
    assert opts[opts.index("SEED") + 1] == "1"
    assert opts[opts.index("SPT.SPS_WEIGHTS") + 1] == str(tmp_path / "stages" / "seed1" / "stage2" / "sps_final.pth")
    assert opts[opts.index("MODEL.DPMPP.TEXT_PROTOTYPES") + 1].startswith(str(tmp_path / "stages" / "seed1" / "stage1"))
    assert missing_runs("VII", results, [0, 1]) == ["clip/spt_no_rea/seed1"]
    assert finished_runs(["VII"], [0, 1], str(tmp_path)) == results

    fail.clear()
    calls.clear()
    results = run_ablation(["VII"], [0, 1], str(tmp_path), ["DATASETS.ROOT", "/nowhere"], num_jobs=1)
    assert [name for name, _ in calls] == ["clip/spt_no_rea/seed1"]  # stages and finished runs reused
    assert missing_runs("VII", results, [0, 1]) == []


def test_summary_and_markdown_give_mean_and_sample_std_over_seeds():
    seeds = [0, 1, 2]
    results = {RunSpec(b, row.config, s).name: {"metrics": _fake_metrics(RunSpec(b, row.config, s))}
               for s in seeds for b in TABLES["III"].backbones for row in TABLES["III"].rows}
    summary = summarise("III", results, seeds)
    row = summary["vit"][1]  # +SPT
    assert row["label"] == "+SPT" and row["config"] == "vit/spt.yml"
    per_seed = [10.0 * s + len("spt.yml") + 0.5 + 3 for s in seeds]  # mAP is the 4th metric
    assert row["values"]["OccludedDuke"]["mAP"] == per_seed
    text = markdown_table("III", summary, seeds)
    expected = f"{np.mean(per_seed):.1f} ± {np.std(per_seed, ddof=1):.1f}"  # 18.5 ± 10.0
    line = next(l for l in text.splitlines() if "vanilla ViT" in l and "| +SPT " in l)
    assert line.split("|")[6].strip() == expected
    assert "3 seed(s)" in text
    chance = {test: {m: [1.0, 2.0, 6.0] for m in METRICS} for test in TEST_SETS}
    first = markdown_table("III", summary, seeds, chance).splitlines()[4]
    assert "random ranking (chance)" in first and first.count("3.0 ± 2.6") == 2 * len(METRICS)
    with pytest.raises(KeyError, match="clip/full/seed2"):
        summarise("III", {k: v for k, v in results.items() if k != "clip/full/seed2"}, seeds)


def test_read_final_metrics_names_the_file_and_what_is_missing(tmp_path):
    path = tmp_path / "eval_results.json"
    with pytest.raises(FileNotFoundError, match="eval_results.json"):
        read_final_metrics(str(path))
    path.write_text(json.dumps({"OccludedDuke": {m: 1.0 for m in METRICS}}))
    with pytest.raises(ValueError, match="OccludedDukeHolisticQuery/Rank-1"):
        read_final_metrics(str(path))


def test_chance_level_rank1_matches_its_closed_form(data_root):
    """Under a random ranking, a query's first valid gallery item is one of its n true matches with probability
    n / (number of valid gallery items): the expected Rank-1 is the mean of that ratio over queries with a match."""
    from fastreid.data.datasets import DATASET_REGISTRY
    draws = 400
    chance = chance_metrics(data_root, draws=draws, seed=1)
    dataset = DATASET_REGISTRY.get("OccludedDuke")(root=data_root)
    ratios = []
    for _, pid, cam in dataset.query:
        valid = [(p, c) for _, p, c in dataset.gallery if not (p == pid and c == cam)]
        matches = sum(p == pid for p, _ in valid)
        if matches:
            ratios.append(matches / len(valid))
    expected = 100.0 * np.mean(ratios)
    rank1 = np.asarray(chance["OccludedDuke"]["Rank-1"])
    assert rank1.shape == (draws,)
    assert abs(rank1.mean() - expected) < 4 * rank1.std() / np.sqrt(draws) + 1e-9
    for test in TEST_SETS:
        values = {m: np.mean(chance[test][m]) for m in METRICS}
        assert values["Rank-1"] <= values["Rank-5"] <= values["Rank-10"] <= 100.0 and 0.0 < values["mAP"] < 100.0


def test_select_rows_restricts_a_table_and_names_what_exists():
    from fastreid_dpmpp.engine.ablation import select_rows
    table = select_rows("III", ["baseline.yml", "full.yml"], ["clip"])
    assert [r.config for r in table.rows] == ["baseline.yml", "full.yml"] and table.backbones == ("clip",)
    assert [r.name for r in plan_runs([table], [0])] == ["clip/baseline/seed0", "clip/full/seed0"]
    assert select_rows("VII") == TABLES["VII"]
    with pytest.raises(ValueError, match="rows: .*full.yml"):
        select_rows("III", ["nope.yml"])
