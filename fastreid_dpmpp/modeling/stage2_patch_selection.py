"""Stage II — SPS: salient patch selection (SPEC §3).

``SalientPatchSelector`` is the decision layer of Eq. 3: a 1×1 convolution over the concatenated tapped patch
tokens followed by a sigmoid, giving one saliency score per patch. Its input is detached, so the decision layer
never trains the backbone; it learns through the masked / complement forward passes (Eq. 4) and the budget loss.

``mask_patch_tokens`` / ``complement_patch_tokens`` are the Eq. 4 multiplications, meant as the backbone's
``patch_transform`` (patch tokens (B, N, D) -> (B, N, D), applied right after the patch embedding, before the
class token and position embedding): ``functools.partial(mask_patch_tokens, saliency=m)`` or
``patch_transform(m)`` / ``patch_transform(m, complement=True)``.
"""
import functools
import logging

import torch
from torch import nn

_FILE = "fastreid_dpmpp/modeling/stage2_patch_selection.py"  # named in error messages
logger = logging.getLogger("fastreid.dpmpp.sps")

__all__ = ["SalientPatchSelector", "mask_patch_tokens", "complement_patch_tokens", "patch_transform"]


class SalientPatchSelector(nn.Module):
    """Decision layer, Eq. 3: M = σ(W_d [Z_a; Z_b; Z_c; Z_d]) ∈ (0, 1)^N.

    dim: D, width of each tap; num_taps: number of tapped blocks (4 by default, MODEL.VIT.TAPS).
    forward(taps) takes a list of num_taps patch-token tensors (B, N, D) (class token removed) and returns the
    saliency (B, N). The concatenated input is detached [pred].
    """

    def __init__(self, dim, num_taps=4):
        super().__init__()
        if int(dim) <= 0 or int(num_taps) <= 0:
            raise ValueError(
                f"{_FILE} SalientPatchSelector: dim and num_taps must be positive, "
                f"got dim={dim}, num_taps={num_taps}"
            )
        self.dim = int(dim)
        self.num_taps = int(num_taps)
        self.decision = nn.Conv1d(self.num_taps * self.dim, 1, kernel_size=1)  # W_d, one score per patch

    def _concatenate(self, taps):
        if len(taps) != self.num_taps:
            raise ValueError(
                f"{_FILE} SalientPatchSelector: expected {self.num_taps} tapped token tensors "
                f"(MODEL.VIT.TAPS), got {len(taps)}"
            )
        shapes = {tuple(t.shape) for t in taps}
        if len(shapes) != 1 or taps[0].dim() != 3 or taps[0].shape[-1] != self.dim:
            raise ValueError(
                f"{_FILE} SalientPatchSelector: every tap must be (B, N, {self.dim}), "
                f"got shapes {[tuple(t.shape) for t in taps]}"
            )
        return torch.cat(list(taps), dim=-1).detach()

    def forward(self, taps):
        features = self._concatenate(taps)                                   # (B, N, num_taps·D), no grad to backbone
        logits = self.decision(features.transpose(1, 2).to(self.decision.weight.dtype))  # (B, 1, N)
        return torch.sigmoid(logits.squeeze(1))

    def extra_repr(self):
        return f"dim={self.dim}, num_taps={self.num_taps}"


def _check_saliency(tokens, saliency, where):
    if tokens.dim() != 3 or tuple(saliency.shape) != tuple(tokens.shape[:2]):
        raise ValueError(
            f"{_FILE} {where}: tokens must be (B, N, D) and saliency (B, N) with the same B, N; "
            f"got tokens {tuple(tokens.shape)}, saliency {tuple(saliency.shape)}"
        )


def mask_patch_tokens(tokens, saliency):
    """Eq. 4: identity pass, every patch token scaled by its saliency, tokens ⊙ M. Differentiable in both."""
    _check_saliency(tokens, saliency, "mask_patch_tokens")
    return tokens * saliency.unsqueeze(-1).to(tokens.dtype)


def complement_patch_tokens(tokens, saliency):
    """Complement pass of SPEC §3: tokens ⊙ (1 − M) (must not predict the identity, Eq. 23)."""
    _check_saliency(tokens, saliency, "complement_patch_tokens")
    return tokens * (1 - saliency).unsqueeze(-1).to(tokens.dtype)


def patch_transform(saliency, complement=False):
    """A ``patch_transform`` callable for ``forward_features``: tokens ↦ tokens ⊙ M (or ⊙ (1 − M))."""
    function = complement_patch_tokens if complement else mask_patch_tokens
    return functools.partial(function, saliency=saliency)
