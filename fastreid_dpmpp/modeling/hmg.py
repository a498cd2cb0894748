"""Hierarchical Mask Generator (HMG), SPEC §5, Eq. 20-21: one channel mask m ∈ (0,1)^D per image,
predicted from the patch tokens of several blocks (ViT) or the stage outputs (CNN)."""
import logging

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["HierarchicalMaskGenerator", "tokens_to_grid", "HMG_POOLS"]

HMG_POOLS = ("max", "avg")

logger = logging.getLogger("fastreid.dpmpp.hmg")


def tokens_to_grid(tokens, grid):
    """(B, N, D) patch tokens (class token already removed) -> (B, D, H_p, W_p), row-major grid."""
    height, width = grid
    if tokens.dim() != 3 or tokens.shape[1] != height * width:
        raise ValueError(
            f"hmg.py: tokens_to_grid expects (B, N, D) patch tokens with N = {height}x{width} = "
            f"{height * width} (class token removed), got {tuple(tokens.shape)}"
        )
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], height, width)


def _conv_bn_relu(in_channels, out_channels):
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _halve(x):
    """2x2 max-pool, stride 2, floor mode (DPM's MaxPool2d(2)); along a side of length 1 the kernel
    and stride become 1 so that tiny grids (e.g. 4x2 -> 2x1 -> 1x1) never produce an empty map."""
    kernel = (2 if x.shape[2] >= 2 else 1, 2 if x.shape[3] >= 2 else 1)
    return F.max_pool2d(x, kernel_size=kernel, stride=kernel)


def _check_reduction(reduction, out_dim):
    """r must be a positive integer dividing the mask width D (so that D/r and 2D/r are whole widths)."""
    valid = isinstance(reduction, int) and not isinstance(reduction, bool) and reduction >= 1 \
        and out_dim % reduction == 0
    if not valid:
        raise ValueError(
            f"hmg.py: MODEL.DPMPP.HMG_REDUCTION must be a positive integer dividing the mask width "
            f"D={out_dim}, got {reduction!r}"
        )
    return reduction


class HierarchicalMaskGenerator(nn.Module):
    """Eq. 20-21: m = σ(FC(GMP(conv3(pool(conv2(pool(conv1([g_1 Z_1; …; g_K Z_K])))))))).

    Only the taps with gate 1 are concatenated (gate 0: that tap is not used at all, and its channels
    are not part of conv1). Every gated tap is resized (bilinear) to the grid of the first gated tap,
    so CNN stage outputs of different sizes and channel counts (e.g. ResNet 256/512/1024/2048) work.
    conv1: ΣC_k -> 2D, conv2: 2D -> D, conv3: D -> D, each conv3x3 + BN + ReLU; max-pool 2 after conv1
    and conv2 (see ``_halve`` for tiny grids); global max pool (DPM's code; ``pool`` "avg": the average pooling
    the paper's text names); FC(D -> D) with zero weight and bias,
    so every mask entry starts at exactly σ(0) = 0.5.

    ``reduction`` r (MODEL.DPMPP.HMG_REDUCTION, ours, not in the paper) divides the hidden widths:
    conv1 ΣC_k -> 2D/r, conv2 2D/r -> D/r, conv3 D/r -> D/r, FC(D/r -> D). conv1 dominates the cost
    (9·ΣC_k·2D MACs per grid cell), so it falls by r; r = 1 is exactly the SPEC module (same parameter
    names and shapes, checkpoints load unchanged).

    Args:
        in_channels: channels of every tap (int, same for all) or a sequence with one int per tap.
        num_taps: K, number of taps given to forward.
        out_dim: D, the mask width (= width of the feature the mask acts on).
        gates: K binary gates (SPEC: MODEL.DPMPP.HMG_GATES); None = all taps used.
        reduction: r, a positive integer dividing D (MODEL.DPMPP.HMG_REDUCTION); 1 = SPEC widths.
        pool: global pooling before the FC, "max" or "avg" (MODEL.DPMPP.HMG_POOL).
    """

    def __init__(self, in_channels, num_taps=4, out_dim=768, gates=None, reduction=1, pool="max"):
        super().__init__()
        channels = [int(in_channels)] * num_taps if isinstance(in_channels, int) else [int(c) for c in in_channels]
        gates = [1] * num_taps if gates is None else [int(g) for g in gates]
        if len(channels) != num_taps or len(gates) != num_taps:
            raise ValueError(
                f"hmg.py: num_taps={num_taps} but got {len(channels)} channel counts ({channels}) and "
                f"{len(gates)} gates ({gates}) (MODEL.DPMPP.HMG_GATES)"
            )
        if any(g not in (0, 1) for g in gates) or sum(gates) == 0:
            raise ValueError(
                f"hmg.py: MODEL.DPMPP.HMG_GATES must be 0/1 values with at least one 1, got {gates}"
            )
        self.tap_channels = tuple(channels)
        self.gates = tuple(gates)
        self.out_dim = out_dim
        self.reduction = _check_reduction(reduction, out_dim)
        if pool not in HMG_POOLS:
            raise ValueError(f"hmg.py: MODEL.DPMPP.HMG_POOL must be one of {HMG_POOLS}, got {pool!r}")
        self.pool = pool
        hidden = out_dim // self.reduction
        gated_channels = sum(c for c, g in zip(channels, gates) if g)
        self.conv1 = _conv_bn_relu(gated_channels, 2 * hidden)
        self.conv2 = _conv_bn_relu(2 * hidden, hidden)
        self.conv3 = _conv_bn_relu(hidden, hidden)
        self.fc = nn.Linear(hidden, out_dim)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)
        logger.debug("HMG: tap channels %s, gates %s, conv1 input %d, hidden width %d (reduction %d), "
                     "mask width %d", channels, gates, gated_channels, hidden, self.reduction, out_dim)

    def _concat_gated_taps(self, taps):
        if len(taps) != len(self.gates):
            raise ValueError(f"hmg.py: expected {len(self.gates)} tap maps, got {len(taps)}")
        for index, (tap, channels, gate) in enumerate(zip(taps, self.tap_channels, self.gates)):
            if not gate:
                continue  # an ungated tap is ignored (it may be None)
            if tap is None or tap.dim() != 4 or tap.shape[1] != channels:
                raise ValueError(
                    f"hmg.py: tap {index} must be (B, {channels}, H, W), got "
                    f"{None if tap is None else tuple(tap.shape)} "
                    "(ViT tokens: use tokens_to_grid)"
                )
        gated = [tap for tap, gate in zip(taps, self.gates) if gate]
        grid = gated[0].shape[-2:]
        resized = [t if t.shape[-2:] == grid else
                   F.interpolate(t, size=grid, mode="bilinear", align_corners=False) for t in gated]
        return torch.cat(resized, dim=1)

    def forward(self, taps):
        """taps: list of K maps (B, C_k, H_k, W_k) (None allowed where the gate is 0) -> mask (B, D)."""
        x = self._concat_gated_taps(taps)
        x = _halve(self.conv1(x))
        x = _halve(self.conv2(x))
        x = self.conv3(x)
        x = x.amax(dim=(2, 3)) if self.pool == "max" else x.mean(dim=(2, 3))
        return torch.sigmoid(self.fc(x))
