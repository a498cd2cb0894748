"""DPM++ loss functions (SPEC §2, §3, §5) against hand values and naive loop implementations."""
import math

import pytest
import torch
import torch.nn.functional as F

import fastreid_dpmpp  # noqa: F401  (fast-reid import fixes first)
from fastreid_dpmpp.modeling.losses import (
    MASK_SIDES,
    arcface_logits,
    batch_hard_triplet_loss,
    budget_loss,
    complement_loss,
    cross_entropy_with_ignored_classes,
    head_orthogonality_loss,
    image_text_contrastive_loss,
    masked_prototype_cosine,
    masked_prototypes,
    supervised_contrastive_loss,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ----------------------------------------------------------------------------- cross-entropy
def test_cross_entropy_matches_torch_label_smoothing_without_ignoring():
    logits, targets = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    for epsilon in (0.0, 0.1, 0.3):
        expected = F.cross_entropy(logits, targets, label_smoothing=epsilon)
        assert torch.allclose(cross_entropy_with_ignored_classes(logits, targets, epsilon), expected, atol=1e-6)
        none_ignored = torch.full((6,), -1)
        got = cross_entropy_with_ignored_classes(logits, targets, epsilon, ignored_classes=none_ignored)
        assert torch.allclose(got, expected, atol=1e-6)


def test_cross_entropy_ignoring_equals_deleting_the_column():
    logits, targets = torch.randn(5, 6), torch.tensor([0, 1, 2, 3, 5])
    ignored = torch.tensor([3, -1, 0, 5, 1])
    got = cross_entropy_with_ignored_classes(logits, targets, 0.1, ignored_classes=ignored)
    per_sample = []
    for b in range(5):
        row, target = logits[b], int(targets[b])
        k = int(ignored[b])
        if k >= 0:
            keep = [c for c in range(6) if c != k]
            row, target = row[keep], keep.index(target)
        per_sample.append(F.cross_entropy(row[None], torch.tensor([target]), label_smoothing=0.1))
    assert torch.allclose(got, torch.stack(per_sample).mean(), atol=1e-6)


def test_cross_entropy_hand_value_with_ignored_class():
    # logits (2, 0, 0), target 0, class 2 ignored, ε = 0.3: q = (0.85, 0.15) over classes {0, 1}.
    p0 = math.exp(2) / (math.exp(2) + 1)
    expected = -(0.85 * math.log(p0) + 0.15 * math.log(1 - p0))
    got = cross_entropy_with_ignored_classes(
        torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([0]), 0.3, ignored_classes=torch.tensor([2]))
    assert got.item() == pytest.approx(expected, abs=1e-6)
    uniform = cross_entropy_with_ignored_classes(torch.zeros(1, 3), torch.tensor([0]), 0.0, torch.tensor([1]))
    assert uniform.item() == pytest.approx(math.log(2), abs=1e-6)


def test_cross_entropy_gradient_finite_and_zero_on_ignored_logit():
    logits = torch.randn(3, 4, requires_grad=True)
    loss = cross_entropy_with_ignored_classes(logits, torch.tensor([0, 1, 2]), 0.1, torch.tensor([1, -1, 3]))
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[0, 1] == 0 and logits.grad[2, 3] == 0


def test_cross_entropy_rejects_bad_ignored_classes():
    logits, targets = torch.randn(2, 3), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="own target"):
        cross_entropy_with_ignored_classes(logits, targets, 0.1, torch.tensor([0, -1]))
    with pytest.raises(ValueError, match="class index"):
        cross_entropy_with_ignored_classes(logits, targets, 0.1, torch.tensor([3, -1]))


# ----------------------------------------------------------------------------- triplet
def _naive_triplet(features, targets, margin, excluded=None):
    batch = features.shape[0]
    terms = []
    for a in range(batch):
        positives, negatives = [], []
        for k in range(batch):
            d = math.sqrt(max(sum((float(x) - float(y)) ** 2 for x, y in zip(features[a], features[k])), 1e-12))
            if targets[a] == targets[k]:
                positives.append(d)
            elif excluded is None or not excluded[a][k]:
                negatives.append(d)
        if not negatives:
            continue
        gap = max(positives) - min(negatives)
        terms.append(max(0.0, gap + margin) if margin > 0 else math.log1p(math.exp(gap)))
    return sum(terms) / max(len(terms), 1)


@pytest.mark.parametrize("margin", [0.3, 0.0])
def test_batch_hard_triplet_matches_naive_loop(margin):
    features, targets = torch.randn(8, 5), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    got = batch_hard_triplet_loss(features, targets, margin=margin)
    assert got.item() == pytest.approx(_naive_triplet(features, targets, margin), abs=1e-5)
    unit = F.normalize(features, dim=1)
    got_norm = batch_hard_triplet_loss(features, targets, margin=margin, normalize=True)
    assert got_norm.item() == pytest.approx(_naive_triplet(unit, targets, margin), abs=1e-5)


@pytest.mark.parametrize("margin", [0.3, 0.0])
def test_batch_hard_triplet_excluded_negatives(margin):
    features, targets = torch.randn(6, 4) * 0.3, torch.tensor([0, 0, 1, 1, 2, 2])
    excluded = torch.zeros(6, 6, dtype=torch.bool)
    excluded[0, 2:4] = True      # anchor 0's SPT partner has identity 1
    excluded[4, [0, 1, 2, 3]] = True  # anchor 4 is left without negatives -> dropped
    got = batch_hard_triplet_loss(features, targets, margin=margin, excluded_negatives=excluded)
    expected = _naive_triplet(features, targets, margin, excluded.tolist())
    assert got.item() == pytest.approx(expected, abs=1e-5)
    assert got.item() != pytest.approx(_naive_triplet(features, targets, margin), abs=1e-6)


def test_batch_hard_triplet_no_negatives_and_finite_gradient():
    features = torch.randn(4, 3, requires_grad=True)
    same = torch.zeros(4, dtype=torch.long)
    loss = batch_hard_triplet_loss(features, same)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(features.grad).all()
    duplicated = torch.ones(4, 3, requires_grad=True)  # all distances 0: sqrt gradient must stay finite
    batch_hard_triplet_loss(duplicated, torch.tensor([0, 0, 1, 1])).backward()
    assert torch.isfinite(duplicated.grad).all()


# ----------------------------------------------------------------------------- ArcFace (Eq. 16)
def test_arcface_target_and_non_target_logits():
    cosine, targets = torch.rand(4, 5) * 1.6 - 0.8, torch.tensor([0, 2, 4, 1])
    logits = arcface_logits(cosine, targets, scale=30.0, margin=0.5)
    for b in range(4):
        for c in range(5):
            cos = float(cosine[b, c])
            expected = 30 * (math.cos(math.acos(cos) + 0.5) if c == int(targets[b]) else cos)
            assert float(logits[b, c]) == pytest.approx(expected, abs=1e-4)


def test_arcface_edge_case_hand_value_and_monotonic():
    # θ = π: fallback cos θ − m·sin m = −1 − 0.5·sin(0.5) = −1.2397128; × s = 30 -> −37.19138.
    logit = arcface_logits(torch.tensor([[-1.0, 0.2]]), torch.tensor([0]), scale=30.0, margin=0.5)
    assert float(logit[0, 0]) == pytest.approx(-37.19138, abs=1e-3)
    assert float(logit[0, 1]) == pytest.approx(6.0, abs=1e-6)
    theta = torch.linspace(0, math.pi, 2001, dtype=torch.float64)
    targets = torch.zeros(2001, dtype=torch.long)
    for margin in (0.3, 0.5):
        values = arcface_logits(torch.cos(theta)[:, None], targets, 1.0, margin)[:, 0]
        assert torch.isfinite(values).all()
        assert (values[1:] <= values[:-1] + 1e-12).all(), "target logit must not increase with θ"


def test_arcface_gradient_finite_at_cosine_plus_minus_one():
    cosine = torch.tensor([[1.0, 0.0], [-1.0, 0.3]], requires_grad=True)
    arcface_logits(cosine, torch.tensor([0, 0])).sum().backward()
    assert torch.isfinite(cosine.grad).all()


# ----------------------------------------------------------------------------- masked prototypes (Eq. 10)
def _explicit_masked_cosine(features, prototypes, masks, side, before_norm):
    """The (B, C, D) definition of every Table IV variant."""
    unit_f = F.normalize(features, dim=1)[:, None, :]
    unit_p = F.normalize(prototypes, dim=1)[None, :, :]
    m = masks[:, None, :]
    left = m * unit_f if side in ("feature", "both") else unit_f
    right = m * unit_p if side in ("prototype", "both") else unit_p
    if before_norm:
        left, right = F.normalize(left, dim=2), F.normalize(right, dim=2)
    return (left * right).sum(-1)


def test_masked_prototypes_explicit_eq10():
    prototypes, masks = torch.randn(3, 4), torch.rand(2, 4)
    result = masked_prototypes(prototypes, masks)
    for i in range(2):
        for c in range(3):
            p_hat = prototypes[c] / prototypes[c].norm()
            expected = masks[i] * p_hat
            assert torch.allclose(result[i, c], expected / expected.norm(), atol=1e-6)
            assert torch.allclose(masked_prototypes(prototypes, masks, before_norm=False)[i, c], expected, atol=1e-6)


@pytest.mark.parametrize("side", MASK_SIDES)
@pytest.mark.parametrize("before_norm", [True, False])
def test_masked_prototype_cosine_closed_form(side, before_norm):
    features, prototypes, masks = torch.randn(4, 6), torch.randn(5, 6), torch.rand(4, 6)
    got = masked_prototype_cosine(features, prototypes, masks, side=side, before_norm=before_norm)
    expected = _explicit_masked_cosine(features, prototypes, masks, side, before_norm)
    assert got.shape == (4, 5)
    assert torch.allclose(got, expected, atol=1e-5)
    if side == "prototype" and before_norm:
        eq10 = (F.normalize(features, dim=1)[:, None, :] * masked_prototypes(prototypes, masks)).sum(-1)
        assert torch.allclose(got, eq10, atol=1e-5)


def test_masked_prototype_cosine_with_unit_mask_is_plain_cosine():
    features, prototypes = torch.randn(3, 4), torch.randn(2, 4)
    plain = F.normalize(features, dim=1) @ F.normalize(prototypes, dim=1).t()
    for side in MASK_SIDES:
        got = masked_prototype_cosine(features, prototypes, torch.ones(3, 4), side=side)
        assert torch.allclose(got, plain, atol=1e-6)


def test_masked_prototype_cosine_rejects_bad_side():
    with pytest.raises(ValueError, match="side"):
        masked_prototype_cosine(torch.randn(2, 3), torch.randn(4, 3), torch.rand(2, 3), side="gallery")


# ----------------------------------------------------------------------------- HEM (Eq. 18-19)
def test_head_orthogonality_hand_values():
    orthogonal = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]])
    assert head_orthogonality_loss(orthogonal).item() == pytest.approx(0.0, abs=1e-7)
    identical = torch.tensor([[[1.0, 2.0, 3.0], [2.0, 4.0, 6.0]]])  # Gram all ones: ‖G − I‖² = 2, / 2² -> 0.5
    assert head_orthogonality_loss(identical).item() == pytest.approx(0.5, abs=1e-6)
    diagonal = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])  # off-diagonal 1/√2: 2·0.5 / 4 = 0.25
    assert head_orthogonality_loss(diagonal).item() == pytest.approx(0.25, abs=1e-6)
    batch = torch.cat([orthogonal, identical])  # mean over the batch: (0 + 0.5) / 2
    assert head_orthogonality_loss(batch).item() == pytest.approx(0.25, abs=1e-6)
    three_identical = torch.ones(1, 3, 5)  # six off-diagonal ones / 3² = 2/3
    assert head_orthogonality_loss(three_identical).item() == pytest.approx(2 / 3, abs=1e-6)


# ----------------------------------------------------------------------------- SupCon (SPEC §2)
def _naive_supcon(anchors, contrasts, anchor_labels, contrast_labels):
    per_anchor = []
    for i in range(anchors.shape[0]):
        scores = [float(anchors[i] @ contrasts[k]) for k in range(contrasts.shape[0])]
        log_z = math.log(sum(math.exp(s) for s in scores))
        positives = [scores[k] - log_z for k in range(len(scores)) if contrast_labels[k] == anchor_labels[i]]
        if positives:
            per_anchor.append(-sum(positives) / len(positives))
    return sum(per_anchor) / len(per_anchor)


def test_supervised_contrastive_matches_naive_loop():
    anchors, contrasts = torch.randn(5, 3), torch.randn(7, 3)
    anchor_labels, contrast_labels = torch.tensor([0, 1, 1, 2, 9]), torch.tensor([0, 0, 1, 2, 2, 2, 3])
    got = supervised_contrastive_loss(anchors, contrasts, anchor_labels, contrast_labels)
    expected = _naive_supcon(anchors, contrasts, anchor_labels.tolist(), contrast_labels.tolist())
    assert got.item() == pytest.approx(expected, abs=1e-5)


def test_supervised_contrastive_hand_value():
    # logits (1, 0), positive = first: −log(e / (e + 1)) = log(1 + e^{-1})
    got = supervised_contrastive_loss(torch.tensor([[1.0]]), torch.tensor([[1.0], [0.0]]),
                                      torch.tensor([0]), torch.tensor([0, 1]))
    assert got.item() == pytest.approx(math.log1p(math.exp(-1)), abs=1e-6)


def test_image_text_contrastive_is_sum_of_both_directions():
    images, texts, labels = torch.randn(6, 4), torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, 3])
    expected = (_naive_supcon(images, texts, labels.tolist(), labels.tolist())
                + _naive_supcon(texts, images, labels.tolist(), labels.tolist()))
    assert image_text_contrastive_loss(images, texts, labels).item() == pytest.approx(expected, abs=1e-5)


# ----------------------------------------------------------------------------- SPS (Eq. 22-23)
def test_budget_loss_hand_values():
    assert budget_loss(torch.tensor([[0.5, 0.1], [0.3, 0.3]]), rho=0.3).item() == pytest.approx(0.0, abs=1e-7)
    assert budget_loss(torch.ones(2, 3), rho=0.3).item() == pytest.approx(0.49, abs=1e-6)
    # batch-level, not per image: one empty and one full image average to 0.5
    assert budget_loss(torch.tensor([[0.0, 0.0], [1.0, 1.0]]), rho=0.3).item() == pytest.approx(0.04, abs=1e-6)


def test_complement_loss_hand_values():
    assert complement_loss(torch.zeros(3, 2), torch.zeros(3, 2)).item() == pytest.approx(1.5, abs=1e-6)
    full = torch.tensor([[math.log(3.0), 0.0]])        # softmax (0.75, 0.25)
    complement = torch.tensor([[0.0, math.log(4.0)]])  # softmax (0.2, 0.8)
    assert complement_loss(full, complement).item() == pytest.approx(0.75 * 0.2 + 0.25 * 0.8, abs=1e-6)
