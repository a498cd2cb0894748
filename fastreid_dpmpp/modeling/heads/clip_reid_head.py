"""CLIP-ReID baseline head: BN-necks and ID classifiers on v and v_p."""
from fastreid.modeling.heads.build import REID_HEADS_REGISTRY
from torch import nn

from .bnneck import BNNeck, linear_classifier


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

    def forward(self, outputs):
        logits = {"cls": self.classifier(self.bottleneck(outputs["cls"]))}
        if self.has_proj:
            logits["proj"] = self.classifier_proj(self.bottleneck_proj(outputs["proj"]))
        return logits
