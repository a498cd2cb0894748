"""Masked prototypes (SPEC §5, Eq. 10) and the additive angular margin of L_mask (Eq. 15-16).

Notation: f̂_i = f_i/‖f_i‖ (BN-neck feature), P̂_c = P_c/‖P_c‖ (prototype), m_i ∈ (0,1)^D (HMG mask),
normalize(x) = x / max(‖x‖, 1e-12) as in ``F.normalize``.
"""
import math

import torch
import torch.nn.functional as F

from ...masked_cosine import MASK_SIDES, masked_cosine

__all__ = ["arcface_logits", "masked_prototypes", "masked_prototype_cosine", "MASK_SIDES"]


def arcface_logits(cosine, targets, scale=30.0, margin=0.5):
    """Eq. 16: target logit s·cos(θ_y + m), other logits s·cos θ_c, with cos θ = ``cosine``.

    Edge case θ + m > π (where cos(θ+m) would start increasing again): the standard ArcFace fallback
    (insightface, used by DPM's ``MArcface`` with easy_margin off) is applied:
        target = cos(θ + m)           if θ < π − m   (i.e. cos θ > cos(π − m) = −cos m)
        target = cos θ − m·sin m      otherwise      (m·sin(π − m) = m·sin m)
    Both branches decrease in θ; at θ = π − m the value drops from −1 to −cos m − m·sin m ≤ −1
    (cos m + m·sin m ≥ 1 on [0, π/2]), so the target logit is monotonically non-increasing in θ on
    [0, π] and finite everywhere (e.g. θ = π, m = 0.5: s·(−1 − 0.5·sin 0.5) = s·(−1.23971)).

    Args:
        cosine: (B, C) cosines in [−1, 1] (clamped here).
        targets: (B,) long.
        scale: s. margin: m in [0, π/2].
    Returns:
        (B, C) logits, float32 (float64 if ``cosine`` is).
    """
    if cosine.dim() != 2 or targets.shape != (cosine.shape[0],):
        raise ValueError(
            f"arcface.py: expected cosine (B, C) and targets (B,), got {tuple(cosine.shape)} and "
            f"{tuple(targets.shape)}"
        )
    if not 0.0 <= margin <= math.pi / 2:
        raise ValueError(f"arcface.py: margin must be in [0, pi/2], got {margin}")
    # at least float32: the 1e-12 clamp below underflows in fp16
    cosine = cosine.to(torch.promote_types(cosine.dtype, torch.float32)).clamp(-1.0, 1.0)
    target_cos = cosine.gather(1, targets.unsqueeze(1))
    # clamp_min keeps the sqrt gradient finite at cos θ = ±1 (its gradient is then 0, not inf·0).
    target_sin = (1.0 - target_cos * target_cos).clamp_min(1e-12).sqrt()
    with_margin = target_cos * math.cos(margin) - target_sin * math.sin(margin)
    fallback = target_cos - margin * math.sin(margin)
    target_logit = torch.where(target_cos > -math.cos(margin), with_margin, fallback)
    logits = cosine.scatter(1, targets.unsqueeze(1), target_logit)
    return scale * logits


def _check_shapes(prototypes, masks, features=None):
    if prototypes.dim() != 2 or masks.dim() != 2 or masks.shape[1] != prototypes.shape[1]:
        raise ValueError(
            f"arcface.py: expected prototypes (C, D) and masks (B, D), got {tuple(prototypes.shape)} and "
            f"{tuple(masks.shape)}"
        )
    if features is not None and features.shape != masks.shape:
        raise ValueError(
            f"arcface.py: features must be (B, D) like masks {tuple(masks.shape)}, got {tuple(features.shape)}"
        )


def masked_prototypes(prototypes, masks, before_norm=True):
    """Eq. 10 explicitly, (B, C, D): p̃_{i,c} = normalize(m_i ⊙ P̂_c) (before_norm=True), or
    m_i ⊙ P̂_c without re-normalising (before_norm=False). Memory B·C·D: for tests and pictures; the
    training loss uses ``masked_prototype_cosine``."""
    _check_shapes(prototypes, masks)
    unit_prototypes = F.normalize(prototypes, dim=1)
    masked = masks.unsqueeze(1) * unit_prototypes.unsqueeze(0)
    return F.normalize(masked, dim=2) if before_norm else masked


def masked_prototype_cosine(features, prototypes, masks, side="prototype", before_norm=True):
    """cos_{i,c} (B, C) of L_mask (Eq. 15) with the masked prototypes of Eq. 10 (or the Table IV placement
    ``side`` / ``before_norm``), in closed form: ``fastreid_dpmpp.masked_cosine``, the same function that
    scores masked matching at test (SPEC §6).

    Args:
        features: (B, D); prototypes: (C, D); masks: (B, D).
    """
    _check_shapes(prototypes, masks, features)
    return masked_cosine(features, prototypes, masks, side=side, before_norm=before_norm)
