"""CLIP-ReID baseline head: BN-necks and ID classifiers on v and v_p, and (CLIP-ReID proper) the frozen Stage I
text prototypes T for the image-to-text loss."""
from fastreid.modeling.heads.build import REID_HEADS_REGISTRY
from torch import nn

from .bnneck import BNNeck, linear_classifier
from .dpm_head import load_frozen_text_prototypes


@REID_HEADS_REGISTRY.register()
class CLIPReIDHead(nn.Module):
    """Logits of BN(v) and, when the backbone has a CLIP projection, of BN(v_p)."""

    def __init__(self, cfg):
        super().__init__()
        feat_dim, proj_dim = cfg.MODEL.BACKBONE.FEAT_DIM, cfg.MODEL.HEADS.EMBEDDING_DIM
        num_classes = cfg.MODEL.HEADS.NUM_CLASSES
        self.bottleneck = BNNeck(feat_dim)
        self.classifier = linear_classifier(feat_dim, num_classes)
        self.has_proj = proj_dim > 0
        if self.has_proj:
            self.bottleneck_proj = BNNeck(proj_dim)
            self.classifier_proj = linear_classifier(proj_dim, num_classes)
        path = cfg.MODEL.DPMPP.TEXT_PROTOTYPES if num_classes > 0 else ""   # T only serves training
        if path and not self.has_proj:
            raise ValueError("MODEL.DPMPP.TEXT_PROTOTYPES (CLIP-ReID's image-to-text loss) needs the CLIP projection "
                             "v_p: a CLIP-family backbone")
        # frozen (a buffer), saved with the model: CLIP-ReID's Stage 2 keeps the text features fixed
        self.register_buffer("text_prototypes", load_frozen_text_prototypes(path, num_classes, proj_dim) if path
                             else None, persistent=True)

    def neck_features(self, outputs):
        """{"bn_v": BN(v), "bn_vp": BN(v_p)} (the latter with a CLIP projection)."""
        features = {"bn_v": self.bottleneck(outputs["cls"])}
        if self.has_proj and outputs.get("proj") is not None:
            features["bn_vp"] = self.bottleneck_proj(outputs["proj"])
        return features

    def forward(self, outputs):
        """{"cls": BN(v)·W, "proj": BN(v_p)·W_p} and, with T, "i2t": v_p·Tᵀ (CLIP-ReID's image-to-text logits)."""
        logits = {"cls": self.classifier(self.bottleneck(outputs["cls"]))}
        if self.has_proj:
            logits["proj"] = self.classifier_proj(self.bottleneck_proj(outputs["proj"]))
        if self.text_prototypes is not None:
            logits["i2t"] = outputs["proj"] @ self.text_prototypes.t().to(outputs["proj"].dtype)
        return logits
