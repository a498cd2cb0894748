"""Stage II meta-architecture (SPEC §3): the Salient Patch Selection model ``SPSModel``.

Backbone (the same ReIDViT as Stage III), the decision layer of Eq. 3 on the detached tapped patch tokens, and
a CLIP-ReID-style head (BN-necks + bias-free classifiers on v and v_p, :class:`CLIPReIDHead`).

Training step (three passes through the shared backbone):
  1. full pass             -> logits z, features v / v_p, taps;
  2. saliency M = σ(W_d [taps])  (Eq. 3; its input is detached, so W_d never trains the backbone);
  3. masked pass           -> patch tokens ⊙ M before the class token / position embedding (Eq. 4) -> logits z_m;
  4. complement pass       -> patch tokens ⊙ (1 − M)                                           -> logits z_c.
  Eq. 23: L_SPS = CE(z) + CE(z_m) + L_tri + w_b · (mean(M) − ρ)² + w_c · Σ_b ⟨softmax(z_b), softmax(z_c,b)⟩
  with w_b = STAGE2.BUDGET_WEIGHT, ρ = STAGE2.RHO, w_c = STAGE2.COMPLEMENT_WEIGHT. CE and the complement term are
  applied to every classifier branch of the head (v, and v_p when the backbone has a CLIP projection), the triplet
  loss to v and v_p of the full pass, as the CLIP baseline does.

Eval: ``forward`` returns the test descriptor (so fast-reid's evaluator scores Stage II like any ReID model) and
:meth:`SPSModel.saliency` gives M for already normalised images (used by SPT in Stage III).
"""
import logging

from fastreid.modeling.losses.cross_entroy_loss import log_accuracy
from fastreid.modeling.meta_arch.build import META_ARCH_REGISTRY
from fastreid.utils import events
from fastreid.utils.events import get_event_storage

from ..heads.clip_reid_head import CLIPReIDHead
from ..losses import batch_hard_triplet_loss, budget_loss, complement_loss, cross_entropy_with_ignored_classes
from ..stage2_patch_selection import SalientPatchSelector, patch_transform
from .vit_reid import ViTReIDMetaArch, head_config

logger = logging.getLogger("fastreid.dpmpp.sps_arch")

__all__ = ["SPSModel"]


@META_ARCH_REGISTRY.register()
class SPSModel(ViTReIDMetaArch):
    """SPS model of SPEC §3. Config: MODEL.* (backbone), MODEL.LOSSES.{ID,TRI}.*, STAGE2.{RHO, BUDGET_WEIGHT,
    COMPLEMENT_WEIGHT}. The head is always :class:`CLIPReIDHead` (MODEL.HEADS.NAME is Stage III's choice and is
    not read here)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        if not self.backbone.tap_indices:
            raise ValueError("SPSModel needs tapped blocks for its decision layer: MODEL.VIT.TAPS is empty")
        # The decision layer W_d; engine/stage2.py gives ``selector`` its own SGD optimiser (SPEC §3).
        self.selector = SalientPatchSelector(self.backbone.width, len(self.backbone.tap_indices))
        self.heads = CLIPReIDHead(head_config(cfg, self.backbone))
        self.id_epsilon = float(cfg.MODEL.LOSSES.ID.EPSILON)
        self.id_scale = float(cfg.MODEL.LOSSES.ID.SCALE)
        self.tri_margin = float(cfg.MODEL.LOSSES.TRI.MARGIN)
        self.tri_scale = float(cfg.MODEL.LOSSES.TRI.SCALE)
        self.rho = float(cfg.STAGE2.RHO)
        self.budget_weight = float(cfg.STAGE2.BUDGET_WEIGHT)
        self.complement_weight = float(cfg.STAGE2.COMPLEMENT_WEIGHT)
        if not 0.0 < self.rho < 1.0:
            raise ValueError(f"STAGE2.RHO must lie in (0, 1) (target fraction of salient patches), got {self.rho}")

    @property
    def grid_size(self):
        """(Hp, Wp) of the saliency maps."""
        return self.backbone.grid_size

    # ------------------------------------------------------------------ saliency
    def saliency_from_outputs(self, outputs):
        """Eq. 3 on the taps of a backbone pass: (B, N) in (0, 1)."""
        return self.selector(outputs["taps"])

    def neck_features(self, outputs):
        return self.heads.neck_features(outputs)

    def saliency(self, images, camids=None):
        """M for a batch of images already normalised with MODEL.PIXEL_MEAN/STD: (B, N), row-major over
        ``grid_size``. Runs in the model's current mode; SPT calls it on a frozen eval model under no_grad."""
        return self.saliency_from_outputs(self.backbone.forward_features(images, camids))

    # ------------------------------------------------------------------ forward
    def training_forward(self, images, camids, targets):
        """The three passes and the terms of Eq. 23, each under its own name."""
        full = self.backbone.forward_features(images, camids)
        saliency = self.saliency_from_outputs(full)
        masked = self.backbone.forward_features(images, camids, patch_transform=patch_transform(saliency))
        complement = self.backbone.forward_features(
            images, camids, patch_transform=patch_transform(saliency, complement=True))

        logits_full = self.heads(full)
        logits_masked = self.heads(masked)
        logits_complement = self.heads(complement)
        if training_storage_is_open():
            log_accuracy(logits_full["cls"].detach(), targets)
            get_event_storage().put_scalar("sps_mask_mean", saliency.detach().float().mean().item())

        losses = {}
        for name in logits_full:
            losses[f"loss_id_full_{name}"] = self.id_scale * cross_entropy_with_ignored_classes(
                logits_full[name], targets, epsilon=self.id_epsilon)
            losses[f"loss_id_masked_{name}"] = self.id_scale * cross_entropy_with_ignored_classes(
                logits_masked[name], targets, epsilon=self.id_epsilon)
        for name in ("cls", "proj"):
            if full.get(name) is not None:
                losses[f"loss_triplet_{name}"] = self.tri_scale * batch_hard_triplet_loss(
                    full[name], targets, margin=self.tri_margin)
        losses["loss_budget"] = self.budget_weight * budget_loss(saliency, self.rho)
        for name in logits_full:
            losses[f"loss_complement_{name}"] = self.complement_weight * complement_loss(
                logits_full[name], logits_complement[name])
        return losses


def training_storage_is_open():
    """True inside a fast-reid training loop (an EventStorage is open), so metrics can be logged."""
    return bool(events._CURRENT_STORAGE_STACK)
