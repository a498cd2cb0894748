"""Stage III — SPT occlusion synthesis driven by a frozen SPS model (SPEC §4).

``SPTSynthesizer`` is what a ViT ReID meta-architecture calls in training (``ViTReIDMetaArch.attach_spt``): for each
batch of normalised images it

1. runs the frozen Stage II model (eval mode, no grad) and binarises its saliency (SPT.THRESHOLD) into masks on the
   SPS patch grid (§4.1);
2. pairs samples with :func:`select_partners` (OIoU / IoU, mask rolling, top fraction, α, β, p; never the same
   identity) (§4.2-4.4);
3. resizes the masks (nearest) to the ReID model's token grid when it differs from the SPS grid, and returns the
   Eq. 7 token mixing as the backbone's ``patch_transform`` (applied before the class token and position
   embedding, reading from an unmodified copy of the batch) (§4.5);
4. returns the candidate-identity ignoring of §4.6 (partner class per sample, excluded triplet negatives), or
   "nothing ignored" when SPT.IGNORE_PARTNER is off;
5. returns the batch's synthesis statistics (``stats``) and keeps them, with what is needed to draw the batch, in
   ``last``, which the training hook that owns the synthesiser reads after the step (it logs the statistics and
   draws ``last`` with ``fastreid_dpmpp.analysis.spt_samples``).

The synthesiser is owned by the SPT training hook (``engine/stage3_spt_hook.py``), which hands it to the model with
``ViTReIDMetaArch.attach_spt``; the model holds it as a plain attribute (it is no ``nn.Module``), so its frozen SPS
model is neither trained, nor saved in the ReID model's checkpoints, nor moved by ``.to()``.

The random draws come from the synthesiser's own ``torch.Generator`` (CPU), seeded from SEED when SEED >= 0, so a
run is reproducible and the draws do not depend on (or disturb) the global RNG.
"""
import logging

import torch

from .module_utils import freeze_model
from .stage3_patch_transfer import (
    KEEP_CHOICES,
    NO_PARTNER,
    PatchTransfer,
    binarize_saliency,
    excluded_negative_pairs,
    ignored_partner_classes,
    resize_masks,
    select_partners,
    synthesis_statistics,
)

logger = logging.getLogger("fastreid.dpmpp.spt_synthesizer")

__all__ = ["SPTSynthesizer", "spt_ignore_masks", "freeze_model"]  # freeze_model: defined in module_utils


class SPTSynthesizer:
    """Occlusion synthesis for one ReID model (SPEC §4).

    Args:
        sps_model: a trained ``SPSModel`` (anything with ``saliency(images, camids) -> (B, N)``, ``grid_size`` and a
            ``backbone``); it is frozen here.
        token_grid: (Hp, Wp) of the ReID model's patch tokens.
        threshold, alpha, beta, top_fraction, prob, use_oiou, use_rolling, ignore_partner: SPT.THRESHOLD, ALPHA,
            BETA, TOP_FRACTION, PROB, OIOU, MASK_ROLLING, IGNORE_PARTNER.
        seed: seed of the pairing generator; None or < 0 = a random seed.
        min_partner_area, keep: SPT.MIN_PARTNER_AREA, SPT.KEEP (both [ours]).
    """

    def __init__(self, sps_model, token_grid, threshold=0.5, alpha=0.7, beta=0.7, top_fraction=0.1, prob=0.5,
                 use_oiou=True, use_rolling=True, ignore_partner=True, seed=None, min_partner_area=0.0, keep="partner"):
        self.sps_model = freeze_model(sps_model)
        self.sps_grid = tuple(int(v) for v in sps_model.grid_size)
        self.token_grid = tuple(int(v) for v in token_grid)
        self.threshold = float(threshold)
        self.alpha, self.beta = float(alpha), float(beta)
        self.top_fraction, self.prob = float(top_fraction), float(prob)
        self.use_oiou, self.use_rolling = bool(use_oiou), bool(use_rolling)
        self.ignore_partner = bool(ignore_partner)
        self.min_partner_area = float(min_partner_area)
        self.keep = str(keep)
        self._check_arguments()
        self.generator = torch.Generator()
        if seed is None or int(seed) < 0:
            self.generator.seed()
        else:
            self.generator.manual_seed(int(seed))
        self.last = None
        if self.sps_grid != self.token_grid:
            logger.info("SPT: SPS masks on a %s grid are resized (nearest) to the ReID token grid %s",
                        self.sps_grid, self.token_grid)

    @classmethod
    def from_config(cls, cfg, sps_model, token_grid, seed=None):
        """Build from the SPT.* keys; ``seed`` defaults to cfg.SEED when the config has it (random when < 0)."""
        spt = cfg.SPT
        return cls(sps_model, token_grid, threshold=spt.THRESHOLD, alpha=spt.ALPHA, beta=spt.BETA,
                   top_fraction=spt.TOP_FRACTION, prob=spt.PROB, use_oiou=spt.OIOU, use_rolling=spt.MASK_ROLLING,
                   ignore_partner=spt.IGNORE_PARTNER, seed=cfg.get("SEED", -1) if seed is None else seed,
                   min_partner_area=spt.MIN_PARTNER_AREA, keep=spt.KEEP)

    def _check_arguments(self):
        checks = [("SPT.THRESHOLD", self.threshold, 0.0, 1.0), ("SPT.ALPHA", self.alpha, 0.0, 1.0),
                  ("SPT.BETA", self.beta, 0.0, 1.0), ("SPT.PROB", self.prob, 0.0, 1.0)]
        for key, value, low, high in checks:
            if not low <= value <= high:
                raise ValueError(f"{key} must lie in [{low}, {high}], got {value}")
        if self.min_partner_area < 0:
            raise ValueError(f"SPT.MIN_PARTNER_AREA must be >= 0, got {self.min_partner_area}")
        if self.keep not in KEEP_CHOICES:
            raise ValueError(f"SPT.KEEP must be one of {KEEP_CHOICES}, got {self.keep!r}")
        if not 0.0 < self.top_fraction <= 1.0:
            raise ValueError(f"SPT.TOP_FRACTION must lie in (0, 1], got {self.top_fraction}")

    # ------------------------------------------------------------------ random state
    def rng_state(self):
        """State of the pairing generator; restore it with :meth:`set_rng_state` to replay the same partners
        (e.g. a trainer that runs the same batch twice)."""
        return self.generator.get_state()

    def set_rng_state(self, state):
        self.generator.set_state(state)

    # ------------------------------------------------------------------ synthesis
    @torch.no_grad()
    def binary_masks(self, images, camids=None):
        """Identity sets of the batch: frozen SPS saliency ≥ SPT.THRESHOLD, bool (B, Hp, Wp) on the SPS grid."""
        saliency = self.sps_model.saliency(images, camids).float()
        return binarize_saliency(saliency, self.sps_grid, self.threshold)

    def synthesize(self, images, camids, targets):
        """One training batch (normalised images (B, 3, H, W), camera ids or None, labels (B,)) -> dict:

        patch_transform     tokens (B, N, D) -> Eq. 7 mixed tokens, for ``backbone.forward_features``;
        partners            (B,) long, partner index or −1;
        ignored_classes     (B,) long, class to drop from sample i's softmax or −1 (§4.6);
        excluded_negatives  (B, B) bool, samples that are not triplet negatives of anchor i (§4.6);
        stats               dict of floats (:func:`synthesis_statistics`);
        masks               (B, Hp, Wp) bool SPS masks on the SPS grid; token_masks: the same on the token grid.
        """
        targets = targets.long()
        masks = self.binary_masks(images, camids)
        partners = select_partners(masks, targets.to(masks.device), alpha=self.alpha, beta=self.beta,
                                   top_fraction=self.top_fraction, prob=self.prob, use_oiou=self.use_oiou,
                                   use_rolling=self.use_rolling, generator=self.generator,
                                   min_partner_area=self.min_partner_area)
        token_masks = resize_masks(masks, self.token_grid)
        partners = partners.to(targets.device)
        if self.ignore_partner:
            ignored = ignored_partner_classes(partners, targets)
            excluded = excluded_negative_pairs(partners, targets)
        else:
            ignored = torch.full_like(targets, NO_PARTNER)
            excluded = torch.zeros(targets.numel(), targets.numel(), dtype=torch.bool, device=targets.device)
        info = {
            "patch_transform": PatchTransfer(partners, token_masks, self.keep),
            "partners": partners,
            "ignored_classes": ignored,
            "excluded_negatives": excluded,
            "stats": synthesis_statistics(partners, masks, self.keep),
            "masks": masks,
            "token_masks": token_masks,
        }
        self.last = dict(info, images=images.detach(), targets=targets.detach())
        return info


def spt_ignore_masks(spt_info):
    """Partner classes to drop from the softmax and partner-identity negatives to drop from triplet mining (SPEC §4.6):
    ``(ignored_classes, excluded_negatives)`` of :meth:`SPTSynthesizer.synthesize`, ``(None, None)`` without SPT."""
    if spt_info is None:
        return None, None
    return spt_info["ignored_classes"], spt_info["excluded_negatives"]
