#!/usr/bin/env python
"""Search a gallery folder with a trained model (SPEC §6 masked matching, FAISS candidates + exact re-scoring).

Build an index of every image under a folder (recursive, any layout):

    python tools/search.py build --config-file logs/occduke/stage3/config.yaml --gallery /data/gallery \
        --index output/index [--index-type flat|ivf|ivfpq] [--nlist N] [--nprobe 8] [--pq-m M] [--pq-bits 8] \
        MODEL.WEIGHTS logs/occduke/stage3/model_final.pth

Query it with one or more images, from any working directory or machine that has the index folder (the model is
re-built from the config and weights the index keeps: ``build`` copies both into it; with --link-weights it records
the checkpoint's absolute path, size and sha256 instead, and a moved or changed checkpoint is refused):

    python tools/search.py query --index output/index [--k 10] [--candidates 100] [--output output/ranklists] \
        query1.jpg [query2.jpg ...]

Prints the top-k (rank, score = masked similarity, path) per query and writes ranklist_<query>.png: the query,
its HMG mask (a heat strip of the D mask values, sorted, over feature channels, not pixels) and the top-k gallery
images with scores, framed green / red when the identities parsed from the file names (``<pid>_...``) agree /
differ. Camera ids for SIE come from ``_c<cam>`` in the file names (camera cam - 1), else 0.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import fastreid_dpmpp  # noqa: E402,F401  (fast-reid fixes first)
from fastreid_dpmpp.evaluation.search import (  # noqa: E402
    FeatureExtractor,
    GalleryIndex,
    IndexModelError,
    build_index,
    search_images,
    write_model_files,
)
from fastreid_dpmpp.engine.defaults import USER_ERRORS  # noqa: E402
from fastreid_dpmpp.export import load_inference_model  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="index a gallery folder")
    b.add_argument("--config-file", required=True)
    b.add_argument("--gallery", required=True, help="folder of gallery images (searched recursively)")
    b.add_argument("--index", required=True, help="index folder to write")
    b.add_argument("--index-type", choices=("flat", "ivf", "ivfpq"), default="flat")
    b.add_argument("--nlist", type=int, default=None, help="IVF lists (default ~4 sqrt(G))")
    b.add_argument("--nprobe", type=int, default=8, help="IVF lists visited per query")
    b.add_argument("--pq-m", type=int, default=None, help="PQ sub-quantisers (must divide the descriptor width)")
    b.add_argument("--pq-bits", type=int, default=8)
    b.add_argument("--batch-size", type=int, default=32)
    b.add_argument("--link-weights", action="store_true",
                   help="record the checkpoint's absolute path, size and sha256 instead of copying the weights into "
                        "the index (the index then only works where that file is, unchanged)")
    b.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides (MODEL.WEIGHTS ...)")
    q = sub.add_parser("query", help="search the index with images")
    q.add_argument("--index", required=True)
    q.add_argument("--k", type=int, default=10)
    q.add_argument("--candidates", type=int, default=100, help="FAISS candidates re-scored exactly per query")
    q.add_argument("--output", default=None, help="folder for the rank-list pictures (default: <index>/ranklists)")
    q.add_argument("--no-plot", action="store_true")
    q.add_argument("images", nargs="+")
    return p.parse_args(argv)


def build(args):
    opts = list(args.opts)
    model, cfg = load_inference_model(args.config_file, opts)
    info = {"model": write_model_files(cfg, args.index, link_weights=args.link_weights),
            "source_config_file": os.path.abspath(args.config_file)}
    meta = build_index(FeatureExtractor(model, cfg, args.batch_size), args.gallery, args.index,
                       index_type=args.index_type, nlist=args.nlist, pq_m=args.pq_m, pq_bits=args.pq_bits,
                       nprobe=args.nprobe, model_info=info)
    weights = info["model"]["weights"]
    kept = "no weights (random init)" if weights is None else (
        f"weights linked: {weights['path']}" if "path" in weights else f"weights copied into the index")
    print(f"indexed {len(meta['paths'])} images ({args.index_type}, descriptor width {meta['descriptor_dim']}, "
          f"masked matching {'on' if meta['masked'] else 'off'}; model config and {kept}) -> {args.index}")


def query(args):
    gallery = GalleryIndex(args.index)
    model, cfg = load_inference_model(*gallery.model_files())
    extractor = FeatureExtractor(model, cfg)
    missing = [p for p in args.images if not os.path.isfile(p)]
    if missing:
        raise SystemExit(f"error: search: query image(s) not found: {', '.join(missing)}")
    output = args.output or os.path.join(args.index, "ranklists")
    for result in search_images(extractor, gallery, args.images, k=args.k, candidates=args.candidates):
        print(f"query {result['path']}")
        for rank, (path, _, score) in enumerate(result["results"], 1):
            print(f"  {rank:3d}  {score:.4f}  {path}")
        if not args.no_plot:
            picture = plot_rank_list(result, gallery.meta.get("mask_span"), output)
            print(f"  rank list: {picture}")


def _frame(ax, color):
    for spine in ax.spines.values():
        spine.set_visible(color is not None)
        if color is not None:
            spine.set_edgecolor(color)
            spine.set_linewidth(4)


def _image_axis(ax, path, title, color=None):
    from PIL import Image
    if os.path.isfile(path):
        ax.imshow(Image.open(path).convert("RGB"))
    else:   # an index used on another machine: the gallery image is not here
        ax.imshow(np.full((2, 1, 3), 0.85))
        ax.text(0.5, 0.5, "image not\non this\nmachine", ha="center", va="center", fontsize=6,
                transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8)
    _frame(ax, color)


def plot_rank_list(result, mask_span, output_folder):
    """Query image, sorted mask heat strip, top-k gallery images (green / red frame: same / other identity)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    hits = result["results"]
    columns = 1 + max(1, len(hits))
    figure = plt.figure(figsize=(1.4 * columns, 4.2))
    grid = figure.add_gridspec(2, columns, height_ratios=[4, 1], hspace=0.45)
    _image_axis(figure.add_subplot(grid[0, 0]), result["path"], "query" if result["pid"] is None
                else f"query\nid {result['pid']}")
    for column, (path, pid, score) in enumerate(hits, 1):
        known = result["pid"] is not None and pid is not None
        color = None if not known else ("green" if pid == result["pid"] else "red")
        _image_axis(figure.add_subplot(grid[0, column]), path, f"#{column} {score:.3f}", color)
    mask = result["mask"] if mask_span is None else result["mask"][mask_span[0]:mask_span[1]]
    strip = figure.add_subplot(grid[1, :])
    shown = strip.imshow(np.sort(mask)[None, :], aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0)
    strip.set_yticks([])
    strip.set_xlabel(f"query mask over {mask.size} feature channels, sorted (mean {mask.mean():.2f}, "
                     f"{(mask < 0.5).mean() * 100:.0f} % < 0.5)" if mask_span is not None else
                     "model without masked matching: mask of ones (plain cosine)", fontsize=8)
    figure.colorbar(shown, ax=strip, fraction=0.02, pad=0.01)
    os.makedirs(output_folder, exist_ok=True)
    stem = os.path.splitext(os.path.basename(result["path"]))[0]
    path = os.path.join(output_folder, f"ranklist_{stem}.png")
    temporary = f"{path}.tmp{os.getpid()}.png"
    figure.savefig(temporary, dpi=100, bbox_inches="tight")
    plt.close(figure)
    os.replace(temporary, path)
    return path


def main(argv=None):
    args = parse_args(argv)
    try:
        (build if args.command == "build" else query)(args)
    except USER_ERRORS + (IndexModelError,) as e:
        raise SystemExit(f"error: {e}") from None  # the message says what to do; no traceback


if __name__ == "__main__":
    main()
