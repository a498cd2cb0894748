"""Stage II (Salient Patch Selection) regularisers (SPEC §3, Eq. 22-23)."""
import torch.nn.functional as F

__all__ = ["budget_loss", "complement_loss"]


def budget_loss(saliency, rho=0.3):
    """Eq. 22: L_budget = ((1/(B·N)) Σ_b Σ_i M_{b,i} − ρ)², a batch-level (not per-image) budget.

    Args:
        saliency: (B, N) saliency scores M in (0, 1) (any shape: the mean runs over all entries).
        rho: target fraction ρ of salient patches.
    """
    if saliency.numel() == 0:
        raise ValueError("sps_losses.py: budget_loss got an empty saliency tensor")
    return (saliency.float().mean() - rho) ** 2


def complement_loss(logits_full, logits_complement):
    """Eq. 23's complement term: Σ_b ⟨softmax(z_full,b), softmax(z_complement,b)⟩, summed over the
    batch (as SPT does): the pass on the complement 1 − M must not predict the full image's identity.

    Args:
        logits_full, logits_complement: (B, C).
    """
    if logits_full.shape != logits_complement.shape or logits_full.dim() != 2:
        raise ValueError(
            f"sps_losses.py: expected two (B, C) logit tensors of the same shape, got "
            f"{tuple(logits_full.shape)} and {tuple(logits_complement.shape)}"
        )
    full = F.softmax(logits_full.float(), dim=1)
    complement = F.softmax(logits_complement.float(), dim=1)
    return (full * complement).sum()
