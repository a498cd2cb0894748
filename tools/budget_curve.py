#!/usr/bin/env python
"""Accuracy against the Stage III budget, from the report of tools/compare.py (issue 13):

    python tools/budget_curve.py --spec experiments/budget_map.yml \\
        --report output/experiments/spt_saliency_budget/budget_map.json \\
        --curve "CLIP baseline + WiSE-FT=clip_baseline_wise0.75,clip_baseline_e60_wise0.75,clip_baseline_e90_wise0.75" \\
        --curve "DPM=dpm_e20,dpm,dpm_e45,dpm_e60" --output docs/figures/budget_curve.png

Each arm's budget is the SOLVER.MAX_EPOCH of its config with the spec's and the arm's opts (a WiSE-FT arm: that of
the arm it takes its weights from). Prints one table per curve (mAP mean ± std per split and budget, the budget val
prefers marked) and draws one panel per split of the report's headline setting (the spec's first).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fastreid_dpmpp  # noqa: E402,F401
from fastreid_dpmpp.analysis.budget_curves import budget_curves, plot_budget_curves, val_preferred  # noqa: E402
from fastreid_dpmpp.engine.defaults import load_config  # noqa: E402
from fastreid_dpmpp.engine.experiment import load_spec, settings_of  # noqa: E402


def parse_curve(text):
    label, sep, arms = text.partition("=")
    if not sep or not label.strip() or not arms.strip():
        raise argparse.ArgumentTypeError(f"--curve {text!r}: expected LABEL=arm1,arm2,...")
    return label.strip(), [a.strip() for a in arms.split(",") if a.strip()]


def arm_epochs(spec, arms):
    """{arm name: Stage III epochs}."""
    spec_opts = [str(o) for o in spec.get("opts", [])]
    epochs = {arm.name: int(load_config(arm.config, spec_opts + list(arm.opts)).SOLVER.MAX_EPOCH)
              for arm in arms if not arm.weights_of}
    epochs.update({arm.name: epochs[arm.weights_of] for arm in arms if arm.weights_of})
    return epochs


def headline_rows(report, setting, splits):
    missing = [split for split in splits if f"{split}|{setting.describe()}" not in report]
    if missing:
        raise SystemExit(f"error: the report has no rows for split(s) {missing} in the setting "
                         f"'{setting.describe()}' (keys: {sorted(report)})")
    return {split: report[f"{split}|{setting.describe()}"]["rows"] for split in splits}


def curve_table(label, by_split, splits):
    preferred = val_preferred(by_split["val"])[0] if by_split.get("val") else None
    lines = [f"{label}", "| epochs | " + " | ".join(splits) + " |", "|---" * (len(splits) + 1) + "|"]
    for epochs in sorted({p[0] for points in by_split.values() for p in points}):
        cells = []
        for split in splits:
            point = next((p for p in by_split.get(split, []) if p[0] == epochs), None)
            cells.append(f"{point[1]:.1f} ± {point[2]:.1f}" if point else "–")
        mark = " (val's choice)" if epochs == preferred else ""
        lines.append(f"| {epochs}{mark} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", required=True, help="the experiment spec the report was written from")
    parser.add_argument("--report", required=True, help="<spec name>.json written by tools/compare.py")
    parser.add_argument("--curve", type=parse_curve, action="append", required=True,
                        help="LABEL=arm1,arm2,... (arms of one recipe at different budgets); repeat per curve")
    parser.add_argument("--splits", nargs="+", default=["val", "test1", "test2"])
    parser.add_argument("--output", default=None, help="PNG to draw (default: none)")
    args = parser.parse_args(argv)
    spec, arms, _ = load_spec(args.spec)
    if not os.path.isfile(args.report):
        raise SystemExit(f"error: --report {args.report}: no such file (run tools/compare.py --report-only first)")
    with open(args.report) as f:
        report = json.load(f)
    setting = settings_of(spec)[0]
    curves = budget_curves(headline_rows(report, setting, args.splits), arm_epochs(spec, arms), dict(args.curve))
    print(f"occluded-query mAP (mean ± std over seeds), {setting.describe()}\n")
    print("\n\n".join(curve_table(label, by_split, args.splits) for label, by_split in curves.items()))
    if args.output:
        plot_budget_curves(curves, args.output, splits=args.splits,
                           title=f"Occluded-query mAP against the Stage III budget ({setting.describe()})")
        print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
