#!/usr/bin/env python
"""Which camera embedding (SIE) should a test camera that training never saw get? (issue 14, point 1)

A synthetic Occluded-Duke whose training split keeps cameras c1, c2 only and whose query / gallery keep c1..c4.
Per seed, a tiny random-init CLIP baseline (configs/Synthetic/clip_baseline.yml) is trained twice:

* ``2 rows``: the SIE table sized over the training cameras (MODEL.VIT.NUM_CAMERAS auto = 2); evaluated with the
  unseen cameras' rows set to the mean of the trained rows ("mean"), to zero ("none", no camera embedding), and
  with no camera embedding for any test image ("off", MODEL.VIT.SIE_AT_TEST False);
* ``4 rows``: the table sized over every evaluated split (MODEL.VIT.NUM_CAMERAS 4): rows 3, 4 exist from the
  start but no training image ever selects them ("table").

Prints, per rule, averaged over the seeds: mAP / Rank-1 (%) over all queries, over the queries from the unseen
cameras, and when no test camera is known (every image treated as unseen); and, on the test images of the training
cameras, the cosine similarity between their feature with the rule's embedding and with their own camera's row.

    python benchmarks/unseen_cameras.py [--seeds 0 1 2] [--epochs 30] [--work output/unseen_cameras] [KEY VALUE ...]
"""
import argparse
import copy
import glob
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import fastreid_dpmpp  # noqa: E402,F401  (fast-reid fixes first)
from fastreid.engine.hooks import EvalHook  # noqa: E402
from fastreid.engine.train_loop import TrainerBase  # noqa: E402
from fastreid.evaluation.rank import evaluate_rank  # noqa: E402
from fastreid.utils.compute_dist import build_dist  # noqa: E402
from fastreid_dpmpp.data.synthetic import make_synthetic_benchmark  # noqa: E402
from fastreid_dpmpp.engine.defaults import load_config  # noqa: E402
from fastreid_dpmpp.engine.trainer import DPMPPTrainer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "Synthetic", "clip_baseline.yml")
TRAIN_CAMERAS, TEST_CAMERAS = (1, 2), (1, 2, 3, 4)
_CAMERA = re.compile(r"_c(\d)_")


def make_split(root, seed):
    """The synthetic set with training images from TRAIN_CAMERAS only and test images from TEST_CAMERAS only."""
    if os.path.isfile(os.path.join(root, "done")):
        return
    make_synthetic_benchmark(root, seed=seed, layout="occluded_duke", num_train_ids=150, images_per_train_id=12,
                             num_test_ids=100, gallery_images_per_id=4, num_distractor_ids=50)
    keep = {"bounding_box_train": TRAIN_CAMERAS, "query": TEST_CAMERAS, "bounding_box_test": TEST_CAMERAS}
    for split, cameras in keep.items():
        for path in glob.glob(os.path.join(root, "Occluded_Duke", split, "*.jpg")):
            if int(_CAMERA.search(os.path.basename(path)).group(1)) not in cameras:
                os.remove(path)
    open(os.path.join(root, "done"), "w").close()


class TrainOnly(DPMPPTrainer):
    """No evaluation during training (this script evaluates each rule itself)."""

    def build_hooks(self):
        return [hook for hook in super().build_hooks() if not isinstance(hook, EvalHook)]

    def train(self):
        TrainerBase.train(self, self.start_epoch, self.max_epoch, self.iters_per_epoch)


# The tiny random-init CLIP-ViT the measurement used (pinned: configs/Synthetic/Base-Tiny.yml may change).
MODEL = ["MODEL.VIT.ARCH", "ViT-B-16", "MODEL.VIT.WEIGHTS", "", "MODEL.VIT.WIDTH", 128, "MODEL.VIT.LAYERS", 4,
         "MODEL.VIT.HEADS", 4, "MODEL.VIT.EMBED_DIM", 64, "MODEL.VIT.TEXT_WIDTH", 64, "MODEL.VIT.TEXT_LAYERS", 2,
         "MODEL.VIT.TEXT_HEADS", 2, "SOLVER.BASE_LR", 1e-3, "SOLVER.HEADS_LR_FACTOR", 1.0]


def train(root, output, seed, epochs, num_cameras, opts=()):
    """Train (or reuse the finished run in ``output``) -> (config, eval-mode model)."""
    from fastreid.utils.checkpoint import Checkpointer
    final = os.path.join(output, "model_final.pth")
    if os.path.isfile(final):
        cfg = load_config(os.path.join(output, "config.yaml"), ["MODEL.WEIGHTS", final])
        cfg.freeze()
        model = DPMPPTrainer.build_model(cfg)
        Checkpointer(model).load(final)
        return cfg, model.eval()
    cfg = load_config(CONFIG, MODEL + [
        "DATASETS.ROOT", root, "OUTPUT_DIR", output, "SEED", seed, "SOLVER.MAX_EPOCH", epochs,
        "SOLVER.STEPS", f"[{int(epochs * 2 / 3)}]", "SOLVER.CHECKPOINT_PERIOD", epochs, "TEST.EVAL_PERIOD", epochs,
        "MODEL.VIT.NUM_CAMERAS", num_cameras] + list(opts))
    cfg.freeze()
    os.makedirs(output, exist_ok=True)
    torch.manual_seed(seed)
    trainer = TrainOnly(cfg)
    trainer.train()
    return trainer.cfg, trainer.model.eval()


@torch.no_grad()
def features(cfg, model, feed):
    """Test-set features with the camera ids ``feed(raw camids)`` given to the model (None: no camera embedding)."""
    loader, num_query = DPMPPTrainer.build_test_loader(cfg, "OccludedDuke")
    feats, pids, camids = [], [], []
    for batch in loader:
        given = {k: v for k, v in batch.items() if k != "camids"}
        cameras = feed(batch["camids"])
        if cameras is not None:
            given["camids"] = cameras
        feats.append(torch.nn.functional.normalize(model(given).float(), dim=1))
        pids.append(batch["targets"])
        camids.append(batch["camids"])
    return torch.cat(feats), torch.cat(pids).numpy(), torch.cat(camids).numpy(), num_query


def retrieval(feats, pids, camids, nq, rows):
    dist = build_dist(feats[:nq], feats[nq:], "cosine")
    cmc, aps, _ = evaluate_rank(dist[rows], pids[:nq][rows], pids[nq:], camids[:nq][rows], camids[nq:])
    return {"mAP": 100 * float(np.mean(aps)), "Rank-1": 100 * float(cmc[0])}


def with_unseen_rows(model, fill):
    """A copy of the 2-row model whose SIE table is extended to len(TEST_CAMERAS) rows: the mean of the trained
    rows, or zeros (= no camera embedding)."""
    model = copy.deepcopy(model)
    table = model.backbone.sie_embed.data
    extra = len(TEST_CAMERAS) - table.shape[0]
    row = table.mean(0, keepdim=True) if fill == "mean" else torch.zeros_like(table[:1])
    model.backbone.sie_embed = torch.nn.Parameter(torch.cat([table, row.expand(extra, -1)]))
    model.backbone.num_cameras = table.shape[0] + extra
    return model


def run_seed(work, seed, epochs, opts=()):
    """Per rule: retrieval with the test cameras as they are (c3, c4 unseen); retrieval when no test camera is known
    (every image treated as unseen); and, on images of the training cameras, the cosine similarity between their
    feature with the rule's embedding and with their own trained camera row (1 = the rule loses nothing)."""
    root = os.path.join(work, f"data_seed{seed}")
    make_split(root, seed)
    cfg2, model2 = train(root, os.path.join(work, f"table2_seed{seed}"), seed, epochs, len(TRAIN_CAMERAS), opts)
    cfg4, model4 = train(root, os.path.join(work, f"table4_seed{seed}"), seed, epochs, len(TEST_CAMERAS), opts)
    first_unseen = len(TRAIN_CAMERAS)
    same, unknown, off = (lambda c: c), (lambda c: torch.full_like(c, first_unseen)), (lambda c: None)
    rules = {"mean": (cfg2, with_unseen_rows(model2, "mean"), same, unknown),
             "none": (cfg2, with_unseen_rows(model2, "none"), same, unknown),
             "off": (cfg2, model2, off, off),
             "table": (cfg4, model4, same, unknown)}
    reference = {"2": features(cfg2, with_unseen_rows(model2, "mean"), same)[0], "4": features(cfg4, model4, same)[0]}
    rows = {}
    for rule, (cfg, model, as_is, all_unknown) in rules.items():
        feats, pids, camids, nq = features(cfg, model, as_is)
        unseen_queries = np.isin(camids[:nq], [c - 1 for c in TEST_CAMERAS if c not in TRAIN_CAMERAS])
        lost, _, _, _ = features(cfg, model, all_unknown)
        seen = torch.from_numpy(np.isin(camids, [c - 1 for c in TRAIN_CAMERAS]))
        own = reference["4" if rule == "table" else "2"]
        rows[rule] = {"all": retrieval(feats, pids, camids, nq, np.ones(nq, bool)),
                      "unseen-camera queries": retrieval(feats, pids, camids, nq, unseen_queries),
                      "no camera known": retrieval(lost, pids, camids, nq, np.ones(nq, bool)),
                      "cosine to own camera": float((lost[seen] * own[seen]).sum(1).mean())}
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--work", default=os.path.join(ROOT, "output", "unseen_cameras"))
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE pairs for training, e.g. MODEL.VIT.SIE_MODE all")
    args = p.parse_args()
    per_seed = {seed: run_seed(args.work, seed, args.epochs, args.opts) for seed in args.seeds}
    with open(os.path.join(args.work, "results.json"), "w") as f:
        json.dump(per_seed, f, indent=1)
    rules = ("mean", "none", "off", "table")
    print(f"\nmAP / Rank-1 (%), {len(args.seeds)} seeds, {args.epochs} epochs; training cameras "
          f"{TRAIN_CAMERAS}, test cameras {TEST_CAMERAS}")
    print("\nfeature of a training-camera image with the rule's embedding vs with its own row (cosine):")
    for rule in rules:
        values = [per_seed[s][rule]["cosine to own camera"] for s in args.seeds]
        print(f"  {rule:6s} {np.mean(values):.4f} ± {np.std(values):.4f}   per seed "
              f"{', '.join(f'{v:.4f}' for v in values)}")
    for subset in ("all", "unseen-camera queries", "no camera known"):
        print(f"\n{subset}:")
        for rule in rules:
            maps = [per_seed[s][rule][subset]["mAP"] for s in args.seeds]
            r1s = [per_seed[s][rule][subset]["Rank-1"] for s in args.seeds]
            print(f"  {rule:6s} mAP {np.mean(maps):5.1f} ± {np.std(maps):4.1f}   R1 {np.mean(r1s):5.1f} ± "
                  f"{np.std(r1s):4.1f}   per seed mAP {', '.join(f'{m:.1f}' for m in maps)}")


if __name__ == "__main__":
    main()
