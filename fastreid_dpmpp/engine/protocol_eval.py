"""Evaluate a trained model under the project's evaluation protocol (docs/EVALUATION.md).

For every split of the frozen synthetic benchmark (``fastreid_dpmpp.data.benchmark``) the model embeds the
occluded queries, their unoccluded twins (``query_holistic``) and the gallery once per SIE setting (camera
embedding on / off at test); every descriptor space the model has (``ViTReIDMetaArch.named_features``) is then
ranked by the same code for every arm, plainly and, for models that emit masks, with the true masks, with masks
shuffled across queries, and with the oracle channel masks computed from each query's twin. Results hold
summaries with bootstrap intervals, breakdowns per occluder kind and coverage, the own-camera top-1 share,
mask diagnostics, and the per-query average precisions (for paired deltas between arms).
"""
import json
import logging
import os

import numpy as np
import torch
import torch.nn.functional as F
from fastreid.data.common import CommDataset
from fastreid.data.build import build_reid_test_loader
from fastreid.data.transforms import build_transforms

from ..data.benchmark import benchmark_id, benchmark_record
from ..data.datasets import OccludedDuke, OccludedDukeHolisticQuery
from ..data.synthetic import LAYOUT_DIRS, load_meta
from ..evaluation import protocol as P
from ..evaluation.masked_evaluator import test_placement
from ..evaluation.masked_matching import SPEC_PLACEMENT
from ..modeling.stage3_patch_transfer import binarize_saliency, resize_masks

__all__ = ["test_loader", "extract_features", "split_features", "descriptor_spaces", "evaluate_split",
           "evaluate_model", "interpolate_backbone", "pooled_patch_tokens", "image_meta", "ORACLE_KEEP_FRACTIONS"]

logger = logging.getLogger("fastreid.dpmpp.protocol_eval")

ORACLE_KEEP_FRACTIONS = (0.25, 0.5, 0.75)


def pooled_patch_tokens(tokens, saliency, grid, sps_grid):
    """The spatial-visibility reference: "patch_mean" = the mean of the last block's patch tokens (B, N, D), and
    "patch_salient" = their mean over the patches the frozen Stage II model calls salient (saliency ≥ 0.5, resized
    nearest from the SPS grid to the token grid; all patches when none is)."""
    salient = resize_masks(binarize_saliency(saliency, sps_grid), grid).flatten(1).float()
    salient = torch.where(salient.sum(1, keepdim=True) > 0, salient, torch.ones_like(salient))
    return {"patch_mean": tokens.mean(1),
            "patch_salient": (salient.unsqueeze(-1) * tokens).sum(1) / salient.sum(1, keepdim=True)}


def test_loader(cfg, items):
    """fast-reid's test loader (test transforms, images in order) over ``items`` [(path, pid, camid)]."""
    dataset = CommDataset(items, build_transforms(cfg, is_train=False), relabel=False)
    loader, _ = build_reid_test_loader(test_set=dataset, test_batch_size=cfg.TEST.IMS_PER_BATCH, num_query=0,
                                       num_workers=cfg.DATALOADER.NUM_WORKERS)
    return loader


@torch.no_grad()
def extract_features(model, cfg, items, use_cameras, sps_model=None, patch_tokens=False):
    """Named features of ``items`` [(path, pid, camid)] with fast-reid's test transforms, as numpy arrays; with a
    frozen SPS model, also the spatial-visibility reference (``pooled_patch_tokens``); with ``patch_tokens``, the
    last block's patch tokens (B, N, W) themselves."""
    model.eval()
    collected = {}
    for batch in test_loader(cfg, items):
        features = model.named_features(batch, use_cameras=use_cameras,
                                        with_patch_tokens=patch_tokens or sps_model is not None)
        if sps_model is not None:
            saliency = sps_model.saliency(model.preprocess_image(batch), None)
            pooled = pooled_patch_tokens(features["patch_tokens"], saliency, model.backbone.grid_size,
                                         sps_model.grid_size)
            features.update(pooled)
            if not patch_tokens:
                del features["patch_tokens"]
        for name, value in features.items():
            collected.setdefault(name, []).append(value.float().cpu())
    return {name: torch.cat(values).numpy() for name, values in collected.items()}


def _labels(items):
    paths, pids, camids = zip(*items)
    return list(paths), np.asarray(pids), np.asarray(camids)


def split_features(model, cfg, root, use_cameras, sps_model=None, patch_tokens=False):
    """{"query", "query_holistic", "gallery"}: dict(features=..., paths, pids, camids) of one benchmark root
    (``extract_features``' options)."""
    occluded, holistic = OccludedDuke(root=root), OccludedDukeHolisticQuery(root=root)
    out = {}
    for name, items in (("query", occluded.query), ("query_holistic", holistic.query), ("gallery", occluded.gallery)):
        paths, pids, camids = _labels(items)
        out[name] = dict(features=extract_features(model, cfg, items, use_cameras, sps_model, patch_tokens),
                         paths=paths, pids=pids, camids=camids)
    return out


def _unit(x):
    return F.normalize(torch.as_tensor(x).float(), dim=1).numpy()


def descriptor_spaces(features):
    """{space: (descriptor array, number of leading dims the v-mask acts on or None)} available in ``features``.

    concat = L2(concat[v, v_p]) (CLIP-ReID's test descriptor); concat_bn = concat[L2 BN(v), L2 v_p] / sqrt 2;
    v, vp, bn_v, bn_vp = the single features. A mask over v acts on v, bn_v and the v part of both concats."""
    spaces = {}
    dim_v = features["v"].shape[1]
    for name in ("v", "vp", "bn_v", "bn_vp", "patch_mean", "patch_salient"):
        if name in features:
            spaces[name] = (features[name], dim_v if name in ("v", "bn_v") else None)
    if "vp" in features:
        spaces["concat"] = (_unit(np.concatenate([features["v"], features["vp"]], 1)), dim_v)
        if "bn_v" in features:
            spaces["concat_bn"] = (np.concatenate([_unit(features["bn_v"]), _unit(features["vp"])], 1) / np.sqrt(2),
                                   dim_v)
    return spaces


def image_meta(root, paths):
    """Occluder kind ("none" if unoccluded) and covered body fraction of each image (the benchmark's meta.json)."""
    layout = os.path.join(root, LAYOUT_DIRS["occluded_duke"])
    images = load_meta(layout)["images"]
    keys = [os.path.relpath(p, layout) for p in paths]
    return (np.array([images[k]["occluder"] or "none" for k in keys], dtype=object),
            np.array([images[k]["covered"] for k in keys], float))


def _scored(dist, query, gallery, with_ci=True):
    metrics = P.per_query_metrics(dist, query["pids"], gallery["pids"], query["camids"], gallery["camids"])
    summary = P.summarize(metrics)
    if with_ci:
        summary["mAP_ci"] = P.bootstrap_interval(100.0 * metrics["ap"][metrics["valid"]])
    summary["own_camera_top1"] = P.own_camera_top1_share(metrics, query["camids"], gallery["camids"])
    return metrics, summary


def _mask_diagnostics(masks_occluded, masks_holistic, gallery_masks, gallery_pids, gallery_unoccluded):
    """How image-specific the masks are: |m_occ − m_twin| against |m_a − m_b| for two unoccluded gallery images
    of one identity, and the spread of each channel across queries."""
    twin_gap = float(np.abs(masks_occluded - masks_holistic).mean())
    pids = np.where(gallery_unoccluded, gallery_pids, -1)
    pairs = [(i, j) for i in range(len(pids)) for j in range(i + 1, len(pids)) if pids[i] == pids[j] and pids[i] >= 0]
    same_id_gap = float(np.mean([np.abs(gallery_masks[i] - gallery_masks[j]).mean() for i, j in pairs])) \
        if pairs else float("nan")
    return dict(mask_mean=float(masks_occluded.mean()), per_query_std=float(masks_occluded.std(axis=1).mean()),
                across_query_std=float(masks_occluded.std(axis=0).mean()), twin_gap=twin_gap,
                same_identity_gap=same_id_gap)


def evaluate_space(space, descriptor, mask_dims, data, masks=None, kinds=None, covered=None, keep_per_query=False,
                   placement=SPEC_PLACEMENT):
    """All numbers of one descriptor space: plain, masked, shuffled, oracle; holistic queries; breakdowns.
    ``placement`` (side, before_norm) is where the learned query mask acts (TEST.MASKED_MATCHING.PLACEMENT); the
    oracle masks always act as SPEC §6 says."""
    nq, nh = len(data["query"]["pids"]), len(data["query_holistic"]["pids"])
    q, h, g = descriptor[:nq], descriptor[nq:nq + nh], descriptor[nq + nh:]
    query, holistic, gallery = data["query"], data["query_holistic"], data["gallery"]
    out = {}
    metrics, out["plain"] = _scored(P.query_distance(q, g), query, gallery)
    _, out["holistic"] = _scored(P.query_distance(h, g), holistic, gallery)
    out["occlusion_gap"] = out["holistic"]["mAP"] - out["plain"]["mAP"]
    out["by_occluder"] = P.breakdown(metrics, kinds)
    out["by_coverage"] = P.breakdown(metrics, P.coverage_bins(covered))
    per_query = {"plain": metrics["ap"].tolist()}
    if masks is not None and mask_dims is not None:
        mq = masks[:nq]
        masked, out["masked"] = _scored(P.query_distance(q, g, mq, mask_dims, placement), query, gallery)
        _, out["masked_shuffled"] = _scored(P.query_distance(q, g, P.shuffled_rows(mq), mask_dims, placement),
                                            query, gallery, with_ci=False)
        out["masked_vs_plain"] = P.paired_delta(metrics, masked)
        per_query["masked"] = masked["ap"].tolist()
    for keep in ORACLE_KEEP_FRACTIONS:
        oracle = P.oracle_channel_masks(q, h, keep)
        oracle_metrics, out[f"oracle_{keep:g}"] = _scored(P.query_distance(q, g, oracle), query, gallery,
                                                          with_ci=False)
    if "masked" in out:
        best_oracle = max(out[f"oracle_{k:g}"]["mAP"] for k in ORACLE_KEEP_FRACTIONS)
        headroom = best_oracle - out["plain"]["mAP"]
        out["oracle_gain_recovered"] = (out["masked"]["mAP"] - out["plain"]["mAP"]) / headroom if headroom > 0 else None
    if keep_per_query:
        out["per_query_ap"] = per_query
    return out


def evaluate_split(model, cfg, root, sie_settings=(False, True), spaces=None, sps_model=None):
    """{f"sie_{on|off}": {space: evaluate_space(...)}, "masks": diagnostics} for one benchmark root."""
    has_sie = getattr(model.backbone, "num_cameras", 0) > 0
    result = {}
    for use_cameras in sie_settings if has_sie else (False,):
        data = split_features(model, cfg, root, use_cameras, sps_model)
        kinds, covered = image_meta(root, data["query"]["paths"])
        stacked = {name: np.concatenate([data[s]["features"][name] for s in ("query", "query_holistic", "gallery")])
                   for name in data["query"]["features"]}
        masks = stacked.get("mask")
        key = f"sie_{'on' if use_cameras else 'off'}"
        result[key] = {}
        for space, (descriptor, mask_dims) in descriptor_spaces(stacked).items():
            if spaces and space not in spaces:
                continue
            result[key][space] = evaluate_space(space, descriptor, mask_dims, data, masks, kinds, covered,
                                                keep_per_query=True, placement=test_placement(cfg))
        if masks is not None:
            nq, nh = len(data["query"]["pids"]), len(data["query_holistic"]["pids"])
            gallery_kinds, _ = image_meta(root, data["gallery"]["paths"])
            result[key]["mask_diagnostics"] = _mask_diagnostics(masks[:nq], masks[nq:nq + nh], masks[nq + nh:],
                                                                data["gallery"]["pids"], gallery_kinds == "none")
    return result


def evaluate_model(model, cfg, roots, spaces=None, sie_settings=(False, True), sps_model=None):
    """{split: evaluate_split(...)} for ``roots`` = {split name: benchmark root}, with the benchmark record."""
    results = {}
    for split, root in roots.items():
        logger.info("protocol evaluation on %s (%s)", split, root)
        results[split] = dict(record=benchmark_record(root),
                              **evaluate_split(model, cfg, root, sie_settings, spaces, sps_model))
    return dict(benchmark_id=benchmark_id(), splits=results)


def write_results(path, results):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=1, default=float)


@torch.no_grad()
def interpolate_backbone(backbone, zero_shot_state, alpha):
    """WiSE-FT (weight-space ensembling): every pretrained backbone tensor becomes (1 − α)·zero-shot + α·fine-tuned;
    the camera table (not pretrained) stays fine-tuned."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"interpolation weight must be in [0, 1], got {alpha}")
    for name, tensor in backbone.state_dict().items():
        if name != "sie_embed" and name in zero_shot_state and tensor.is_floating_point():
            tensor.copy_((1.0 - alpha) * zero_shot_state[name] + alpha * tensor)
