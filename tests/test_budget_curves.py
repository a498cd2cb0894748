"""Accuracy against the Stage III budget (fastreid_dpmpp/analysis/budget_curves.py, tools/budget_curve.py)."""
import json
import os

import pytest

from fastreid_dpmpp.analysis.budget_curves import budget_curves, plot_budget_curves, val_preferred


def _row(arm, mean, std):
    return {"arm": arm, "mAP": [mean, std]}


ROWS = {"val": [_row("base", 41.0, 0.2), _row("base_e60", 42.6, 0.8), _row("dpm_e20", 43.0, 1.0),
                _row("dpm", 44.8, 0.7)],
        "test1": [_row("base", 43.2, 0.6), _row("dpm", 45.5, 0.5), _row("base_e60", 46.0, 1.0)]}
EPOCHS = {"base": 30, "base_e60": 60, "dpm": 30, "dpm_e20": 20}


def test_budget_curves_sorts_by_budget_and_skips_missing_rows():
    curves = budget_curves(ROWS, EPOCHS, {"baseline": ["base_e60", "base"], "DPM": ["dpm", "dpm_e20"]})
    assert curves["baseline"]["val"] == [(30, 41.0, 0.2), (60, 42.6, 0.8)]
    assert curves["DPM"]["val"] == [(20, 43.0, 1.0), (30, 44.8, 0.7)]
    assert curves["DPM"]["test1"] == [(30, 45.5, 0.5)]            # dpm_e20 has no test1 row yet


def test_budget_curves_rejects_unknown_arms_and_two_arms_at_one_budget():
    with pytest.raises(ValueError, match=r"\['nope'\] are not arms of the spec"):
        budget_curves(ROWS, EPOCHS, {"x": ["base", "nope"]})
    with pytest.raises(ValueError, match="two arms with the same budget"):
        budget_curves(ROWS, EPOCHS, {"x": ["base", "dpm"]})


def test_val_preferred_is_the_highest_mean():
    assert val_preferred([(20, 43.0, 1.0), (30, 44.8, 0.7), (60, 42.9, 1.0)]) == (30, 44.8, 0.7)
    with pytest.raises(ValueError):
        val_preferred([])


def test_plot_budget_curves_writes_a_png(tmp_path):
    curves = budget_curves(ROWS, EPOCHS, {"baseline": ["base", "base_e60"], "DPM": ["dpm_e20", "dpm"]})
    path = plot_budget_curves(curves, str(tmp_path / "budget.png"), splits=("val", "test1"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_tool_reads_each_arms_budget_from_its_config_and_opts(tmp_path, capsys):
    from _tiny import REPO, load_tool_module
    tool = load_tool_module("budget_curve", "budget_curve_tool")
    baseline = os.path.join(REPO, "configs", "Synthetic", "clip_baseline.yml")
    spec = tmp_path / "spec.yml"
    spec.write_text(f"training: occluded\nseeds: [1]\nstage_config: {baseline}\n"
                    "settings:\n  - {sie: sie_off, space: concat_bn, matching: masked}\n"
                    f"arms:\n  - {{name: base, config: {baseline}}}\n"
                    f"  - {{name: base_e60, config: {baseline}, opts: [SOLVER.MAX_EPOCH, 60]}}\n"
                    "  - {name: base_e60_wise, weights_of: base_e60, interpolate: 0.75}\n")
    setting = "SIE off at test, descriptor concat_bn, masked matching"
    report = tmp_path / "spec.json"
    report.write_text(json.dumps({f"val|{setting}": {"rows": [_row("base", 41.0, 0.2), _row("base_e60", 42.6, 0.8),
                                                                _row("base_e60_wise", 44.4, 0.8)]}}))
    loaded, arms, _ = tool.load_spec(str(spec))
    assert tool.arm_epochs(loaded, arms) == {"base": 30, "base_e60": 60, "base_e60_wise": 60}
    assert tool.main(["--spec", str(spec), "--report", str(report), "--splits", "val",
                      "--curve", "baseline=base,base_e60", "--output", str(tmp_path / "b.png")]) == 0
    printed = capsys.readouterr().out
    assert "| 60 (val's choice) | 42.6 ± 0.8 |" in printed and os.path.isfile(tmp_path / "b.png")
    with pytest.raises(SystemExit, match="no rows for split"):
        tool.main(["--spec", str(spec), "--report", str(report), "--curve", "b=base"])
