"""Image retrieval with a trained model: a gallery folder -> FAISS index on disk -> top-k by the masked
similarity of SPEC §6 (``masked_search``: FAISS candidates, exact re-scoring with the query's mask).
tools/search.py is the command line; this module holds the pieces it needs.

Index folder layout (every file written atomically; ``gallery.json`` last, so a folder with it is complete):
    index.faiss        FAISS inner-product index of the L2-normalised gallery descriptors
    descriptors.npy    (G, W) float32 gallery descriptors (exact re-scoring)
    masks.npy          (G, W) float32 gallery masks m̄ (kept for use as queries; matching uses the query's)
    gallery.json       file list, identity / camera parsed from the names, model config and weights
"""
import json
import logging
import os
import re

import numpy as np
import torch

from ..checkpoint import atomic_write_text
from .masked_evaluator import unpack_descriptor_and_mask
from .masked_matching import build_gallery_index, masked_search

__all__ = ["IMAGE_EXTENSIONS", "find_images", "parse_name", "GalleryIndex", "FeatureExtractor",
           "build_index", "search_images"]

logger = logging.getLogger("fastreid.dpmpp.search")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
ID_PATTERN = r"^(-?\d+)_"          # Market / Duke / Occluded-Duke / Occluded-REID: <pid>_...
CAMERA_PATTERN = r"_c(\d+)"        # <pid>_c<cam>...: camera id = cam - 1 (fast-reid's datasets)


def find_images(folder):
    """All image files under ``folder`` (recursive, any layout), sorted."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"search: gallery folder {folder!r} does not exist")
    found = sorted(os.path.join(root, name) for root, _, names in os.walk(folder) for name in names
                   if name.lower().endswith(IMAGE_EXTENSIONS))
    if not found:
        raise ValueError(f"search: no image ({', '.join(IMAGE_EXTENSIONS)}) under {folder!r}")
    return found


def parse_name(path, id_pattern=ID_PATTERN, camera_pattern=CAMERA_PATTERN):
    """(identity or None, camera id or None) from a file name."""
    name = os.path.basename(path)
    pid = re.search(id_pattern, name) if id_pattern else None
    cam = re.search(camera_pattern, name) if camera_pattern else None
    return (int(pid.group(1)) if pid else None), (int(cam.group(1)) - 1 if cam else None)


class FeatureExtractor:
    """fast-reid's test transform + the eval-mode model -> (descriptors, masks) numpy (N, W) each
    (masks of ones for a model without masked matching)."""

    def __init__(self, model, cfg, batch_size=32):
        from fastreid.data.transforms import build_transforms
        self.model, self.cfg, self.batch_size = model, cfg, batch_size
        self.transform = build_transforms(cfg, is_train=False)
        self.masked = bool(getattr(model, "masked_matching", False))
        backbone = getattr(model, "backbone", None)
        table = getattr(backbone, "sie_embed", None)
        self.num_cameras = 0 if table is None else table.shape[0]
        self.mask_span = list(model.mask_span) if self.masked else None   # dims the HMG mask acts on

    def _camids(self, cameras, paths):
        if not self.num_cameras:
            return None
        camids = [0 if c is None else c for c in cameras]
        for camid, path in zip(camids, paths):
            if not 0 <= camid < self.num_cameras:
                raise ValueError(f"search: {path} has camera id {camid} (from the file name), outside the model's "
                                 f"SIE table of {self.num_cameras} cameras (MODEL.VIT.NUM_CAMERAS)")
        return torch.tensor(camids, dtype=torch.long)

    @torch.no_grad()
    def __call__(self, paths, cameras=None):
        from fastreid.data.data_utils import read_image
        cameras = cameras or [None] * len(paths)
        descriptors, masks = [], []
        for start in range(0, len(paths), self.batch_size):
            chunk = paths[start:start + self.batch_size]
            batch = {"images": torch.stack([self.transform(read_image(p, "RGB")) for p in chunk])}
            camids = self._camids(cameras[start:start + self.batch_size], chunk)
            if camids is not None:
                batch["camids"] = camids
            features = self.model(batch).float().cpu()
            if self.masked:
                descriptor, mask = unpack_descriptor_and_mask(features)
            else:
                descriptor, mask = features, torch.ones_like(features)
            descriptors.append(descriptor)
            masks.append(mask)
        return torch.cat(descriptors).numpy(), torch.cat(masks).numpy()


def _atomic_numpy(array, path):
    temporary = f"{path}.tmp{os.getpid()}.npy"
    np.save(temporary, array)
    os.replace(temporary, path)


def _atomic_faiss(index, path):
    import faiss
    temporary = f"{path}.tmp{os.getpid()}"
    faiss.write_index(index, temporary)
    os.replace(temporary, path)


class GalleryIndex:
    """A built index folder, loaded: ``index`` (FAISS), ``descriptors``, ``masks``, ``meta`` (gallery.json)."""

    def __init__(self, folder):
        import faiss
        meta_path = os.path.join(folder, "gallery.json")
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(f"search: {folder!r} is not a complete index folder (no gallery.json); "
                                    "run `tools/search.py build` first")
        with open(meta_path) as f:
            self.meta = json.load(f)
        self.index = faiss.read_index(os.path.join(folder, "index.faiss"))
        self.descriptors = np.load(os.path.join(folder, "descriptors.npy"))
        self.masks = np.load(os.path.join(folder, "masks.npy"))
        if hasattr(self.index, "nprobe"):
            self.index.nprobe = self.meta.get("nprobe", self.index.nprobe)
        if not (self.index.ntotal == len(self.descriptors) == len(self.meta["paths"])):
            raise ValueError(f"search: {folder!r} is inconsistent: index {self.index.ntotal}, descriptors "
                             f"{len(self.descriptors)}, files {len(self.meta['paths'])}")

    @property
    def paths(self):
        return self.meta["paths"]

    @property
    def pids(self):
        return self.meta["pids"]


def build_index(extractor, gallery_folder, output_folder, index_type="flat", nlist=None, pq_m=None, pq_bits=8,
                nprobe=8, model_info=None, id_pattern=ID_PATTERN, camera_pattern=CAMERA_PATTERN):
    """Extract every image under ``gallery_folder`` and write the index folder; returns its metadata dict."""
    paths = find_images(gallery_folder)
    parsed = [parse_name(p, id_pattern, camera_pattern) for p in paths]
    logger.info("extracting %d gallery images from %s", len(paths), gallery_folder)
    descriptors, masks = extractor(paths, [cam for _, cam in parsed])
    index = build_gallery_index(descriptors, index_type=index_type, nlist=nlist, pq_m=pq_m, pq_bits=pq_bits)
    if hasattr(index, "nprobe"):
        index.nprobe = min(nprobe, index.nlist)
    os.makedirs(output_folder, exist_ok=True)
    _atomic_faiss(index, os.path.join(output_folder, "index.faiss"))
    _atomic_numpy(descriptors.astype(np.float32), os.path.join(output_folder, "descriptors.npy"))
    _atomic_numpy(masks.astype(np.float32), os.path.join(output_folder, "masks.npy"))
    meta = {"gallery_folder": os.path.abspath(gallery_folder), "paths": [os.path.abspath(p) for p in paths],
            "pids": [pid for pid, _ in parsed], "camids": [cam for _, cam in parsed],
            "index_type": index_type, "nprobe": getattr(index, "nprobe", None), "masked": extractor.masked,
            "mask_span": extractor.mask_span,
            "descriptor_dim": int(descriptors.shape[1]), "id_pattern": id_pattern, "camera_pattern": camera_pattern,
            **(model_info or {})}
    atomic_write_text(json.dumps(meta, indent=1), os.path.join(output_folder, "gallery.json"))
    return meta


def search_images(extractor, gallery, query_paths, k=10, candidates=100):
    """Top-k of each query image: list of dicts {path, pid, mask (W,), results: [(path, pid, score), ...]}."""
    parsed = [parse_name(p, gallery.meta.get("id_pattern"), gallery.meta.get("camera_pattern")) for p in query_paths]
    descriptors, masks = extractor(list(query_paths), [cam for _, cam in parsed])
    scores, indices = masked_search(descriptors, masks, gallery.index, k, candidates=candidates,
                                    gallery_features=gallery.descriptors)
    return [{"path": path, "pid": pid, "mask": mask,
             "results": [(gallery.paths[i], gallery.pids[i], float(s)) for s, i in zip(row_s, row_i) if i >= 0]}
            for path, (pid, _), mask, row_s, row_i in zip(query_paths, parsed, masks, scores, indices)]
