#!/usr/bin/env python
"""Pictures of one or more trained models (issue 7; paper Fig. 3), written to --output-dir:

    head_correlation.png           Fig. 3a: mean head correlation Â Âᵀ of the last block's class-token attention
                                   (SPEC §5 Eq. 18-19), one panel per model (e.g. with / without HEM);
    token_similarity_by_depth.png  Fig. 3b: mean pairwise cosine similarity of the patch tokens after each block,
                                   one curve per model (over-smoothing with depth);
    spt_samples.png                SPT synthesised samples (anchor | partner + SPS mask | synthesised), from the
                                   frozen SPS model (--sps-weights, default SPT.SPS_WEIGHTS of a model's config);
    masks_<model>.png              HMG masks m of occluded queries next to the same queries without occluder
                                   (the synthetic benchmark's OccludedDukeHolisticQuery), for models with an HMG;
    ranklists_<model>.png          top-k gallery images of occluded queries with masked matching (query mask m)
                                   and with plain cosine (TEST.MASKED_MATCHING.ENABLED False: the same
                                   descriptor, mask of ones), same model; green / red frame = same / other id;
    summary.json                   the numbers behind the pictures.

Fig. 3a/3b average over --num-analysis-images query images of the test set (evenly spaced in the sorted list);
the mask and rank-list pictures draw --num-images of them. Rank lists follow the evaluation protocol: gallery
images of the query's identity taken by the query's camera are left out.

Example (the full model and the same model trained with MODEL.LOSSES.HEM.ENABLED False):

    python tools/visualize.py --data-root datasets/synthetic --output-dir docs/figures \\
        --model full=logs/full/config.yaml,logs/full/model_final.pth \\
        --model no_hem=logs/no_hem/config.yaml,logs/no_hem/model_final.pth [MODEL.DEVICE cuda]

One model: --config-file CFG --weights PTH [--name NAME]. Trailing KEY VALUE pairs override every model's config.
"""
import argparse
import json
import logging
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import fastreid_dpmpp  # noqa: E402,F401  (fast-reid fixes first)
from fastreid_dpmpp.analysis.attention import AttentionStatistics  # noqa: E402
from fastreid_dpmpp.analysis.figures import (  # noqa: E402
    plot_head_correlations,
    plot_query_masks,
    plot_rank_lists,
    plot_token_similarity,
)
from fastreid_dpmpp.checkpoint import atomic_write_text  # noqa: E402

logger = logging.getLogger("fastreid.dpmpp.visualize")

MODEL_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
HOLISTIC_QUERY_DATASETS = {"OccludedDuke": "OccludedDukeHolisticQuery"}
FILES = {"head_correlation": "head_correlation.png", "token_similarity": "token_similarity_by_depth.png",
         "spt": "spt_samples.png", "summary": "summary.json"}


def masks_file(name):
    return f"masks_{name}.png"


def ranklists_file(name):
    return f"ranklists_{name}.png"


# ----------------------------------------------------------------------------- arguments
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", default=[], metavar="NAME=CONFIG[,WEIGHTS]",
                   help="a model to draw (repeat for several); WEIGHTS defaults to the config's MODEL.WEIGHTS")
    p.add_argument("--config-file", default="", help="config of a single model (with --weights, --name)")
    p.add_argument("--weights", default="", help="checkpoint of the --config-file model")
    p.add_argument("--name", default="model", help="name of the --config-file model in the pictures")
    p.add_argument("--data-root", required=True, help="dataset root (the folder holding Occluded_Duke/ ...)")
    p.add_argument("--dataset", default="", help="test dataset (default: the first model's DATASETS.TESTS[0])")
    p.add_argument("--holistic-dataset", default=None,
                   help="dataset whose query split holds the same queries without occluder, matched by file name "
                        "(default: OccludedDukeHolisticQuery for OccludedDuke; '' = none)")
    p.add_argument("--output-dir", default="docs/figures")
    p.add_argument("--num-images", type=int, default=6, help="queries drawn in the mask / rank-list pictures, "
                                                             "rows of the SPT picture")
    p.add_argument("--num-analysis-images", type=int, default=256,
                   help="query images averaged for the head correlation and the token similarity")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--gallery-limit", type=int, default=0,
                   help="rank among this many gallery images only (evenly spaced; 0 = the whole gallery)")
    p.add_argument("--sps-weights", default="", help="Stage II SPS checkpoint for the SPT picture "
                                                     "(default: SPT.SPS_WEIGHTS of the first model that has one)")
    p.add_argument("--spt-batch", type=int, default=32, help="training images the SPT pairing draws from")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides for every model")
    args = p.parse_args(argv)
    for key in ("num_images", "num_analysis_images", "top_k", "spt_batch", "batch_size"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    if args.gallery_limit < 0:
        p.error(f"--gallery-limit must be >= 0, got {args.gallery_limit}")
    if len(args.opts) % 2:
        p.error(f"config overrides come in KEY VALUE pairs, got {args.opts}")
    return args


def model_specs(args):
    """[(name, config file, weights)] from --config-file/--weights and every --model."""
    specs = [(args.name, args.config_file, args.weights)] if args.config_file else []
    for text in args.model:
        name, sep, rest = text.partition("=")
        config_file, _, weights = rest.partition(",")
        if not sep or not config_file:
            raise ValueError(f"visualize: --model {text!r}: expected NAME=CONFIG[,WEIGHTS]")
        specs.append((name, config_file, weights))
    if not specs:
        raise ValueError("visualize: no model: give --model NAME=CONFIG,WEIGHTS or --config-file/--weights")
    names = [name for name, _, _ in specs]
    for name in names:
        if not MODEL_NAME.match(name):
            raise ValueError(f"visualize: model name {name!r} must match {MODEL_NAME.pattern} (it names files)")
    if len(set(names)) != len(names):
        raise ValueError(f"visualize: model names must differ, got {names}")
    for _, config_file, weights in specs:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"visualize: config file {config_file!r} does not exist")
        if weights and not os.path.isfile(weights):
            raise FileNotFoundError(f"visualize: weights file {weights!r} does not exist")
    return specs


# ----------------------------------------------------------------------------- models and data
class Study:
    """One model under study: name, eval-mode model, config, feature extractor (descriptor + laid mask)."""

    def __init__(self, name, config_file, weights, opts, batch_size):
        from fastreid_dpmpp.evaluation.search import FeatureExtractor
        from fastreid_dpmpp.export import load_inference_model
        # Masked matching on, so that the model also returns its query mask; plain cosine uses the same descriptor.
        overrides = list(opts) + ["TEST.MASKED_MATCHING.ENABLED", "True"]
        if weights:
            overrides += ["MODEL.WEIGHTS", weights]
        self.name, self.config_file = name, config_file
        self.model, self.cfg = load_inference_model(config_file, overrides)
        self.weights = self.cfg.MODEL.WEIGHTS
        if not self.weights:
            logger.warning("[%s] no weights (MODEL.WEIGHTS empty): random initialisation", name)
        self.extractor = FeatureExtractor(self.model, self.cfg, batch_size)
        self.batch_size = batch_size
        backbone = self.model.backbone
        self.is_vit = hasattr(backbone, "tap_indices") and hasattr(backbone, "forward_features")
        logger.info("[%s] %s from %s, weights %s, masked matching %s", name, self.cfg.MODEL.META_ARCHITECTURE,
                    config_file, self.weights or "none", "on" if self.extractor.masked else "off (no HMG)")

    def camera_ids(self, camids, paths):
        """Camera ids for SIE (None without an SIE table), checked against the table."""
        table = getattr(self.model.backbone, "sie_embed", None)
        if table is None:
            return None
        for camid, path in zip(camids, paths):
            if not 0 <= camid < table.shape[0]:
                raise ValueError(f"visualize: {path} has camera id {camid}, outside the model's SIE table of "
                                 f"{table.shape[0]} cameras (MODEL.VIT.NUM_CAMERAS)")
        return torch.as_tensor(camids, dtype=torch.long)


def load_split(dataset_name, root, split):
    """[(path, pid, camid)] of a registered dataset's split ("train", "query", "gallery")."""
    import fastreid_dpmpp.data.datasets  # noqa: F401  (registration)
    from fastreid.data.datasets import DATASET_REGISTRY
    dataset = DATASET_REGISTRY.get(dataset_name)(root=root)
    return list(getattr(dataset, split))


def evenly_spaced(items, count):
    """``count`` items spread evenly over the list (all of them when it is shorter)."""
    if count >= len(items):
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, count).round().astype(int)]


def read_rgb(path):
    from PIL import Image
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def load_images(paths, transform):
    """(B, 3, H, W) float tensor in 0-255 (fast-reid's test transform; the model normalises)."""
    from fastreid.data.data_utils import read_image
    return torch.stack([transform(read_image(path, "RGB")) for path in paths])


def chunks(items, size):
    return [items[start:start + size] for start in range(0, len(items), size)]


# ----------------------------------------------------------------------------- the analyses
@torch.no_grad()
def attention_statistics(study, items):
    """Fig. 3a / 3b numbers of ``study`` over the images ``items`` [(path, pid, camid)]."""
    statistics = AttentionStatistics()
    for batch in chunks(items, study.batch_size):
        paths = [path for path, _, _ in batch]
        images = study.model.preprocess_image(load_images(paths, study.extractor.transform))
        camids = study.camera_ids([camid for _, _, camid in batch], paths)
        statistics.update(study.model.backbone, images, None if camids is None else camids.to(images.device))
        logger.info("[%s] attention statistics: %d/%d images", study.name, statistics.count, len(items))
    return statistics.result()


def hmg_masks(study, items):
    """(Q, D_m) HMG masks m of the images ``items`` (the part of the laid mask m̄ the HMG acts on)."""
    paths = [path for path, _, _ in items]
    _, laid = study.extractor(paths, [camid for _, _, camid in items])
    start, stop = study.extractor.mask_span
    return laid[:, start:stop]


def mask_rows(study, queries, holistic_paths):
    """Rows of :func:`plot_query_masks`: each occluded query with its counterpart without occluder, if any."""
    masks = hmg_masks(study, queries)
    counterparts = [(path, holistic_paths.get(os.path.basename(path))) for path, _, _ in queries]
    found = [(index, other) for index, (_, other) in enumerate(counterparts) if other is not None]
    holistic = {}
    if found:
        holistic_items = [(other, queries[index][1], queries[index][2]) for index, other in found]
        holistic = dict(zip([index for index, _ in found], hmg_masks(study, holistic_items)))
    rows = []
    for index, ((path, other), mask) in enumerate(zip(counterparts, masks)):
        rows.append({"name": os.path.basename(path), "image": read_rgb(path), "mask": mask,
                     "holistic_image": read_rgb(other) if other else None, "holistic_mask": holistic.get(index)})
    return rows


def rank_tables(study, queries, gallery, top_k):
    """Top-k of every query by masked similarity (query mask m̄) and by plain cosine (mask of ones).

    Returns {mode: (scores (Q, k), gallery indices (Q, k), rank of the first true match (Q,), 0 = none)}.
    Gallery images with the query's identity and camera are left out (the evaluation protocol)."""
    from fastreid_dpmpp.evaluation.masked_matching import masked_similarity
    query_descriptors, query_masks = study.extractor([p for p, _, _ in queries], [c for _, _, c in queries])
    logger.info("[%s] extracting %d gallery images", study.name, len(gallery))
    gallery_descriptors, _ = study.extractor([p for p, _, _ in gallery], [c for _, _, c in gallery])
    query_descriptors, gallery_descriptors = map(torch.from_numpy, (query_descriptors, gallery_descriptors))
    query_masks = torch.from_numpy(query_masks)
    query_pids, query_cams = (torch.tensor([item[i] for item in queries]) for i in (1, 2))
    gallery_pids, gallery_cams = (torch.tensor([item[i] for item in gallery]) for i in (1, 2))
    same_pid = query_pids[:, None] == gallery_pids[None, :]
    left_out = same_pid & (query_cams[:, None] == gallery_cams[None, :])
    k = min(top_k, len(gallery))
    tables = {}
    for mode, masks in (("masked", query_masks), ("plain", torch.ones_like(query_masks))):
        similarity = masked_similarity(query_descriptors, gallery_descriptors, masks)
        similarity = similarity.masked_fill(left_out, float("-inf"))
        scores, indices = similarity.topk(k, dim=1)
        best_match = similarity.masked_fill(~same_pid, float("-inf")).amax(dim=1)
        first_hit = (similarity > best_match[:, None]).sum(dim=1) + 1
        first_hit = torch.where(torch.isfinite(best_match), first_hit, torch.zeros_like(first_hit))
        tables[mode] = (scores, indices, first_hit)
    return tables


def rank_rows(queries, gallery, tables):
    """Rows of :func:`plot_rank_lists` from :func:`rank_tables`."""
    labels = {"masked": "masked matching", "plain": "plain cosine"}
    images = {}

    def image(path):
        if path not in images:
            images[path] = read_rgb(path)
        return images[path]

    rows = []
    for q, (path, pid, _) in enumerate(queries):
        lists = []
        for mode, (scores, indices, first_hit) in tables.items():
            hit = int(first_hit[q])
            label = f"{labels[mode]}\nfirst match #{hit}" if hit else f"{labels[mode]}\nno match in gallery"
            hits = [(image(gallery[g][0]), float(s), gallery[g][1] == pid)
                    for s, g in zip(scores[q].tolist(), indices[q].tolist()) if np.isfinite(s)]
            lists.append((label, hits))
        rows.append({"name": f"{os.path.basename(path)} (id {pid})", "image": image(path), "lists": lists})
    return rows


# ----------------------------------------------------------------------------- SPT
def sps_weights_for(args, studies):
    if args.sps_weights:
        return args.sps_weights, studies[0]
    for study in studies:
        path = study.cfg.SPT.SPS_WEIGHTS
        if path and os.path.isfile(path):
            return path, study
    return "", None


def integer_camera(camid):
    """fast-reid training camids are '<dataset>_<cam>' strings; test ones are integers."""
    return int(str(camid).rsplit("_", 1)[-1])


@torch.no_grad()
def spt_picture(study, sps_path, train_items, max_rows, path):
    """Draw the SPT synthesis of one batch of training images with the frozen SPS model (every sample considered,
    SPT.PROB = 1; the other SPT.* keys as configured)."""
    from fastreid_dpmpp.engine.sps_checkpoint import load_frozen_sps_model
    from fastreid_dpmpp.analysis.spt_samples import save_spt_samples
    from fastreid_dpmpp.modeling.stage3_synthesizer import SPTSynthesizer
    cfg = study.cfg
    sps_model = load_frozen_sps_model(cfg, sps_path, key="--sps-weights / SPT.SPS_WEIGHTS").to(study.model.device)
    spt = cfg.SPT
    synthesizer = SPTSynthesizer(sps_model, study.model.backbone.grid_size, threshold=spt.THRESHOLD,
                                 alpha=spt.ALPHA, beta=spt.BETA, top_fraction=spt.TOP_FRACTION, prob=1.0,
                                 use_oiou=spt.OIOU, use_rolling=spt.MASK_ROLLING, ignore_partner=spt.IGNORE_PARTNER,
                                 seed=0)
    paths = [p for p, _, _ in train_items]
    images = sps_model.preprocess_image(load_images(paths, study.extractor.transform))
    _, labels = np.unique([str(pid) for _, pid, _ in train_items], return_inverse=True)
    camids = None
    table = getattr(sps_model.backbone, "sie_embed", None)
    if table is not None:
        camids = torch.tensor([integer_camera(c) for _, _, c in train_items]).clamp(max=table.shape[0] - 1)
        camids = camids.to(images.device)
    info = synthesizer.synthesize(images, camids, torch.as_tensor(labels, device=images.device))
    temporary = f"{path}.tmp{os.getpid()}.png"
    try:
        save_spt_samples(temporary, synthesizer, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD, max_rows=max_rows)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return {"sps_weights": os.path.abspath(sps_path), "batch": len(train_items), **info["stats"]}


# ----------------------------------------------------------------------------- main
def _holistic_paths(args, dataset_name):
    holistic = HOLISTIC_QUERY_DATASETS.get(dataset_name, "") if args.holistic_dataset is None \
        else args.holistic_dataset
    if not holistic:
        return {}
    from fastreid_dpmpp.data.datasets import DatasetLayoutError
    try:
        items = load_split(holistic, args.data_root, "query")
    except DatasetLayoutError as e:
        logger.warning("no queries without occluder (%s): %s", holistic, str(e).splitlines()[0])
        return {}
    return {os.path.basename(path): path for path, _, _ in items}


def main(argv=None):
    from fastreid.utils.logger import setup_logger
    setup_logger(name="fastreid")
    args = parse_args(argv)
    specs = model_specs(args)
    os.makedirs(args.output_dir, exist_ok=True)
    studies = [Study(name, config_file, weights, args.opts, args.batch_size) for name, config_file, weights in specs]
    dataset_name = args.dataset or studies[0].cfg.DATASETS.TESTS[0]
    queries = load_split(dataset_name, args.data_root, "query")
    gallery = evenly_spaced(load_split(dataset_name, args.data_root, "gallery"),
                            args.gallery_limit or sys.maxsize)
    holistic_paths = _holistic_paths(args, dataset_name)
    analysis_items = evenly_spaced(queries, args.num_analysis_images)
    drawn_queries = evenly_spaced(queries, args.num_images)
    logger.info("%s under %s: %d queries (%d analysed, %d drawn), %d gallery images, %d queries without occluder",
                dataset_name, args.data_root, len(queries), len(analysis_items), len(drawn_queries), len(gallery),
                len(holistic_paths))
    summary = {"dataset": dataset_name, "data_root": os.path.abspath(args.data_root), "models": {}, "files": []}

    def written(path):
        summary["files"].append(os.path.basename(path))
        logger.info("wrote %s", path)

    correlations, similarities = {}, {}
    for study in studies:
        entry = summary["models"][study.name] = {"config": os.path.abspath(study.config_file),
                                                 "weights": study.weights and os.path.abspath(study.weights)}
        if not study.is_vit:
            logger.warning("[%s] %s is not a ReIDViT: no attention analyses", study.name,
                           type(study.model.backbone).__name__)
        else:
            result = attention_statistics(study, analysis_items)
            correlations[study.name] = result["head_correlation"]
            similarities[study.name] = result["token_similarity"]
            entry.update(num_analysis_images=result["num_images"], head_off_diagonal=result["head_off_diagonal"],
                         head_correlation=result["head_correlation"].tolist(),
                         token_similarity=result["token_similarity"].tolist())
        if not study.extractor.masked:
            logger.warning("[%s] no HMG mask (masked matching off): no mask / rank-list pictures", study.name)
            continue
        path = os.path.join(args.output_dir, masks_file(study.name))
        plot_query_masks(mask_rows(study, drawn_queries, holistic_paths), path,
                         title=f"{study.name}: HMG prototype masks m of occluded queries")
        written(path)
        tables = rank_tables(study, drawn_queries, gallery, args.top_k)
        entry["first_match_rank"] = {mode: table[2].tolist() for mode, table in tables.items()}
        path = os.path.join(args.output_dir, ranklists_file(study.name))
        plot_rank_lists(rank_rows(drawn_queries, gallery, tables), path,
                        title=f"{study.name}: top-{args.top_k} with and without masked matching "
                              f"(green: same identity, red: another)")
        written(path)
    if correlations:
        path = os.path.join(args.output_dir, FILES["head_correlation"])
        plot_head_correlations(correlations, path)
        written(path)
        path = os.path.join(args.output_dir, FILES["token_similarity"])
        plot_token_similarity(similarities, path)
        written(path)

    sps_path, sps_study = sps_weights_for(args, studies)
    if sps_study is None:
        logger.warning("no SPS checkpoint (--sps-weights, or SPT.SPS_WEIGHTS of a model's config): no SPT picture")
    else:
        train = load_split(dataset_name, args.data_root, "train")
        path = os.path.join(args.output_dir, FILES["spt"])
        summary["spt"] = spt_picture(sps_study, sps_path, evenly_spaced(train, args.spt_batch), args.num_images,
                                     path)
        written(path)
        logger.info("SPT: %.0f %% of the %d images synthesised", 100 * summary["spt"]["spt_fraction"],
                    summary["spt"]["batch"])
    path = os.path.join(args.output_dir, FILES["summary"])
    summary["files"].append(FILES["summary"])
    atomic_write_text(json.dumps(summary, indent=1), path)
    logger.info("wrote %s", path)
    return summary


if __name__ == "__main__":
    main()
