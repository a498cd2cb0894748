#!/usr/bin/env python
"""Export a trained model's inference graph (descriptor + HMG mask) to ONNX and check it in onnxruntime.

    python tools/export_onnx.py --config-file logs/occduke/stage3/config.yaml --output model.onnx \
        MODEL.WEIGHTS logs/occduke/stage3/model_final.pth [--opset 17] [--atol 1e-4]

Inputs: ``images`` (B, 3, H, W) float32 pixel values in [0, 255], H x W = INPUT.SIZE_TEST, RGB as fast-reid's
test loader gives them; ``camids`` (B,) int64 when the model has an SIE table. Outputs: ``descriptor`` (B, W)
and, with masked matching, ``mask`` (B, W) (see fastreid_dpmpp.export). The tool runs the exported file in
onnxruntime on a random batch and exits with status 1 when it differs from PyTorch by more than --atol.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import fastreid_dpmpp  # noqa: E402,F401  (fast-reid fixes first)
from fastreid_dpmpp.export import MIN_OPSET, export_onnx, run_onnx  # noqa: E402
from fastreid_dpmpp.export import load_inference_model  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--output", required=True, help="the .onnx file to write (atomically)")
    p.add_argument("--opset", type=int, default=MIN_OPSET)
    p.add_argument("--atol", type=float, default=1e-4)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides (MODEL.WEIGHTS ...)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    model, cfg = load_inference_model(args.config_file, args.opts)
    model = model.cpu()
    if not cfg.MODEL.WEIGHTS:
        print("warning: MODEL.WEIGHTS is empty: exporting a randomly initialised model", file=sys.stderr)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    size = tuple(cfg.INPUT.SIZE_TEST)
    wrapper = export_onnx(model, args.output, size, opset=args.opset)
    images = torch.rand(4, 3, *size, generator=torch.Generator().manual_seed(0)) * 255
    camids = torch.arange(4) % max(1, cfg.MODEL.VIT.NUM_CAMERAS) if wrapper.uses_camids else None
    with torch.no_grad():
        expected = wrapper(images, camids)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = run_onnx(args.output, images, camids)
    error = max(float(np.abs(got[name] - ref.numpy()).max()) for name, ref in zip(wrapper.output_names, expected))
    print(f"wrote {args.output}: inputs {wrapper.input_names}, outputs {wrapper.output_names} "
          f"({', '.join(f'{n} {tuple(r.shape[1:])}' for n, r in zip(wrapper.output_names, expected))}), "
          f"opset {args.opset}")
    print(f"max |onnxruntime - torch| = {error:.2e} (atol {args.atol})")
    if error > args.atol:
        sys.exit(1)


if __name__ == "__main__":
    main()
