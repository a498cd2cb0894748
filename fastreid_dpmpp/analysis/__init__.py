"""Analyses and pictures of trained models (issue 7, paper Fig. 3): attention-head correlation, patch-token
similarity by depth, and the matplotlib figures drawn by tools/visualize.py."""
from .attention import (
    AttentionStatistics,
    block_patch_tokens,
    head_correlation,
    mean_head_correlation,
    off_diagonal_mean,
    token_similarity,
)

__all__ = ["AttentionStatistics", "block_patch_tokens", "head_correlation", "mean_head_correlation",
           "off_diagonal_mean", "token_similarity"]
