"""Paper Fig. 3 analyses (fastreid_dpmpp/analysis/attention.py) against naive loops written here, the rank tables of
tools/visualize.py against a naive masked-cosine ranking, and tools/visualize.py end to end on two tiny random-init
DPM++ models and the tiny synthetic Occluded-Duke (every picture written and readable)."""
import json
import math
import os

import numpy as np
import pytest
import torch

import fastreid_dpmpp  # noqa: F401  (fast-reid fixes first)
from fastreid_dpmpp.analysis.attention import (
    AttentionStatistics,
    block_patch_tokens,
    head_correlation,
    mean_head_correlation,
    off_diagonal_mean,
    token_similarity,
)
from fastreid_dpmpp.export import load_inference_model
from _tiny import tiny_vit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "Synthetic", "dpmpp.yml")
TINY = tiny_vit(32, 3, 4, 16, (2, 3), (1, 1), (64, 32), "MODEL.HEADS.NUM_CLASSES", 8, "MODEL.VIT.NUM_CAMERAS", 8)


def naive_cosine(a, b):
    dot = sum(float(x) * float(y) for x, y in zip(a, b))
    norm_a = math.sqrt(sum(float(x) ** 2 for x in a))
    norm_b = math.sqrt(sum(float(y) ** 2 for y in b))
    return dot / (norm_a * norm_b)


# ----------------------------------------------------------------------------- head correlation (Fig. 3a)
def test_head_correlation_equals_naive_loop_unit_diagonal_and_symmetric():
    logits = torch.randn(3, 4, 7, generator=torch.Generator().manual_seed(0))
    correlation = head_correlation(logits)
    assert correlation.shape == (3, 4, 4)
    for b in range(3):
        for i in range(4):
            for j in range(4):
                assert correlation[b, i, j].item() == pytest.approx(naive_cosine(logits[b, i], logits[b, j]),
                                                                    abs=1e-5)
    assert torch.allclose(correlation.diagonal(dim1=1, dim2=2), torch.ones(3, 4), atol=1e-6)
    assert torch.allclose(correlation, correlation.transpose(1, 2), atol=1e-6)
    naive_mean = [[sum(naive_cosine(logits[b, i], logits[b, j]) for b in range(3)) / 3 for j in range(4)]
                  for i in range(4)]
    assert torch.allclose(mean_head_correlation(logits), torch.tensor(naive_mean), atol=1e-5)


def test_head_correlation_hand_values_and_off_diagonal_mean():
    # heads 1 and 2 identical, head 3 orthogonal to both, head 4 = −head 1
    logits = torch.tensor([[[1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [-1.0, 0.0, 0.0]]])
    expected = torch.tensor([[1.0, 1.0, 0.0, -1.0], [1.0, 1.0, 0.0, -1.0], [0.0, 0.0, 1.0, 0.0],
                             [-1.0, -1.0, 0.0, 1.0]])
    correlation = mean_head_correlation(logits)
    assert torch.allclose(correlation, expected)
    # off-diagonal: 2·(1 + 0 − 1 + 0 − 1 + 0) / 12 = −2/12
    assert off_diagonal_mean(correlation).item() == pytest.approx(-2 / 12)
    stacked = torch.stack([expected, torch.eye(4)])
    assert torch.allclose(off_diagonal_mean(stacked), torch.tensor([-2 / 12, 0.0]))


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"\(B, h, N\)"):
        head_correlation(torch.zeros(4, 5))
    with pytest.raises(ValueError, match="at least 2 tokens"):
        token_similarity(torch.zeros(2, 1, 3))
    with pytest.raises(ValueError, match=r"\(\.\.\., h, h\)"):
        off_diagonal_mean(torch.zeros(2, 3))


# ----------------------------------------------------------------------------- token similarity (Fig. 3b)
def naive_token_similarity(tokens):
    """tokens (N, D): mean over ordered pairs i ≠ j of the cosine."""
    count = tokens.shape[0]
    pairs = [naive_cosine(tokens[i], tokens[j]) for i in range(count) for j in range(count) if i != j]
    return sum(pairs) / len(pairs)


def test_token_similarity_equals_naive_loop_for_any_leading_shape():
    tokens = torch.randn(3, 2, 5, 6, generator=torch.Generator().manual_seed(1))     # (L, B, N, D)
    similarity = token_similarity(tokens)
    assert similarity.shape == (3, 2)
    for layer in range(3):
        for b in range(2):
            assert similarity[layer, b].item() == pytest.approx(naive_token_similarity(tokens[layer, b]), abs=1e-5)
    assert token_similarity(tokens[0, 1]).item() == pytest.approx(naive_token_similarity(tokens[0, 1]), abs=1e-5)


def test_token_similarity_hand_values():
    same = torch.tensor([[1.0, 2.0], [2.0, 4.0], [0.5, 1.0]])          # all parallel: 1
    basis = torch.eye(3)                                               # orthogonal: 0
    opposite = torch.tensor([[1.0, 0.0], [-3.0, 0.0]])                 # antiparallel: −1
    assert token_similarity(same).item() == pytest.approx(1.0)
    assert token_similarity(basis).item() == pytest.approx(0.0, abs=1e-7)
    assert token_similarity(opposite).item() == pytest.approx(-1.0)
    # three tokens: a, a, b with a ⟂ b -> pairs (a,a) twice = 1, four pairs with b = 0 -> 2/6
    assert token_similarity(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])).item() == pytest.approx(1 / 3)


# ----------------------------------------------------------------------------- on a real (tiny) backbone
@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model, _ = load_inference_model(CONFIG, TINY)
    return model


def test_block_patch_tokens_are_the_block_outputs_and_taps_are_restored(tiny_model):
    backbone = tiny_model.backbone
    images = torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(2))
    camids = torch.tensor([0, 3])
    with torch.no_grad():
        reference = backbone.forward_features(images, camids)
    outputs, tokens = block_patch_tokens(backbone, images, camids)
    assert backbone.tap_indices == [1, 2]                      # the configured taps (1-based 2, 3) are back
    assert tokens.shape == (3, 2, backbone.num_patches, backbone.width)
    # the configured taps are blocks 2 and 3; the final norm of the last block's tokens gives "patch_tokens"
    assert torch.allclose(tokens[1], reference["taps"][0], atol=1e-6)
    assert torch.allclose(tokens[2], reference["taps"][1], atol=1e-6)
    assert torch.allclose(backbone._final_norm(tokens[2]), reference["patch_tokens"], atol=1e-5)
    assert torch.allclose(outputs["attn_logits"], reference["attn_logits"], atol=1e-6)
    assert not torch.allclose(tokens[0], tokens[1])


def test_attention_statistics_over_batches_equal_the_whole_set(tiny_model):
    backbone = tiny_model.backbone
    images = torch.randn(5, 3, 64, 32, generator=torch.Generator().manual_seed(3))
    statistics = AttentionStatistics()
    statistics.update(backbone, images[:2])
    statistics.update(backbone, images[2:])
    result = statistics.result()
    outputs, tokens = block_patch_tokens(backbone, images)
    naive_correlation = torch.stack([torch.tensor([[naive_cosine(a, b) for b in logits] for a in logits])
                                     for logits in outputs["attn_logits"]]).mean(dim=0)
    naive_similarity = torch.tensor([[naive_token_similarity(tokens[layer, b]) for b in range(5)]
                                     for layer in range(3)]).mean(dim=1)
    assert result["num_images"] == 5
    assert torch.allclose(result["head_correlation"], naive_correlation, atol=1e-5)
    assert torch.allclose(result["token_similarity"], naive_similarity, atol=1e-5)
    assert result["head_off_diagonal"] == pytest.approx(off_diagonal_mean(naive_correlation).item(), abs=1e-5)
    with pytest.raises(ValueError, match="before any update"):
        AttentionStatistics().result()


# ----------------------------------------------------------------------------- rank tables of the tool
class _FixedExtractor:
    def __init__(self, table):
        self.table = table

    def __call__(self, paths, cameras=None):
        descriptors, masks = zip(*(self.table[p] for p in paths))
        return np.array(descriptors, dtype=np.float32), np.array(masks, dtype=np.float32)


class _FixedStudy:
    name = "stub"

    def __init__(self, table):
        self.extractor = _FixedExtractor(table)


def naive_ranking(query, mask, gallery_rows, left_out):
    q_norm = math.sqrt(sum(v * v for v in query))
    scores = []
    for index, g in enumerate(gallery_rows):
        if index in left_out:
            continue
        g_norm = math.sqrt(sum(v * v for v in g))
        numerator = sum((qi / q_norm) * mi * (gi / g_norm) for qi, mi, gi in zip(query, mask, g))
        denominator = math.sqrt(sum(mi * mi * (gi / g_norm) ** 2 for mi, gi in zip(mask, g)))
        scores.append((numerator / denominator, index))
    return sorted(scores, reverse=True)


def test_rank_tables_follow_the_protocol_and_equal_a_naive_masked_ranking(load_tool):
    tool = load_tool("visualize")
    rng = np.random.default_rng(4)
    query = ("q.jpg", 1, 0)
    gallery = [("g0.jpg", 1, 0), ("g1.jpg", 2, 1), ("g2.jpg", 1, 1), ("g3.jpg", 3, 2), ("g4.jpg", 4, 1),
               ("g5.jpg", 2, 0)]
    mask = [1.0, 0.9, 0.1, 0.05]
    table = {"q.jpg": (rng.normal(size=4).tolist(), mask)}
    for path, _, _ in gallery:
        table[path] = (rng.normal(size=4).tolist(), [1.0] * 4)
    gallery_rows = [table[p][0] for p, _, _ in gallery]
    tables = tool.rank_tables(_FixedStudy(table), [query], gallery, top_k=3)
    for mode, query_mask in (("masked", mask), ("plain", [1.0] * 4)):
        expected = naive_ranking(table["q.jpg"][0], query_mask, gallery_rows, left_out={0})  # g0: same id, cam
        scores, indices, first_hit = tables[mode]
        assert indices[0].tolist() == [index for _, index in expected[:3]]
        assert np.allclose(scores[0].numpy(), [s for s, _ in expected[:3]], atol=1e-5)
        true_rank = 1 + [index for _, index in expected].index(2)                     # g2: the only valid match
        assert int(first_hit[0]) == true_rank


# ----------------------------------------------------------------------------- tools/visualize.py end to end
def test_visualize_tool_writes_every_picture(tmp_path, data_root, load_tool):
    from fastreid.modeling import build_model
    from fastreid_dpmpp.engine.defaults import load_config
    from matplotlib.image import imread

    weights = {}
    for seed, name in ((0, "full"), (1, "no_hem")):
        torch.manual_seed(seed)
        model, _ = load_inference_model(CONFIG, TINY)
        with torch.no_grad():  # random init gives a constant mask (HMG FC at zero): make it vary
            model.heads.mask_generator.fc.weight.normal_(0, 0.5)
        weights[name] = tmp_path / f"{name}.pth"
        torch.save({"model": model.state_dict()}, weights[name])
    torch.manual_seed(2)
    sps = build_model(load_config(CONFIG, TINY + ["MODEL.META_ARCHITECTURE", "SPSModel"]))
    sps_weights = tmp_path / "sps.pth"
    torch.save({"model": sps.state_dict()}, sps_weights)

    output = tmp_path / "figures"
    tool = load_tool("visualize")
    summary = tool.main(["--data-root", data_root, "--output-dir", str(output), "--num-images", "2",
                         "--num-analysis-images", "3", "--top-k", "3", "--spt-batch", "8", "--batch-size", "4",
                         "--sps-weights", str(sps_weights),
                         "--model", f"full={CONFIG},{weights['full']}",
                         "--model", f"no_hem={CONFIG},{weights['no_hem']}", *TINY])

    pictures = ["head_correlation.png", "token_similarity_by_depth.png", "spt_samples.png", "masks_full.png",
                "masks_no_hem.png", "ranklists_full.png", "ranklists_no_hem.png"]
    for name in pictures:
        image = imread(output / name)
        assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50 and image.shape[2] in (3, 4), name
        assert image.std() > 0.01, name                           # not a blank canvas
    assert sorted(os.listdir(output)) == sorted(pictures + ["summary.json"])   # no temporary file left
    assert json.loads((output / "summary.json").read_text()) == summary
    for name in ("full", "no_hem"):
        entry = summary["models"][name]
        correlation = np.array(entry["head_correlation"])
        assert correlation.shape == (4, 4) and np.allclose(np.diag(correlation), 1.0, atol=1e-5)
        assert len(entry["token_similarity"]) == 3 and entry["num_analysis_images"] == 3
        assert all(0 <= rank for ranks in entry["first_match_rank"].values() for rank in ranks)
    assert summary["models"]["full"]["head_correlation"] != summary["models"]["no_hem"]["head_correlation"]
    assert summary["spt"]["batch"] == 8
