"""SPT occlusion synthesis (SPEC §4): overlap measures, mask rolling, pairing, token synthesis, loss bookkeeping."""
import struct

import pytest
import torch

import fastreid_dpmpp  # noqa: F401  (fast-reid fixes first)
from fastreid_dpmpp.analysis import spt_samples
from fastreid_dpmpp.modeling import stage3_patch_transfer as spt


def grid(rows):
    """A (Hp, Wp) bool mask from strings of 0/1, e.g. grid(["010", "010"])."""
    return torch.tensor([[c == "1" for c in row] for row in rows], dtype=torch.bool)


def batch(*masks):
    return torch.stack(masks)


# 4x3 hand masks used by several tests
A = grid(["010", "010", "010", "010"])  # middle column, area 4
B_ = grid(["011", "011", "000", "000"])  # top-right 2x2, area 4, |A∧B| = 2
C = grid(["000", "000", "111", "111"])  # bottom two rows, area 6, |A∧C| = 2, |B∧C| = 0
E = grid(["010", "000", "000", "000"])  # one cell inside A, area 1
EMPTY = torch.zeros(4, 3, dtype=torch.bool)


def naive_overlap(mi, mj, mode):
    inter = float((mi & mj).sum())
    if mode == "oiou":
        denom = float(mj.sum())
    else:
        denom = float((mi | mj).sum())
    return inter / denom if denom > 0 else 0.0


def naive_rolled(masks, mode):
    n = masks.shape[0]
    out = torch.zeros(n, n)
    for i in range(n):
        for j in range(n):
            out[i, j] = max(
                naive_overlap(torch.roll(masks[i], r, dims=1), masks[j], mode) for r in range(masks.shape[-1])
            )
    return out


# ------------------------------------------------------------------------------------------ binarize
def test_binarize_saliency_thresholds_row_major():
    saliency = torch.tensor([[0.1, 0.5, 0.9, 0.49, 0.51, 0.0]])
    masks = spt.binarize_saliency(saliency, (2, 3))
    assert masks.dtype == torch.bool
    assert torch.equal(masks[0], grid(["011", "010"]))
    assert torch.equal(spt.binarize_saliency(saliency, (3, 2), threshold=0.8)[0], grid(["00", "10", "00"]))


def test_binarize_saliency_rejects_wrong_grid():
    with pytest.raises(ValueError, match="binarize_saliency"):
        spt.binarize_saliency(torch.rand(2, 6), (2, 4))


# ------------------------------------------------------------------------------------------ OIoU / IoU
def test_oiou_by_hand_uses_candidate_area():
    m = spt.overlap_matrix(batch(A, B_, C, E, EMPTY), "oiou")
    expected = torch.tensor([
        # candidates:  A     B     C     E    EMPTY
        [1.0, 0.5, 2 / 6, 1.0, 0.0],  # anchor A
        [0.5, 1.0, 0.0, 1.0, 0.0],  # anchor B
        [0.5, 0.0, 1.0, 0.0, 0.0],  # anchor C
        [0.25, 0.25, 0.0, 1.0, 0.0],  # anchor E
        [0.0, 0.0, 0.0, 0.0, 0.0],  # anchor EMPTY
    ])
    assert torch.allclose(m, expected)


def test_iou_by_hand():
    m = spt.overlap_matrix(batch(A, B_, C, E, EMPTY), "iou")
    expected = torch.tensor([
        [1.0, 2 / 6, 2 / 8, 1 / 4, 0.0],
        [2 / 6, 1.0, 0.0, 1 / 4, 0.0],
        [2 / 8, 0.0, 1.0, 0.0, 0.0],
        [1 / 4, 1 / 4, 0.0, 1.0, 0.0],
        [0.0, 0.0, 0.0, 0.0, 0.0],
    ])
    assert torch.allclose(m, expected)


def test_overlap_and_rolling_match_naive_loops_on_random_masks():
    g = torch.Generator().manual_seed(3)
    masks = torch.rand(7, 5, 4, generator=g) > 0.6
    masks[2] = False
    for mode in ("oiou", "iou"):
        naive = torch.tensor([[naive_overlap(mi, mj, mode) for mj in masks] for mi in masks])
        assert torch.allclose(spt.overlap_matrix(masks, mode), naive)
        assert torch.allclose(spt.rolled_overlap_matrix(masks, mode), naive_rolled(masks, mode))


def test_overlap_rejects_bad_mode_and_shape():
    with pytest.raises(ValueError, match="mode"):
        spt.overlap_matrix(batch(A, B_), "dice")
    with pytest.raises(ValueError, match="masks"):
        spt.rolled_overlap_matrix(A)


# ------------------------------------------------------------------------------------------ rolling
def test_rolling_finds_a_shifted_copy():
    left = grid(["100", "100", "100", "000"])
    right = grid(["001", "001", "001", "000"])
    plain = spt.overlap_matrix(batch(left, right))
    rolled = spt.rolled_overlap_matrix(batch(left, right))
    assert plain[0, 1] == 0.0 and rolled[0, 1] == 1.0 and rolled[1, 0] == 1.0


def test_rolling_is_circular_and_never_shifts_rows():
    two_left = grid(["110", "110", "000", "000"])
    wrapped = grid(["101", "101", "000", "000"])  # two_left rolled by 2 columns (wraps around)
    top_row = grid(["111", "000", "000", "000"])
    bottom_row = grid(["000", "000", "000", "111"])
    rolled = spt.rolled_overlap_matrix(batch(two_left, wrapped, top_row, bottom_row))
    assert spt.overlap_matrix(batch(two_left, wrapped))[0, 1] == 0.5
    assert rolled[0, 1] == 1.0
    assert rolled[2, 3] == 0.0 and rolled[3, 2] == 0.0


# ------------------------------------------------------------------------------------------ pairing
def partners_over_seeds(masks, labels, seeds=80, **kwargs):
    return torch.stack([
        spt.select_partners(masks, labels, generator=torch.Generator().manual_seed(s), **kwargs) for s in range(seeds)
    ])


def beta_case():
    """4x4 grids. Anchor = two left columns. Candidates (ids ≠ anchor's unless said):
    X: OIoU 0.5, rolled 1.0;  Y: OIoU 0.5, rolled 0.5;  W: OIoU 0, rolled 1.0;  Z: same id as anchor, OIoU 1."""
    anchor = grid(["1100", "1100", "1100", "1100"])
    x = grid(["0110", "0110", "0000", "0000"])
    y = grid(["1010", "0000", "0000", "0000"])
    w = grid(["0001", "0001", "0001", "0001"])
    z = anchor.clone()
    return batch(anchor, x, y, w, z), torch.tensor([0, 1, 2, 3, 0])


def test_beta_case_scores_are_as_designed():
    masks, _ = beta_case()
    plain, rolled = spt.overlap_matrix(masks), spt.rolled_overlap_matrix(masks)
    assert plain[0, 1:].tolist() == [0.5, 0.5, 0.0, 1.0]
    assert rolled[0, 1:].tolist() == [1.0, 0.5, 1.0, 1.0]


def test_only_the_candidate_passing_alpha_and_beta_is_used():
    masks, labels = beta_case()
    chosen = partners_over_seeds(masks, labels, alpha=0.4, beta=0.9, top_fraction=1.0, prob=1.0)[:, 0]
    assert set(chosen.tolist()) == {1, -1}  # X accepted when drawn; Y fails β, W fails α, Z is same identity


def test_without_rolling_beta_applies_to_the_plain_overlap():
    masks, labels = beta_case()
    chosen = partners_over_seeds(masks, labels, alpha=0.4, beta=0.9, top_fraction=1.0, prob=1.0, use_rolling=False)
    assert (chosen[:, 0] == -1).all()
    chosen = partners_over_seeds(masks, labels, alpha=0.4, beta=0.4, top_fraction=1.0, prob=1.0, use_rolling=False)
    assert set(chosen[:, 0].tolist()) == {1, 2, -1}


def test_alpha_rejects_candidates_below_the_unrolled_oiou():
    masks, labels = beta_case()
    chosen = partners_over_seeds(masks, labels, alpha=0.6, beta=0.0, top_fraction=1.0, prob=1.0)[:, 0]
    assert (chosen == -1).all()  # every other-identity candidate has unrolled OIoU ≤ 0.5


def test_top_one_ties_are_broken_at_random():
    masks, labels = beta_case()  # X and W tie at rolled score 1.0; with k = 1 either may be the only candidate
    top_fraction = 1 / 4  # B = 5: k = round(0.25 · 4) = 1
    assert spt.candidate_count(5, top_fraction) == 1
    chosen = partners_over_seeds(masks, labels, alpha=0.4, beta=0.0, top_fraction=top_fraction, prob=1.0)[:, 0]
    assert set(chosen.tolist()) == {1, -1}  # X drawn -> accepted, W drawn -> fails α
    chosen = partners_over_seeds(masks, labels, alpha=0.0, beta=0.0, top_fraction=top_fraction, prob=1.0)[:, 0]
    assert set(chosen.tolist()) == {1, 3}  # Y (rolled 0.5) never enters the top 1


def test_top_fraction_is_honoured():
    # 1x8 grid, anchor = cells 0-3; candidates have distinct OIoU 1, 1/2, 1/3, 1/4, 1/5 with the anchor.
    anchor = grid(["11110000"])
    candidates = [grid(["10000000"]), grid(["10001000"]), grid(["10001100"]), grid(["10001110"]),
                  grid(["10001111"])]
    masks = batch(anchor, *reversed(candidates))  # best candidate last in the batch
    labels = torch.arange(6)
    assert torch.allclose(spt.overlap_matrix(masks)[0, 1:], torch.tensor([1 / 5, 1 / 4, 1 / 3, 1 / 2, 1.0]))
    assert spt.candidate_count(6, 0.4) == 2
    chosen = partners_over_seeds(masks, labels, seeds=200, alpha=0.0, beta=0.0, top_fraction=0.4, prob=1.0,
                                 use_rolling=False)[:, 0]
    assert set(chosen.tolist()) == {5, 4}
    assert 0.35 < (chosen == 5).float().mean().item() < 0.65  # uniform draw among the kept candidates
    chosen = partners_over_seeds(masks, labels, alpha=0.0, beta=0.0, top_fraction=1.0, prob=1.0,
                                 use_rolling=False)[:, 0]
    assert set(chosen.tolist()) == {1, 2, 3, 4, 5}


def test_ranking_uses_the_rolled_score():
    anchor = grid(["1100", "1100"])
    shifted = grid(["0011", "0011"])  # plain OIoU 0, rolled 1
    half = grid(["0110", "0110"])  # plain 0.5, rolled 1
    quarter = grid(["1001", "0000"])  # plain 0.5, rolled 1 (cells 3 and 0 are circular neighbours)
    low = grid(["1000", "0010"])  # plain 0.5, rolled 0.5
    masks, labels = batch(anchor, low, shifted), torch.arange(3)
    k1 = 1 / 2  # B = 3: k = 1
    rolled = partners_over_seeds(masks, labels, alpha=0.0, beta=0.0, top_fraction=k1, prob=1.0)[:, 0]
    plain = partners_over_seeds(masks, labels, alpha=0.0, beta=0.0, top_fraction=k1, prob=1.0, use_rolling=False)[:, 0]
    assert (rolled == 2).all() and (plain == 1).all()
    assert spt.rolled_overlap_matrix(batch(anchor, half, quarter))[0, 1:].tolist() == [1.0, 1.0]


def test_iou_mode_changes_acceptance():
    anchor = grid(["1100", "1100", "1100", "1100"])
    small = grid(["0100", "0100", "0000", "0000"])  # OIoU 1, IoU 2/8
    masks, labels = batch(anchor, small), torch.tensor([0, 1])
    assert (partners_over_seeds(masks, labels, seeds=5, prob=1.0)[:, 0] == 1).all()
    assert (partners_over_seeds(masks, labels, seeds=5, prob=1.0, use_oiou=False)[:, 0] == -1).all()


def test_never_self_or_same_identity_and_everyone_paired_when_thresholds_are_zero():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(16, 5, 3, generator=g) > 0.5
    masks[:, 0, 0] = True  # no empty masks
    labels = torch.arange(16) // 4
    chosen = partners_over_seeds(masks, labels, seeds=20, alpha=0.0, beta=0.0, top_fraction=0.5, prob=1.0)
    assert (chosen >= 0).all()
    rows = torch.arange(16).expand_as(chosen)
    assert (chosen != rows).all()
    assert (labels[chosen] != labels[rows]).all()


def test_empty_candidates_and_single_identity_batches_give_no_partner():
    masks, labels = batch(A, EMPTY, A.clone()), torch.tensor([0, 1, 0])
    chosen = partners_over_seeds(masks, labels, seeds=10, alpha=0.0, beta=0.0, prob=1.0)
    assert (chosen[:, [0, 2]] == -1).all()  # their only other identity has an empty mask
    assert set(chosen[:, 1].tolist()) == {0, 2}  # an empty anchor may still be occluded (α = 0 here)
    assert (spt.select_partners(batch(A, B_), torch.tensor([3, 3]), alpha=0, beta=0, prob=1.0) == -1).all()
    assert spt.select_partners(batch(A), torch.tensor([0]), prob=1.0).tolist() == [-1]


def test_prob_zero_gives_no_partner_and_prob_is_a_per_sample_coin():
    g = torch.Generator().manual_seed(1)
    masks = torch.rand(32, 4, 3, generator=g) > 0.3
    masks[:, 0, 0] = True
    labels = torch.arange(32)
    none = partners_over_seeds(masks, labels, seeds=10, alpha=0.0, beta=0.0, prob=0.0)
    assert (none == -1).all()
    half = partners_over_seeds(masks, labels, seeds=20, alpha=0.0, beta=0.0, prob=0.5)
    assert 0.4 < (half >= 0).float().mean().item() < 0.6


def test_deterministic_given_generator_and_validates_arguments():
    g = torch.Generator().manual_seed(5)
    masks = torch.rand(12, 4, 3, generator=g) > 0.5
    labels = torch.arange(12) // 2
    first = spt.select_partners(masks, labels, alpha=0.2, generator=torch.Generator().manual_seed(9))
    again = spt.select_partners(masks, labels, alpha=0.2, generator=torch.Generator().manual_seed(9))
    assert torch.equal(first, again) and first.dtype == torch.long
    with pytest.raises(ValueError, match="labels"):
        spt.select_partners(masks, labels[:5])
    with pytest.raises(ValueError, match="TOP_FRACTION"):
        spt.select_partners(masks, labels, top_fraction=0.0)
    with pytest.raises(ValueError, match="PROB"):
        spt.select_partners(masks, labels, prob=1.5)


def test_candidate_count_rounds_half_up():
    assert spt.candidate_count(64, 0.1) == 6  # 6.3
    assert spt.candidate_count(16, 0.1) == 2  # 1.5 -> 2
    assert spt.candidate_count(4, 0.1) == 1  # max(1, 0)
    assert spt.candidate_count(4, 1.0) == 3


# ------------------------------------------------------------------------------------------ synthesis
def numbered_tokens(b, n, d=2):
    """tokens[b, t, c] = 100·b + 10·t + c: every value names its sample, token and channel."""
    return (100 * torch.arange(b).view(b, 1, 1) + 10 * torch.arange(n).view(1, n, 1)
            + torch.arange(d).view(1, 1, d)).float()


def test_synthesize_tokens_eq7_by_hand_without_chains():
    tokens = numbered_tokens(3, 4)
    masks = batch(grid(["10", "01"]), grid(["11", "11"]), grid(["10", "01"]))  # 2x2 grid, N = 4
    masks[2] = grid(["01", "11"])
    partners = torch.tensor([2, -1, 0])
    original = tokens.clone()
    out = spt.synthesize_tokens(tokens, partners, masks)
    # sample 0, partner 2 (M_2 = [0,1,1,1]): token 0 from x_2, tokens 1-3 kept
    assert out[0].tolist() == [[200, 201], [10, 11], [20, 21], [30, 31]]
    # sample 1 untouched
    assert torch.equal(out[1], original[1])
    # sample 2, partner 0 (M_0 = [1,0,0,1]): tokens 1, 2 from the ORIGINAL x_0 even though x_0 is synthesised too
    assert out[2].tolist() == [[200, 201], [10, 11], [20, 21], [230, 231]]
    assert torch.equal(tokens, original)  # input not modified


def test_synthesize_tokens_matches_eq7_arithmetic_and_is_differentiable():
    g = torch.Generator().manual_seed(2)
    tokens = torch.randn(5, 6, 3, generator=g, requires_grad=True)
    masks = torch.rand(5, 3, 2, generator=g) > 0.5
    partners = torch.tensor([3, 0, -1, 1, 3])
    out = spt.synthesize_tokens(tokens, partners, masks)
    for i in range(5):
        j = int(partners[i])
        if j < 0:
            expected = tokens[i]
        else:
            m = masks[j].flatten().float().unsqueeze(-1)
            expected = tokens[i] * m + tokens[j] * (1 - m)
        assert torch.allclose(out[i], expected)
    out.sum().backward()
    assert tokens.grad is not None and tokens.grad.abs().sum() > 0


def test_synthesize_tokens_accepts_flat_masks_and_checks_shapes():
    tokens = numbered_tokens(2, 4)
    flat = torch.tensor([[True, False, True, False], [False, True, True, True]])
    out = spt.synthesize_tokens(tokens, torch.tensor([1, -1]), flat)
    assert out[0].tolist() == [[100, 101], [10, 11], [20, 21], [30, 31]]
    with pytest.raises(ValueError, match="resize_masks"):
        spt.synthesize_tokens(tokens, torch.tensor([1, -1]), torch.ones(2, 3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="partners"):
        spt.synthesize_tokens(tokens, torch.tensor([2, -1]), flat)


def test_resize_masks_nearest():
    small = grid(["10", "01"]).unsqueeze(0)
    up = spt.resize_masks(small, (4, 4))
    assert torch.equal(up[0], grid(["1100", "1100", "0011", "0011"]))
    big = grid(["1000", "0000", "0010", "0000"]).unsqueeze(0)
    assert torch.equal(spt.resize_masks(big, (2, 2))[0], grid(["10", "01"]))
    odd = torch.rand(2, 5, 3, generator=torch.Generator().manual_seed(0)) > 0.5
    out = spt.resize_masks(odd, (7, 4))
    rows = [int(r * 5 / 7) for r in range(7)]  # nearest: source index floor(dst · in / out)
    cols = [int(c * 3 / 4) for c in range(4)]
    assert torch.equal(out, odd[:, rows][:, :, cols])
    assert torch.equal(spt.resize_masks(odd, (5, 3)), odd)


# ------------------------------------------------------------------------------------------ identity ignoring
def test_ignored_classes_and_excluded_negatives_by_hand():
    labels = torch.tensor([0, 0, 1, 1, 2])
    partners = torch.tensor([2, -1, 4, -1, 0])
    assert spt.ignored_partner_classes(partners, labels).tolist() == [1, -1, 2, -1, 0]
    expected = torch.zeros(5, 5, dtype=torch.bool)
    expected[0, 2] = expected[0, 3] = True  # anchor 0, partner identity 1
    expected[2, 4] = True  # anchor 2, partner identity 2
    expected[4, 0] = expected[4, 1] = True  # anchor 4, partner identity 0
    assert torch.equal(spt.excluded_negative_pairs(partners, labels), expected)


def test_a_same_identity_partner_is_never_ignored():
    labels = torch.tensor([0, 0, 1])
    partners = torch.tensor([1, -1, -1])
    assert spt.ignored_partner_classes(partners, labels).tolist() == [-1, -1, -1]
    assert not spt.excluded_negative_pairs(partners, labels).any()


# ------------------------------------------------------------------------------------------ statistics
def test_synthesis_statistics_by_hand():
    masks = batch(A, B_, C, E)
    partners = torch.tensor([1, -1, 3, -1])  # pairs (A <- B), (C <- E)
    stats = spt.synthesis_statistics(partners, masks)
    assert stats["spt_fraction"] == pytest.approx(0.5)
    # OIoU(A, B) = 2/4, OIoU(C, E) = 0/1
    assert stats["spt_mean_oiou"] == pytest.approx(0.25)
    # covered: A loses 2 of 4 salient cells; C loses all 6 (E is outside C)
    assert stats["spt_covered_fraction"] == pytest.approx((0.5 + 1.0) / 2)
    # transferred: 1 - |B|/12 and 1 - |E|/12
    assert stats["spt_transferred_fraction"] == pytest.approx(((1 - 4 / 12) + (1 - 1 / 12)) / 2)
    none = spt.synthesis_statistics(torch.full((4,), -1), masks)
    assert none == {"spt_fraction": 0.0, "spt_mean_oiou": 0.0, "spt_covered_fraction": 0.0,
                    "spt_transferred_fraction": 0.0}


# ------------------------------------------------------------------------------------------ pictures
def test_pixel_masks_cells_follow_the_stride():
    masks = grid(["10", "01", "11"]).unsqueeze(0)
    # patch 2, stride 2: pixel (y, x) belongs to cell (y // 2, x // 2)
    pix = spt_samples.pixel_masks(masks, (6, 4), patch_size=2, stride=2)
    assert torch.equal(pix[0], grid(["1100", "1100", "0011", "0011", "1111", "1111"]))
    # overlapping patches (P=16, S=12): a cell is the central 12 pixels of the patch, borders go to the edges
    masks = torch.rand(1, 21, 10, generator=torch.Generator().manual_seed(0)) > 0.5
    pix = spt_samples.pixel_masks(masks, (256, 128), patch_size=16, stride=12)
    for y, x in [(0, 0), (1, 1), (2, 2), (13, 13), (14, 14), (253, 125), (255, 127), (130, 60)]:
        row, col = min(max((y - 2) // 12, 0), 20), min(max((x - 2) // 12, 0), 9)
        assert pix[0, y, x] == masks[0, row, col]


def test_render_pixels_equals_token_synthesis_at_one_pixel_patches():
    g = torch.Generator().manual_seed(4)
    images = torch.randn(4, 3, 6, 5, generator=g)
    masks = torch.rand(4, 6, 5, generator=g) > 0.5
    partners = torch.tensor([2, -1, 0, 2])
    rendered = spt_samples.render_pixels(images, partners, masks, patch_size=1, stride=1)
    as_tokens = images.flatten(2).transpose(1, 2)  # (B, H·W, C), one token per pixel
    expected = spt.synthesize_tokens(as_tokens, partners, masks).transpose(1, 2).reshape(images.shape)
    assert torch.equal(rendered, expected)
    assert torch.equal(rendered[1], images[1])


def test_save_synthesis_figure_writes_a_png(tmp_path):
    mean, std = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(4, 3, 64, 32, generator=g) * 255
    images = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    masks = torch.rand(4, 5, 2, generator=g) > 0.5  # P=16, S=12 on 64x32
    partners = torch.tensor([1, -1, 3, -1])
    synthesized = spt_samples.render_pixels(images, partners, masks, 16, 12)
    path = tmp_path / "sub" / "spt.png"
    spt_samples.save_synthesis_figure(str(path), images, synthesized, masks, partners, torch.arange(4), mean, std)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 100 and height > 200  # two rows of three pictures
    empty = tmp_path / "none.png"
    spt_samples.save_synthesis_figure(str(empty), images, images, masks, torch.full((4,), -1), torch.arange(4), mean, std)
    assert empty.read_bytes()[:4] == b"\x89PNG"


def test_synthesize_tokens_union_keeps_the_anchor_inside_either_identity_set():
    tokens = numbered_tokens(2, 4)
    masks = batch(grid(["10", "01"]), grid(["01", "01"]))  # M_0 = [1,0,0,1], M_1 = [0,1,0,1]
    partners = torch.tensor([1, -1])
    partner_rule = spt.synthesize_tokens(tokens, partners, masks)
    union_rule = spt.synthesize_tokens(tokens, partners, masks, keep="union")
    # Eq. 7: the anchor survives only inside M_1 (tokens 1, 3); token 0 (its own identity set) goes to the partner
    assert partner_rule[0].tolist() == [[100, 101], [10, 11], [120, 121], [30, 31]]
    # union: the anchor keeps M_0 ∨ M_1 = tokens 0, 1, 3; only token 2 (in neither set) comes from the partner
    assert union_rule[0].tolist() == [[0, 1], [10, 11], [120, 121], [30, 31]]
    assert torch.equal(union_rule[1], tokens[1])
    with pytest.raises(ValueError, match="SPT.KEEP"):
        spt.synthesize_tokens(tokens, partners, masks, keep="anchor")


def test_synthesis_statistics_union_counts_only_patches_outside_both_sets():
    masks = batch(grid(["10", "01"]), grid(["01", "01"]))
    partners = torch.tensor([1, -1])
    partner_rule = spt.synthesis_statistics(partners, masks)
    union_rule = spt.synthesis_statistics(partners, masks, keep="union")
    assert partner_rule["spt_transferred_fraction"] == pytest.approx(0.5)   # 1 - |M_1| / 4
    assert partner_rule["spt_covered_fraction"] == pytest.approx(0.5)      # token 0 of M_0 = {0, 3} replaced
    assert union_rule["spt_transferred_fraction"] == pytest.approx(0.25)   # 1 - |M_0 ∨ M_1| / 4
    assert union_rule["spt_covered_fraction"] == 0.0
