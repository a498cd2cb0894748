"""CLIP-ReID-style baseline (issue 2; the "baseline" row of the paper's Table III) and CLIP-ReID proper.

BN-neck, ID loss (label-smoothed CE) on BN(v) and BN(v_p), batch-hard triplet on v and v_p; test descriptor
MODEL.DPMPP.DESCRIPTOR. With MODEL.DPMPP.TEXT_PROTOTYPES (Stage I's T) it is CLIP-ReID proper: plus the
image-to-text cross-entropy over v_p·Tᵀ (``loss_i2t``, weight MODEL.LOSSES.COARSE.SCALE, smoothing
MODEL.LOSSES.COARSE.EPSILON). With SPT attached, synthesised samples ignore their partner's class (SPEC §4.6)."""
from fastreid.modeling.heads import build_heads
from fastreid.modeling.losses.cross_entroy_loss import log_accuracy
from fastreid.modeling.meta_arch.build import META_ARCH_REGISTRY

from ..losses import batch_hard_triplet_loss, cross_entropy_with_ignored_classes
from ..stage3_synthesizer import spt_ignore_masks
from .vit_reid import ViTReIDMetaArch, head_config


@META_ARCH_REGISTRY.register()
class CLIPBaseline(ViTReIDMetaArch):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.heads = build_heads(head_config(cfg, self.backbone))
        self.id_epsilon = cfg.MODEL.LOSSES.ID.EPSILON
        self.id_scale = cfg.MODEL.LOSSES.ID.SCALE
        self.tri_margin = cfg.MODEL.LOSSES.TRI.MARGIN
        self.tri_scale = cfg.MODEL.LOSSES.TRI.SCALE
        self.i2t_scale, self.i2t_epsilon = cfg.MODEL.LOSSES.COARSE.SCALE, cfg.MODEL.LOSSES.COARSE.EPSILON

    def training_losses(self, outputs, targets, spt_info):
        ignored, excluded = spt_ignore_masks(spt_info)
        logits = self.heads(outputs)
        log_accuracy(logits["cls"].detach(), targets)
        losses = {}
        for name, branch_logits in logits.items():
            scale, epsilon, key = ((self.i2t_scale, self.i2t_epsilon, "loss_i2t") if name == "i2t"
                                   else (self.id_scale, self.id_epsilon, f"loss_id_{name}"))
            losses[key] = scale * cross_entropy_with_ignored_classes(branch_logits, targets, epsilon=epsilon,
                                                                     ignored_classes=ignored)
        for name in ("cls", "proj"):
            if outputs.get(name) is not None:
                losses[f"loss_triplet_{name}"] = self.tri_scale * batch_hard_triplet_loss(
                    outputs[name], targets, margin=self.tri_margin, excluded_negatives=excluded)
        return losses

    def neck_features(self, outputs):
        return self.heads.neck_features(outputs)
