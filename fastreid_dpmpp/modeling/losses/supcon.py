"""Stage I image-text supervised contrastive losses (SPEC §2), CLIP-ReID style: temperature 1, raw
(unnormalised) features."""
import torch.nn.functional as F

__all__ = ["supervised_contrastive_loss", "image_text_contrastive_loss"]


def supervised_contrastive_loss(anchors, contrasts, anchor_labels, contrast_labels):
    """L = −mean_i mean_{k: y_k = y_i} log softmax_k(a_i · c_k)   (temperature 1, SPEC §2).

    The softmax of anchor i runs over all contrasts k. Anchors with no positive contrast are left out
    of the mean (their inner mean is undefined); the loss is 0 if no anchor has a positive.

    Args:
        anchors: (B, D); contrasts: (K, D); anchor_labels: (B,); contrast_labels: (K,).
    """
    if (anchors.dim() != 2 or contrasts.dim() != 2 or anchors.shape[1] != contrasts.shape[1]
            or anchor_labels.shape != (anchors.shape[0],) or contrast_labels.shape != (contrasts.shape[0],)):
        raise ValueError(
            f"supcon.py: expected anchors (B, D), contrasts (K, D), labels (B,) and (K,); got "
            f"{tuple(anchors.shape)}, {tuple(contrasts.shape)}, {tuple(anchor_labels.shape)}, "
            f"{tuple(contrast_labels.shape)}"
        )
    log_probs = F.log_softmax((anchors @ contrasts.t()).float(), dim=1)
    positive = (anchor_labels.unsqueeze(1) == contrast_labels.unsqueeze(0)).to(log_probs.dtype)
    positives_per_anchor = positive.sum(dim=1)
    mean_positive_log_prob = (log_probs * positive).sum(dim=1) / positives_per_anchor.clamp_min(1)
    has_positive = positives_per_anchor > 0
    return -(mean_positive_log_prob * has_positive).sum() / has_positive.sum().clamp_min(1)


def image_text_contrastive_loss(image_features, text_features, labels):
    """SPEC §2: L = L_i2t + L_t2i, where text_features[b] is the text feature of identity labels[b]
    (one per image of the batch, as in CLIP-ReID stage 1).

    L_i2t: image anchors against the batch's texts; L_t2i: text anchors against the batch's images.
    """
    if image_features.shape[0] != text_features.shape[0]:
        raise ValueError(
            f"supcon.py: need one text feature per image, got {image_features.shape[0]} images and "
            f"{text_features.shape[0]} texts"
        )
    image_to_text = supervised_contrastive_loss(image_features, text_features, labels, labels)
    text_to_image = supervised_contrastive_loss(text_features, image_features, labels, labels)
    return image_to_text + text_to_image
