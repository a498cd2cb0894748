"""CNN backbones with multi-level taps for the Hierarchical Mask Generator (SPEC §5: "for a CNN
backbone the taps are its stage outputs, resized to one grid"): fast-reid's ResNet here, EfficientNet-Lite0 in
``efficientnet_lite.py``; both use this module's packing (:func:`pack_taps`) and layout (:class:`TapLayout`,
:func:`stage_layout`).

fast-reid's backbone contract is one 4-D map per image, and the stock ``Baseline`` hands that map to the
head unchanged. ``build_tapped_resnet_backbone`` therefore packs the taps into the channels of that map:

    output = cat([tap_1, ..., tap_k, final], dim=1)          (B, Σ C_tap + C_final, H4, W4)

* ``final`` is the stage-4 output (the usual ResNet feature map, ``MODEL.BACKBONE.FEAT_DIM`` channels),
  always the LAST block of channels, at its own resolution H4×W4;
* ``tap_j`` are the outputs of the stages listed in ``MODEL.BACKBONE.TAP_STAGES`` (1-based, strictly
  increasing, in 1..4), in that order, each resized to H4×W4 (area averaging when it shrinks, bilinear
  when it grows); stage 4, when listed, is not repeated: it is the ``final`` block, which then also
  serves as the last tap.

The DPM head splits the channels back with :func:`tapped_resnet_layout` (the same function for both
sides, from the config alone, because fast-reid builds backbone and head separately). Every tapped backbone
lists its layout function in :data:`TAPPED_BACKBONES` under its registered name.
"""
import logging
from dataclasses import dataclass
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from fastreid.modeling.backbones.build import BACKBONE_REGISTRY
from fastreid.modeling.backbones.resnet import build_resnet_backbone

__all__ = ["TappedResNet", "TapLayout", "build_tapped_resnet_backbone", "tapped_resnet_layout",
           "TAPPED_BACKBONES", "DEFAULT_TAP_STAGES", "tap_stages_from_config", "stage_layout", "pack_taps"]

logger = logging.getLogger("fastreid.dpmpp.tapped_cnn")

TAP_STAGES_KEY = "MODEL.BACKBONE.TAP_STAGES"
DEFAULT_TAP_STAGES = (1, 2, 3, 4)  # four levels, like DPM's four ViT taps [pred]
_STAGE_WIDTHS = (64, 128, 256, 512)  # planes of fast-reid's ResNet stages, before the block expansion
_BLOCK_EXPANSION = {"18x": 1, "34x": 1, "50x": 4, "101x": 4}
NUM_STAGES = 4


@dataclass(frozen=True)
class TapLayout:
    """Channel layout of a tapped feature map: ``extra_channels`` (the resized non-final taps, in order),
    then ``final_channels``; ``final_is_tap`` says whether the final map is also the last HMG tap."""
    extra_channels: Tuple[int, ...]
    final_channels: int
    final_is_tap: bool

    @property
    def tap_channels(self) -> Tuple[int, ...]:
        return self.extra_channels + ((self.final_channels,) if self.final_is_tap else ())

    @property
    def total_channels(self) -> int:
        return sum(self.extra_channels) + self.final_channels

    def split(self, feature_map):
        """(B, total, H, W) -> (list of HMG taps, final map)."""
        if feature_map.dim() != 4 or feature_map.shape[1] != self.total_channels:
            raise ValueError(
                f"tapped_cnn.py: expected a (B, {self.total_channels}, H, W) tapped map (taps "
                f"{list(self.extra_channels)} + final {self.final_channels} channels), got "
                f"{tuple(feature_map.shape)}; is MODEL.BACKBONE.NAME the tapped backbone ({', '.join(TAPPED_BACKBONES)}) "
                f"with the same {TAP_STAGES_KEY} and DEPTH?")
        parts = list(torch.split(feature_map, list(self.extra_channels) + [self.final_channels], dim=1))
        final = parts.pop()
        taps = parts + ([final] if self.final_is_tap else [])
        return taps, final


def tap_stages_from_config(cfg, num_stages=NUM_STAGES, network="ResNet"):
    """``MODEL.BACKBONE.TAP_STAGES`` (default (1, 2, 3, 4)), checked: 1-based, strictly increasing, ≤ ``num_stages``
    (the stage numbers of ``network``, the last one being its final map)."""
    stages = tuple(int(s) for s in cfg.MODEL.BACKBONE.get("TAP_STAGES", DEFAULT_TAP_STAGES))
    if not stages or any(s < 1 or s > num_stages for s in stages) or list(stages) != sorted(set(stages)):
        raise ValueError(f"{TAP_STAGES_KEY}={stages}: expected strictly increasing 1-based {network} stage "
                         f"numbers in 1..{num_stages}, e.g. {tuple(range(1, min(num_stages, 4) + 1))}")
    return stages


def stage_layout(stage_widths, tap_stages) -> TapLayout:
    """The layout of a packed map whose final map is the last of ``stage_widths`` (channels of stages 1..n) and
    whose taps are the 1-based ``tap_stages`` (the final stage, when listed, is the final block, not repeated)."""
    last = len(stage_widths)
    return TapLayout(extra_channels=tuple(stage_widths[s - 1] for s in tap_stages if s != last),
                     final_channels=stage_widths[-1], final_is_tap=last in tap_stages)


def tapped_resnet_layout(cfg) -> TapLayout:
    """The channel layout that ``build_tapped_resnet_backbone(cfg)`` produces."""
    depth = cfg.MODEL.BACKBONE.DEPTH
    if depth not in _BLOCK_EXPANSION:
        raise ValueError(f"MODEL.BACKBONE.DEPTH={depth!r}: fast-reid's ResNet depths are {sorted(_BLOCK_EXPANSION)}")
    return stage_layout([w * _BLOCK_EXPANSION[depth] for w in _STAGE_WIDTHS], tap_stages_from_config(cfg))


def _resize_to(x, size):
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def pack_taps(extra_taps, final):
    """cat([tap_1, ..., tap_k, final], dim=1), every tap resized to the final map's H×W (module docstring)."""
    grid = final.shape[-2:]
    return torch.cat([_resize_to(t, grid) for t in extra_taps] + [final], dim=1)


class TappedResNet(nn.Module):
    """Runs a fast-reid ``ResNet`` stage by stage (non-local blocks included, exactly as its own
    ``forward``) and returns the packed map of the module docstring."""

    def __init__(self, resnet, tap_stages=DEFAULT_TAP_STAGES):
        super().__init__()
        self.resnet = resnet
        self.tap_stages = tuple(tap_stages)

    def _stem(self, x):
        r = self.resnet
        return r.maxpool(r.relu(r.bn1(r.conv1(x))))

    def _stage(self, index, x):
        """Stage ``index`` (1-based) with its non-local blocks after the listed residual blocks."""
        layer = getattr(self.resnet, f"layer{index}")
        non_local = getattr(self.resnet, f"NL_{index}", ())
        positions = [i for i in getattr(self.resnet, f"NL_{index}_idx", []) if i >= 0]
        applied = 0
        for i, block in enumerate(layer):
            x = block(x)
            if applied < len(non_local) and i == positions[applied]:
                x = non_local[applied](x)
                applied += 1
        return x

    def forward(self, x):
        x = self._stem(x)
        extra_taps = []
        for index in range(1, NUM_STAGES + 1):
            x = self._stage(index, x)
            if index in self.tap_stages and index != NUM_STAGES:
                extra_taps.append(x)
        return pack_taps(extra_taps, x)


@BACKBONE_REGISTRY.register()
def build_tapped_resnet_backbone(cfg):
    """fast-reid backbone entry (MODEL.BACKBONE.NAME "build_tapped_resnet_backbone"): fast-reid's own
    ``build_resnet_backbone(cfg)`` (DEPTH, LAST_STRIDE, IBN/SE/NL, PRETRAIN, ...) wrapped to emit its
    stage outputs as HMG taps (module docstring for the channel layout)."""
    layout = tapped_resnet_layout(cfg)
    if int(cfg.MODEL.BACKBONE.FEAT_DIM) != layout.final_channels:
        raise ValueError(f"MODEL.BACKBONE.FEAT_DIM={cfg.MODEL.BACKBONE.FEAT_DIM} but ResNet-{cfg.MODEL.BACKBONE.DEPTH} "
                         f"ends with {layout.final_channels} channels")
    backbone = TappedResNet(build_resnet_backbone(cfg), tap_stages_from_config(cfg))
    logger.info("Tapped ResNet-%s: stages %s -> channels %s + final %d (total %d)", cfg.MODEL.BACKBONE.DEPTH,
                backbone.tap_stages, list(layout.extra_channels), layout.final_channels, layout.total_channels)
    return backbone


# Backbone builders whose map packs HMG taps, with the function giving their layout.
TAPPED_BACKBONES = {"build_tapped_resnet_backbone": tapped_resnet_layout}
