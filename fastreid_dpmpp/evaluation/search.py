"""Image retrieval with a trained model: a gallery folder -> FAISS index on disk -> top-k by the masked
similarity of SPEC §6 (``masked_search``: FAISS candidates, exact re-scoring with the query's mask).
tools/search.py is the command line; this module holds the pieces it needs.

Index folder layout (every file written atomically; ``gallery.json`` last, so a folder with it is complete):
    index.faiss        FAISS inner-product index of the L2-normalised gallery descriptors
    descriptors.npy    (G, W) float32 gallery descriptors (exact re-scoring)
    masks.npy          (G, W) float32 gallery masks m̄ (kept for use as queries; matching uses the query's)
    model_config.yaml  the model's full config (_BASE_ files and command-line options resolved)
    model.pth          the model's weights ({"model": state dict}); absent with ``link_weights``, where
                       gallery.json records the checkpoint's absolute path instead
    gallery.json       file list (absolute and relative to the index folder), identity / camera parsed from the
                       names, the model files with their size and sha256

The index is self-contained: ``query`` works from any working directory and on another machine that has the folder.
A linked checkpoint that moved or changed since ``build`` (size or sha256) is refused with a clear error.
"""
import hashlib
import json
import logging
import os
import re

import numpy as np
import torch

from ..checkpoint import atomic_torch_save, atomic_write_text, trusted_torch_load
from ..data.cameras import camera_rows, describe_cameras, training_prefix
from ..model_outputs import unpack_descriptor_and_mask
from .masked_matching import build_gallery_index, masked_search

__all__ = ["IMAGE_EXTENSIONS", "find_images", "parse_name", "GalleryIndex", "FeatureExtractor",
           "build_index", "search_images", "IndexModelError", "write_model_files", "index_model_files",
           "sha256_of"]

logger = logging.getLogger("fastreid.dpmpp.search")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
ID_PATTERN = r"^(-?\d+)_"          # Market / Duke / Occluded-Duke / Occluded-REID: <pid>_...
CAMERA_PATTERN = r"_c(\d+)"        # <pid>_c<cam>...: camera id = cam - 1 (fast-reid's datasets)


def _walk(folder):
    """os.walk following symbolic links to folders, each real folder once (a link loop ends)."""
    seen = set()
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        yield root, names


def find_images(folder):
    """All image files under ``folder`` (recursive, any layout, symbolic links followed, extensions in any case),
    sorted. Other files are skipped with one warning naming them; a link to nothing stops with an error."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"search: gallery folder {folder!r} does not exist")
    found, others, broken = [], [], []
    for root, names in _walk(folder):
        for name in names:
            path = os.path.join(root, name)
            if not os.path.exists(path):
                broken.append(path)
            elif name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(path)
            elif not name.startswith("."):
                others.append(path)
    if broken:
        raise FileNotFoundError(f"search: {len(broken)} symbolic link(s) under {folder!r} point to nothing: "
                                f"{', '.join(broken[:10])}{' ...' if len(broken) > 10 else ''}")
    if others:
        logger.warning("search: skipping %d file(s) that are not images (%s): %s%s", len(others),
                       "/".join(IMAGE_EXTENSIONS), ", ".join(others[:10]), " ..." if len(others) > 10 else "")
    if not found:
        raise ValueError(f"search: no image ({', '.join(IMAGE_EXTENSIONS)}) under {folder!r}")
    return sorted(found)


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
        vit = cfg.MODEL.get("VIT")
        self.train_cameras = tuple(vit.get("TRAIN_CAMERAS", ())) if vit is not None else ()
        self._unseen_reported = set()

    def _camids(self, cameras, paths):
        """SIE rows of the cameras parsed from the file names (data/cameras.py): a camera training never saw, or
        a name without ``_c<cam>``, gets the mean camera embedding, with one warning per camera."""
        if not self.num_cameras:
            return None
        rows, unseen = camera_rows(cameras, self.train_cameras, self.num_cameras,
                                   training_prefix(self.train_cameras))
        new = [c for c in unseen if c not in self._unseen_reported]
        if new:
            self._unseen_reported.update(new)
            examples = [next(p for p, c in zip(paths, cameras) if c == camera) for camera in new]
            logger.warning("search: %s not among the model's %d training cameras (e.g. %s): these images get the "
                           "mean camera embedding", describe_cameras(new), self.num_cameras, ", ".join(examples))
        return torch.tensor(rows, dtype=torch.long)

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

        self.folder = folder

    @property
    def paths(self):
        return self.meta["paths"]

    def local_path(self, i):
        """Gallery image ``i`` where this machine has it: the absolute path recorded at build time, else the same
        place relative to the index folder (index and gallery moved together), else None."""
        path = self.meta["paths"][i]
        if os.path.isfile(path):
            return path
        relative = (self.meta.get("relative_paths") or [None] * len(self.meta["paths"]))[i]
        moved = os.path.join(self.folder, relative) if relative else None
        return moved if moved and os.path.isfile(moved) else None

    def model_files(self):
        """(config file, opts) of the model the index was built with (:func:`index_model_files`)."""
        return index_model_files(self.folder, self.meta)

    @property
    def pids(self):
        return self.meta["pids"]


# ----------------------------------------------------------------------------- the model files of an index
MODEL_CONFIG, MODEL_WEIGHTS = "model_config.yaml", "model.pth"


class IndexModelError(FileNotFoundError):
    """The model an index was built with cannot be found, or its weights changed since."""

    def __str__(self):
        return str(self.args[0])


def sha256_of(path, block=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _file_record(path):
    return {"size": os.path.getsize(path), "sha256": sha256_of(path)}


def write_model_files(cfg, output_folder, link_weights=False):
    """The model's resolved config (and, unless ``link_weights``, its weights) into the index folder; returns the
    record gallery.json keeps: file names, or the checkpoint's absolute path, with size and sha256."""
    os.makedirs(output_folder, exist_ok=True)
    weights = cfg.MODEL.WEIGHTS
    config = cfg.clone()
    config.defrost()
    config.MODEL.WEIGHTS = ""       # given at query time: the copy in the index, or the linked checkpoint
    atomic_write_text(config.dump(), os.path.join(output_folder, MODEL_CONFIG))
    record = {"config": MODEL_CONFIG, "weights": None}
    if weights:
        source = {"source": os.path.abspath(weights), **_file_record(weights)}
        if link_weights:
            record["weights"] = {"path": os.path.abspath(weights), **source}
        else:
            state = trusted_torch_load(weights, what="MODEL.WEIGHTS")
            copy = os.path.join(output_folder, MODEL_WEIGHTS)
            atomic_torch_save({"model": state.get("model", state)}, copy)   # the model only, no optimiser
            record["weights"] = {"file": MODEL_WEIGHTS, **_file_record(copy), "copied_from": source}
    return record


def _checked(path, record, what):
    if not os.path.isfile(path):
        raise IndexModelError(
            f"search: the {what} this index was built with is missing: {path} (moved or deleted since `build`). "
            f"Put it back, or rebuild the index (without --link-weights the index keeps its own copy).")
    size = os.path.getsize(path)
    if size != record["size"] or sha256_of(path) != record["sha256"]:
        raise IndexModelError(
            f"search: the {what} {path} changed since this index was built (now {size} bytes, sha256 "
            f"{sha256_of(path)[:16]}...; recorded {record['size']} bytes, sha256 {record['sha256'][:16]}...): the "
            f"gallery descriptors no longer match the model. Rebuild the index, or restore the original file.")
    return path


def index_model_files(folder, meta):
    """(config file, KEY VALUE opts) of the model recorded in an index folder's gallery.json, checked."""
    record = meta.get("model")
    if record is None:  # an index written before the index kept its model: paths as typed at build time
        return meta["config_file"], list(meta.get("opts", ()))
    config = os.path.join(folder, record["config"])
    if not os.path.isfile(config):
        raise IndexModelError(f"search: {config} is missing: the index folder is incomplete; rebuild it")
    weights = record.get("weights")
    if weights is None:
        return config, []
    if "file" in weights:
        path = _checked(os.path.join(folder, weights["file"]), weights, "copy of the model weights")
    else:
        path = _checked(weights["path"], weights, "model checkpoint (linked with --link-weights)")
    return config, ["MODEL.WEIGHTS", path]


def _relative_or_none(path, folder):
    try:
        return os.path.relpath(path, folder)
    except ValueError:  # another drive (Windows)
        return None


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
            "relative_paths": [_relative_or_none(os.path.abspath(p), os.path.abspath(output_folder))
                               for p in paths],
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
             "results": [(gallery.local_path(i) or gallery.paths[i], gallery.pids[i], float(s))
                         for s, i in zip(row_s, row_i) if i >= 0]}
            for path, (pid, _), mask, row_s, row_i in zip(query_paths, parsed, masks, scores, indices)]
