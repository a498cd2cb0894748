"""DPM++ Stage III meta-architecture (SPEC §5-§6): CLIP/vanilla ViT backbone + DPM head + all losses.

Training returns fast-reid's loss dict (the trainer sums it and logs every key):

    loss_coarse        L_coarse = CE(v_p·Tᵀ)                (Eq. 13; only with MODEL.DPMPP.TEXT_PROTOTYPES)
    loss_id            L_id     = CE(f·Pᵀ)                   (Eq. 14)
    loss_mask          λ·L_mask = λ·CE(ArcFace(cos))         (Eq. 15-16; DPM branch on)
    loss_triplet_cls   L_tri on v, loss_triplet_proj L_tri on v_p (Eq. 17; v_p: CLIP only)
    loss_hem           γ·L_hem                               (Eq. 18-19; MODEL.LOSSES.HEM.ENABLED)

Weights/hyper-parameters: MODEL.LOSSES.{COARSE,ID}.{SCALE,EPSILON}, MODEL.LOSSES.MASK.{SCALE (λ), S, M},
MODEL.LOSSES.TRI.{SCALE, MARGIN}, MODEL.LOSSES.HEM.SCALE (γ). With SPT attached, every CE drops the
partner's class of a synthesised sample and the triplet drops the partner's identity from its negatives
(SPEC §4.6).

Eval returns ONE tensor so that fast-reid's flip averaging and ``ReidEvaluator.process`` keep working:
the descriptor (SPEC §1), or, with masked matching (TEST.MASKED_MATCHING.ENABLED and a mask generator),
``pack_descriptor_and_mask(descriptor, m)`` = cat([g, m̄]) with the mask laid over the v part of
g = concat[v, v_p] (the v_p part is compared unmasked), or over the v_p part when the text prototypes
are masked (MASKED_PROTOTYPE "text", D_m = D_t).
"""
import logging

from fastreid.modeling.heads import build_heads
from fastreid.modeling.losses.cross_entroy_loss import log_accuracy
from fastreid.modeling.meta_arch.build import META_ARCH_REGISTRY

from ...evaluation.masked_evaluator import pack_descriptor_and_mask
from ..heads.dpm_head import TOKEN_BACKBONES, emits_query_masks
from ..losses import batch_hard_triplet_loss, cross_entropy_with_ignored_classes, head_orthogonality_loss
from .clip_baseline import spt_ignore_masks
from .vit_reid import ViTReIDMetaArch, head_config

__all__ = ["DPMPP"]

logger = logging.getLogger("fastreid.dpmpp.meta_arch")


@META_ARCH_REGISTRY.register()
class DPMPP(ViTReIDMetaArch):
    def __init__(self, cfg):
        if cfg.MODEL.HEADS.NAME != "DPMHead":
            raise ValueError(f"META_ARCHITECTURE DPMPP needs MODEL.HEADS.NAME 'DPMHead', got {cfg.MODEL.HEADS.NAME!r}")
        if cfg.MODEL.BACKBONE.NAME not in TOKEN_BACKBONES:
            raise ValueError(f"META_ARCHITECTURE DPMPP needs a ViT backbone with patch tokens "
                             f"(MODEL.BACKBONE.NAME in {TOKEN_BACKBONES}), got {cfg.MODEL.BACKBONE.NAME!r}; "
                             "CNN backbones run the DPMHead in fast-reid's Baseline")
        super().__init__(cfg)
        self.heads = build_heads(head_config(cfg, self.backbone))
        losses = cfg.MODEL.LOSSES
        self.coarse_scale, self.coarse_epsilon = losses.COARSE.SCALE, losses.COARSE.EPSILON
        self.id_scale, self.id_epsilon = losses.ID.SCALE, losses.ID.EPSILON
        self.mask_scale = losses.MASK.SCALE
        self.mask_epsilon = losses.MASK.get("EPSILON", 0.0)  # DPM: no label smoothing on the margin branch
        self.tri_scale, self.tri_margin = losses.TRI.SCALE, losses.TRI.MARGIN
        self.hem_enabled, self.hem_scale = bool(losses.HEM.ENABLED), losses.HEM.SCALE
        self.masked_matching = emits_query_masks(cfg)
        self.mask_offset = self._mask_offset(cfg) if self.masked_matching else None

    def _mask_offset(self, cfg):
        """First descriptor dim the mask acts on: 0 (mask over v) or D (mask over v_p, text prototypes)."""
        if cfg.MODEL.DPMPP.MASKED_PROTOTYPE != "text":
            return 0
        if self.descriptor != "concat":
            raise ValueError("TEST.MASKED_MATCHING with MODEL.DPMPP.MASKED_PROTOTYPE 'text' masks the v_p part of "
                             "the descriptor: it needs MODEL.DPMPP.DESCRIPTOR 'concat' and a CLIP backbone "
                             "(or set TEST.MASKED_MATCHING.ENABLED False)")
        return self.backbone.width

    def training_losses(self, outputs, targets, spt_info):
        ignored, excluded = spt_ignore_masks(spt_info)
        head = self.heads(outputs, targets)
        log_accuracy(head["id_logits"].detach(), targets)

        def ce(logits, epsilon):
            return cross_entropy_with_ignored_classes(logits, targets, epsilon=epsilon, ignored_classes=ignored)

        losses = {}
        if head["coarse_logits"] is not None:
            losses["loss_coarse"] = self.coarse_scale * ce(head["coarse_logits"], self.coarse_epsilon)
        losses["loss_id"] = self.id_scale * ce(head["id_logits"], self.id_epsilon)
        if head["mask_logits"] is not None:
            losses["loss_mask"] = self.mask_scale * ce(head["mask_logits"], self.mask_epsilon)
        for name in ("cls", "proj"):
            if outputs.get(name) is not None:
                losses[f"loss_triplet_{name}"] = self.tri_scale * batch_hard_triplet_loss(
                    outputs[name], targets, margin=self.tri_margin, excluded_negatives=excluded)
        if self.hem_enabled:
            losses["loss_hem"] = self.hem_scale * head_orthogonality_loss(outputs["attn_logits"])
        return losses

    def inference_outputs(self, outputs):
        descriptor = self.test_descriptor(outputs)
        if not self.masked_matching:
            return descriptor
        return pack_descriptor_and_mask(descriptor, self.heads.mask_from(outputs), self.mask_offset)
