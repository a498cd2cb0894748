"""DPM++ losses as plain torch functions, one per SPEC equation."""
from .arcface import MASK_SIDES, arcface_logits, masked_prototype_cosine, masked_prototypes
from .cross_entropy import cross_entropy_with_ignored_classes
from .hem import head_orthogonality_loss
from .sps_losses import budget_loss, complement_loss
from .supcon import image_text_contrastive_loss, supervised_contrastive_loss
from .triplet import batch_hard_triplet_loss, pairwise_euclidean_distance

__all__ = [
    "MASK_SIDES",
    "arcface_logits",
    "batch_hard_triplet_loss",
    "budget_loss",
    "complement_loss",
    "cross_entropy_with_ignored_classes",
    "head_orthogonality_loss",
    "image_text_contrastive_loss",
    "masked_prototype_cosine",
    "masked_prototypes",
    "pairwise_euclidean_distance",
    "supervised_contrastive_loss",
]
