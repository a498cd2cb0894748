"""HMG channel reduction (MODEL.DPMPP.HMG_REDUCTION, ours): hidden widths 2D/r, D/r, D/r, FC(D/r -> D);
r = 1 is the SPEC module with unchanged parameter names and shapes."""
import pytest
import torch
import torch.nn as nn

import fastreid_dpmpp  # noqa: F401  (fast-reid import fixes first)
import fastreid_dpmpp.modeling.heads  # noqa: F401
from fastreid.modeling.heads import build_heads
from fastreid_dpmpp.engine import load_config
from fastreid_dpmpp.modeling.hmg import HierarchicalMaskGenerator

TAP_CHANNELS, NUM_TAPS, D = 4, 4, 8  # conv1 input ΣC_k = 16


def expected_shapes(hidden):
    """Hand-written state_dict of the SPEC module (hidden = D) or its reduction (hidden = D / r)."""
    shapes = {}
    for name, c_in, c_out in (("conv1", 16, 2 * hidden), ("conv2", 2 * hidden, hidden), ("conv3", hidden, hidden)):
        shapes[f"{name}.0.weight"] = (c_out, c_in, 3, 3)  # conv3x3, no bias
        for key in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.1.{key}"] = (c_out,)
        shapes[f"{name}.1.num_batches_tracked"] = ()
    shapes["fc.weight"] = (D, hidden)
    shapes["fc.bias"] = (D,)
    return shapes


def state_shapes(module):
    return {name: tuple(t.shape) for name, t in module.state_dict().items()}


def trainable(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("reduction,hidden,params", [
    # conv1 16·16·9 + BN 2·16, conv2 8·16·9 + BN 2·8, conv3 8·8·9 + BN 2·8, FC 8·8 + 8
    (1, 8, 2304 + 32 + 1152 + 16 + 576 + 16 + 72),
    # conv1 4·16·9 + BN 2·4, conv2 2·4·9 + BN 2·2, conv3 2·2·9 + BN 2·2, FC 8·2 + 8
    (4, 2, 576 + 8 + 72 + 4 + 36 + 4 + 24),
])
def test_widths_and_parameter_counts(reduction, hidden, params):
    hmg = HierarchicalMaskGenerator(TAP_CHANNELS, num_taps=NUM_TAPS, out_dim=D, reduction=reduction)
    assert state_shapes(hmg) == expected_shapes(hidden)
    assert trainable(hmg) == params
    assert hmg.out_dim == D and hmg.reduction == reduction


def test_reduction_one_is_the_default_module_and_loads_its_checkpoint():
    torch.manual_seed(0)
    default = HierarchicalMaskGenerator(TAP_CHANNELS, num_taps=NUM_TAPS, out_dim=D)
    nn.init.normal_(default.fc.weight)
    explicit = HierarchicalMaskGenerator(TAP_CHANNELS, num_taps=NUM_TAPS, out_dim=D, reduction=1)
    explicit.load_state_dict(default.state_dict())  # strict: same names and shapes
    taps = [torch.randn(2, TAP_CHANNELS, 6, 4) for _ in range(NUM_TAPS)]
    assert torch.equal(explicit.eval()(taps), default.eval()(taps))
    reduced = HierarchicalMaskGenerator(TAP_CHANNELS, num_taps=NUM_TAPS, out_dim=D, reduction=2)
    with pytest.raises(RuntimeError, match="size mismatch"):
        reduced.load_state_dict(default.state_dict())


@pytest.mark.parametrize("reduction", [2, 4])  # r = 8 leaves one hidden channel, often a dead ReLU
@pytest.mark.parametrize("train", [True, False])
def test_reduced_mask_starts_at_one_half_and_learns(reduction, train):
    torch.manual_seed(0)
    hmg = HierarchicalMaskGenerator(TAP_CHANNELS, num_taps=NUM_TAPS, out_dim=D, reduction=reduction).train(train)
    taps = [torch.randn(3, TAP_CHANNELS, 7, 5, requires_grad=True) for _ in range(NUM_TAPS)]
    mask = hmg(taps)
    assert torch.equal(mask, torch.full((3, D), 0.5))
    nn.init.normal_(hmg.fc.weight, std=0.5)
    hmg(taps).sum().backward()
    assert all(m.weight.grad.abs().sum() > 0 for m in hmg.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("bad", [0, -2, 3, 16, 2.0, "2", True, None])
def test_bad_reduction_names_the_config_key(bad):
    with pytest.raises(ValueError, match=r"MODEL\.DPMPP\.HMG_REDUCTION.*D=8"):
        HierarchicalMaskGenerator(TAP_CHANNELS, num_taps=NUM_TAPS, out_dim=D, reduction=bad)


def head_cfg(*opts):
    return load_config("", [
        "MODEL.DEVICE", "cpu", "MODEL.BACKBONE.NAME", "build_clip_vit_backbone", "MODEL.BACKBONE.FEAT_DIM", str(D),
        "MODEL.HEADS.NAME", "DPMHead", "MODEL.HEADS.NUM_CLASSES", "5", "MODEL.HEADS.EMBEDDING_DIM", "6",
        "MODEL.VIT.TAPS", "(1, 2)", "MODEL.DPMPP.HMG_GATES", "(1, 1)", *opts])


@pytest.mark.parametrize("hmg_enabled,conv1_in", [("True", 2 * D), ("False", D)])
def test_dpm_head_reads_the_reduction_from_the_config(hmg_enabled, conv1_in):
    default = build_heads(head_cfg("MODEL.DPMPP.HMG_ENABLED", hmg_enabled)).mask_generator
    reduced = build_heads(head_cfg("MODEL.DPMPP.HMG_ENABLED", hmg_enabled,
                                   "MODEL.DPMPP.HMG_REDUCTION", "4")).mask_generator
    assert (default.conv1[0].in_channels, default.conv1[0].out_channels, default.fc.in_features) == (conv1_in, 16, 8)
    assert (reduced.conv1[0].in_channels, reduced.conv1[0].out_channels, reduced.fc.in_features) == (conv1_in, 4, 2)
    assert reduced.fc.out_features == D
    with pytest.raises(ValueError, match="HMG_REDUCTION"):
        build_heads(head_cfg("MODEL.DPMPP.HMG_ENABLED", hmg_enabled, "MODEL.DPMPP.HMG_REDUCTION", "3"))
