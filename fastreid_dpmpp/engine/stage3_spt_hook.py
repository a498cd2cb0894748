"""Stage III SPT as a fast-reid training hook (SPEC §4).

``DPMPPTrainer.build_hooks`` inserts :class:`SPTHook` when SPT.ENABLED is True. The hook

* when built (inside the trainer's constructor): builds the Stage II model (``SPSModel``) from the trainer's config,
  overridden by the backbone keys recorded in the SPS checkpoint (so an SPS model trained with another stride works:
  its masks are resized to the ReID grid), loads SPT.SPS_WEIGHTS and freezes it;
* before training: attaches an :class:`SPTSynthesizer` to the ReID model (``attach_spt``; the SPS model stays outside
  the ReID model's module tree, so it is never trained, moved or saved with it);
* after every step: puts the batch's synthesis statistics into the trainer's EventStorage, so fast-reid's writers
  log them (console, metrics.json, TensorBoard);
* at the first iteration and every SPT.VIS_PERIOD iterations (0 = the first only) writes a picture of the real
  synthesised samples of the current batch, rendered on pixels, to ``OUTPUT_DIR/spt_samples_iter{N}.png``
  (N = 0-based iteration).

Accepted SPS files: see :mod:`fastreid_dpmpp.engine.sps_checkpoint` (the Stage II -> III hand-over file: its
writer, reader and errors).
"""
import logging
import os

import torch
from fastreid.engine.train_loop import HookBase
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY
from fastreid.utils import comm

from ..analysis.spt_samples import save_spt_samples
from ..modeling.module_utils import unwrap_model
from ..modeling.stage3_synthesizer import SPTSynthesizer
# The Stage II -> III file (reader, errors) lives in sps_checkpoint.py; re-exported here for the tools and tests.
from .sps_checkpoint import SPSWeightsError, load_frozen_sps_model, sps_model_config  # noqa: F401

logger = logging.getLogger("fastreid.dpmpp.spt_hook")

__all__ = ["SPTHook", "SPSWeightsError", "load_frozen_sps_model", "sps_model_config", "unwrap_model",
           "picture_path"]


def picture_path(output_dir, iteration):
    return os.path.join(output_dir, f"spt_samples_iter{int(iteration)}.png")


class PartnerShareCheck:
    """Warns once when, over the first ``steps`` iterations that synthesise, the synthesised images take on average
    more than ``limit`` of their patches from the partner: the SPS masks then keep only a few (often background)
    patches and SPT mostly relabels another identity's image — label noise (docs/ABLATION.md: every SPT row fell
    below the baseline for that reason with a 4-epoch Stage II)."""

    def __init__(self, limit=0.8, steps=20):
        self.limit, self.steps = float(limit), int(steps)
        self.shares = []
        self.done = False

    def update(self, stats):
        """Feed one iteration's SPT statistics; returns the warning text once, when it is due, else None."""
        if self.done or stats.get("spt_fraction", 0.0) <= 0.0:
            return None
        self.shares.append(float(stats["spt_transferred_fraction"]))
        if len(self.shares) < self.steps:
            return None
        self.done = True
        mean = sum(self.shares) / len(self.shares)
        if mean <= self.limit:
            return None
        return (f"SPT: over the first {len(self.shares)} synthesising iterations, {100 * mean:.0f} % of a synthesised "
                f"image's patches came from its partner (spt_transferred_fraction): the SPS model "
                f"(SPT.SPS_WEIGHTS) marks only a few patches as salient, so SPT mostly hands the anchor's label to "
                f"another identity's image. Train Stage II longer, or check its masks in spt_samples_iter*.png.")


class SPTHook(HookBase):
    """Loads the frozen SPS model, attaches the synthesiser, logs statistics and draws pictures (SPEC §4)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.output_dir = cfg.OUTPUT_DIR
        self.vis_period = int(cfg.SPT.VIS_PERIOD)
        if self.vis_period < 0:
            raise ValueError(f"SPT.VIS_PERIOD must be >= 0 (0 = a picture at the first iteration only), "
                             f"got {self.vis_period}")
        # Checked and loaded here, while the trainer is being built, so that a bad config fails at once with its own
        # message (an exception in before_train would be masked by fast-reid's EvalHook.after_train).
        meta_arch = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
        if not hasattr(meta_arch, "attach_spt"):
            raise ValueError(f"SPT.ENABLED needs a ViT ReID meta-architecture with attach_spt (CLIPBaseline, DPMPP); "
                             f"MODEL.META_ARCHITECTURE is {cfg.MODEL.META_ARCHITECTURE}")
        self.sps_model = load_frozen_sps_model(cfg)
        self.synthesizer = None
        self._first_step_done = False
        self._partner_share = PartnerShareCheck()

    def before_train(self):
        model = unwrap_model(self.trainer.model)
        sps_model = self.sps_model.to(model.device)
        seed = int(self.cfg.get("SEED", -1))  # fast-reid 1.4.0 has no SEED key; -1 = random
        if seed >= 0:  # a resumed run (or another rank) continues with different draws
            seed += int(getattr(self.trainer, "start_iter", 0)) + 1000003 * comm.get_rank()
        self.synthesizer = SPTSynthesizer.from_config(self.cfg, sps_model, model.backbone.grid_size, seed=seed)
        model.attach_spt(self.synthesizer)

    def after_step(self):
        last = self.synthesizer.last if self.synthesizer is not None else None
        if last is None:
            return
        self.trainer.storage.put_scalars(**last["stats"])
        warning = self._partner_share.update(last["stats"])
        if warning and comm.is_main_process():
            logger.warning(warning)
        if comm.is_main_process() and self._picture_due():
            self._write_picture()
        self._first_step_done = True

    def after_train(self):
        model = unwrap_model(self.trainer.model)
        if hasattr(model, "attach_spt"):
            model.attach_spt(None)

    def _picture_due(self):
        if not self._first_step_done:
            return True
        return self.vis_period > 0 and (self.trainer.iter + 1) % self.vis_period == 0

    def _write_picture(self):
        path = picture_path(self.output_dir, self.trainer.iter)
        try:
            with torch.no_grad():
                save_spt_samples(path, self.synthesizer, self.cfg.MODEL.PIXEL_MEAN, self.cfg.MODEL.PIXEL_STD)
        except Exception:  # a picture must never stop a training run
            logger.exception("SPT: could not write the synthesis picture %s", path)
            return
        logger.info("SPT: synthesised samples drawn to %s", path)
