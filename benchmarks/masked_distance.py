#!/usr/bin/env python
"""Masked distance (SPEC §6) at Occluded-Duke size against plain cosine and a per-query loop (issue 5c),
and the recall of FAISS candidate retrieval + exact masked re-scoring (``masked_search``, issue 5 point 2).

    python benchmarks/masked_distance.py [--queries 2210] [--gallery 17661] [--dim 1280] [--repeats 3]
                                         [--threads 0] [--device cpu] [--recall] [--k 10] [--candidates 10 50 100 200]

Timing (one process, same data): fast-reid's ``build_dist(metric="cosine")`` (the stock evaluator's plain
cosine distance, numpy result), ``blocked_masked_distance`` (numpy result, blocks of 4096 gallery rows),
and a per-query Python loop over the same closed form. Prints best-of-``--repeats`` times and the ratios.

--recall: fraction of the exhaustive masked top-k that ``masked_search`` finds with K candidates, for
  random data (Gaussian descriptors, uniform masks) and model-like data (identity clusters of views that share
  most channels, masks near 0/1 that switch off a contiguous "occluded" block of channels, as HMG masks do).
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import fastreid_dpmpp  # noqa: E402,F401  (fast-reid fixes first)
from fastreid.utils.compute_dist import build_dist  # noqa: E402
from fastreid_dpmpp.evaluation.masked_matching import (  # noqa: E402
    _query_masks,
    blocked_masked_distance,
    build_gallery_index,
    masked_search,
    masked_topk,
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=int, default=2210)
    p.add_argument("--gallery", type=int, default=17661)
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--masked-dims", type=int, default=768, help="mask width (over the first dims; CLIP: v = 768)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--skip-loop", action="store_true", help="do not time the per-query loop")
    p.add_argument("--loop-queries", type=int, default=300,
                   help="queries timed in the per-query loop; its time is scaled linearly to --queries")
    p.add_argument("--recall", action="store_true", help="measure masked_search recall instead of timing")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--candidates", type=int, nargs="+", default=[10, 50, 100, 200, 500])
    return p.parse_args(argv)


def synchronize(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def best_time(fn, repeats, device):
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def per_query_loop(query, gallery, masks, masked_dims):
    """One query at a time (what a per-query implementation does), same closed form, numpy rows; the gallery
    is normalised once, outside the loop (in the loop's favour)."""
    unit_gallery = torch.nn.functional.normalize(gallery.float(), dim=1)
    squared_gallery = unit_gallery * unit_gallery
    result = np.empty((query.shape[0], gallery.shape[0]), dtype=np.float32)
    for i in range(query.shape[0]):
        mask = _query_masks(query[i:i + 1], masks[i:i + 1], masked_dims)[0]
        numerator = unit_gallery @ (torch.nn.functional.normalize(query[i].float(), dim=0) * mask)
        norm = (squared_gallery @ (mask * mask)).clamp_min(1e-24).sqrt()
        result[i] = (1.0 - numerator / norm).cpu().numpy()
    return result


def timing(args):
    g = torch.Generator().manual_seed(0)
    query = torch.randn(args.queries, args.dim, generator=g).to(args.device)
    gallery = torch.randn(args.gallery, args.dim, generator=g).to(args.device)
    masks = torch.rand(args.queries, args.masked_dims, generator=g).to(args.device)
    with torch.no_grad():
        plain = best_time(lambda: build_dist(query, gallery, metric="cosine"), args.repeats, args.device)
        masked = best_time(lambda: blocked_masked_distance(query, gallery, masks, masked_dims=args.masked_dims),
                           args.repeats, args.device)
        subset = min(args.loop_queries, args.queries)
        loop = None if args.skip_loop else best_time(
            lambda: per_query_loop(query[:subset], gallery, masks[:subset], args.masked_dims), 1, args.device
        ) * args.queries / subset
        check = blocked_masked_distance(query[:50], gallery, masks[:50], masked_dims=args.masked_dims)
        assert np.allclose(check, per_query_loop(query[:50], gallery, masks[:50], args.masked_dims), atol=1e-5)
    print(f"{args.queries} x {args.gallery}, D = {args.dim} (mask over {args.masked_dims}), device {args.device}, "
          f"{torch.get_num_threads()} threads, best of {args.repeats}")
    print(f"plain cosine (fast-reid build_dist)  {plain:8.3f} s")
    print(f"masked, blocked (matrix products)    {masked:8.3f} s")
    if loop is not None:
        print(f"masked, per-query loop               {loop:8.3f} s (1 run of {subset} queries, scaled to "
              f"{args.queries})")
    print(f"ratio masked / plain cosine = {masked / plain:.2f}")
    if loop is not None:
        print(f"ratio per-query loop / masked = {loop / masked:.1f}")


def random_data(args, g):
    return (torch.randn(args.queries, args.dim, generator=g), torch.randn(args.gallery, args.dim, generator=g),
            torch.rand(args.queries, args.masked_dims, generator=g))


def model_like_data(args, g, views_per_id=8, noise=0.6):
    """Identity clusters; each query's mask is ~1 except a contiguous ~30 % block of channels at ~0.05."""
    num_ids = max(1, args.gallery // views_per_id)
    centres = torch.randn(num_ids, args.dim, generator=g)
    gallery_ids = torch.randint(0, num_ids, (args.gallery,), generator=g)
    query_ids = torch.randint(0, num_ids, (args.queries,), generator=g)
    gallery = centres[gallery_ids] + noise * torch.randn(args.gallery, args.dim, generator=g)
    query = centres[query_ids] + noise * torch.randn(args.queries, args.dim, generator=g)
    width = int(0.3 * args.masked_dims)
    starts = torch.randint(0, args.masked_dims - width + 1, (args.queries, 1), generator=g)
    channel = torch.arange(args.masked_dims).unsqueeze(0)
    occluded = (channel >= starts) & (channel < starts + width)
    masks = torch.where(occluded, 0.05, 0.95) + 0.04 * torch.rand(args.queries, args.masked_dims, generator=g)
    # the occluded channels of a query carry occluder features, not the identity's
    query[:, :args.masked_dims] = torch.where(occluded, 3 * torch.randn(query.shape[0], args.masked_dims,
                                                                         generator=g), query[:, :args.masked_dims])
    return query, gallery, masks


def recall(args):
    g = torch.Generator().manual_seed(0)
    print(f"masked_search recall of the exact masked top-{args.k}: {args.queries} queries, gallery {args.gallery}, "
          f"D = {args.dim} (mask over {args.masked_dims}), {torch.get_num_threads()} threads")
    print("| data | index | candidate query | K | recall@k | search + re-score s | exhaustive s |")
    print("|---|---|---|---|---|---|---|")
    for name, make in (("random", random_data), ("model-like", model_like_data)):
        query, gallery, masks = make(args, g)
        start = time.perf_counter()
        _, exact = masked_topk(query, gallery, masks, args.k, masked_dims=args.masked_dims)
        exhaustive_s = time.perf_counter() - start
        exact = exact.numpy()
        for index_type in ("flat", "ivf"):
            index = build_gallery_index(gallery, index_type=index_type)
            for candidate_query in ("masked", "plain"):
                for k_candidates in args.candidates:
                    start = time.perf_counter()
                    _, found = masked_search(query, masks, index, args.k, candidates=k_candidates,
                                             masked_dims=args.masked_dims, gallery_features=gallery,
                                             candidate_query=candidate_query)
                    elapsed = time.perf_counter() - start
                    hits = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(exact, found)])
                    label = index_type if index_type == "flat" else f"ivf nlist {index.nlist} nprobe {index.nprobe}"
                    print(f"| {name} | {label} | {candidate_query} | {k_candidates} | {hits:.3f} | {elapsed:.2f} | "
                          f"{exhaustive_s:.2f} |", flush=True)


def main(argv=None):
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    (recall if args.recall else timing)(args)


if __name__ == "__main__":
    main()
