"""CLIP pretraining (issue 11): captions from what the generator knows and sees, the corpus and its palette
collisions with a benchmark, open_clip's trainer end to end on a tiny corpus, the result loaded through
MODEL.VIT.WEIGHTS, non-square position tables resized like a real CLIP's square one, and the shipped weights."""
import csv
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastreid_dpmpp  # noqa: F401
from fastreid_dpmpp.data import synthetic as syn
from fastreid_dpmpp.engine.defaults import load_config
from fastreid_dpmpp.modeling.backbones import TINY_CLIP
from fastreid_dpmpp.modeling.backbones.clip_vit import build_clip_vit_backbone
from fastreid_dpmpp.modeling.backbones.weights import infer_source_grid, resize_position_embedding
from fastreid_dpmpp.pretraining.captions import VISIBLE_MIN, caption, visible_attributes
from fastreid_dpmpp.pretraining.clip_pretraining import (PretrainRecipe, epoch_checkpoints, export_weights,
                                                         open_clip_train_argv, pretrain, sha256_of)
from fastreid_dpmpp.pretraining.corpus import (corpus_appearance, palette_collisions, write_caption_csvs,
                                               write_corpus)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(REPO, "configs", "Synthetic", "Base-Tiny.yml")
SHIPPED = os.path.join(REPO, "pretrained", "dpmpp_tiny_clip_synthetic.pt")


def _appearance(seed=3, **changes):
    app = syn.sample_appearance(syn._rng(seed, 1, 4, 0))
    fields = dict(app.__dict__, **changes)
    return syn.Appearance(**fields)


# ----------------------------------------------------------------------------------------------- captions
def test_hidden_parts_are_left_out_and_visible_ones_named():
    app = _appearance(upper="red", pattern="solid", lower="khaki", lower_style="trousers", shoes="white",
                      hat="blue", backpack="black", bag="")
    everything = visible_attributes(app, dict.fromkeys(syn.BODY_PARTS, 1.0))
    assert everything["upper"].endswith("red top") and everything["lower"] == "khaki trousers"
    assert everything["shoes"] == "white shoes" and everything["hat"] == "a blue cap"
    lower_hidden = visible_attributes(app, dict(head=1.0, upper=0.9, lower=VISIBLE_MIN - 0.01, shoes=0.0))
    assert set(lower_hidden) == {"hair", "hat", "upper", "backpack"}
    text = caption(app, "front", dict(head=1.0, upper=1.0, lower=0.1, shoes=0.0), "car", name_occluder=True,
                   rng=np.random.default_rng(0))
    assert "khaki" not in text and "white shoes" not in text and "red" in text and "car" in text


def test_occluder_is_named_only_when_asked_and_templates_vary():
    app = _appearance()
    visible = dict(head=1.0, upper=1.0, lower=0.2, shoes=0.0)
    named = [caption(app, "back", visible, "bush", True, np.random.default_rng(k)) for k in range(40)]
    plain = [caption(app, "back", visible, "bush", False, np.random.default_rng(k)) for k in range(40)]
    assert all("bush" in t for t in named) and not any("bush" in t for t in plain)
    assert len({t.split(" ")[0] for t in plain}) >= 3          # several sentence shapes, not one template


def test_caption_visibility_follows_the_rendered_occluder():
    """The renderer's per-part visibility: an unoccluded image sees every part; a car from the bottom hides the
    shoes rather than the head."""
    app = syn.sample_appearance(syn._rng(1, 1, 4, 7))
    camera = syn.make_camera(1, "corpus", 1, (256, 128))
    hidden_shoes = 0
    for key in range(12):
        rendered = syn.render_pedestrian_sample(app, camera, [1, 3, 4, key], (128, 64), occluded=True)
        assert set(rendered.visible) == set(syn.BODY_PARTS) and all(0 <= v <= 1 for v in rendered.visible.values())
        if rendered.occluder == "car":
            assert rendered.visible["shoes"] < rendered.visible["head"]
        hidden_shoes += rendered.visible["shoes"] < VISIBLE_MIN
        clean = syn.render_pedestrian_sample(app, camera, [1, 3, 4, key], (128, 64), occluded=False)
        assert clean.visible == dict.fromkeys(syn.BODY_PARTS, 1.0)
    assert hidden_shoes > 0


# ----------------------------------------------------------------------------------------------- corpus
@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("corpus"))
    write_corpus(root, seed=5, num_ids=12, images_per_id=4, val_ids=4, occluded_fraction=0.5, num_cameras=3)
    return root


def test_corpus_meta_csvs_and_held_out_identities(corpus):
    with open(os.path.join(corpus, "meta.json")) as f:
        meta = json.load(f)
    assert len(meta["images"]) == 48 and sum(bool(i["occluder"]) for i in meta["images"].values()) == 24
    train_csv, val_csv = write_caption_csvs(corpus, name_occluder=False)
    rows = {}
    for split, path in (("train", train_csv), ("val", val_csv)):
        with open(path, newline="") as f:
            rows[split] = list(csv.DictReader(f))
    assert len(rows["train"]) == 32 and len(rows["val"]) == 16
    ids = {split: {os.path.basename(r["filepath"]).split("_")[0] for r in rs} for split, rs in rows.items()}
    assert not ids["train"] & ids["val"]
    assert all(os.path.isabs(r["filepath"]) and os.path.isfile(r["filepath"]) for r in rows["train"])
    named, _ = write_caption_csvs(corpus, name_occluder=True)
    with open(named, newline="") as f:
        assert [r["filepath"] for r in csv.DictReader(f)] == [r["filepath"] for r in rows["train"]]


def test_palette_collisions_count_shared_palettes_against_chance():
    benchmark = [syn.sample_appearance(syn._rng(0, 1, 1, i)) for i in range(300)]
    corpus_apps = [corpus_appearance(0, i) for i in range(600)]
    stats = palette_collisions(benchmark, corpus_apps)
    assert stats["observed"] <= stats["expected"] + 4 * stats["std"] + 1
    # negative control: a "corpus" drawn from the benchmark's own identity stream collides on every identity
    leaked = palette_collisions(benchmark, benchmark[:150] + corpus_apps)
    assert leaked["observed"] >= 150 and leaked["observed"] > leaked["expected"] + 10 * leaked["std"] + 10


def test_palette_probability_factors_match_the_sampler():
    apps = [syn.sample_appearance(syn._rng(9, 1, 1, i)) for i in range(4000)]
    # per field: the empirical frequency of the most common value against the closed form used for the chance level
    for field in ("hair", "hair_style", "pattern", "lower_style", "shoes", "hat", "upper"):
        values = [getattr(a, field) for a in apps]
        common = max(set(values), key=values.count)
        others = [a for a in apps if getattr(a, field) != common][:1] or apps[:1]
        key = list(syn.palette_key(apps[0]))
        index = syn.PALETTE_FIELDS.index(field)
        key_a, key_b = list(key), list(key)
        key_a[index] = common
        key_b[index] = getattr(others[0], field)
        if field == "upper":      # upper2 must differ from upper for the tuple to be possible
            key_a[syn.PALETTE_FIELDS.index("upper2")] = key_b[syn.PALETTE_FIELDS.index("upper2")] = next(
                c for c in syn.UPPER_COLOURS if c not in (common, key_b[index]))
        ratio = syn.palette_probability(tuple(key_a)) / syn.palette_probability(tuple(key_b))
        observed = values.count(common) / max(values.count(key_b[index]), 1)
        assert abs(np.log(ratio) - np.log(observed)) < 0.25, field


# ----------------------------------------------------------------------------------------------- pretraining
def test_open_clip_trainer_end_to_end_and_weights_load_into_the_backbone(corpus, tmp_path):
    write_caption_csvs(corpus, name_occluder=True)
    recipe = PretrainRecipe(epochs=2, batch_size=16, warmup=1, save_frequency=1, threads=1, workers=0)
    argv = open_clip_train_argv(recipe, "t.csv", "v.csv", "logs")
    assert argv[argv.index("--model") + 1] == TINY_CLIP and "use_timm=True" in argv
    final = pretrain(recipe, corpus, str(tmp_path / "pretrain"), show_progress=False)
    assert sorted(epoch_checkpoints(str(tmp_path / "pretrain"), recipe)) == [1, 2]
    weights = str(tmp_path / "tiny_clip.pt")
    digest = export_weights(final, weights)
    assert digest == sha256_of(weights) and os.path.getsize(weights) < os.path.getsize(final)
    trained = torch.load(final, map_location="cpu", weights_only=True)["state_dict"]
    initial = torch.load(epoch_checkpoints(str(tmp_path / "pretrain"), recipe)[1], map_location="cpu",
                         weights_only=True)["state_dict"]
    assert not torch.equal(trained["visual.conv1.weight"], initial["visual.conv1.weight"])   # it trained

    cfg = load_config(TINY_CONFIG, ["MODEL.VIT.WEIGHTS", weights, "MODEL.VIT.NUM_CAMERAS", 0])
    backbone = build_clip_vit_backbone(cfg)
    assert torch.equal(backbone.visual.conv1.weight, trained["visual.conv1.weight"])
    # stride 12 at 128x64: the 8x4 pretraining grid resized to 10x5, class position kept
    table = trained["visual.positional_embedding"]
    assert backbone.grid_size == (10, 5)
    assert torch.allclose(backbone.position_embedding, resize_position_embedding(table, (8, 4), (10, 5)))
    assert torch.equal(backbone.position_embedding[0], table[0])


def test_non_square_position_table_is_resized_like_a_square_one():
    assert infer_source_grid(196, (21, 10)) == (14, 14)
    assert infer_source_grid(32, (10, 5)) == (8, 4)
    assert infer_source_grid(32, (5, 10)) == (4, 8)
    table = torch.randn(1 + 8 * 4, 6)
    resized = resize_position_embedding(table, (8, 4), (10, 5))
    # independent computation: bilinear (align_corners False) on the (1, D, 8, 4) grid
    grid = table[1:].reshape(8, 4, 6).permute(2, 0, 1).unsqueeze(0)
    expected = F.interpolate(grid, size=(10, 5), mode="bilinear", align_corners=False)[0].permute(1, 2, 0).reshape(50, 6)
    assert torch.allclose(resized[1:], expected, atol=1e-6) and torch.equal(resized[0], table[0])


# ----------------------------------------------------------------------------------------------- shipped weights
def test_shipped_weights_match_their_record_and_reproduce_their_zero_shot_numbers(tmp_path):
    from fastreid_dpmpp.pretraining.zero_shot import reproduction_check
    with open(os.path.splitext(SHIPPED)[0] + ".json") as f:
        record = json.load(f)
    assert sha256_of(SHIPPED) == record["sha256"]
    recomputed = reproduction_check(SHIPPED, str(tmp_path / "check"))
    assert recomputed["benchmark"] == record["check"]["benchmark"]
    for query, metrics in record["check"]["values"].items():
        for metric, value in metrics.items():
            assert abs(recomputed["values"][query][metric] - value) < 0.05, (query, metric)
    random_init = reproduction_check("", str(tmp_path / "check_random"))
    assert record["check"]["values"]["holistic"]["mAP"] > 5 * random_init["values"]["holistic"]["mAP"]
