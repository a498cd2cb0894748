"""Zero-shot evaluation of a (pretrained) CLIP: caption retrieval on held-out corpus pairs and ReID on a
synthetic benchmark split, with no ReID training at all.

Two ways to embed an image, so that the project's loader can be checked against open_clip itself:
* ``OpenCLIPEncoder``: ``open_clip.create_model(arch, pretrained=<file>)`` and its own preprocessing;
  the feature is open_clip's image embedding (v_p, L2-normalised);
* ``ProjectEncoder``: the project's backbone (``build_clip_vit_backbone``) built from a config whose
  MODEL.VIT.WEIGHTS is the same file, fast-reid's test transforms; the features are v, v_p and the test
  descriptor concat[v, v_p] (no SIE: zero-shot has no camera embedding).
"""
import csv
import logging
import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..data.benchmark import benchmark_split
from ..evaluation.protocol import per_query_metrics, query_distance, summarize
from ..modeling.backbones.open_clip_configs import TINY_CLIP

__all__ = ["OpenCLIPEncoder", "ProjectEncoder", "caption_retrieval", "zero_shot_reid", "reproduction_check",
           "CHECK_BENCHMARK"]

logger = logging.getLogger("fastreid.dpmpp.pretraining.zero_shot")


def _batches(items, size):
    for start in range(0, len(items), size):
        yield items[start:start + size]


class OpenCLIPEncoder:
    """open_clip's own model, preprocessing and tokenizer for ``weights`` ("" = random init, seeded)."""

    def __init__(self, weights, arch=TINY_CLIP, seed=0):
        import open_clip
        torch.manual_seed(seed)
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(arch, pretrained=weights or None)
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(arch)

    @torch.no_grad()
    def images(self, paths, batch_size=256):
        """{"vp": (N, D_t)} L2-normalised image embeddings."""
        feats = [self.model.encode_image(torch.stack([self.preprocess(Image.open(p).convert("RGB")) for p in chunk]),
                                         normalize=True) for chunk in _batches(list(paths), batch_size)]
        return {"vp": torch.cat(feats).numpy()}

    @torch.no_grad()
    def texts(self, captions, batch_size=512):
        feats = [self.model.encode_text(self.tokenizer(list(chunk)), normalize=True)
                 for chunk in _batches(list(captions), batch_size)]
        return torch.cat(feats).numpy()


class ProjectEncoder:
    """The project's CLIP-ViT backbone from a fast-reid config (MODEL.VIT.WEIGHTS loaded by the project's
    loader) with fast-reid's test transforms."""

    def __init__(self, cfg):
        from fastreid.data.transforms import build_transforms
        from fastreid.modeling.backbones import build_backbone
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.VIT.NUM_CAMERAS = 0
        cfg.MODEL.DEVICE = "cpu"
        self.backbone = build_backbone(cfg).eval()
        self.transform = build_transforms(cfg, is_train=False)
        self.mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(1, -1, 1, 1)
        self.std = torch.tensor(cfg.MODEL.PIXEL_STD).view(1, -1, 1, 1)

    @torch.no_grad()
    def images(self, paths, batch_size=256):
        """{"v", "vp", "concat"}: v, v_p and L2(concat[v, v_p]) (the CLIP baseline's test descriptor)."""
        out = {"v": [], "vp": []}
        for chunk in _batches(list(paths), batch_size):
            images = torch.stack([self.transform(Image.open(p).convert("RGB")) for p in chunk])
            features = self.backbone.forward_features((images - self.mean) / self.std)
            out["v"].append(features["cls"])
            out["vp"].append(features["proj"])
        v, vp = torch.cat(out["v"]), torch.cat(out["vp"])
        return {"v": v.numpy(), "vp": vp.numpy(), "concat": F.normalize(torch.cat([v, vp], 1), dim=1).numpy()}


def caption_retrieval(encoder, csv_path, ks=(1, 5)):
    """Image->text and text->image recall@k over the pairs of a corpus CSV (``filepath``, ``title``), in %.

    ``pair``: the exact caption / image of the pair is in the top k; ``identity``: a caption / image of the same
    identity (the corpus names images ``<identity>_<nn>.jpg``) is in the top k — captions of one identity differ
    only in view, visibility and wording, so this is the recall a ReID user cares about."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    paths, captions = [r["filepath"] for r in rows], [r["title"] for r in rows]
    identities = np.array([os.path.basename(p).split("_")[0] for p in paths])
    image_feats = encoder.images(paths)["vp"]
    text_feats = encoder.texts(captions)
    sims = image_feats @ text_feats.T
    out = dict(pairs=len(rows))
    for direction, matrix in (("i2t", sims), ("t2i", sims.T)):
        order = np.argsort(-matrix, axis=1)
        exact = order == np.arange(len(rows))[:, None]
        same_id = identities[order] == identities[:, None]
        for k in ks:
            out[f"{direction}_R@{k}_pair"] = 100.0 * float(exact[:, :k].any(axis=1).mean())
            out[f"{direction}_R@{k}_identity"] = 100.0 * float(same_id[:, :k].any(axis=1).mean())
    return out


def zero_shot_reid(encoder, root, features=None):
    """mAP / Rank-k (in %) of occluded and holistic queries against the gallery, per image feature of the
    encoder (or only those named in ``features``)."""
    split = benchmark_split(root)
    embedded = {name: encoder.images(paths) for name, (paths, _, _) in split.items()}
    _, g_pids, g_cams = split["gallery"]
    results = {}
    for feature in features or embedded["gallery"].keys():
        results[feature] = {}
        for query in ("query", "query_holistic"):
            _, q_pids, q_cams = split[query]
            dist = query_distance(embedded[query][feature], embedded["gallery"][feature])
            metrics = per_query_metrics(dist, q_pids, g_pids, q_cams, g_cams)
            results[feature]["occluded" if query == "query" else "holistic"] = summarize(metrics)
    return results


CHECK_BENCHMARK = dict(seed=101, train_seed=0, camera_seed=0, layout="occluded_duke", num_train_ids=2,
                       images_per_train_id=2, num_test_ids=40, max_queries_per_id=2, gallery_images_per_id=4,
                       num_distractor_ids=10)


def reproduction_check(weights, workdir):
    """Zero-shot mAP / Rank-1 of ``weights`` (open_clip's own image embedding) on a small benchmark written
    from CHECK_BENCHMARK under ``workdir``: recorded beside shipped weights, recomputed by the tests."""
    from ..data.synthetic import make_synthetic_benchmark
    make_synthetic_benchmark(workdir, **CHECK_BENCHMARK)
    reid = zero_shot_reid(OpenCLIPEncoder(weights), workdir)["vp"]
    return dict(benchmark=CHECK_BENCHMARK, feature="open_clip vp",
                values={q: {m: round(reid[q][m], 4) for m in ("mAP", "Rank-1")} for q in reid})
