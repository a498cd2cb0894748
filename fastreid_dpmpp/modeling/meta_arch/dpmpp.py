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

import torch
import torch.nn.functional as F
from fastreid.modeling.heads import build_heads
from fastreid.modeling.losses.cross_entroy_loss import log_accuracy
from fastreid.modeling.meta_arch.build import META_ARCH_REGISTRY

from ...model_outputs import emits_query_masks, pack_descriptor_and_mask
from ..heads.dpm_head import TOKEN_BACKBONES
from ..losses import batch_hard_triplet_loss, cross_entropy_with_ignored_classes, head_orthogonality_loss
from ..mask_supervision import SOURCES as SUPERVISION_SOURCES, agreement_target, mask_supervision_loss
from ..stage3_synthesizer import spt_ignore_masks
from .vit_reid import DESCRIPTORS, ViTReIDMetaArch, descriptor_layout, head_config

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
        self.hem_reduction = losses.HEM.REDUCTION
        self.masked_matching = emits_query_masks(cfg)
        self.masked_part = self._masked_part(cfg) if self.masked_matching else None
        self._init_mask_supervision(cfg.MODEL.LOSSES.MASK_SUPERVISION)

    def _init_mask_supervision(self, options):
        """MODEL.LOSSES.MASK_SUPERVISION [ours]: see ``modeling/mask_supervision.py``."""
        self.supervision = str(options.SOURCE) if options.ENABLED else None
        self.supervision_scale, self.supervision_keep = float(options.SCALE), float(options.KEEP)
        if self.supervision is None:
            return
        if self.supervision not in SUPERVISION_SOURCES:
            raise ValueError(f"MODEL.LOSSES.MASK_SUPERVISION.SOURCE must be one of {SUPERVISION_SOURCES}, "
                             f"got {self.supervision!r}")
        if self.heads.mask_generator is None:
            raise ValueError("MODEL.LOSSES.MASK_SUPERVISION needs a mask generator (MODEL.DPMPP.DPM_ENABLED True and "
                             "MASKED_PROTOTYPE 'visual' or 'text')")

    def _masked_part(self, cfg):
        """The descriptor part the query mask acts on: "vp" (text prototypes masked) or the v part ("v"/"bn_v")."""
        wanted = ("vp",) if cfg.MODEL.DPMPP.MASKED_PROTOTYPE == "text" else ("v", "bn_v")
        parts = [p for p in DESCRIPTORS[self.descriptor] if p in wanted]
        if not parts:
            raise ValueError(f"TEST.MASKED_MATCHING: the mask acts on {' or '.join(wanted)} (MODEL.DPMPP."
                             f"MASKED_PROTOTYPE {cfg.MODEL.DPMPP.MASKED_PROTOTYPE!r}), which MODEL.DPMPP.DESCRIPTOR "
                             f"{self.descriptor!r} does not contain; choose one of "
                             f"{[d for d, ps in DESCRIPTORS.items() if set(ps) & set(wanted)]} "
                             "(or set TEST.MASKED_MATCHING.ENABLED False)")
        return parts[0]

    @property
    def mask_span(self):
        """[start, stop) of the descriptor dims the query mask acts on (the rest of the packed mask is ones)."""
        widths = {"v": self.backbone.width, "bn_v": self.backbone.width, "vp": self.backbone.embed_dim or 0}
        parts = DESCRIPTORS[self.descriptor]
        start = sum(widths[p] for p in parts[:parts.index(self.masked_part)])
        return [start, start + widths[self.masked_part]]

    def training_forward(self, images, camids, targets):
        """The base class's pass (SPT synthesis, backbone, losses), plus the mask supervision [ours] when on."""
        spt_info = self.spt.synthesize(images, camids, targets) if self.spt is not None else None
        transform = spt_info["patch_transform"] if spt_info is not None else None
        outputs = self.backbone.forward_features(images, camids, patch_transform=transform,
                                                 visible_patches=self.training_visibility(images.shape[0]))
        head = self.heads(outputs, targets)
        losses = self.training_losses(outputs, targets, spt_info, head)
        if self.supervision is not None:
            losses["loss_mask_supervision"] = self.supervision_scale * self._mask_supervision(
                images, camids, targets, outputs, head, spt_info)
        return losses

    def _mask_space(self, outputs):
        """The feature the mask acts on, as the evaluator compares it: BN(v) with running statistics, or v_p."""
        if self.heads.masked_prototype == "text":
            return outputs["proj"]
        neck = self.heads.bottleneck
        return F.batch_norm(outputs["cls"], neck.running_mean, neck.running_var, neck.weight, neck.bias, False)

    def _mask_supervision(self, images, camids, targets, outputs, head, spt_info):
        if self.supervision == "prototype":
            prototypes = self.heads.text_prototypes if self.heads.masked_prototype == "text" else self.heads.prototypes
            target = agreement_target(self._mask_space(outputs), prototypes[targets], self.supervision_keep)
            return mask_supervision_loss(head["mask"], target)
        if spt_info is None:
            raise ValueError("MODEL.LOSSES.MASK_SUPERVISION.SOURCE 'spt_pairs' needs SPT (SPT.ENABLED True and "
                             "SPT.SPS_WEIGHTS)")
        rows = spt_info["partners"] >= 0
        if not bool(rows.any()):
            return head["mask"].sum() * 0.0
        with torch.no_grad():
            clean = self.backbone.forward_features(images[rows], camids[rows] if camids is not None else None)
        target = torch.zeros_like(head["mask"])
        target[rows] = agreement_target(self._mask_space(outputs)[rows], self._mask_space(clean),
                                        self.supervision_keep)
        return mask_supervision_loss(head["mask"], target, rows)

    def training_losses(self, outputs, targets, spt_info, head=None):
        ignored, excluded = spt_ignore_masks(spt_info)
        head = self.heads(outputs, targets) if head is None else head
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
            losses["loss_hem"] = self.hem_scale * head_orthogonality_loss(outputs["attn_logits"], self.hem_reduction)
        return losses

    def neck_features(self, outputs):
        features = {"bn_v": self.heads.bottleneck(outputs["cls"])}
        mask = self.heads.mask_from(outputs)
        if mask is not None:
            features["mask"] = mask
        return features

    def inference_outputs(self, outputs):
        if not self.masked_matching:
            return self.test_descriptor(outputs)
        features = self.features_of(outputs)
        descriptor, offsets = descriptor_layout(self.descriptor, features)
        return pack_descriptor_and_mask(descriptor, features["mask"], offsets[self.masked_part])
