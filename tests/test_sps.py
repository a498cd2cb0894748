"""SPS decision layer (SPEC §3, Eq. 3) and the masked / complement patch transforms (Eq. 4)."""
import pytest
import torch
from torch import nn

import fastreid_dpmpp  # noqa: F401  (fast-reid fixes first)
from fastreid_dpmpp.modeling.stage2_patch_selection import (
    SalientPatchSelector,
    complement_patch_tokens,
    mask_patch_tokens,
    patch_transform,
)


def fake_backbone_taps(batch=2, tokens=6, dim=5, taps=4, seed=0):
    """Tapped patch tokens that depend on a 'backbone' parameter, so gradient leaks would be visible."""
    g = torch.Generator().manual_seed(seed)
    backbone = nn.Linear(3, dim)
    inputs = torch.randn(batch, tokens, 3, generator=g)
    return backbone, [backbone(inputs) * (k + 1) for k in range(taps)]


def test_output_is_eq3_in_open_unit_interval():
    backbone, taps = fake_backbone_taps()
    selector = SalientPatchSelector(dim=5, num_taps=4)
    saliency = selector(taps)
    assert saliency.shape == (2, 6)
    assert ((saliency > 0) & (saliency < 1)).all()
    weight = selector.decision.weight.view(-1)  # (4·D,)
    expected = torch.sigmoid(torch.cat(taps, dim=-1) @ weight + selector.decision.bias)
    assert torch.allclose(saliency, expected, atol=1e-6)


def test_input_is_detached_from_the_backbone():
    backbone, taps = fake_backbone_taps()
    selector = SalientPatchSelector(dim=5, num_taps=4)
    selector(taps).sum().backward()
    assert backbone.weight.grad is None or backbone.weight.grad.abs().sum() == 0
    assert selector.decision.weight.grad is not None and selector.decision.weight.grad.abs().sum() > 0


def test_saturated_logits_stay_in_open_interval_in_float64():
    selector = SalientPatchSelector(dim=2, num_taps=1).double()
    with torch.no_grad():
        selector.decision.weight.fill_(1.0)
        selector.decision.bias.zero_()
    taps = [torch.tensor([[[10.0, 10.0], [-10.0, -10.0]]], dtype=torch.float64)]
    saliency = selector(taps)
    assert 0.999 < saliency[0, 0] < 1 and 0 < saliency[0, 1] < 0.001


def test_wrong_taps_raise_clear_errors():
    selector = SalientPatchSelector(dim=5, num_taps=4)
    _, taps = fake_backbone_taps(taps=3)
    with pytest.raises(ValueError, match="TAPS"):
        selector(taps)
    _, taps = fake_backbone_taps(dim=4)
    with pytest.raises(ValueError, match=r"\(B, N, 5\)"):
        selector(taps)
    with pytest.raises(ValueError, match="positive"):
        SalientPatchSelector(dim=0)


def test_mask_and_complement_by_hand():
    tokens = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])
    saliency = torch.tensor([[1.0, 0.25, 0.0]])
    assert mask_patch_tokens(tokens, saliency).tolist() == [[[1.0, 2.0], [0.75, 1.0], [0.0, 0.0]]]
    assert complement_patch_tokens(tokens, saliency).tolist() == [[[0.0, 0.0], [2.25, 3.0], [5.0, 6.0]]]
    assert torch.equal(patch_transform(saliency)(tokens), mask_patch_tokens(tokens, saliency))
    assert torch.equal(patch_transform(saliency, complement=True)(tokens), complement_patch_tokens(tokens, saliency))
    with pytest.raises(ValueError, match="saliency"):
        mask_patch_tokens(tokens, saliency[:, :2])


def test_masked_passes_train_the_decision_layer():
    # The decision layer learns through the masked forward (Eq. 4), not through its own input.
    backbone, taps = fake_backbone_taps()
    selector = SalientPatchSelector(dim=5, num_taps=4)
    saliency = selector(taps)
    masked = mask_patch_tokens(taps[-1], saliency)
    complement = complement_patch_tokens(taps[-1], saliency)
    (masked.pow(2).sum() + complement.sum()).backward()
    assert selector.decision.weight.grad.abs().sum() > 0
    assert backbone.weight.grad.abs().sum() > 0  # through the tokens being masked, as in the real masked pass
