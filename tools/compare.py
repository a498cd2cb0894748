#!/usr/bin/env python
"""Run a comparison of arms under the evaluation protocol (docs/EVALUATION.md) and report it:

    python tools/compare.py --spec configs/Synthetic/experiments/baselines.yml --jobs 2 [KEY VALUE ...]

The spec (YAML) names the training protocol, the seeds, the arms (config + overrides + hand-overs), the reference
arm and the setting (SIE at test, descriptor space, matching) of the headline table; every run is evaluated on
every split, and a table is written per split: mean ± std over seeds, paired deltas against the reference with
bootstrap intervals over queries, the random-ranking level. Finished runs are reused; ``--report-only`` trains
nothing; ``--arms`` / ``--seeds`` train a subset; ``--reference`` takes the deltas against
another arm. Trailing KEY VALUE pairs are added to every run (e.g. a smaller budget).
"""
import argparse
import json
import os
import sys
from dataclasses import replace

import fastreid_dpmpp  # noqa: F401
from fastreid.utils.logger import setup_logger

from fastreid_dpmpp.checkpoint import atomic_write_text
from fastreid_dpmpp.engine.experiment import (Experiment, comparison_markdown, comparison_rows, load_results,
                                              load_spec, protocol_chance, run_experiment, settings_of,
                                              spt_statistics_markdown)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", required=True, help="experiment spec (YAML)")
    parser.add_argument("--output-dir", default=None, help="default: output/experiments/<spec name>")
    parser.add_argument("--benchmark-dir", default="output/benchmark")
    parser.add_argument("--report-dir", default=None, help="default: the output dir")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--arms", nargs="+", default=None, help="train only these arms of the spec (the report "
                        "shows every arm that has results)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="train only these seeds of the spec")
    parser.add_argument("--reference", default=None, help="the arm the deltas are taken against (default: the "
                        "spec's `reference`); with --report-dir, e.g. a report of the random-init arms")
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    setup_logger(name="fastreid")
    spec, arms, stage_config = load_spec(args.spec)
    name = os.path.splitext(os.path.basename(args.spec))[0]
    root = os.path.abspath(args.output_dir or os.path.join("output", "experiments", name))
    threads = max(1, (os.cpu_count() or 1) // max(1, args.jobs))
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    reference = args.reference or spec.get("reference", arms[0].name)
    unknown = sorted((set(args.arms or ()) | {reference}) - {arm.name for arm in arms})
    if unknown:
        raise SystemExit(f"error: --arms / --reference {unknown}: not an arm of {args.spec} "
                         f"({[arm.name for arm in arms]})")
    to_run = [arm for arm in arms if not args.arms or arm.name in args.arms]
    seeds = [int(s) for s in spec["seeds"]]
    if args.seeds and not set(args.seeds) <= set(seeds):
        raise SystemExit(f"error: --seeds {sorted(set(args.seeds) - set(seeds))}: not a seed of {args.spec} ({seeds})")
    exp = Experiment(arms=to_run, seeds=args.seeds or seeds, training=spec["training"], root=root,
                     benchmark_dir=os.path.abspath(args.benchmark_dir), stage_config=stage_config,
                     opts=list(spec.get("opts", [])) + list(args.opts), splits=tuple(spec.get("splits", ("val", "test1", "test2"))),
                     jobs=args.jobs, tools_dir=os.path.dirname(os.path.abspath(__file__)))
    if not args.report_only:
        run_experiment(exp)
    exp = replace(exp, arms=arms, seeds=seeds)            # the report: every arm and seed with a result
    results = load_results(exp)
    report_dir = args.report_dir or root
    os.makedirs(report_dir, exist_ok=True)
    text, payload = [f"Experiment `{args.spec}` (training protocol {exp.training}, seeds {exp.seeds}, "
                     f"budget opts {exp.opts}, deltas against `{reference}`)\n"], {}
    for setting in settings_of(spec):
        for split in exp.splits:
            rows = comparison_rows(results, arms, exp.seeds, split, setting, reference)
            chance = protocol_chance(exp.benchmark_dir, exp.training, split)
            text.append(comparison_markdown(rows, split, setting, chance))
            payload[f"{split}|{setting.describe()}"] = dict(rows=rows, chance=chance)
    spt_table = spt_statistics_markdown(exp)
    if spt_table:
        text.append(spt_table)
    atomic_write_text("\n".join(text), os.path.join(report_dir, f"{name}.md"))
    atomic_write_text(json.dumps(payload, indent=1, default=float), os.path.join(report_dir, f"{name}.json"))
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
