"""Head Enrich Module loss (SPEC §5, Eq. 18-19): decorrelates the class-token attention of the heads."""
import torch
import torch.nn.functional as F

__all__ = ["head_orthogonality_loss", "HEM_REDUCTIONS"]


HEM_REDUCTIONS = ("mean", "sum")


def head_orthogonality_loss(attn_logits, reduction="mean"):
    """Eq. 18-19: L_hem = mean_b ‖Â_b Â_bᵀ − I_h‖²_F / h² (``reduction`` "mean", SPEC) or the sum over the batch
    ("sum", DPM's code: γ is then in effect B times larger).

    A_b (h, N) = the last block's class-token → patch attention logits of image b (before softmax);
    Â_b = A_b with every head's row L2-normalised over the N patches. The Gram matrix Â_b Â_bᵀ holds the
    cosine similarity of every pair of heads; its diagonal is 1, so only the off-diagonal correlations
    are penalised.

    Args:
        attn_logits: (B, h, N).
        reduction: "mean" or "sum" over the batch (MODEL.LOSSES.HEM.REDUCTION).
    Returns:
        scalar loss.
    """
    if reduction not in HEM_REDUCTIONS:
        raise ValueError(f"hem.py: MODEL.LOSSES.HEM.REDUCTION must be one of {HEM_REDUCTIONS}, got {reduction!r}")
    if attn_logits.dim() != 3:
        raise ValueError(f"hem.py: expected attention logits (B, h, N), got {tuple(attn_logits.shape)}")
    num_heads = attn_logits.shape[1]
    unit_rows = F.normalize(attn_logits.float(), dim=2)
    gram = unit_rows @ unit_rows.transpose(1, 2)
    identity = torch.eye(num_heads, device=gram.device, dtype=gram.dtype)
    squared_frobenius = (gram - identity).pow(2).sum(dim=(1, 2))
    per_image = squared_frobenius / (num_heads * num_heads)
    return per_image.mean() if reduction == "mean" else per_image.sum()
