#!/usr/bin/env python
"""Training-step time of DPM++ (DPMPP + DPMHead, all Stage III losses) against the CLIP baseline (issue 2),
on the same tiny random-init CLIP-ViT (configs/Synthetic/Base-Tiny.yml sizes) and the same batch, in one
process. A step = forward, loss sum, zero_grad, backward, Adam step (fast-reid's optimiser parameters).

    python benchmarks/train_step.py [--steps 20] [--batch 32] [--threads 0] [--device cpu]
                                    [--hmg-reduction 1,4,8] [opts ...]

Trailing KEY VALUE pairs are merged into every config (e.g. MODEL.DPMPP.HMG_ENABLED False).
``--hmg-reduction r1,r2,...`` builds one DPM++ model per MODEL.DPMPP.HMG_REDUCTION value (default: 1, the SPEC
HMG), all timed in the same interleaved rounds as the baseline.
Prints the median step time of each model and the ratio DPM++ / baseline for each r.
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
from _options import reduction_list  # noqa: E402  (benchmarks/_options.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASELINE = ("CLIPBaseline", "configs/Synthetic/clip_baseline.yml", [])
DPMPP_CONFIG = "configs/Synthetic/dpmpp.yml"
NUM_CLASSES, NUM_INSTANCES = 64, 4


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20, help="timed steps per model (after 3 warm-up steps)")
    p.add_argument("--batch", type=int, default=32, help="images per batch (identities x 4)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--hmg-reduction", type=reduction_list, default=[1], metavar="R[,R...]",
                   help="comma-separated MODEL.DPMPP.HMG_REDUCTION values, one DPM++ model each (default: 1)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides for every model")
    return p.parse_args(argv)


def model_specs(reductions):
    """(name, config, extra opts): the baseline, then one DPM++ per HMG reduction ("DPMPP" for r = 1)."""
    specs = [BASELINE]
    for r in reductions:
        specs.append(("DPMPP" if r == 1 else f"DPMPP-r{r}", DPMPP_CONFIG, ["MODEL.DPMPP.HMG_REDUCTION", str(r)]))
    return specs


def build(config, extra, args):
    opts = ["MODEL.DEVICE", args.device, "MODEL.HEADS.NUM_CLASSES", str(NUM_CLASSES),
            "MODEL.VIT.NUM_CAMERAS", "8"] + list(args.opts) + extra
    cfg = load_config(os.path.join(ROOT, config), opts)
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
    for name, config, extra in model_specs(args.hmg_reduction):
        cfg, model, optimizer = build(config, extra, args)
        runs[name] = (model, optimizer, make_batch(cfg, args.batch, args.device))
    times = {name: [] for name in runs}
    with EventStorage(0):
        # Interleaved, so that all models see the same machine load; the first 3 rounds warm up.
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
    print(f"batch {args.batch}, input {tuple(cfg.INPUT.SIZE_TRAIN)}, device {args.device}, "
          f"{torch.get_num_threads()} threads")
    baseline = times["CLIPBaseline"]
    for name in list(runs)[1:]:
        ratios = [d / b for d, b in zip(times[name], baseline)]
        print(f"ratio {name} / CLIPBaseline = {statistics.median(ratios):.2f} (median of {len(ratios)} interleaved "
              f"pairs; ratio of the fastest steps {min(times[name]) / min(baseline):.2f})")


if __name__ == "__main__":
    main()
