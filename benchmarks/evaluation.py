#!/usr/bin/env python
"""Ranking time (issue 5e): fast-reid's compiled (Cython) CMC / mAP / mINP against its Python ranking
(``evaluate_rank(..., use_cython=False)``) on a Market-1501-size random distance matrix, in one process.

    python benchmarks/evaluation.py [--queries 3368] [--gallery 15913] [--repeats 3]

The Cython module is built (or reused) with fastreid_dpmpp.compat.build_compiled_ranking into the plugin's cache
folder. Prints each median time, the ratio Python / compiled and the largest metric difference between them.
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import fastreid_dpmpp  # noqa: E402,F401  (fast-reid fixes first)
from fastreid_dpmpp.compat import build_compiled_ranking, use_compiled_ranking  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=int, default=3368)
    p.add_argument("--gallery", type=int, default=15913)
    p.add_argument("--identities", type=int, default=751)
    p.add_argument("--cameras", type=int, default=6)
    p.add_argument("--repeats", type=int, default=3)
    return p.parse_args(argv)


def market_sized_problem(args, seed=0):
    """Random distances; ids and cameras drawn so every query has same-id gallery images on other cameras."""
    rng = np.random.default_rng(seed)
    dist = rng.random((args.queries, args.gallery), dtype=np.float32)
    q_pids = rng.integers(0, args.identities, args.queries)
    g_pids = np.concatenate([q_pids[rng.permutation(args.queries)][:args.gallery],
                             rng.integers(0, args.identities, max(0, args.gallery - args.queries))])
    q_cams = rng.integers(0, args.cameras, args.queries)
    g_cams = rng.integers(0, args.cameras, args.gallery)
    return dist, q_pids, g_pids, q_cams, g_cams


def timed(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main(argv=None):
    args = parse_args(argv)
    folder = build_compiled_ranking()
    if folder is None or not use_compiled_ranking(folder):
        sys.exit("benchmarks/evaluation.py: fast-reid's Cython ranking did not build (C compiler / Cython missing?)")
    import fastreid.evaluation.rank as rank
    problem = market_sized_problem(args)
    print(f"distance matrix {args.queries:,} x {args.gallery:,} (float32, random), max_rank 50, "
          f"median of {args.repeats}")
    compiled_s, compiled = timed(lambda: rank.evaluate_rank(*problem, use_cython=True), args.repeats)
    python_s, python = timed(lambda: rank.evaluate_rank(*problem, use_cython=False), args.repeats)
    diff = max(np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in zip(compiled, python))
    print(f"compiled (Cython) evaluate_rank : {compiled_s:8.3f} s")
    print(f"Python evaluate_rank            : {python_s:8.3f} s")
    print(f"ratio Python / compiled         : {python_s / compiled_s:8.2f}x   (max |CMC, AP, INP difference| "
          f"{diff:.1e})")


if __name__ == "__main__":
    main()
