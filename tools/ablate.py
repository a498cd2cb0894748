#!/usr/bin/env python
"""Run the paper's ablation tables on the synthetic occluded benchmark with several seeds and write, per table,
a markdown table of mean ± std R1/R5/R10/mAP on occluded and holistic queries plus a plot:

    python tools/ablate.py --table III IV VI VII --seeds 0 1 2 --jobs 2 --report-dir docs/ablation

Rows are the configs in configs/Synthetic/ablation/ (see fastreid_dpmpp/engine/ablation.py). Finished runs are
reused, interrupted ones resume: re-running the command only trains what is missing.
"""
import argparse
import json
import os
import shlex
import sys
import time

import fastreid_dpmpp  # noqa: F401
from fastreid.utils.logger import setup_logger

from fastreid_dpmpp.checkpoint import atomic_write_text
from fastreid_dpmpp.data.synthetic import ensure_synthetic_benchmark
from fastreid_dpmpp.engine.ablation import (TABLES, chance_metrics, finished_runs, markdown_table, missing_runs,
                                            plot_table, run_ablation, select_rows, summarise)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", nargs="+", default=["III"], choices=sorted(TABLES), help="table(s) to run")
    parser.add_argument("--rows", nargs="+", default=None, metavar="FILE",
                        help="only these row configs (e.g. baseline.yml full.yml); default: every row")
    parser.add_argument("--backbones", nargs="+", default=None, choices=["clip", "vit"],
                        help="only these backbones (Table III has both); default: every backbone of the table")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at the same time (CPU threads are split)")
    parser.add_argument("--output-dir", default="output/ablation")
    parser.add_argument("--data-root", default=None, help="default: <output-dir>/datasets (written if missing)")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic benchmark (fixed across runs)")
    parser.add_argument("--report-dir", default=None, help="where the tables / plots go (default: --output-dir)")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: write the tables whose runs have all finished, list what is missing")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE pairs added to every run (e.g. smaller budgets)")
    return parser.parse_args(argv)


def split_threads(jobs):
    """Each of ``jobs`` concurrent training processes gets an equal share of the cores."""
    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    return int(os.environ["OMP_NUM_THREADS"])


def report_header(args, argv, threads, seconds, results):
    command = "python tools/ablate.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    compute = sum(r["train_seconds"] for r in results.values())
    action = "Report only (nothing trained); wall time" if args.report_only else "Wall time"
    return (f"Command: `{command}`  \n{action} of this invocation: {seconds / 60:.1f} min ({args.jobs} job(s) x "
            f"{threads} thread(s)); training time summed over the runs of these tables, as recorded when each was "
            f"trained: {compute / 60:.1f} min.\n")


def write_reports(tables, results, seeds, report_dir, header, chance=None):
    os.makedirs(report_dir, exist_ok=True)
    incomplete = 0
    for table in tables:
        key = table.key
        missing = missing_runs(table, results, seeds)
        if missing:
            print(f"\nTable {key}: no report, {len(missing)} run(s) failed or missing: {missing} "
                  "(see their train.log; re-run the same command to retry them)", flush=True)
            incomplete += 1
            continue
        summary = summarise(table, results, seeds)
        text = markdown_table(table, summary, seeds, chance)
        atomic_write_text(header + "\n" + text, os.path.join(report_dir, f"table_{key}.md"))
        atomic_write_text(json.dumps(summary, indent=2), os.path.join(report_dir, f"table_{key}.json"))
        plot_table(table, summary, os.path.join(report_dir, f"table_{key}.png"), chance)
        print("\n" + text, flush=True)
    return incomplete


def main(argv=None):
    args = parse_args(argv)
    logger = setup_logger(name="fastreid")
    start = time.time()
    threads = split_threads(args.jobs)
    out = os.path.abspath(args.output_dir)
    root = os.path.abspath(args.data_root or os.path.join(out, "datasets"))
    tables = [select_rows(key, args.rows, args.backbones) for key in args.table]
    if args.report_only:
        results = finished_runs(tables, args.seeds, out)
    else:
        if ensure_synthetic_benchmark(root, seed=args.data_seed):
            logger.info("synthetic benchmark written to %s", root)
        here = os.path.dirname(os.path.abspath(__file__))  # this checkout's tools/ and configs/, whatever the install
        results = run_ablation(tables, args.seeds, out, ["DATASETS.ROOT", root] + list(args.opts), args.jobs,
                               config_dir=os.path.join(os.path.dirname(here), "configs"), tools_dir=here)
    header = report_header(args, argv, threads, time.time() - start, results)
    chance = chance_metrics(root)
    incomplete = write_reports(tables, results, args.seeds, os.path.abspath(args.report_dir or out), header, chance)
    return 1 if incomplete else 0


if __name__ == "__main__":
    sys.exit(main())
