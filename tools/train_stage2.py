#!/usr/bin/env python
"""Stage II of DPM++ (SPEC §3): train the Salient Patch Selection (SPS) model and write the SPS checkpoint.

    python tools/train_stage2.py --config-file configs/Synthetic/sps.yml
    python tools/train_stage2.py --config-file ... --resume       # continue from OUTPUT_DIR/stage2
    python tools/train_stage2.py --config-file ... --eval-only    # evaluate MODEL.WEIGHTS or the SPS checkpoint

Writes OUTPUT_DIR/STAGE2.OUTPUT (point SPT.SPS_WEIGHTS at it for Stage III); checkpoints and metrics go to
OUTPUT_DIR/stage2. Any config may be given: META_ARCHITECTURE is set to SPSModel for this stage.
"""
import fastreid_dpmpp  # noqa: F401  (fixes fast-reid for this stack; registers the DPM++ components)
from fastreid_dpmpp.engine.defaults import launch_from_command_line, setup
from fastreid_dpmpp.engine.sps_checkpoint import load_frozen_sps_model
from fastreid_dpmpp.engine.stage2 import Stage2Trainer, sps_checkpoint_path, stage2_config
from fastreid_dpmpp.engine.trainer import with_camera_count


def main(args):
    cfg = setup(args)
    if args.eval_only:
        weights, key = (cfg.MODEL.WEIGHTS, "MODEL.WEIGHTS") if cfg.MODEL.WEIGHTS else (sps_checkpoint_path(cfg),
                                                                                      "STAGE2.OUTPUT")
        cfg = with_camera_count(stage2_config(cfg))
        return Stage2Trainer.test(cfg, load_frozen_sps_model(cfg, weights, key=key))
    trainer = Stage2Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    launch_from_command_line(main)
