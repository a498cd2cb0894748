"""The masked cosine of DPM++, one closed form for training and test (pure torch, no project imports).

Eq. 10 / 15 (training): cos_{i,c} = ⟨f̂_i, normalize(m_i ⊙ P̂_c)⟩ between an image feature and every prototype;
SPEC §6 (test): sim(q, g) = ⟨q̂, normalize(m_q ⊙ ĝ)⟩ between a query and every gallery descriptor, the query's
mask acting on the gallery side exactly as the image's mask acts on the prototype side in training.

Placements (paper Table IV; ⟨·,·⟩ the dot product, x̂ = x/‖x‖, m the mask of the row image):
  side="prototype", before_norm=True  (Eq. 10 / §6): ⟨f̂, normalize(m⊙P̂)⟩ = [(f̂⊙m)·P̂] / sqrt[(m⊙m)·(P̂⊙P̂)]
  side="prototype", before_norm=False: ⟨f̂, m⊙P̂⟩ = (f̂⊙m)·P̂
  side="feature",   before_norm=True : ⟨normalize(m⊙f̂), P̂⟩ = [(f̂⊙m)·P̂] / ‖m⊙f̂‖
  side="feature",   before_norm=False: ⟨m⊙f̂, P̂⟩ = (f̂⊙m)·P̂   (the same value as prototype / False)
  side="both",      before_norm=True : ⟨normalize(m⊙f̂), normalize(m⊙P̂)⟩ = [(f̂⊙m⊙m)·P̂] / (‖m⊙f̂‖·‖m⊙P̂‖)
  side="both",      before_norm=False: ⟨m⊙f̂, m⊙P̂⟩ = (f̂⊙m⊙m)·P̂
Every (row, column) value is a matrix product; no (B, C, D) tensor is built. A mask of ones gives the cosine.
"""
import torch
import torch.nn.functional as F

__all__ = ["MASK_SIDES", "NORM_EPS", "masked_cosine"]

MASK_SIDES = ("prototype", "feature", "both")
NORM_EPS = 1e-12   # F.normalize's eps: the closed forms equal the explicit normalisations


def _safe_sqrt(squared_norm):
    return squared_norm.clamp_min(NORM_EPS * NORM_EPS).sqrt()


def masked_cosine(features, prototypes, masks, side="prototype", before_norm=True):
    """(B, D) features, (B, D) masks and (C, D) prototypes -> (B, C); or (B, K, D) per-row candidates -> (B, K).

    Inputs are L2-normalised here (f̂, P̂); computed in float32 at least."""
    if side not in MASK_SIDES:
        raise ValueError(f"masked_cosine: side must be one of {MASK_SIDES}, got {side!r}")
    if features.dim() != 2 or masks.shape != features.shape or prototypes.shape[-1] != features.shape[1] \
            or prototypes.dim() not in (2, 3) or (prototypes.dim() == 3 and prototypes.shape[0] != features.shape[0]):
        raise ValueError(f"masked_cosine: expected features (B, D), masks (B, D) and prototypes (C, D) or (B, K, D), "
                         f"got {tuple(features.shape)}, {tuple(masks.shape)}, {tuple(prototypes.shape)}")
    dtype = torch.promote_types(features.dtype, torch.float32)
    unit_features = F.normalize(features.to(dtype), dim=1)
    unit_prototypes = F.normalize(prototypes.to(dtype), dim=-1)
    masks = masks.to(dtype)

    def rows_dot(a, b):
        return a @ b.t() if b.dim() == 2 else torch.einsum("bd,bkd->bk", a, b)

    cosine = rows_dot(unit_features * (masks * masks if side == "both" else masks), unit_prototypes)
    if not before_norm:
        return cosine
    if side in ("prototype", "both"):
        cosine = cosine / _safe_sqrt(rows_dot(masks * masks, unit_prototypes * unit_prototypes))
    if side in ("feature", "both"):
        cosine = cosine / _safe_sqrt(((masks * unit_features) ** 2).sum(1, keepdim=True))
    return cosine
