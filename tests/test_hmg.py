"""Hierarchical Mask Generator (SPEC §5, Eq. 20-21)."""
import pytest
import torch
import torch.nn as nn

import fastreid_dpmpp  # noqa: F401  (fast-reid import fixes first)
from fastreid_dpmpp.modeling.hmg import HierarchicalMaskGenerator, tokens_to_grid


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _randomise_fc(hmg):
    nn.init.normal_(hmg.fc.weight, std=0.5)
    nn.init.normal_(hmg.fc.bias, std=0.5)


def _conv_weights(hmg):
    return [m.weight for m in hmg.modules() if isinstance(m, nn.Conv2d)]


def test_tokens_to_grid_is_row_major():
    tokens = torch.randn(2, 6, 5)
    grid = tokens_to_grid(tokens, (3, 2))
    assert grid.shape == (2, 5, 3, 2)
    for r in range(3):
        for c in range(2):
            assert torch.equal(grid[:, :, r, c], tokens[:, r * 2 + c, :])
    with pytest.raises(ValueError, match="class token"):
        tokens_to_grid(torch.randn(2, 7, 5), (3, 2))


@pytest.mark.parametrize("train", [True, False])
def test_mask_starts_at_exactly_one_half(train):
    hmg = HierarchicalMaskGenerator(in_channels=4, num_taps=4, out_dim=6).train(train)
    taps = [torch.randn(3, 4, 7, 5) for _ in range(4)]
    mask = hmg(taps)
    assert mask.shape == (3, 6)
    assert torch.equal(mask, torch.full((3, 6), 0.5))


def test_vit_style_taps_from_tokens():
    hmg = HierarchicalMaskGenerator(in_channels=8, num_taps=4, out_dim=8)
    _randomise_fc(hmg)
    taps = [tokens_to_grid(torch.randn(2, 21 * 10, 8), (21, 10)) for _ in range(4)]
    mask = hmg(taps)
    assert mask.shape == (2, 8)
    assert ((mask > 0) & (mask < 1)).all()
    assert not torch.allclose(mask[0], mask[1])  # image dependent


def test_gates_change_input_channels_and_ignore_ungated_taps():
    full = HierarchicalMaskGenerator(in_channels=8, num_taps=4, out_dim=4)
    gated = HierarchicalMaskGenerator(in_channels=8, num_taps=4, out_dim=4, gates=(1, 0, 1, 1))
    assert full.conv1[0].in_channels == 32 and gated.conv1[0].in_channels == 24
    assert full.conv1[0].out_channels == 8  # 2·D
    _randomise_fc(gated)
    gated.eval()
    taps = [torch.randn(2, 8, 6, 4) for _ in range(4)]
    reference = gated(taps)
    taps[1] = torch.randn(2, 8, 6, 4) * 100  # the ungated tap must not matter...
    assert torch.equal(gated(taps), reference)
    taps[1] = None                            # ...and may be left out
    assert torch.equal(gated(taps), reference)
    taps[2] = taps[2] + 1.0                   # a gated tap does matter
    assert not torch.allclose(gated(taps), reference)


def test_cnn_style_taps_with_different_channels_and_sizes():
    channels = (4, 8, 16, 32)  # a ResNet's 256/512/1024/2048, scaled down
    hmg = HierarchicalMaskGenerator(in_channels=channels, num_taps=4, out_dim=16)
    assert hmg.conv1[0].in_channels == sum(channels)
    _randomise_fc(hmg)
    taps = [torch.randn(2, c, 16 // 2 ** k, 8 // 2 ** k) for k, c in enumerate(channels)]
    assert hmg(taps).shape == (2, 16)
    # the first *gated* tap defines the grid: gate off the largest one
    later = HierarchicalMaskGenerator(in_channels=channels, num_taps=4, out_dim=16, gates=(0, 1, 1, 1))
    assert later(taps).shape == (2, 16)
    with pytest.raises(ValueError, match="tap 2"):
        hmg([taps[0], taps[1], torch.randn(2, 15, 4, 2), taps[3]])


@pytest.mark.parametrize("grid", [(21, 10), (10, 5), (4, 2), (1, 1), (3, 1)])
def test_tiny_grids_do_not_fail(grid):
    hmg = HierarchicalMaskGenerator(in_channels=2, num_taps=2, out_dim=4)
    _randomise_fc(hmg)
    mask = hmg([torch.randn(2, 2, *grid), torch.randn(2, 2, *grid)])
    assert mask.shape == (2, 4) and torch.isfinite(mask).all()


def test_gradient_reaches_taps_and_every_conv():
    hmg = HierarchicalMaskGenerator(in_channels=(3, 5), num_taps=2, out_dim=4)
    taps = [torch.randn(2, 3, 8, 4, requires_grad=True), torch.randn(2, 5, 4, 2, requires_grad=True)]
    hmg(taps).sum().backward()
    # zero-initialised FC: at step 0 only the FC itself learns (nothing flows through a zero weight)
    assert hmg.fc.weight.grad.abs().sum() > 0 and hmg.fc.bias.grad.abs().sum() > 0
    assert all(w.grad is None or w.grad.abs().sum() == 0 for w in _conv_weights(hmg))
    hmg.zero_grad()
    _randomise_fc(hmg)
    for tap in taps:
        tap.grad = None
    hmg(taps).sum().backward()
    convs = _conv_weights(hmg)
    assert len(convs) == 3
    assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in convs)
    assert all(tap.grad is not None and tap.grad.abs().sum() > 0 for tap in taps)


def test_bad_configuration_is_rejected():
    with pytest.raises(ValueError, match="HMG_GATES"):
        HierarchicalMaskGenerator(in_channels=4, num_taps=2, out_dim=4, gates=(0, 0))
    with pytest.raises(ValueError, match="num_taps"):
        HierarchicalMaskGenerator(in_channels=(4, 4, 4), num_taps=2, out_dim=4)
    hmg = HierarchicalMaskGenerator(in_channels=4, num_taps=2, out_dim=4)
    with pytest.raises(ValueError, match="expected 2 tap maps"):
        hmg([torch.randn(2, 4, 4, 2)])


def test_pooling_halves_with_floor_and_keeps_unit_sides():
    from fastreid_dpmpp.modeling.hmg import _halve
    sizes = {(21, 10): (10, 5), (10, 5): (5, 2), (4, 2): (2, 1), (2, 1): (1, 1), (1, 1): (1, 1)}
    for size, halved in sizes.items():
        assert tuple(_halve(torch.randn(1, 1, *size)).shape[-2:]) == halved
    x = torch.tensor([[[[1.0, 5.0], [3.0, 2.0], [7.0, 0.0]]]])  # 3x2 -> 1x1: max of the first 2x2 window
    assert _halve(x).flatten().tolist() == [5.0]
