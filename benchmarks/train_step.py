#!/usr/bin/env python
"""Training-step time of DPM++ (DPMPP + DPMHead, all Stage III losses) against the CLIP baseline (issue 2),
on the same tiny random-init CLIP-ViT (configs/Synthetic/Base-Tiny.yml sizes) and the same batch, in one
process. A step = forward, loss sum, zero_grad, backward, Adam step (fast-reid's optimiser parameters).

    python benchmarks/train_step.py [--steps 20] [--batch 32] [--threads 0] [--device cpu] [opts ...]

Trailing KEY VALUE pairs are merged into both configs (e.g. MODEL.DPMPP.HMG_ENABLED False).
Prints the median step time of each model and the ratio DPM++ / baseline.
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import fastreid_dpmpp  # noqa: E402,F401  (fast-reid fixes first)
import fastreid_dpmpp.modeling.heads  # noqa: E402,F401
import fastreid_dpmpp.modeling.meta_arch  # noqa: E402,F401
from fastreid.modeling import build_model  # noqa: E402
from fastreid.solver.build import build_optimizer  # noqa: E402
from fastreid.utils.events import EventStorage  # noqa: E402
from fastreid_dpmpp.engine import load_config  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {"CLIPBaseline": "configs/Synthetic/clip_baseline.yml", "DPMPP": "configs/Synthetic/dpmpp.yml"}
NUM_CLASSES, NUM_INSTANCES = 64, 4


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20, help="timed steps per model (after 3 warm-up steps)")
    p.add_argument("--batch", type=int, default=32, help="images per batch (identities x 4)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides for both models")
    return p.parse_args(argv)


def build(name, args):
    opts = ["MODEL.DEVICE", args.device, "MODEL.HEADS.NUM_CLASSES", str(NUM_CLASSES),
            "MODEL.VIT.NUM_CAMERAS", "8"] + list(args.opts)
    cfg = load_config(os.path.join(ROOT, CONFIGS[name]), opts)
    model = build_model(cfg).train()
    optimizer, _ = build_optimizer(cfg, model, contiguous=False)
    return cfg, model, optimizer


def make_batch(cfg, size, device):
    if size % NUM_INSTANCES:
        raise ValueError(f"--batch must be a multiple of {NUM_INSTANCES}, got {size}")
    height, width = cfg.INPUT.SIZE_TRAIN
    generator = torch.Generator().manual_seed(0)
    return {"images": (torch.rand(size, 3, height, width, generator=generator) * 255).to(device),
            "targets": torch.arange(size // NUM_INSTANCES).repeat_interleave(NUM_INSTANCES).to(device),
            "camids": torch.randint(0, 8, (size,), generator=generator).to(device)}


def step(model, optimizer, batch):
    losses = model(batch)
    total = sum(losses.values())
    optimizer.zero_grad()
    total.backward()
    optimizer.step()


def synchronize(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed_step(model, optimizer, batch, device):
    synchronize(device)
    start = time.perf_counter()
    step(model, optimizer, batch)
    synchronize(device)
    return time.perf_counter() - start


def main(argv=None):
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    runs = {}
    for name in CONFIGS:
        cfg, model, optimizer = build(name, args)
        runs[name] = (model, optimizer, make_batch(cfg, args.batch, args.device))
    times = {name: [] for name in CONFIGS}
    with EventStorage(0):
        # Interleaved, so that both models see the same machine load; the first 3 rounds warm up.
        for round_index in range(3 + args.steps):
            for name, (model, optimizer, batch) in runs.items():
                elapsed = timed_step(model, optimizer, batch, args.device)
                if round_index >= 3:
                    times[name].append(elapsed)
    for name, (model, _, _) in runs.items():
        params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        t = times[name]
        print(f"{name:12s} {params / 1e6:6.2f} M trainable params  median step {statistics.median(t) * 1000:8.1f} ms "
              f"(min {min(t) * 1000:.1f}, max {max(t) * 1000:.1f}, {len(t)} steps)")
    ratios = [d / b for d, b in zip(times["DPMPP"], times["CLIPBaseline"])]
    print(f"batch {args.batch}, input {tuple(cfg.INPUT.SIZE_TRAIN)}, device {args.device}, "
          f"{torch.get_num_threads()} threads")
    print(f"ratio DPMPP / CLIPBaseline = {statistics.median(ratios):.2f} (median of {len(ratios)} interleaved pairs; "
          f"ratio of the fastest steps {min(times['DPMPP']) / min(times['CLIPBaseline']):.2f})")


if __name__ == "__main__":
    main()
