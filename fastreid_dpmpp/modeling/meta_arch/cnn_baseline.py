"""``CNNBaseline``: fast-reid's stock ``Baseline``, plus the two things a CNN project with the DPM head needs
(projects/DPMHeadCNN):

* **L_id's slot.** In the stock ``Baseline`` the DPM head's ``cls_outputs`` are the ArcFace logits of the masked
  prototypes (L_mask, fast-reid's "CrossEntropyLoss"), and the plain prototype loss L_id = CE(f·Pᵀ) (Eq. 14) has
  no slot. With "IdLoss" in MODEL.LOSSES.NAME (a name the stock Baseline ignores) this class adds
  ``loss_id`` = MODEL.LOSSES.ID.SCALE · CE(``pred_class_logits`` = f·Pᵀ, label smoothing MODEL.LOSSES.ID.EPSILON),
  as the ``DPMPP`` meta-architecture does. Without "IdLoss" the losses are exactly the stock Baseline's.
* **Named features** for the evaluation protocol (``engine/protocol_eval.py``), like the ViT meta-archs':
  ``named_features(batch)`` -> {"v": the head's pooled (and, for the DPM head, reduced) feature,
  "bn_v": the BN-neck feature (what the head returns in eval), "mask": the HMG mask when the head has one}.

Heads: fast-reid's ``EmbeddingHead`` (BagTricks) and ``DPMHead`` (map mode). Training and eval forward are the
stock ``Baseline``'s.
"""
import torch
from fastreid.modeling.heads import EmbeddingHead
from fastreid.modeling.meta_arch.baseline import Baseline
from fastreid.modeling.meta_arch.build import META_ARCH_REGISTRY

from ..backbones.tapped_cnn import TAPPED_BACKBONES
from ..heads.dpm_head import DPMHead
from ..losses import cross_entropy_with_ignored_classes

__all__ = ["CNNBaseline", "ID_LOSS"]

ID_LOSS = "IdLoss"


@META_ARCH_REGISTRY.register()
class CNNBaseline(Baseline):
    """See the module docstring."""

    @classmethod
    def from_config(cls, cfg):
        kwargs = super().from_config(cfg)
        heads, names = kwargs["heads"], cfg.MODEL.LOSSES.NAME
        if not isinstance(heads, (EmbeddingHead, DPMHead)):
            raise ValueError(f"CNNBaseline supports MODEL.HEADS.NAME EmbeddingHead or DPMHead, got {cfg.MODEL.HEADS.NAME}")
        layout = TAPPED_BACKBONES.get(cfg.MODEL.BACKBONE.NAME)
        if isinstance(heads, EmbeddingHead) and layout is not None and layout(cfg).extra_channels:
            raise ValueError(f"EmbeddingHead reads the final map only, but {cfg.MODEL.BACKBONE.NAME} packs the taps of "
                             f"MODEL.BACKBONE.TAP_STAGES={tuple(cfg.MODEL.BACKBONE.TAP_STAGES)} before it: list only "
                             f"the final stage (e.g. (8,) for EfficientNet-Lite0, (4,) for ResNet)")
        if ID_LOSS in names and not (isinstance(heads, DPMHead) and heads.masked_prototype is not None):
            raise ValueError(f"MODEL.LOSSES.NAME lists {ID_LOSS!r} (L_id on the DPM head's f·Pᵀ next to its L_mask), "
                             f"but with {cfg.MODEL.HEADS.NAME}" +
                             (" without the DPM branch" if isinstance(heads, DPMHead) else "") +
                             " fast-reid's CrossEntropyLoss already is the identity loss: remove it")
        kwargs["loss_kwargs"]["id"] = {"scale": cfg.MODEL.LOSSES.ID.SCALE, "eps": cfg.MODEL.LOSSES.ID.EPSILON}
        return kwargs

    def losses(self, outputs, gt_labels):
        loss_dict = super().losses(outputs, gt_labels)
        if ID_LOSS in self.loss_kwargs["loss_names"]:
            kwargs = self.loss_kwargs["id"]
            loss_dict["loss_id"] = kwargs["scale"] * cross_entropy_with_ignored_classes(
                outputs["pred_class_logits"], gt_labels, epsilon=kwargs["eps"])
        return loss_dict

    @torch.no_grad()
    def named_features(self, batched_inputs, use_cameras=False, with_patch_tokens=False):
        """{"v", "bn_v"[, "mask"]} of a batch in eval mode (module docstring). A CNN has no camera embedding
        (``use_cameras`` changes nothing) and no patch tokens."""
        if with_patch_tokens:
            raise ValueError("CNNBaseline has no patch tokens: the spatial-visibility reference (--sps-weights) "
                             "needs a ViT model")
        if self.training:
            raise RuntimeError("named_features is an evaluation call: put the model in eval mode first")
        feature_map = self.backbone(self.preprocess_image(batched_inputs))
        head = self.heads
        if isinstance(head, DPMHead):
            pooled = head.pool_layer(head.map_layout.split(feature_map)[1])[..., 0, 0]
            v = head.embedding(pooled) if head.embedding is not None else pooled
            features = {"v": v, "bn_v": head.bottleneck(v)}
            if head.mask_generator is not None:
                features["mask"] = head.mask_from(feature_map)
            return features
        pooled = head.pool_layer(feature_map)
        return {"v": pooled[..., 0, 0], "bn_v": head.bottleneck(pooled)[..., 0, 0]}
