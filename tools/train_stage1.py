#!/usr/bin/env python
"""Stage I of DPM++ (SPEC §2): learn ID-specific prompts on a frozen CLIP and write the text prototypes T.

    python tools/train_stage1.py --config-file configs/Synthetic/clip_baseline.yml
    python tools/train_stage1.py --config-file ... --resume       # continue from OUTPUT_DIR/stage1
    python tools/train_stage1.py --config-file ... --eval-only    # rewrite T from the last checkpoint

Writes OUTPUT_DIR/STAGE1.OUTPUT (point MODEL.DPMPP.TEXT_PROTOTYPES at it for Stage III); checkpoints, metrics and the
image-feature cache go to OUTPUT_DIR/stage1.
"""
import fastreid_dpmpp  # noqa: F401  (fixes fast-reid for this stack; registers the DPM++ components)
from fastreid_dpmpp.engine.defaults import launch_from_command_line, setup
from fastreid_dpmpp.engine.stage1 import Stage1Trainer


def main(args):
    cfg = setup(args)
    trainer = Stage1Trainer(cfg)
    trainer.resume_or_load(resume=args.resume or args.eval_only)
    if args.eval_only:
        return trainer.write_text_prototypes()
    return trainer.train()


if __name__ == "__main__":
    launch_from_command_line(main)
