"""Attention analyses of a ReIDViT backbone (paper Fig. 3), batched over images, heads and blocks.

* Fig. 3a — head correlation (SPEC §5, Eq. 18-19, the quantity HEM regularises): A_b (h, N) = the last block's
  class-token → patch attention logits of image b, Â_b = A_b with every head's row L2-normalised over the N
  patches, C_b = Â_b Â_bᵀ (h, h): the cosine similarity of every pair of heads (diagonal 1). The figure shows
  C averaged over images.
* Fig. 3b — patch-token similarity by depth (over-smoothing): for block l and image b,
  s_{l,b} = mean over ordered pairs i ≠ j of cos(t_{l,b,i}, t_{l,b,j}) over the N patch tokens output by block l
  (before the final norm); the curve is s_l averaged over images.

The per-block tokens come from the backbone's own "taps" output (``ReIDViT.forward_features``), with every block
tapped for the duration of one call (:func:`block_patch_tokens`).
"""
import logging

import torch
import torch.nn.functional as F

logger = logging.getLogger("fastreid.dpmpp.analysis.attention")

__all__ = ["head_correlation", "mean_head_correlation", "off_diagonal_mean", "token_similarity",
           "block_patch_tokens", "AttentionStatistics"]


def _check_rank(tensor, rank, name, expected):
    if not torch.is_tensor(tensor) or tensor.dim() != rank:
        shape = tuple(tensor.shape) if torch.is_tensor(tensor) else type(tensor).__name__
        raise ValueError(f"fastreid_dpmpp/analysis/attention.py: {name} must be {expected}, got {shape}")


def head_correlation(attn_logits):
    """Per-image head correlation C_b = Â_b Â_bᵀ (Eq. 18-19 without the identity): (B, h, N) -> (B, h, h).

    Â_b: each head's logits row L2-normalised over the patches (an all-zero row stays zero, so its
    correlations, diagonal included, are 0)."""
    _check_rank(attn_logits, 3, "attn_logits", "(B, h, N) class-token attention logits")
    unit_rows = F.normalize(attn_logits.float(), dim=2)
    return unit_rows @ unit_rows.transpose(1, 2)


def mean_head_correlation(attn_logits):
    """C averaged over the B images: (B, h, N) -> (h, h)."""
    return head_correlation(attn_logits).mean(dim=0)


def off_diagonal_mean(correlation):
    """Mean of the off-diagonal entries of (..., h, h) matrices -> (...): one number for "how redundant the
    heads are" (0 = orthogonal heads, 1 = identical heads)."""
    if not torch.is_tensor(correlation) or correlation.dim() < 2 or correlation.shape[-1] != correlation.shape[-2]:
        shape = tuple(correlation.shape) if torch.is_tensor(correlation) else type(correlation).__name__
        raise ValueError(f"fastreid_dpmpp/analysis/attention.py: off_diagonal_mean needs (..., h, h) matrices, "
                         f"got {shape}")
    heads = correlation.shape[-1]
    if heads < 2:
        raise ValueError("fastreid_dpmpp/analysis/attention.py: off_diagonal_mean needs at least 2 heads")
    total = correlation.sum(dim=(-2, -1)) - correlation.diagonal(dim1=-2, dim2=-1).sum(dim=-1)
    return total / (heads * (heads - 1))


def token_similarity(tokens):
    """Mean pairwise cosine similarity of the tokens of each set: (..., N, D) -> (...), pairs i ≠ j.

    With unit tokens t̂: Σ_{i≠j} t̂_i·t̂_j = ‖Σ_i t̂_i‖² − Σ_i ‖t̂_i‖², so no (N, N) matrix is formed.
    An all-zero token has cosine 0 with every other token."""
    if not torch.is_tensor(tokens) or tokens.dim() < 2:
        shape = tuple(tokens.shape) if torch.is_tensor(tokens) else type(tokens).__name__
        raise ValueError(f"fastreid_dpmpp/analysis/attention.py: tokens must be (..., N, D), got {shape}")
    count = tokens.shape[-2]
    if count < 2:
        raise ValueError(f"fastreid_dpmpp/analysis/attention.py: token_similarity needs at least 2 tokens, "
                         f"got N={count}")
    unit = F.normalize(tokens.double(), dim=-1)
    all_pairs = unit.sum(dim=-2).pow(2).sum(dim=-1)
    self_pairs = unit.pow(2).sum(dim=(-2, -1))
    return ((all_pairs - self_pairs) / (count * (count - 1))).float()


def _check_vit(backbone):
    missing = [name for name in ("tap_indices", "depth", "forward_features") if not hasattr(backbone, name)]
    if missing:
        raise TypeError(f"fastreid_dpmpp/analysis/attention.py: the attention analyses need a ReIDViT backbone "
                        f"(MODEL.BACKBONE.NAME build_clip_vit_backbone); {type(backbone).__name__} has no "
                        f"{', '.join(missing)}")


@torch.no_grad()
def block_patch_tokens(backbone, images, camids=None):
    """One forward pass of a ReIDViT with every block tapped.

    images: normalised (B, 3, H, W). Returns (outputs, tokens): ``forward_features``'s dict (its
    "attn_logits" (B, h, N) are the last block's) and the patch tokens output by every block, before the final
    norm, stacked to (L, B, N, D). The backbone's own taps are restored afterwards, even on error."""
    _check_vit(backbone)
    configured = backbone.tap_indices
    backbone.tap_indices = list(range(backbone.depth))
    try:
        outputs = backbone.forward_features(images, camids)
    finally:
        backbone.tap_indices = configured
    return outputs, torch.stack(outputs["taps"])


class AttentionStatistics:
    """Running image averages of the head correlation (h, h) and the token similarity per block (L,), fed batch
    by batch (``update``) so that any number of images fits in memory."""

    def __init__(self):
        self.count = 0
        self._correlation_sum = None
        self._similarity_sum = None

    @torch.no_grad()
    def update(self, backbone, images, camids=None):
        """Add a batch of normalised images (B, 3, H, W)."""
        outputs, tokens = block_patch_tokens(backbone, images, camids)
        correlation = head_correlation(outputs["attn_logits"]).sum(dim=0).double().cpu()
        similarity = token_similarity(tokens).double().sum(dim=1).cpu()          # (L, B) -> (L,)
        if self._correlation_sum is None:
            self._correlation_sum, self._similarity_sum = correlation, similarity
        else:
            self._correlation_sum += correlation
            self._similarity_sum += similarity
        self.count += images.shape[0]

    def result(self):
        """dict: ``head_correlation`` (h, h), ``head_off_diagonal`` (float), ``token_similarity`` (L,) — means over
        the images seen — and ``num_images``."""
        if not self.count:
            raise ValueError("fastreid_dpmpp/analysis/attention.py: AttentionStatistics.result() before any update()")
        correlation = (self._correlation_sum / self.count).float()
        return {"head_correlation": correlation, "head_off_diagonal": float(off_diagonal_mean(correlation)),
                "token_similarity": (self._similarity_sum / self.count).float(), "num_images": self.count}
