#!/usr/bin/env python
"""Re-ranking time and peak memory (issue 5d): the blocked / sparse k-reciprocal re-ranking of
fastreid_dpmpp.evaluation.rerank (TEST.RERANK.METHOD "kreciprocal") against the dense numpy formulation
(fast-reid's evaluation/rerank.py::re_ranking, Zhong et al.'s released code), same k1, k2, λ, same features.

    python benchmarks/rerank.py [--sizes 5000 19871 100000] [--dim 1280] [--large-dim 128] [--block-size 1024]

Each case runs in its own forked process; "peak" = that process's peak resident memory (VmHWM) minus its
resident memory just before the re-ranking started (features already in memory). The query share is
Occluded-Duke's (2,210 of 19,871). Features: random identity centres + noise, L2-normalised. The dense path is
skipped, with the reason printed, where its estimated memory (scaled as N² from the smallest measured size)
exceeds --dense-memory-fraction of the available memory, or its estimated time exceeds --dense-time-limit.
Sizes above --large-from use --large-dim features (FAISS k-NN on 2 cores is O(N² D)) and keep only each
query's top-100 instead of the full (Q, G) matrix; both are printed.
"""
import argparse
import multiprocessing as mp
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import fastreid_dpmpp  # noqa: E402,F401  (fast-reid fixes first)
from fastreid_dpmpp.compat import faiss_gpu_available  # noqa: E402

QUERY_SHARE = 2210 / 19871


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[5000, 19871, 100000], help="N = queries + gallery")
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--large-dim", type=int, default=128, help="feature width for N > --large-from")
    p.add_argument("--large-from", type=int, default=50000)
    p.add_argument("--k1", type=int, default=20)
    p.add_argument("--k2", type=int, default=6)
    p.add_argument("--lambda-value", type=float, default=0.3)
    p.add_argument("--block-size", type=int, default=1024, help="TEST.RERANK.BLOCK_SIZE")
    p.add_argument("--dense-memory-fraction", type=float, default=0.6)
    p.add_argument("--dense-time-limit", type=float, default=400.0, help="seconds")
    return p.parse_args(argv)


def proc_status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def available_bytes():
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
    return info["MemAvailable"]


def make_features(n, dim, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 8), dim), dtype=np.float32)
    x = centres[rng.integers(0, len(centres), n)]
    x += 0.8 * rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, int(round(n * QUERY_SHARE))


def dense_rerank(query, gallery, args):
    from fastreid.evaluation.rerank import re_ranking

    def euclidean(a, b):
        sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
        return np.sqrt(np.maximum(sq, 0.0))
    return re_ranking(euclidean(query, gallery), euclidean(query, query), euclidean(gallery, gallery),
                      k1=args.k1, k2=args.k2, lambda_value=args.lambda_value)


def sparse_rerank(query, gallery, args, full):
    from fastreid_dpmpp.evaluation.rerank import iter_kreciprocal_rerank, kreciprocal_rerank
    if full:
        return kreciprocal_rerank(query, gallery, args.k1, args.k2, args.lambda_value, args.block_size)
    top = np.empty((len(query), 100), dtype=np.int64)
    for start, stop, block in iter_kreciprocal_rerank(query, gallery, args.k1, args.k2, args.lambda_value,
                                                      args.block_size):
        top[start:stop] = np.argpartition(block, 100, axis=1)[:, :100]
    return top


def run_case(kind, n, dim, args, full, queue):
    features, num_query = make_features(n, dim)
    query, gallery = features[:num_query], features[num_query:]
    before = proc_status_kib("VmRSS")
    start = time.perf_counter()
    result = dense_rerank(query, gallery, args) if kind == "dense" else sparse_rerank(query, gallery, args, full)
    seconds = time.perf_counter() - start
    peak = (proc_status_kib("VmHWM") - before) * 1024
    path = None
    if kind in ("dense", "sparse") and full and result.ndim == 2 and result.dtype == np.float32:
        path = os.path.join(args.scratch, f"{kind}-{n}.npy")
        np.save(path, result)
    queue.put((seconds, peak, path))


def measure(kind, n, dim, args, full=True):
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=run_case, args=(kind, n, dim, args, full, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def gib(b):
    return f"{b / 2**30:.2f} GiB"


def main(argv=None):
    import tempfile
    args = parse_args(argv)
    args.scratch = tempfile.mkdtemp(prefix="rerank-bench-")
    print(f"FAISS back end: {'GPU' if faiss_gpu_available() else 'CPU'}; cores: {os.cpu_count()}; "
          f"k1={args.k1} k2={args.k2} λ={args.lambda_value} block size={args.block_size}; "
          f"available memory {gib(available_bytes())}")
    rows, dense_ref = [], None  # dense_ref = (N, seconds, peak bytes) of the smallest dense run
    for n in args.sizes:
        dim = args.large_dim if n > args.large_from else args.dim
        full = n <= args.large_from
        num_query = int(round(n * QUERY_SHARE))
        print(f"\nN = {n:,} ({num_query:,} queries + {n - num_query:,} gallery), D = {dim}, "
              f"{'full (Q, G) output' if full else 'top-100 per query kept from each query block'}")
        sparse_s, sparse_peak, sparse_path = measure("sparse", n, dim, args, full)
        print(f"  sparse/blocked : {sparse_s:8.1f} s   peak +{gib(sparse_peak)}")
        dense_s = dense_peak = None
        if dense_ref is not None:
            scale = (n / dense_ref[0]) ** 2
            est_s, est_peak = dense_ref[1] * scale, dense_ref[2] * scale
            reason = None
            if est_peak > args.dense_memory_fraction * available_bytes():
                reason = (f"estimated peak {gib(est_peak)} (N² from N={dense_ref[0]:,}) > "
                          f"{args.dense_memory_fraction:.0%} of the available {gib(available_bytes())}")
            elif est_s > args.dense_time_limit:
                reason = f"estimated {est_s:.0f} s > --dense-time-limit {args.dense_time_limit:.0f} s"
            if reason:
                print(f"  dense numpy    : skipped: {reason}")
        if dense_ref is None or not reason:
            dense_s, dense_peak, dense_path = measure("dense", n, dim, args, full)
            print(f"  dense numpy    : {dense_s:8.1f} s   peak +{gib(dense_peak)}")
            if dense_ref is None:
                dense_ref = (n, dense_s, dense_peak)
            if sparse_path and dense_path:
                diff = np.abs(np.load(sparse_path) - np.load(dense_path)).max()
                print(f"  max |sparse − dense| = {diff:.2e}")
            print(f"  ratio dense/sparse: time {dense_s / sparse_s:.2f}x, peak memory {dense_peak / sparse_peak:.2f}x")
        rows.append((n, dim, sparse_s, sparse_peak, dense_s, dense_peak))
    print("\n|      N |    D | sparse time | sparse peak | dense time | dense peak | time ratio | memory ratio |")
    print("|-------:|-----:|------------:|------------:|-----------:|-----------:|-----------:|-------------:|")
    for n, dim, ss, sp_, ds, dp in rows:
        dense = (f"{ds:9.1f} s | {gib(dp):>10} | {ds / ss:9.2f}x | {dp / sp_:11.2f}x" if ds is not None
                 else "  skipped | skipped    |          – |            –")
        print(f"| {n:6,} | {dim:4} | {ss:9.1f} s | {gib(sp_):>11} | {dense} |")


if __name__ == "__main__":
    main()
