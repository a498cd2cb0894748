"""Random patch hiding during training [ours; not in the paper] (MODEL.VIT.HIDE_PATCHES).

With probability PROB a training image gets a random axis-aligned rectangle of its patch grid, covering a fraction
of the grid drawn uniformly from AREA, hidden from all attention (``ClipViT.forward_tokens(visible_patches=...)``):
the class token learns to describe a person from part of the image. The point is a model that can later be
matched with the occluder's patches hidden (tools/mask_predictability.py, spatial rows), where a model trained on
whole images loses accuracy under any hiding (docs/RESULTS.md).
"""
import math

import torch

__all__ = ["check_hiding", "sample_hidden_rectangles"]


def check_hiding(prob, area):
    """Raise a ValueError naming the key unless PROB is in [0, 1] and AREA = (low, high) with 0 < low <= high <= 1."""
    if not 0.0 <= float(prob) <= 1.0:
        raise ValueError(f"MODEL.VIT.HIDE_PATCHES.PROB must be in [0, 1], got {prob}")
    if len(area) != 2 or not 0.0 < float(area[0]) <= float(area[1]) <= 1.0:
        raise ValueError(f"MODEL.VIT.HIDE_PATCHES.AREA must be (low, high) with 0 < low <= high <= 1, got {area}")


def sample_hidden_rectangles(batch, grid, prob, area, generator=None):
    """(batch, Hp·Wp) bool, row-major: per image, with probability ``prob``, one rectangle of patches whose area
    is a uniform fraction of the grid in ``area`` (aspect ratio log-uniform in [1/3, 3], clipped to the grid)."""
    rows, columns = int(grid[0]), int(grid[1])
    hidden = torch.zeros(batch, rows, columns, dtype=torch.bool)
    draws = torch.rand(batch, 5, generator=generator)
    for index, (chosen, fraction, aspect, top, left) in enumerate(draws.tolist()):
        if chosen >= prob:
            continue
        cells = (area[0] + fraction * (area[1] - area[0])) * rows * columns
        ratio = math.exp((2.0 * aspect - 1.0) * math.log(3.0))
        height = min(rows, max(1, round(math.sqrt(cells * ratio))))
        width = min(columns, max(1, round(cells / height)))
        r0, c0 = int(top * (rows - height + 1)), int(left * (columns - width + 1))
        hidden[index, r0:r0 + height, c0:c0 + width] = True
    return hidden.flatten(1)
