"""The image-caption corpus that the project's tiny CLIP is pretrained on.

``write_corpus(root, seed)`` renders pedestrians with the benchmark's own generator
(``fastreid_dpmpp.data.synthetic``) but from a seed space of its own (generator family "corpus": other
identities, other cameras), occluded and unoccluded images mixed, and stores per image what a caption
writer would see (view, occluder, visible share of each body part) in ``meta.json``.
``write_caption_csvs(root, name_occluder)`` turns that into open_clip's CSV format (``filepath``, ``title``),
one ``train`` and one held-out ``val`` file (the last ``val_ids`` identities).

``palette_collisions`` measures how many identities of a benchmark share their palette-level appearance
(``synthetic.palette_key``) with a corpus identity, against the number expected by chance.
"""
import csv
import json
import logging
import os
import time

import numpy as np

from ..checkpoint import atomic_write_text
from ..data import synthetic as syn
from .captions import caption

__all__ = ["CORPUS_META", "write_corpus", "write_caption_csvs", "caption_csv_paths", "load_corpus_meta",
           "corpus_appearance", "palette_collisions"]

logger = logging.getLogger("fastreid.dpmpp.pretraining.corpus")

CORPUS_META = "meta.json"
FAMILY = "corpus"
_CAPTION_STREAM = 11


def corpus_appearance(seed, identity):
    """Appearance of corpus identity ``identity`` (the same draw ``write_corpus`` renders)."""
    return syn.sample_appearance(syn._rng(seed, syn._STREAM_IDENTITY, syn._FAMILY[FAMILY], identity))


def write_corpus(root, seed=0, num_ids=2500, images_per_id=8, occluded_fraction=0.4, num_cameras=24,
                 val_ids=100, image_size=(128, 64), log_every=250):
    """Render ``num_ids × images_per_id`` images under ``root/images`` and write ``root/meta.json``.

    Each image: a camera drawn uniformly from ``num_cameras`` corpus cameras; a random ``occluded_fraction``
    of all images carries an occluder. The last ``val_ids`` identities are held out (``split`` "val").
    Returns the meta dict.
    """
    if not 0 < val_ids < num_ids:
        raise ValueError(f"val_ids must be in 1..num_ids-1 ({num_ids - 1}), got {val_ids}")
    start = time.time()
    out_hw = (int(image_size[0]), int(image_size[1]))
    family = syn._FAMILY[FAMILY]
    plan_rng = syn._rng(seed, syn._STREAM_PLAN, family)
    total = num_ids * images_per_id
    occluded = syn._exact_mask(plan_rng, total, occluded_fraction)
    cams = plan_rng.integers(1, num_cameras + 1, size=total)
    canvas = (out_hw[0] * syn.SUPERSAMPLE, out_hw[1] * syn.SUPERSAMPLE)
    cameras = {c: syn.make_camera(seed, FAMILY, c, canvas) for c in range(1, num_cameras + 1)}
    images, identities = {}, {}
    for identity in range(num_ids):
        app = corpus_appearance(seed, identity)
        identities[str(identity)] = app.attributes()
        for j in range(images_per_id):
            key = identity * images_per_id + j
            rendered = syn.render_pedestrian_sample(app, cameras[int(cams[key])], [int(seed), syn._STREAM_IMAGE, family, key],
                                                    out_hw, occluded=bool(occluded[key]))
            name = f"images/{identity:05d}_{j:02d}.jpg"
            syn._write_image(os.path.join(root, name), rendered.occluded if occluded[key] else rendered.holistic)
            images[name] = dict(identity=identity, index=j, cam=int(cams[key]), view=rendered.view, occluder=rendered.occluder,
                                covered=rendered.covered, visible=rendered.visible,
                                split="val" if identity >= num_ids - val_ids else "train")
        if log_every and (identity + 1) % log_every == 0:
            logger.info("corpus: %d/%d identities rendered (%.0f s)", identity + 1, num_ids, time.time() - start)
    meta = dict(generator=syn.GENERATOR_TAG, family=FAMILY, seed=int(seed), image_size=list(out_hw),
                sizes=dict(num_ids=num_ids, images_per_id=images_per_id, occluded_fraction=occluded_fraction,
                           num_cameras=num_cameras, val_ids=val_ids),
                identities=identities, images=images)
    atomic_write_text(json.dumps(meta, indent=1, sort_keys=True), os.path.join(root, CORPUS_META))
    logger.info("corpus: %d images of %d identities written to %s in %.0f s", total, num_ids, root,
                time.time() - start)
    return meta


def load_corpus_meta(root):
    path = os.path.join(root, CORPUS_META)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: '{root}' holds no pretraining corpus (write it with "
                                f"tools/pretrain_clip.py or fastreid_dpmpp.pretraining.corpus.write_corpus)")
    with open(path) as f:
        return json.load(f)


def caption_csv_paths(root, name_occluder):
    """(train, val) CSV paths of one caption variant."""
    variant = "named" if name_occluder else "plain"
    return tuple(os.path.join(root, f"{split}_{variant}.csv") for split in ("train", "val"))


def write_caption_csvs(root, name_occluder=True, caption_seed=0):
    """Caption every corpus image and write open_clip CSVs (``filepath`` absolute, ``title``).

    Returns the (train, val) CSV paths. The captions are a function of (corpus seed, ``caption_seed``,
    image), so both variants of ``name_occluder`` describe each image with the same template and words."""
    meta = load_corpus_meta(root)
    seed, family = meta["seed"], syn._FAMILY[FAMILY]
    apps = {}
    rows = {"train": [], "val": []}
    for name, info in sorted(meta["images"].items()):
        identity = info["identity"]
        if identity not in apps:
            apps[identity] = corpus_appearance(seed, identity)
        rng = syn._rng(seed, _CAPTION_STREAM, family, caption_seed, identity, info["index"])
        text = caption(apps[identity], info["view"], info["visible"], info["occluder"], name_occluder, rng)
        rows[info["split"]].append((os.path.abspath(os.path.join(root, name)), text))
    paths = caption_csv_paths(root, name_occluder)
    for split, path in zip(("train", "val"), paths):
        _write_csv(path, rows[split])
    return paths


def _write_csv(path, rows):
    tmp = f"{path}.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filepath", "title"])
        writer.writerows(rows)
    os.replace(tmp, path)


def palette_collisions(benchmark_appearances, corpus_appearances):
    """How many benchmark identities share their palette-level appearance with some corpus identity.

    Returns dict(observed, expected, std, rate, expected_rate): ``expected`` is the chance count
    Σ_b 1 − (1 − p_b)^N over the benchmark identities b, with p_b = ``synthetic.palette_probability`` of b's
    tuple and N the number of corpus identities (independent draws), ``std`` its standard deviation."""
    corpus_keys = {syn.palette_key(a) for a in corpus_appearances}
    keys = [syn.palette_key(a) for a in benchmark_appearances]
    n = len(corpus_appearances)
    p_hit = np.array([1.0 - (1.0 - syn.palette_probability(k)) ** n for k in keys])
    observed = sum(k in corpus_keys for k in keys)
    return dict(observed=int(observed), expected=float(p_hit.sum()), std=float(np.sqrt((p_hit * (1 - p_hit)).sum())),
                rate=observed / max(len(keys), 1), expected_rate=float(p_hit.mean()) if keys else 0.0)
