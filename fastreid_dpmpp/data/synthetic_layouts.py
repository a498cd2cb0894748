"""Layouts and writing of the synthetic benchmark: the image plans of each dataset layout (Occluded-Duke,
Market-1501, Occluded-REID, DukeMTMC-reID), the writer (``make_synthetic_benchmark``, ``meta.json``), the
preview sheet and ``ensure_synthetic_benchmark``."""
import dataclasses
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass

import cv2
import numpy as np

from .synthetic_common import OCCLUDER_KINDS, SUPERSAMPLE, _FAMILY, _STREAM_IDENTITY, _STREAM_IMAGE, _STREAM_PLAN, _rng
from .synthetic_appearance import sample_appearance
from .synthetic_scene import make_camera, render_pedestrian_sample

logger = logging.getLogger("fastreid.dpmpp.data.synthetic")


LAYOUT_DIRS = {
    "occluded_duke": "Occluded_Duke",
    "market1501": "Market-1501-v15.09.15",
    "occluded_reid": "OccludedREID",
    "dukemtmc": "DukeMTMC-reID",
}
DEFAULT_LAYOUTS = ("occluded_duke", "market1501", "occluded_reid")
META_FILE = "meta.json"
GENERATOR_TAG = "fastreid_dpmpp.data.synthetic"
FORMAT_VERSION = 1
# ----------------------------------------------------------------------------- plans
@dataclass
class ImageSpec:
    """One image to write: which identity, camera and split, and whether it is occluded."""
    split: str
    file: str          # path relative to the layout root
    pid: int
    cam: int           # 1-based camera / style index
    identity: int      # global identity index (appearance seed)
    occluded: bool
    key: int           # image index within the family (image seed)
    holistic_file: str = ""   # where the occluder-free copy goes (query_holistic)
    seed: int = None          # generator seed of this image's identity and scene (None: the benchmark's seed)


def _exact_mask(rng, n, fraction):
    """Exactly round(fraction * n) True entries at random positions."""
    m = np.zeros(n, bool)
    m[rng.permutation(n)[:int(round(fraction * n))]] = True
    return m


def _split_plan(rng, pids, cams, images_per_id, first_identity, frame_counter):
    """(pid, cam, frame, identity) for tracklet-like images of each id over 2-4 cameras."""
    out = []
    for i, pid in enumerate(pids):
        k = int(rng.integers(2, min(4, len(cams)) + 1))
        id_cams = rng.choice(cams, size=k, replace=False)
        for j in range(images_per_id):
            cam = int(id_cams[j % k])
            frame_counter[cam] += int(rng.integers(5, 120))
            out.append((int(pid), cam, frame_counter[cam], first_identity + i))
    return out


def _test_plan(rng, pids, cams, max_queries, gallery_per_id, first_identity, frame_counter):
    """Queries from 1-2 cameras per id, gallery mostly from the other cameras (sometimes one image from
    a query camera, which the evaluation protocol discards)."""
    queries, gallery = [], []
    for i, pid in enumerate(pids):
        nq = int(rng.integers(1, max_queries + 1))
        q_cams = rng.choice(cams, size=min(nq, 2, len(cams) - 1), replace=False)
        other = [c for c in cams if c not in set(q_cams.tolist())]
        for j in range(nq):
            cam = int(q_cams[j % len(q_cams)])
            frame_counter[cam] += int(rng.integers(5, 120))
            queries.append((int(pid), cam, frame_counter[cam], first_identity + i))
        g_cams = rng.choice(other, size=min(len(other), int(rng.integers(2, 4))), replace=False)
        n_g = max(1, gallery_per_id + int(rng.integers(-1, 2)))
        for j in range(n_g):
            cam = int(g_cams[j % len(g_cams)])
            frame_counter[cam] += int(rng.integers(5, 120))
            gallery.append((int(pid), cam, frame_counter[cam], first_identity + i))
        if rng.random() < 0.25:
            cam = int(q_cams[0])
            frame_counter[cam] += int(rng.integers(5, 120))
            gallery.append((int(pid), cam, frame_counter[cam], first_identity + i))
    return queries, gallery


def _distractor_plan(rng, pids, cams, first_identity, frame_counter):
    out = []
    for i, pid in enumerate(pids):
        for _ in range(int(rng.integers(2, 4))):
            cam = int(rng.choice(cams))
            frame_counter[cam] += int(rng.integers(5, 120))
            out.append((int(pid), cam, frame_counter[cam], first_identity + i))
    return out


def _draw_pids(rng, n, max_pid):
    if n > max_pid:
        raise ValueError(f"asked for {n} identities, but this layout's pids must stay in 1..{max_pid}")
    return np.sort(rng.choice(np.arange(1, max_pid + 1), size=n, replace=False))


def plan_occluded_duke(seed, num_train_ids, images_per_train_id, num_test_ids, max_queries_per_id,
                       gallery_images_per_id, num_distractor_ids, train_occluded_fraction, gallery_occluded_fraction):
    """Occluded-Duke: 8 cameras, names ``<pid:04d>_c<cam>_f<frame:07d>.jpg``; every query occluded."""
    rng = _rng(seed, _STREAM_PLAN, _FAMILY["duke"])
    cams = list(range(1, 9))
    pids = _draw_pids(rng, num_train_ids + num_test_ids + num_distractor_ids, 7140)
    pids = rng.permutation(pids)
    train_pids = np.sort(pids[:num_train_ids])
    test_pids = np.sort(pids[num_train_ids:num_train_ids + num_test_ids])
    dis_pids = np.sort(pids[num_train_ids + num_test_ids:])
    frames = {c: int(rng.integers(100, 5000)) for c in cams}
    train = _split_plan(rng, train_pids, cams, images_per_train_id, 0, frames)
    queries, gallery = _test_plan(rng, test_pids, cams, max_queries_per_id, gallery_images_per_id,
                                  num_train_ids, frames)
    gallery += _distractor_plan(rng, dis_pids, cams, num_train_ids + num_test_ids, frames)

    def name(pid, cam, frame):
        return f"{pid:04d}_c{cam}_f{frame:07d}.jpg"

    specs = []
    train_occ = _exact_mask(rng, len(train), train_occluded_fraction)
    gallery_occ = _exact_mask(rng, len(gallery), gallery_occluded_fraction)
    for split, items, occ in (("bounding_box_train", train, train_occ), ("query", queries, [True] * len(queries)),
                              ("bounding_box_test", gallery, gallery_occ)):
        for (pid, cam, frame, ident), o in zip(items, occ):
            f = name(pid, cam, frame)
            specs.append(ImageSpec(split, f"{split}/{f}", pid, cam, ident, bool(o), len(specs),
                                   holistic_file=f"query_holistic/{f}" if split == "query" else ""))
    return specs


def plan_market(seed, num_train_ids, images_per_train_id, num_test_ids, max_queries_per_id, gallery_images_per_id,
                num_distractor_ids, occluded_fraction, num_junk):
    """Market-1501: 6 cameras, names ``<pid:04d>_c<cam>s<seq>_<frame:06d>_<box:02d>.jpg``, pid -1 junk."""
    rng = _rng(seed, _STREAM_PLAN, _FAMILY["market"])
    cams = list(range(1, 7))
    pids = rng.permutation(_draw_pids(rng, num_train_ids + num_test_ids + num_distractor_ids, 1501))
    train_pids = np.sort(pids[:num_train_ids])
    test_pids = np.sort(pids[num_train_ids:num_train_ids + num_test_ids])
    dis_pids = np.sort(pids[num_train_ids + num_test_ids:])
    frames = {c: int(rng.integers(100, 5000)) for c in cams}
    seq = {c: int(rng.integers(1, 7)) for c in cams}
    train = _split_plan(rng, train_pids, cams, images_per_train_id, 0, frames)
    queries, gallery = _test_plan(rng, test_pids, cams, max_queries_per_id, gallery_images_per_id,
                                  num_train_ids, frames)
    gallery += _distractor_plan(rng, dis_pids, cams, num_train_ids + num_test_ids, frames)

    def name(pid, cam, frame, box=1):
        return f"{pid:04d}_c{cam}s{seq[cam]}_{frame:06d}_{box:02d}.jpg" if pid >= 0 else \
            f"-1_c{cam}s{seq[cam]}_{frame:06d}_{box:02d}.jpg"

    specs = []
    train_occ = _exact_mask(rng, len(train), occluded_fraction)
    gallery_occ = _exact_mask(rng, len(gallery), occluded_fraction / 2)
    for split, items, occ in (("bounding_box_train", train, train_occ), ("query", queries, [False] * len(queries)),
                              ("bounding_box_test", gallery, gallery_occ)):
        for (pid, cam, frame, ident), o in zip(items, occ):
            specs.append(ImageSpec(split, f"{split}/{name(pid, cam, frame)}", pid, cam, ident, bool(o), len(specs)))
    for j in range(num_junk):        # background-only detections, labelled -1 like Market's junk
        cam = int(rng.choice(cams))
        frames[cam] += int(rng.integers(5, 120))
        specs.append(ImageSpec("bounding_box_test", f"bounding_box_test/{name(-1, cam, frames[cam], 2 + j % 3)}",
                               -1, cam, -1, False, len(specs)))
    return specs


def plan_occluded_reid(seed, num_ids, images_per_id):
    """Occluded-REID raw layout: ``occluded_body_images/<pid:03d>/<pid:03d>_<nn:02d>.tif`` (all occluded)
    and ``whole_body_images/...`` (holistic); 3 capture styles on each side."""
    rng = _rng(seed, _STREAM_PLAN, _FAMILY["oreid"])
    specs = []
    for pid in range(1, num_ids + 1):
        for split, occluded, cams in (("occluded_body_images", True, (1, 2, 3)),
                                      ("whole_body_images", False, (4, 5, 6))):
            for nn in range(1, images_per_id + 1):
                specs.append(ImageSpec(split, f"{split}/{pid:03d}/{pid:03d}_{nn:02d}.tif", pid,
                                       int(rng.choice(cams)), pid - 1, occluded, len(specs)))
    return specs


# ----------------------------------------------------------------------------- writing
def _prepare_layout_dir(path, overwrite):
    """Create a fresh layout folder. An existing one is replaced only if this generator wrote it
    (it holds our meta.json) and ``overwrite`` is set; a real dataset is never touched."""
    if os.path.exists(path):
        ours = os.path.isfile(os.path.join(path, META_FILE))
        if not ours and os.listdir(path):
            raise FileExistsError(
                f"{path} exists and was not written by {GENERATOR_TAG} (no {META_FILE}); "
                "refusing to replace it. Choose another root.")
        if ours and not overwrite:
            raise FileExistsError(f"{path} already holds a synthetic dataset; pass overwrite=True to replace it.")
        logger.info("Replacing %s", path)
        shutil.rmtree(path)
    os.makedirs(path)


def _write_image(path, img):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, 92] if path.endswith(".jpg") else [cv2.IMWRITE_TIFF_COMPRESSION, 5]  # LZW
    if not cv2.imwrite(path, img, params):
        raise OSError(f"could not write {path}")


def _render_family(seed, family, specs, out_hw, targets, camera_seed=None):
    """Render every spec of one family and write it into each target layout.

    ``targets``: list of (layout_root, mode) with mode "as_planned" or "holistic" (DukeMTMC-reID copy).
    Identities and scenes come from ``spec.seed`` (default ``seed``), camera styles from ``camera_seed``
    (default ``seed``). Returns per-target meta image dicts and the appearances by identity index."""
    camera_seed = seed if camera_seed is None else camera_seed
    metas = [dict() for _ in targets]
    appearances, cameras = {}, {}
    need_occluded = any(mode == "as_planned" for _, mode in targets)
    for spec in specs:
        spec_seed = seed if spec.seed is None else spec.seed
        if spec.identity >= 0 and spec.identity not in appearances:
            appearances[spec.identity] = sample_appearance(_rng(spec_seed, _STREAM_IDENTITY, _FAMILY[family],
                                                                spec.identity))
        if spec.cam not in cameras:
            cameras[spec.cam] = make_camera(camera_seed, family, spec.cam,
                                            (out_hw[0] * SUPERSAMPLE, out_hw[1] * SUPERSAMPLE))
        r = render_pedestrian_sample(appearances.get(spec.identity), cameras[spec.cam],
                                     [int(spec_seed), _STREAM_IMAGE, _FAMILY[family], spec.key], out_hw,
                                     occluded=spec.occluded and need_occluded, with_person=spec.pid != -1)
        base = dict(split=spec.split, pid=spec.pid, cam=spec.cam, identity=spec.identity, view=r.view)
        for (root, mode), meta in zip(targets, metas):
            if mode == "holistic":
                _write_image(os.path.join(root, spec.file), r.holistic)
                meta[spec.file] = dict(base, occluder="", covered=0.0)
                continue
            _write_image(os.path.join(root, spec.file), r.occluded if spec.occluded else r.holistic)
            meta[spec.file] = dict(base, occluder=r.occluder, covered=r.covered)
            if spec.occluded:
                meta[spec.file]["visible"] = r.visible
            if spec.holistic_file:
                _write_image(os.path.join(root, spec.holistic_file), r.holistic)
                meta[spec.holistic_file] = dict(base, split=spec.holistic_file.split("/")[0], occluder="",
                                                covered=0.0, holistic_of=spec.file)
    return metas, appearances


def _with_training_split_of(specs, train_specs, train_seed):
    """``specs`` with its training split replaced by the one of ``train_specs`` (drawn with ``train_seed``)."""
    train = [dataclasses.replace(s, seed=int(train_seed)) for s in train_specs if s.split == "bounding_box_train"]
    return train + [s for s in specs if s.split != "bounding_box_train"]


def _summarise(images):
    counts, occluded, covered = {}, {}, {}
    for info in images.values():
        s = info["split"]
        counts[s] = counts.get(s, 0) + 1
        if info["occluder"]:
            occluded[s] = occluded.get(s, 0) + 1
            covered.setdefault(s, []).append(info["covered"])
    ids = {s: len({i["pid"] for i in images.values() if i["split"] == s and i["pid"] != -1}) for s in counts}
    return dict(counts=counts, ids=ids,
                occluded_fraction={s: round(occluded.get(s, 0) / n, 4) for s, n in counts.items()},
                mean_covered={s: round(float(np.mean(v)), 4) for s, v in covered.items()})


def _write_meta(root, layout, seed, out_hw, images, appearances, extra):
    summary = _summarise(images)
    meta = dict(generator=GENERATOR_TAG, version=FORMAT_VERSION, layout=layout, seed=int(seed),
                image_size=list(out_hw), occluder_kinds=list(OCCLUDER_KINDS), summary=summary, **extra,
                identities={str(k): v.attributes() for k, v in sorted(appearances.items())},
                images=dict(sorted(images.items())))
    with open(os.path.join(root, META_FILE), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
    return summary


def load_meta(layout_root):
    """Read the ``meta.json`` of one synthetic layout folder."""
    path = os.path.join(layout_root, META_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: {layout_root} is not a synthetic layout written by {GENERATOR_TAG}")
    with open(path) as f:
        return json.load(f)


def _normalise_layouts(layout):
    if layout in (None, "all"):
        return list(DEFAULT_LAYOUTS)
    names = [layout] if isinstance(layout, str) else list(layout)
    unknown = [n for n in names if n not in LAYOUT_DIRS]
    if unknown:
        raise ValueError(f"unknown layout(s) {unknown}; expected any of {list(LAYOUT_DIRS)} or 'all'")
    return [n for n in LAYOUT_DIRS if n in names]


def make_synthetic_benchmark(root, seed=0, layout="all", image_size=(128, 64),
                             num_train_ids=70, images_per_train_id=8, num_test_ids=50, max_queries_per_id=2,
                             gallery_images_per_id=4, num_distractor_ids=30,
                             train_occluded_fraction=0.35, gallery_occluded_fraction=0.1,
                             market_occluded_fraction=0.1, market_junk_images=4,
                             oreid_num_ids=50, oreid_images_per_id=5, overwrite=True, train_seed=None,
                             camera_seed=None):
    """Write the synthetic benchmark under ``root`` and return a summary dict.

    Args:
        layout: "all" (Occluded-Duke, Market-1501, Occluded-REID), one name or a list of names from
            ``LAYOUT_DIRS`` ("dukemtmc" adds the holistic DukeMTMC-reID copy of the Occluded-Duke plan).
        image_size: (H, W) of the written images.
        num_train_ids, images_per_train_id, num_test_ids, max_queries_per_id, gallery_images_per_id,
        num_distractor_ids: sizes of the Occluded-Duke and Market-1501 splits (same for both).
        train_occluded_fraction / gallery_occluded_fraction: Occluded-Duke (queries are all occluded).
        market_occluded_fraction: Market training images occluded (half of it in its gallery; no query).
        oreid_num_ids, oreid_images_per_id: Occluded-REID identities and images per id on each side.
        train_seed: Occluded-Duke only: draw the training split from this seed instead of ``seed`` (benchmarks
            that share ``train_seed`` share their training images; their test splits come from their own seed).
        camera_seed: draw the camera styles from this seed instead of ``seed`` (benchmarks of one "world").
    """
    t0 = time.time()
    layouts = _normalise_layouts(layout)
    out_hw = (int(image_size[0]), int(image_size[1]))
    if out_hw[0] < 32 or out_hw[1] < 16:
        raise ValueError(f"image_size {image_size} too small; expected (H, W) >= (32, 16)")
    if min(num_train_ids, num_test_ids, images_per_train_id, max_queries_per_id, gallery_images_per_id) < 1:
        raise ValueError("num_train_ids, num_test_ids, images_per_train_id, max_queries_per_id and "
                         "gallery_images_per_id must all be >= 1")
    os.makedirs(root, exist_ok=True)
    summary = dict(root=os.path.abspath(root), seed=int(seed), image_size=list(out_hw), layouts={})
    sizes = dict(num_train_ids=num_train_ids, images_per_train_id=images_per_train_id, num_test_ids=num_test_ids,
                 max_queries_per_id=max_queries_per_id, gallery_images_per_id=gallery_images_per_id,
                 num_distractor_ids=num_distractor_ids)

    duke_targets = [(n, "as_planned" if n == "occluded_duke" else "holistic")
                    for n in ("occluded_duke", "dukemtmc") if n in layouts]
    if duke_targets:
        fractions = dict(train_occluded_fraction=train_occluded_fraction,
                         gallery_occluded_fraction=gallery_occluded_fraction)
        specs = plan_occluded_duke(seed, **fractions, **sizes)
        if train_seed is not None and int(train_seed) != int(seed):
            specs = _with_training_split_of(specs, plan_occluded_duke(train_seed, **fractions, **sizes), train_seed)
        roots = [os.path.join(root, LAYOUT_DIRS[n]) for n, _ in duke_targets]
        for r in roots:
            _prepare_layout_dir(r, overwrite)
        metas, apps = _render_family(seed, "duke", specs, out_hw, [(r, m) for r, (_, m) in zip(roots, duke_targets)],
                                     camera_seed)
        seeds = dict(train_seed=int(seed if train_seed is None else train_seed),
                     camera_seed=int(seed if camera_seed is None else camera_seed))
        for (name, _), r, meta in zip(duke_targets, roots, metas):
            s = _write_meta(r, LAYOUT_DIRS[name], seed, out_hw, meta, apps, dict(sizes=sizes, **fractions, **seeds))
            summary["layouts"][name] = dict(dir=r, **s)

    if "market1501" in layouts:
        specs = plan_market(seed, occluded_fraction=market_occluded_fraction, num_junk=market_junk_images, **sizes)
        r = os.path.join(root, LAYOUT_DIRS["market1501"])
        _prepare_layout_dir(r, overwrite)
        (meta,), apps = _render_family(seed, "market", specs, out_hw, [(r, "as_planned")], camera_seed)
        s = _write_meta(r, LAYOUT_DIRS["market1501"], seed, out_hw, meta, apps, dict(sizes=sizes))
        summary["layouts"]["market1501"] = dict(dir=r, **s)

    if "occluded_reid" in layouts:
        specs = plan_occluded_reid(seed, oreid_num_ids, oreid_images_per_id)
        r = os.path.join(root, LAYOUT_DIRS["occluded_reid"])
        _prepare_layout_dir(r, overwrite)
        (meta,), apps = _render_family(seed, "oreid", specs, out_hw, [(r, "as_planned")], camera_seed)
        s = _write_meta(r, LAYOUT_DIRS["occluded_reid"], seed, out_hw, meta, apps,
                        dict(sizes=dict(num_ids=oreid_num_ids, images_per_id=oreid_images_per_id)))
        summary["layouts"]["occluded_reid"] = dict(dir=r, **s)

    summary["seconds"] = round(time.time() - t0, 2)
    logger.info("Synthetic benchmark written to %s in %.1f s", root, summary["seconds"])
    return summary


# ----------------------------------------------------------------------------- preview
def _tile(img, label, scale, font_scale=0.38):
    t = cv2.resize(img, (img.shape[1] * scale, img.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
    if label:
        cv2.rectangle(t, (0, t.shape[0] - 14), (t.shape[1], t.shape[0]), (0, 0, 0), -1)
        cv2.putText(t, label, (2, t.shape[0] - 4), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return t


def make_preview(root, out_path, per_row=10, scale=2, seed=0):
    """Contact sheet of the synthetic benchmark under ``root``: rows of train / query / query_holistic /
    gallery samples (plus Market and Occluded-REID rows when present). Returns ``out_path``."""
    rng = np.random.default_rng(seed)
    rows = []

    def pick(images, split, n):
        files = sorted(f for f, i in images.items() if i["split"] == split)
        chosen = sorted(rng.choice(len(files), size=min(n, len(files)), replace=False)) if files else []
        return [files[k] for k in chosen]

    duke = os.path.join(root, LAYOUT_DIRS["occluded_duke"])
    if os.path.isfile(os.path.join(duke, META_FILE)):
        im = load_meta(duke)["images"]
        queries = pick(im, "query", per_row)
        rows.append(("Occ-Duke train", duke, pick(im, "bounding_box_train", per_row), im))
        rows.append(("query (occluded)", duke, queries, im))
        rows.append(("query_holistic", duke, ["query_holistic/" + q.split("/", 1)[1] for q in queries], im))
        rows.append(("gallery", duke, pick(im, "bounding_box_test", per_row), im))
    market = os.path.join(root, LAYOUT_DIRS["market1501"])
    if os.path.isfile(os.path.join(market, META_FILE)):
        im = load_meta(market)["images"]
        rows.append(("Market train", market, pick(im, "bounding_box_train", per_row), im))
    oreid = os.path.join(root, LAYOUT_DIRS["occluded_reid"])
    if os.path.isfile(os.path.join(oreid, META_FILE)):
        im = load_meta(oreid)["images"]
        q = pick(im, "occluded_body_images", per_row)
        rows.append(("OccREID occluded", oreid, q, im))
        rows.append(("OccREID whole", oreid, [f.replace("occluded_body_images", "whole_body_images") for f in q], im))
    if not rows:
        raise FileNotFoundError(f"no synthetic layout with {META_FILE} under {root}")

    label_w = 150
    sheet_rows = []
    tile_hw = None
    for title, base, files, images in rows:
        tiles = []
        for f in files:
            img = cv2.imread(os.path.join(base, f), cv2.IMREAD_COLOR)
            if img is None:
                raise FileNotFoundError(os.path.join(base, f))
            info = images.get(f, {})
            if info.get("occluder"):
                short = {"pedestrian": "person", "signboard": "sign"}.get(info["occluder"], info["occluder"])
                label = f"{short} {int(round(100 * info['covered']))}%"
            else:
                label = f"id{info.get('pid', '?')} c{info.get('cam', '?')}"
            tiles.append(_tile(img, label, scale))
        tile_hw = tile_hw or tiles[0].shape[:2]
        tiles += [np.full(tile_hw + (3,), 255, np.uint8)] * (per_row - len(tiles))
        head = np.full((tile_hw[0], label_w, 3), 255, np.uint8)
        cv2.putText(head, title, (6, tile_hw[0] // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        gap = np.full((tile_hw[0], 3, 3), 255, np.uint8)
        sheet_rows.append(np.hstack([head] + [x for t in tiles for x in (t, gap)]))
        sheet_rows.append(np.full((4, sheet_rows[-1].shape[1], 3), 255, np.uint8))
    sheet = np.vstack(sheet_rows)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    if not cv2.imwrite(out_path, sheet):
        raise OSError(f"could not write {out_path}")
    return out_path


def ensure_synthetic_benchmark(root, seed=0, layout="occluded_duke"):
    """Write the Occluded-Duke synthetic benchmark under ``root`` unless it is already there (its meta.json
    exists). Returns True when it was written now."""
    if os.path.isfile(os.path.join(root, LAYOUT_DIRS["occluded_duke"], META_FILE)):
        return False
    make_synthetic_benchmark(root, seed=seed, layout=layout)
    return True
