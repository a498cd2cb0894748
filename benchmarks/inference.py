#!/usr/bin/env python
"""Inference throughput of DPM++ (descriptor + HMG mask, the eval output cat([g, m̄])) against the CLIP
baseline's descriptor (issue 5b), same tiny random-init CLIP-ViT (configs/Synthetic/Base-Tiny.yml sizes),
same batch, one process, interleaved rounds.

    python benchmarks/inference.py [--batches 20] [--batch 64] [--threads 0] [--device cpu]
                                   [--hmg-reduction 1,4,8] [opts ...]

Trailing KEY VALUE pairs are merged into every config (e.g. MODEL.VIT.WIDTH 768 MODEL.VIT.LAYERS 12 for
ViT-B sizes). Also times DPM++ with TEST.MASKED_MATCHING.ENABLED False (descriptor only, no HMG) for reference.
``--hmg-reduction r1,r2,...`` times one DPM++ model per MODEL.DPMPP.HMG_REDUCTION value (default: 1, the SPEC HMG)
in the same interleaved rounds. Prints images/s per model and the ratio of times DPM++ / baseline.
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
from fastreid_dpmpp.engine import load_config  # noqa: E402
from _options import reduction_list  # noqa: E402  (benchmarks/_options.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DPMPP_CONFIG = "configs/Synthetic/dpmpp.yml"


def model_specs(reductions):
    """{name: (config, extra opts)}: the baseline, one DPM++ per HMG reduction ("DPMPP" for r = 1), and DPM++
    without the mask output."""
    specs = {"CLIPBaseline": ("configs/Synthetic/clip_baseline.yml", [])}
    for r in reductions:
        specs["DPMPP" if r == 1 else f"DPMPP-r{r}"] = (DPMPP_CONFIG, ["MODEL.DPMPP.HMG_REDUCTION", str(r)])
    specs["DPMPP-nomask"] = (DPMPP_CONFIG, ["TEST.MASKED_MATCHING.ENABLED", "False"])
    return specs


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=20, help="timed batches per model (after 3 warm-up batches)")
    p.add_argument("--batch", type=int, default=64, help="images per batch")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--hmg-reduction", type=reduction_list, default=[1], metavar="R[,R...]",
                   help="comma-separated MODEL.DPMPP.HMG_REDUCTION values, one DPM++ model each (default: 1)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides for every model")
    return p.parse_args(argv)


def build(config, extra, args):
    opts = ["MODEL.DEVICE", args.device, "MODEL.HEADS.NUM_CLASSES", "64", "MODEL.VIT.NUM_CAMERAS", "8"]
    cfg = load_config(os.path.join(ROOT, config), opts + list(args.opts) + extra)
    return cfg, build_model(cfg).eval()


def synchronize(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def timed_batch(model, batch, device):
    synchronize(device)
    start = time.perf_counter()
    output = model(batch)
    synchronize(device)
    return time.perf_counter() - start, output


def main(argv=None):
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {name: build(config, extra, args) for name, (config, extra) in model_specs(args.hmg_reduction).items()}
    height, width = next(iter(models.values()))[0].INPUT.SIZE_TEST
    generator = torch.Generator().manual_seed(0)
    batch = {"images": (torch.rand(args.batch, 3, height, width, generator=generator) * 255).to(args.device),
             "camids": torch.randint(0, 8, (args.batch,), generator=generator).to(args.device)}
    times = {name: [] for name in models}
    widths = {}
    for round_index in range(3 + args.batches):
        for name, (_, model) in models.items():
            elapsed, output = timed_batch(model, batch, args.device)
            widths[name] = output.shape[1]
            if round_index >= 3:
                times[name].append(elapsed)
    for name, t in times.items():
        print(f"{name:13s} output width {widths[name]:5d}  median batch {statistics.median(t) * 1000:8.1f} ms  "
              f"{args.batch / statistics.median(t):8.1f} images/s")
    print(f"batch {args.batch}, input {(height, width)}, device {args.device}, {torch.get_num_threads()} threads")
    for name in list(models)[1:]:
        ratios = [d / b for d, b in zip(times[name], times["CLIPBaseline"])]
        print(f"time ratio {name} / CLIPBaseline = {statistics.median(ratios):.2f} "
              f"(median of {len(ratios)} interleaved pairs; ratio of the fastest batches "
              f"{min(times[name]) / min(times['CLIPBaseline']):.2f})")


if __name__ == "__main__":
    main()
